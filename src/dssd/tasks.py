"""What the entry points do: build everything from the Hydra config, then fit / test."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dssd.callbacks import COCOResultsWriter, VOCResultsWriter
from dssd.checkpoints import read_checkpoint
from dssd.errors import UserError
from dssd.inference import load_detector
from dssd.models import fold_batchnorm
from dssd.report import results_tables, write_results, write_results_json
from dssd.stages import load_initial_weights

log = logging.getLogger(__name__)


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a :class:`UserError` as its message alone and exit with status 2.

    These errors name the file or option at fault and the fix; a traceback through Lightning
    would only bury that. ``HYDRA_FULL_ERROR=1`` re-raises them with the traceback.
    """
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to objects (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry and "_target_" in entry]


def build_trainer(cfg: DictConfig, extra_callbacks: list[pl.Callback] = ()) -> pl.Trainer:
    callbacks = [*instantiate_group(cfg.get("callbacks")), *extra_callbacks]
    loggers = instantiate_group(cfg.get("logger"))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def check_stage(cfg: DictConfig) -> None:
    """Refuse a stage that does not exist, or stages 1 and 2 without a checkpoint to start from."""
    stages = cfg.get("stages") or [{}]
    stage = cfg.get("stage", 0)
    if not isinstance(stage, int) or not 0 <= stage < len(stages):
        raise UserError(f"stage must be one of 0..{len(stages) - 1}, got {stage!r}")
    if stage > 0 and not cfg.get("init_from"):
        raise UserError(
            f"stage {stage} starts from a stage-{stage - 1} checkpoint: add "
            "init_from=<that run's dir>/checkpoints/last.ckpt (see README, Training stages)"
        )


def check_test_ckpt(cfg: DictConfig) -> None:
    """Refuse a ``test_ckpt`` that cannot be tested, before anything is trained.

    ``last`` (the default) tests the weights the fit ends with, the paper's final snapshot;
    ``best`` the run's ``best.ckpt``, chosen by ``optimized_metric`` on the validation split
    (which the datamodules keep apart from the test split); anything else must be a checkpoint
    file.
    """
    value = cfg.get("test_ckpt") or "last"
    if value == "last":
        return
    if value == "best":
        if not (cfg.get("callbacks") or {}).get("model_checkpoint"):
            raise UserError(
                "test_ckpt=best tests the best.ckpt of the model_checkpoint callback, which is "
                "switched off here; use test_ckpt=last (the final weights)"
            )
        if not cfg.get("train", True):
            raise UserError(
                "test_ckpt=best picks the best checkpoint of this run's fit, but train=false: "
                "give the file instead, test_ckpt=<run dir>/checkpoints/best.ckpt"
            )
        return
    read_checkpoint(value, "test_ckpt (last, best or a checkpoint file)", require=("state_dict",))


def checkpoint_to_test(cfg: DictConfig, trainer: pl.Trainer) -> str | None:
    """The ``ckpt_path`` of the final test (``test_ckpt``); None: the weights in memory."""
    value = cfg.get("test_ckpt") or "last"
    if value == "last":
        log.info("Testing the final weights (test_ckpt=last).")
        return None
    if value == "best":
        callback = trainer.checkpoint_callback
        best = callback.best_model_path if callback is not None else ""
        if not best:
            raise UserError(
                "test_ckpt=best, but no best checkpoint was written (did validation run? "
                f"{cfg.get('optimized_metric')} is what selects it); use test_ckpt=last"
            )
        log.info("Testing the best checkpoint on the validation split, %s.", best)
        return best
    log.info("Testing %s (test_ckpt).", value)
    return str(value)


def result_writers(cfg: DictConfig) -> list[pl.Callback]:
    """Callbacks that write the test detections as result files (``coco_results``: a COCO
    results JSON; ``voc_results``: the VOC devkit's files), checked to be writable first."""
    writers: list[pl.Callback] = []
    if cfg.get("coco_results"):
        writers.append(COCOResultsWriter(cfg.coco_results))
    if cfg.get("voc_results"):
        writers.append(VOCResultsWriter(cfg.voc_results))
    return writers


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model, test it (``test_ckpt``) and return ``cfg.optimized_metric``."""
    check_stage(cfg)
    if cfg.get("test", True):
        check_test_ckpt(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    run_config = OmegaConf.to_container(cfg, resolve=True)

    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    model.run_config = run_config
    if cfg.get("init_from"):
        load_initial_weights(model, cfg.init_from, cfg.stages[cfg.stage].init_modules)
    trainer = build_trainer(cfg, result_writers(cfg))
    for logger in trainer.loggers:
        logger.log_hyperparams(run_config)

    metrics: dict[str, float] = {}
    timings: dict[str, float] = {}
    if cfg.get("train", True):
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg))
        timings["fit_seconds"] = time.perf_counter() - start
        metrics.update(_scalars(trainer.callback_metrics))
    if cfg.get("test", True):
        tested = checkpoint_to_test(cfg, trainer)
        trainer.test(model, datamodule=datamodule, ckpt_path=tested)
        metrics.update(_scalars(trainer.callback_metrics))
        if trainer.is_global_zero:
            record = {**timings, "tested_checkpoint": tested or "final weights"}
            report_test_results(cfg, model, metrics, record)

    value = metrics.get(cfg.get("optimized_metric", ""))
    if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.best_model_path:
        log.info(
            "Best checkpoint (validation split): %s", trainer.checkpoint_callback.best_model_path
        )
    if value is not None:
        log.info("%s = %.4f", cfg.optimized_metric, value)
    return value


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint that ``trainer.fit`` resumes from (``cfg.ckpt_path``), checked to exist.

    Resuming restores the weights, the optimiser state, the LR schedule, the step counter and the
    callbacks' state. ``ckpt_path=last`` is ``last.ckpt`` in this run's checkpoint directory; as
    every run gets a new directory, resuming an interrupted run means running it again with the
    same overrides plus ``hydra.run.dir=<its directory> ckpt_path=last``. (Lightning itself only
    warns when there is no last checkpoint, and trains from scratch.)
    """
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        return None
    if str(ckpt_path) == "last":
        callbacks = cfg.get("callbacks") or {}
        directory = (callbacks.get("last_checkpoint") or {}).get("dirpath") or os.path.join(
            cfg.paths.output_dir, "checkpoints"
        )
        path = os.path.join(directory, "last.ckpt")
        if not os.path.isfile(path):
            raise UserError(
                f"ckpt_path=last, but there is no {path} to resume from. Every run writes to a "
                "new directory: to resume an interrupted run, run src/train.py again with the "
                "same overrides plus hydra.run.dir=<that run's directory, e.g. "
                "logs/train/runs/<date_time>> ckpt_path=last, or give the file itself, "
                "ckpt_path=<that run's directory>/checkpoints/last.ckpt."
            )
    else:
        path = str(ckpt_path)
        if not os.path.isfile(path):
            raise UserError(
                f"ckpt_path={path}: no such checkpoint to resume from. Give a checkpoint file "
                "(e.g. <run dir>/checkpoints/last.ckpt), or hydra.run.dir=<run dir> ckpt_path=last."
            )
    read_checkpoint(path, "ckpt_path", require=("state_dict", "dssd_config"))
    return path


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` and return the test metrics.

    The network is rebuilt from the run configuration stored in the checkpoint by ``train``; so is
    the datamodule, unless ``data=...`` is chosen on the command line, and ``data.<key>=...``
    overrides are applied on top of it (e.g. a new ``data.root``). The numeric precision is the
    training run's too (unless ``trainer.precision`` is given), so that the test figures repeat.
    """
    model, run_cfg = load_detector(cfg.ckpt_path)
    with open_dict(cfg):  # a data config chosen here may refer to ${model.net.image_size}
        cfg.model = run_cfg.model
    overrides = _command_line_overrides()
    data_cfg = cfg.data
    if "data" not in overrides:
        data_overrides = [o for key, o in overrides.items() if key.startswith("data.")]
        data_cfg = OmegaConf.merge(
            run_cfg.data, OmegaConf.from_dotlist(data_overrides).get("data", {})
        )
    if "trainer.precision" not in overrides:
        cfg.trainer.precision = run_cfg.trainer.precision
    if "run_name" in run_cfg:  # W&B names: the training run's, tagged eval
        cfg.run_name = run_cfg.run_name
        cfg.run_tags = [*run_cfg.run_tags, "eval"]
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(data_cfg)
    if cfg.get("fold_bn", False):
        model.net = fold_batchnorm(model.net)
        log.info("Evaluating with every batch norm folded into its convolution.")
    trainer = build_trainer(cfg, result_writers(cfg))
    trainer.test(model, datamodule=datamodule)
    metrics = _scalars(trainer.callback_metrics)
    if trainer.is_global_zero:
        report_test_results(cfg, model, metrics, {"tested_checkpoint": str(cfg.ckpt_path)})
    return metrics


def report_test_results(
    cfg: DictConfig,
    model: pl.LightningModule,
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> None:
    """Print the test metrics in the paper's table layouts and save them next to the logs.

    ``test_results.md`` holds the tables; ``test_results.json`` the same figures for programs
    (``make ablation``, the notebooks): every scalar metric, per-class AP, the network's parameter
    counts, the checkpoint tested and, after training, the fit time in seconds (``extra``).
    """
    per_class = getattr(model, "per_class_ap", {}).get("test", {})
    name = cfg.get("run_name", cfg.task_name)
    text = results_tables(metrics, per_class, name=name)
    path = write_results(text, cfg.paths.output_dir)
    net = getattr(model, "net", model)
    record = {
        "run_name": name,
        "stage": cfg.get("stage", 0),
        "metrics": metrics,
        "per_class_ap": per_class,
        "parameters": sum(p.numel() for p in net.parameters()),
        "trainable_parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
        **(extra or {}),
    }
    write_results_json(record, cfg.paths.output_dir)
    log.info("Test results (also in %s):\n%s", path, text)


def _command_line_overrides() -> dict[str, str]:
    """The command line's ``key=value`` overrides (without ``+``/``~``), by key."""
    if not HydraConfig.initialized():
        return {}
    overrides = [o.lstrip("+~") for o in HydraConfig.get().overrides.task]
    return {o.split("=", 1)[0]: o for o in overrides}


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
