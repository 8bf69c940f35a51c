"""What the tasks share: the Lightning Trainer of a run built from its config (callbacks,
loggers, result writers), and the test figures printed in the paper's table layouts and saved
next to its logs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from dssd.evaluation.module import DetectionEvaluation
from dssd.models.cost import gmac
from dssd.results.runs import write_results_json
from dssd.results.tables import results_tables, write_results
from dssd.training.callbacks import COCOResultsWriter, VOCResultsWriter
from dssd.training.module import DetectionModule

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to objects (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def result_writers(cfg: DictConfig, datamodule: pl.LightningDataModule) -> list[pl.Callback]:
    """Callbacks that write the test detections of ``datamodule`` as result files
    (``coco_results``: a COCO results JSON; ``voc_results``: the VOC devkit's files), checked to
    be writable first."""
    writers: list[pl.Callback] = []
    if cfg.get("coco_results"):
        writers.append(COCOResultsWriter(cfg.coco_results, datamodule))
    if cfg.get("voc_results"):
        writers.append(VOCResultsWriter(cfg.voc_results))
    return writers


def build_trainer(
    cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = (), with_loggers: bool = True
) -> pl.Trainer:
    """``cfg.trainer`` with the ``callbacks`` and ``logger`` groups (and ``extra_callbacks``);
    without loggers when ``with_loggers`` is false."""
    callbacks = [*instantiate_group(cfg.get("callbacks")), *extra_callbacks]
    loggers = instantiate_group(cfg.get("logger")) if with_loggers else []
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The one-number entries of Lightning's ``callback_metrics``, as floats."""
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def report_test_results(
    cfg: DictConfig,
    model: DetectionEvaluation,
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> None:
    """Print the test metrics in the paper's table layouts and save them next to the logs.

    ``test_results.md`` holds the tables; ``test_results.json`` the same figures for programs
    (``make ablation``, the notebooks): every scalar metric, per-class AP, the network's parameter
    counts and GMAC per image (of a checkpoint's network), the checkpoint or exported file tested
    and, after training, the fit time in seconds (``extra``).
    """
    per_class = model.per_class_ap.get("test", {})
    name = cfg.get("run_name", cfg.task_name)
    text = results_tables(metrics, per_class, name=name)
    path = write_results(text, cfg.paths.output_dir)
    record = {
        "run_name": name,
        "stage": cfg.get("stage", 0),
        "metrics": metrics,
        "per_class_ap": per_class,
        **(extra or {}),
    }
    if isinstance(model, DetectionModule):
        parameters = list(model.net.parameters())
        record["parameters"] = sum(p.numel() for p in parameters)
        record["trainable_parameters"] = sum(p.numel() for p in parameters if p.requires_grad)
        record["gmac"] = round(gmac(model.net), 4)
    write_results_json(record, cfg.paths.output_dir)
    log.info("Test results (also in %s):\n%s", path, text)
