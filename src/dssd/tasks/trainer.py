"""The Lightning Trainer of a run, built from its config (callbacks, loggers, result writers)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from dssd.callbacks import COCOResultsWriter, VOCResultsWriter


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
