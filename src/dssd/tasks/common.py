"""What the tasks share: the Lightning Trainer built from a run's config, and the test report in
the paper's table layouts."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import Logger, TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from dssd.deployment.detector import PRECISIONS
from dssd.errors import MAX_SEED, UserError, check_settings, is_seed
from dssd.evaluation.module import DetectionEvaluation
from dssd.models.cost import gmac
from dssd.results.runs import write_results_json
from dssd.results.tables import results_tables, write_results
from dssd.results.wandb import finish_run, is_wandb_error
from dssd.training.callbacks import COCOResultsWriter, VOCResultsWriter
from dssd.training.module import DetectionModule

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that maps names to objects (callbacks, loggers)."""
    return [instantiate(e) for e in (group or {}).values() if e and "_target_" in e]


def log_run_config(loggers: Sequence[Logger], run_config: dict[str, Any]) -> None:
    """Give every logger the run's configuration, its first write, before the work starts: a
    logger that cannot write (a ``save_dir`` that is a file) or a W&B run that cannot start (online
    without a login) is a :class:`UserError`, not a traceback."""
    for logger in loggers:
        try:
            logger.log_hyperparams(run_config)
            if isinstance(logger, TensorBoardLogger):
                declare_tensorboard_hparams(logger, run_config)
        except OSError as err:
            raise UserError(
                f"the {type(logger).__name__} cannot write its logs into {logger.save_dir} "
                f"({err.strerror or err}): choose another logger.<name>.save_dir"
            ) from None
        except Exception as err:
            if isinstance(logger, WandbLogger) and isinstance(err, TypeError | ValueError):
                raise UserError(  # wandb.init on an unknown key, or a value it refuses
                    f"W&B refuses the run's settings: {' '.join(str(err).split())}. Check the "
                    "logger.wandb.* overrides"
                ) from None
            if not is_wandb_error(err):
                raise
            raise UserError(
                f"W&B could not start the run ({err}): log in with `wandb login` (or set "
                "WANDB_API_KEY), or log offline with logger.wandb.offline=true"
            ) from None


# the metrics TensorBoard's HPARAMS tab sets beside each run's settings, from their scalars
HPARAMS_METRICS = ("val/voc_map", "val/map_50", "test/voc_map", "test/map")


@rank_zero_only
def declare_tensorboard_hparams(logger: TensorBoardLogger, run_config: dict[str, Any]) -> None:
    """Write the run's settings (flattened, ``model.net.image_size``) to TensorBoard's HPARAMS
    tab with :data:`HPARAMS_METRICS` as its metrics: Lightning keeps them in ``hparams.yaml``
    only, unless it logs a placeholder ``hp_metric``. The metrics' values are their scalars."""
    from torch.utils.tensorboard.summary import hparams

    def shown(value: Any) -> Any:  # a number or text; true/false as words, not as 1 and 0
        plain = isinstance(value, int | float | str) and not isinstance(value, bool)
        return value if plain else str(value)

    settings = {k: shown(v) for k, v in _flattened(run_config)}
    writer = logger.experiment._get_file_writer()
    for summary in hparams(settings, dict.fromkeys(HPARAMS_METRICS, 0.0)):
        writer.add_summary(summary)


def _flattened(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """The leaves of a nested config as ``(dotted key, value)``."""
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from _flattened(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def result_writers(cfg: DictConfig, datamodule: pl.LightningDataModule) -> list[pl.Callback]:
    """Callbacks writing the test detections as ``coco_results`` and ``voc_results`` files."""
    writers: list[pl.Callback] = []
    if cfg.get("coco_results"):
        writers.append(COCOResultsWriter(cfg.coco_results, datamodule))
    if cfg.get("voc_results"):
        writers.append(VOCResultsWriter(cfg.voc_results))
    return writers


def several_processes_started() -> bool:
    """Whether this is one of several processes started already: by SLURM's srun, torchrun, or
    Lightning's ``ddp`` (its other processes run the command again with ``LOCAL_RANK`` set)."""
    return (
        SLURMEnvironment.detect() or TorchElasticEnvironment.detect() or "LOCAL_RANK" in os.environ
    )


def read_data(datamodule: pl.LightningDataModule, stage: str) -> None:
    """Prepare (to fit: the shapes data is built, if missing) and set up ``datamodule`` for
    ``stage`` before the trainer opens its loggers (a W&B run), so that a data mistake stops the
    command first; a test reads data that exists. A single process only: where several are
    started, Lightning prepares the data once for all of them within ``fit``."""
    if not several_processes_started():
        if stage == "fit":
            datamodule.prepare_data()
        datamodule.setup(stage)


def check_accelerator(trainer: DictConfig) -> None:
    """Refuse a GPU trainer where PyTorch sees none, before any data is read or built."""
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(
            f"trainer.accelerator={accelerator} (from trainer=gpu or trainer=ddp, which the GPU "
            f"experiments choose), but PyTorch {torch.__version__} sees no CUDA GPU here: add "
            "trainer=cpu to run on the CPU, or trainer.accelerator=auto to take a GPU where "
            "there is one"
        )


def check_precision(trainer: DictConfig) -> None:
    """Refuse a ``trainer.precision`` the detector does not run in (one Lightning would take,
    e.g. ``64``, or fail on); null: the run's own."""
    precision = trainer.get("precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise UserError(f"trainer.precision={precision}: choose one of {', '.join(PRECISIONS)}")


def check_test_batches(trainer: DictConfig, instead: str) -> None:
    """Refuse ``trainer.limit_test_batches=0`` where a test is run: it scores no image and
    writes empty results as if they were the test's; ``instead`` says what to do."""
    if trainer.get("limit_test_batches") == 0:
        raise UserError(
            "trainer.limit_test_batches=0: the test would score no image and record empty "
            f"results; {instead}"
        )


def build_trainer(
    cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = (), with_loggers: bool = True
) -> pl.Trainer:
    """``cfg.trainer`` with the ``callbacks`` group, ``extra_callbacks`` and the loggers."""
    callbacks = [*instantiate_group(cfg.get("callbacks")), *extra_callbacks]
    loggers = instantiate_group(cfg.get("logger")) if with_loggers else []
    if not loggers:  # it writes to the loggers only, and Lightning stops a fit without one
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def check_scorable(cfg: DictConfig, datamodule: pl.LightningDataModule) -> str | None:
    """The test annotation file when it holds no annotations (COCO's test-dev image info), else
    None; such a test scores nothing, so its detections must be written (``coco_results``)."""
    unlabelled = datamodule.unlabelled_test_file()
    if unlabelled and not cfg.get("coco_results"):
        raise UserError(
            f"{unlabelled} holds no annotations (an image-info file such as COCO's test-dev): "
            "there is nothing to score, so give coco_results=<file.json> to write its "
            "detections for the evaluation server"
        )
    return unlabelled


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The one-number entries of Lightning's ``callback_metrics``, as floats."""
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def report_test_results(
    cfg: DictConfig,
    model: DetectionEvaluation,
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> None:
    """Print the test metrics in the paper's table layouts and save them as ``test_results.md``
    and ``test_results.json`` (for ``make ablation`` and the notebooks: the metrics, per-class AP,
    a checkpoint network's parameter counts and GMAC per image, and ``extra``); or, for a test
    file without annotations (``model.unscored_test_file``), where its detections went. The W&B
    run is over by then, and is ended first: its closing summary comes before the tables."""
    finish_run(0)
    if model.unscored_test_file:
        log.info(
            "Nothing scored: %s holds no annotations. Its detections are in %s, for the "
            "evaluation server.",
            model.unscored_test_file,
            cfg.coco_results,
        )
        return
    per_class = model.per_class_ap.get("test", {})
    name = cfg.get("run_name", cfg.task_name)
    text = results_tables(metrics, per_class, name=name)
    path = write_results(text, cfg.paths.output_dir)
    record = {
        "run_name": name,
        "stage": cfg.get("stage", 0),
        "metrics": metrics,
        "per_class_ap": per_class,
        # the data tested, which src/analyze.py rebuilds (eval.py may test other data than the
        # checkpoint was trained on)
        "test_data": OmegaConf.to_container(cfg.data, resolve=True),
        **(extra or {}),
    }
    if isinstance(model, DetectionModule):
        parameters = list(model.net.parameters())
        record["parameters"] = sum(p.numel() for p in parameters)
        record["trainable_parameters"] = sum(p.numel() for p in parameters if p.requires_grad)
        record["gmac"] = round(gmac(model.net), 4)
    write_results_json(record, cfg.paths.output_dir)
    log.info("Test results (also in %s):\n%s", path, text)


def check_image_size(cfg: DictConfig, fix: str) -> None:
    """Refuse a ``data.image_size`` other than the network's (a shape error deep in the loss),
    saying ``fix``."""
    size = cfg.model.net.image_size
    if cfg.data.get("image_size", size) != size:
        raise UserError(
            f"data.image_size={cfg.data.image_size}, but the network takes {size} "
            f"(model.net.image_size): {fix}"
        )


def seed_run(cfg: DictConfig) -> None:
    """Seed everything with ``cfg.seed`` (null: no seeding), refusing a seed Lightning refuses."""
    check_settings(cfg, ("seed", is_seed, f"a whole number from 0 to {MAX_SEED}, or null"))
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
