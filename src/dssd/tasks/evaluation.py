"""Evaluation: test a checkpoint of src/train.py (rebuilt from its stored run configuration), or a
file of src/export.py beside its checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dssd.data.datamodule import image_files
from dssd.deployment.export import ExportedModel
from dssd.deployment.inference import load_checkpoint, restore_detector
from dssd.errors import BOOLEAN, UserError, check_settings
from dssd.evaluation.module import DetectionEvaluation, ExportedModelEvaluation
from dssd.models import count_batchnorms, fold_batchnorm
from dssd.tasks.common import (
    build_trainer,
    check_accelerator,
    check_image_size,
    check_precision,
    check_scorable,
    check_test_batches,
    log_run_config,
    read_data,
    report_test_results,
    result_writers,
    scalar_metrics,
    seed_run,
)

log = logging.getLogger(__name__)

# the metrics compared between an exported file and its checkpoint, and the largest difference
# at which they agree
PARITY_METRICS = ("voc_map", "map", "map_50", "map_75", "map_small")
PARITY_TOLERANCE = 1e-3


def data_to_evaluate(chosen: DictConfig | None, trained: DictConfig) -> DictConfig:
    """The data config to test on: eval.py's ``chosen`` one if whole (``data=<name>``: it names a
    ``_target_``), else the training run's ``trained`` with the fields chosen (``+data.root=``)."""
    if not chosen:
        return trained
    return chosen if "_target_" in chosen else OmegaConf.merge(trained, chosen)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` (or the exported ``cfg.model_file``) and return the
    test metrics. Network, data and precision are those of the run configuration stored in the
    checkpoint (so the figures repeat) unless ``cfg.data`` or ``trainer.precision`` is given."""
    check_settings(cfg, ("fold_bn", *BOOLEAN), ("compare", *BOOLEAN))
    check_accelerator(cfg.trainer)
    check_test_batches(cfg.trainer, "give a fraction in (0, 1] or a number of batches >= 1")
    check_precision(cfg.trainer)  # those train.py takes
    if cfg.get("model_file"):
        return evaluate_exported(cfg)
    if not cfg.get("ckpt_path"):
        raise UserError(
            "nothing to evaluate: give ckpt_path=<a checkpoint of src/train.py> "
            "or model_file=<a file of src/export.py>"
        )
    checkpoint, run_cfg = load_checkpoint(cfg.ckpt_path)
    datamodule, trainer = configure(cfg, run_cfg, precision=run_cfg.trainer.precision)
    unscored = check_scorable(cfg, datamodule)
    model = restore_detector(checkpoint, cfg.model)
    if cfg.get("fold_bn", False):
        count = count_batchnorms(model.net)
        model.net = fold_batchnorm(model.net)
        log.info("Evaluating with every batch norm folded into its convolution (%d folded).", count)
    model.unscored_test_file = unscored
    metrics = run_test(cfg, model, datamodule, trainer)
    report_test_results(cfg, model, metrics, {"tested_checkpoint": str(cfg.ckpt_path)})
    return metrics


def configure(
    cfg: DictConfig, run_cfg: DictConfig, precision: str
) -> tuple[pl.LightningDataModule, pl.Trainer]:
    """Fill ``cfg`` from the training run's configuration (model, data, W&B names; ``precision``
    unless ``trainer.precision`` is given), seed, and return the datamodule to test on, its test
    data read (:func:`read_data`), and the trainer with the result writers, built before the
    data is read so that their mistakes are said first."""
    with open_dict(cfg):  # a data config chosen here may refer to ${model.net.image_size}
        cfg.model = run_cfg.model
        cfg.data = data_to_evaluate(cfg.get("data"), run_cfg.data)
    if cfg.trainer.precision is None:
        cfg.trainer.precision = precision
    if "run_name" in run_cfg:  # W&B names: the training run's, tagged eval
        cfg.run_name = run_cfg.run_name
        cfg.run_tags = [*run_cfg.run_tags, "eval"]
    follow_wandb_project(cfg, run_cfg)
    seed_run(cfg)
    check_image_size(cfg, "drop the data.image_size override")
    datamodule = instantiate(cfg.data)
    trainer = build_trainer(cfg, result_writers(cfg, datamodule))  # no W&B run started yet
    read_data(datamodule, "test")
    check_class_names(list(datamodule.class_names), list(run_cfg.model.class_names))
    warn_seen_test_files(datamodule, run_cfg.data)
    with open_dict(cfg):  # the metrics of the data tested
        cfg.model.class_names = list(datamodule.class_names)
        cfg.model.use_07_metric = datamodule.use_07_metric
    return datamodule, trainer


def follow_wandb_project(cfg: DictConfig, run_cfg: DictConfig) -> None:
    """Log to the training run's W&B project and entity (``logger.wandb.project=myproj`` at
    training), unless this command gives its own."""
    ours, theirs = (OmegaConf.select(c, "logger.wandb") for c in (cfg, run_cfg))
    if ours is None or theirs is None:
        return
    given = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    given = [o.lstrip("+") for o in given]  # +logger.wandb.entity=... gives one too
    for key in ("project", "entity"):
        if key in theirs and not any(o.startswith(f"logger.wandb.{key}=") for o in given):
            with open_dict(ours):
                ours[key] = theirs[key]


def warn_seen_test_files(datamodule: pl.LightningDataModule, trained: DictConfig) -> None:
    """Say when the test images are images the checkpoint's run trained on or chose ``best.ckpt``
    on: its listing files (``+data.test_annotations=`` its training file), or, where the run's
    splits list images (VOC), its images (VOC2012 val, a part of the VOC2012 trainval that a
    ``voc0712`` run trained on). Figures on seen images; a warning, as a look at the fit itself
    is legitimate."""
    try:
        run_data = instantiate(trained)
        roles = {"train": "trained on", "val": "chose its best.ckpt on"}
        seen = {role: set(run_data.listing_files(role)) for role in roles}
        tested = datamodule.listing_files("test")
    except (InstantiationException, UserError, NotImplementedError):
        return  # the run's data config cannot be built here: nothing to compare with
    seen_images = {role: _listed_images(run_data, role) for role in roles}
    test_set = getattr(datamodule, "datasets", {}).get("test")  # None: not read in this process
    tested_images = set(image_files(test_set)) if test_set is not None else set()
    for role, what in roles.items():
        shared = [str(f) for f in tested if f in seen[role]]
        if shared:
            log.warning(
                "the test files %s are files the checkpoint's run %s: these figures are on "
                "images it has seen, not a test",
                ", ".join(shared),
                what,
            )
            continue
        images = sorted(tested_images & seen_images[role])
        if images:
            log.warning(
                "%d of the %d test images are images the checkpoint's run %s (e.g. %s): these "
                "figures are on images it has seen, not a test",
                *(len(images), len(tested_images), what, images[0]),
            )


def _listed_images(data: pl.LightningDataModule, role: str) -> set[str]:
    """The images ``data``'s ``role`` lists, where it can say (none if its files cannot be read
    here: the run's data may have been elsewhere)."""
    try:
        return data.listed_images(role) or set()
    except (OSError, ValueError):  # missing, or not text
        return set()


def check_class_names(data: list[str], trained: list[str]) -> None:
    """Refuse test data whose classes are not the trained network's, in its order: each output of
    the network would be scored as another class."""
    if data == trained:
        return
    raise UserError(
        f"the test data's classes {data} are not the {trained} the network was trained on, in "
        "that order: evaluate a network on data with its own class list"
    )


def run_test(
    cfg: DictConfig,
    model: DetectionEvaluation,
    datamodule: pl.LightningDataModule,
    trainer: pl.Trainer,
) -> dict[str, float]:
    """The scalar metrics of ``trainer.test`` (its loggers given the run's settings first)."""
    if trainer.loggers:
        log_run_config(trainer.loggers, OmegaConf.to_container(cfg, resolve=True))
    trainer.test(model, datamodule=datamodule)
    return scalar_metrics(trainer.callback_metrics)


def evaluate_exported(cfg: DictConfig) -> dict[str, float]:
    """Test the exported file ``cfg.model_file`` (onnxruntime or TorchScript) on its run's test
    split like a checkpoint; then, unless ``compare=false``, its checkpoint (``ckpt_path``, default
    the file's) in float32 beside it: faithful when they agree to 0.001 (``parity``)."""
    if cfg.get("fold_bn"):
        raise UserError(
            "fold_bn=true: an exported file's graph has its batch norms folded already; drop it"
        )
    if cfg.get("ckpt_path") and not cfg.get("compare", True):
        raise UserError(
            f"ckpt_path={cfg.ckpt_path} names the checkpoint compared with model_file, but "
            "compare=false compares with none: drop one of them"
        )
    precision = (cfg.get("trainer") or {}).get("precision")
    if precision not in (None, "32-true", "32"):
        raise UserError(
            f"trainer.precision={precision}: an exported file computes in float32, and its "
            "checkpoint is compared with it in float32; drop the trainer.precision override"
        )
    exported = ExportedModel(cfg.model_file)
    if not isinstance(exported.metadata.get("run_config"), dict):
        raise UserError(
            f"model_file={cfg.model_file}: its metadata holds no run_config, which names the "
            "test data; export the checkpoint again with src/export.py"
        )
    run_cfg = OmegaConf.create(exported.metadata["run_config"])
    # the exported graph computes in float32
    datamodule, trainer = configure(cfg, run_cfg, precision="32-true")
    unscored = check_scorable(cfg, datamodule)
    with open_dict(cfg):  # the tables and W&B name the file's format
        cfg.run_name = f"{cfg.get('run_name', cfg.task_name)} ({exported.format})"
    model = ExportedModelEvaluation(
        exported, cfg.model.class_names, cfg.model.use_07_metric, cfg.model.coco_max_detections
    )
    # the checkpoint to compare with, checked before the test: the file's run config's network
    ckpt_path = cfg.get("ckpt_path") or exported.metadata.get("checkpoint")
    reference = None
    if cfg.get("compare", True) and ckpt_path and not unscored:
        if not Path(ckpt_path).is_file():
            raise UserError(
                f"the checkpoint to compare with, {ckpt_path}, does not exist: give "
                "ckpt_path=<the checkpoint exported>, or compare=false"
            )
        source = f"ckpt_path={ckpt_path} (to compare with {exported.path})"
        reference = restore_detector(load_checkpoint(ckpt_path)[0], cfg.model, source)
    log.info("Testing %s (%s) on %s", exported.path, exported.format, cfg.data._target_)
    model.unscored_test_file = unscored
    metrics = run_test(cfg, model, datamodule, trainer)
    extra: dict[str, Any] = {"tested_model_file": str(exported.path), "format": exported.format}
    if reference is not None:
        log.info("Testing the checkpoint %s in float32 for comparison", ckpt_path)
        quiet = build_trainer(cfg, with_loggers=False)  # no result files, no second W&B run
        checkpoint_metrics = run_test(cfg, reference, datamodule, quiet)
        extra["parity"] = parity(metrics, checkpoint_metrics, ckpt_path)
        log.info("Exported file against its checkpoint:\n%s", parity_table(extra["parity"]))
        warn_of_disagreement(extra["parity"], exported.metadata.get("checkpoint"))
    report_test_results(cfg, model, metrics, extra)
    return metrics


def parity(
    exported: dict[str, float], checkpoint: dict[str, float], ckpt_path: str
) -> dict[str, Any]:
    """The test metrics of an exported file beside its checkpoint's, and their largest gap."""
    rows = {
        name: {"checkpoint": checkpoint[f"test/{name}"], "exported": exported[f"test/{name}"]}
        for name in PARITY_METRICS
        if f"test/{name}" in exported and f"test/{name}" in checkpoint
    }
    gap = max(abs(r["exported"] - r["checkpoint"]) for r in rows.values())
    return {"checkpoint": str(ckpt_path), "metrics": rows, "max_abs_difference": gap}


def warn_of_disagreement(record: dict[str, Any], exported_from: str | None) -> None:
    """Warn when the :func:`parity` record's figures differ by more than
    :data:`PARITY_TOLERANCE`, naming the checkpoint the file was exported from when the one
    compared is another file."""
    gap = record["max_abs_difference"]
    if gap <= PARITY_TOLERANCE:
        return
    compared = record["checkpoint"]
    same = exported_from is not None and Path(exported_from).resolve() == Path(compared).resolve()
    cause = (
        f"; the file was exported from {exported_from}, not {compared}"
        if exported_from is not None and not same
        else ""
    )
    log.warning(
        "the exported file and the checkpoint %s disagree by up to %.2e (more than %g): the "
        "file does not compute what the checkpoint does%s",
        compared,
        gap,
        PARITY_TOLERANCE,
        cause,
    )


def parity_table(record: dict[str, Any]) -> str:
    """:func:`parity` as a markdown table."""
    # both in float32: the checkpoint's figures may differ in the last digits from its own test
    # in bf16-mixed
    lines = ["| metric | checkpoint (float32) | exported | difference |", "|---|---:|---:|---:|"]
    for name, row in record["metrics"].items():
        difference = row["exported"] - row["checkpoint"]
        lines.append(
            f"| {name} | {row['checkpoint']:.4f} | {row['exported']:.4f} | {difference:+.2e} |"
        )
    lines.append(f"largest difference: {record['max_abs_difference']:.2e}")
    return "\n".join(lines)
