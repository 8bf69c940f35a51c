"""Everything said to and read from Weights & Biases: the training callback, images, analysis
files, and runs as DataFrames (online through W&B's API; an offline run's metrics are in the CSV
log beside it). ``wandb`` is imported where used: it is slow to import."""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger as LightningWandbLogger
from torch import Tensor

from dssd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from dssd.results.runs import RunDirs, run_dirs_by_label

if TYPE_CHECKING:
    import wandb


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger, less the ``anonymous=None`` it gives ``wandb.init``: W&B has
    deprecated the setting and warns of it at every run, whatever its value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]


def is_wandb_error(err: BaseException) -> bool:
    """Whether ``err`` is W&B's own (no login for an online run, a server out of reach)."""
    errors = sys.modules.get("wandb.errors")  # loaded by whatever raised one
    return errors is not None and isinstance(err, errors.Error)


def finish_run(exit_code: int) -> None:
    """End the W&B run of this process, if one is open, with the command's exit status: the next
    job of an in-process sweep (``-m``, Optuna) would log into it, and a run that stopped on an
    error would show as finished."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def _wandb_logger(trainer: pl.Trainer) -> LightningWandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, LightningWandbLogger)), None)


def box_data(
    boxes: Tensor, labels: Tensor, class_names: Sequence[str], scores: Tensor | None = None
) -> list[dict[str, Any]]:
    """W&B box entries from normalised xyxy boxes (fractions of the image, W&B's default)."""
    entries = []
    listed = [None] * len(labels) if scores is None else scores.tolist()
    for (x0, y0, x1, y1), label, score in zip(boxes.tolist(), labels.tolist(), listed, strict=True):
        position = {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1}
        entry: dict[str, Any] = {"position": position, "class_id": int(label)}
        caption = class_names[label - 1]
        if score is not None:
            caption = f"{caption} {score:.2f}"
            entry["scores"] = {"score": score}
        entries.append({**entry, "box_caption": caption})
    return entries


def _image_boxes(class_names: Sequence[str], **groups: list[dict[str, Any]]) -> dict[str, Any]:
    """W&B's ``boxes`` of an image: each group's :func:`box_data` by name, with the class names."""
    class_labels = dict(enumerate(class_names, start=1))
    return {name: {"box_data": data, "class_labels": class_labels} for name, data in groups.items()}


class WandbDetectionReport(pl.Callback):
    """With a ``WandbLogger``, logs the per-class AP table of each evaluation, and ``num_images``
    validation images with their ground truth and detections scoring at least ``min_score``."""

    def __init__(
        self,
        num_images: int = 8,
        min_score: float = 0.3,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.num_images = num_images
        self.min_score = min_score
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.samples: list[tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.samples = []

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        wanted = self.num_images - len(self.samples)
        skip = trainer.sanity_checking or not trainer.is_global_zero
        if wanted <= 0 or skip or _wandb_logger(trainer) is None:
            return
        images, targets = batch
        for image, target, detections in list(zip(images, targets, outputs, strict=True))[:wanted]:
            scale = target["orig_size"].flip(-1).repeat(2).to(detections["boxes"])  # (w, h, w, h)
            keep = detections["scores"] >= self.min_score
            predicted = {
                "boxes": (detections["boxes"][keep] / scale).float().cpu(),
                "labels": detections["labels"][keep].cpu(),
                "scores": detections["scores"][keep].float().cpu(),
            }
            truth = {"boxes": target["boxes"].float().cpu(), "labels": target["labels"].cpu()}
            self.samples.append((image.detach().float().cpu(), truth, predicted))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test")

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, role: str) -> None:
        logger = _wandb_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        import wandb

        data: dict[str, Any] = {}
        per_class = getattr(pl_module, "per_class_ap", {}).get(role)
        if per_class:
            rows = [[name, None if ap != ap else ap] for name, ap in per_class.items()]
            data[f"{role}/per_class_ap"] = wandb.Table(columns=["class", "AP"], data=rows)
        if role == "val" and self.samples:
            data[f"{role}/examples"] = [self._image(pl_module, *s) for s in self.samples]
        if data:
            # the step Lightning logs this evaluation's scalars at (as its LearningRateMonitor
            # does): a validation runs before the step counter it logs with moves on, so
            # ``global_step`` would put the images one step after their metrics
            logger.log_metrics(data, step=trainer.fit_loop.epoch_loop._batches_that_stepped)

    def _image(
        self,
        pl_module: pl.LightningModule,
        image: Tensor,
        truth: dict[str, Tensor],
        predicted: dict[str, Tensor],
    ) -> Any:
        import wandb

        pixels = (image.contiguous().numpy() * self.std + self.mean) * 255
        pixels = np.clip(pixels, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        names = pl_module.class_names
        predictions = box_data(predicted["boxes"], predicted["labels"], names, predicted["scores"])
        ground_truth = box_data(truth["boxes"], truth["labels"], names)
        boxes = _image_boxes(names, predictions=predictions, ground_truth=ground_truth)
        return wandb.Image(pixels, boxes=boxes)


def wandb_image(
    image: np.ndarray, detections: dict[str, Any], threshold: float, class_names: Sequence[str]
) -> wandb.Image:
    """A W&B image with the detections (pixel boxes) scoring at least ``threshold``."""
    import wandb

    height, width = image.shape[:2]
    keep = detections["scores"] >= threshold
    boxes = detections["boxes"][keep] / torch.tensor([width, height, width, height])
    entries = box_data(boxes, detections["labels"][keep], class_names, detections["scores"][keep])
    return wandb.Image(image, boxes=_image_boxes(class_names, predictions=entries))


def log_files(
    settings: Mapping[str, Any], name: str, files: Sequence[Path], metrics: Mapping[str, float]
) -> None:
    """Log the finite ``metrics``, PNG ``files`` as images (``analysis/<file stem>``) and CSV ones
    as tables (``analysis/<file stem>_table``: a figure and its table share a stem) to a new W&B
    run (job type ``analyze``, tag ``analysis``) beside the files, with a run's ``logger.wandb``
    ``settings``."""
    prefix = "analysis"
    logger = WandbLogger(
        project=settings.get("project", "dssd"),
        name=settings.get("name") or name,
        group=settings.get("group"),
        tags=[*(settings.get("tags") or []), prefix],
        job_type="analyze",
        save_dir=str(files[0].parent),
        offline=settings.get("offline", True),
    )
    logger.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
    for path in files:
        if path.suffix == ".png":
            logger.log_image(f"{prefix}/{path.stem}", [str(path)])
        elif path.suffix == ".csv":
            with path.open(newline="") as file:
                rows = list(csv.reader(file))
            if len(rows) > 1:
                logger.log_table(f"{prefix}/{path.stem}_table", rows[0], rows[1:])
    logger.experiment.finish()


# Columns of load_wandb_project, before one column per summary metric.
WANDB_COLUMNS = ["run_id", "name", "group", "tags", "project", "config", "source"]


def wandb_offline_runs(run_dirs: RunDirs) -> pd.DataFrame:
    """The W&B offline runs in ``run_dirs``: label (as in :func:`dssd.results.runs.load_runs`),
    W&B run id and folder (what ``wandb sync`` uploads); a resumed run has several."""
    rows = []
    for label, run_dir in run_dirs_by_label(run_dirs).items():
        for folder in sorted(run_dir.glob("wandb/offline-run-*")):
            if folder.is_dir() and not folder.is_symlink():
                run_id = folder.name.rsplit("-", 1)[-1]
                rows.append({"run": label, "run_id": run_id, "folder": str(folder)})
    return pd.DataFrame(rows, columns=["run", "run_id", "folder"])


def _wandb_runs(project: str, group: str | None, entity: str | None) -> list[Any]:
    import wandb

    path = f"{entity}/{project}" if entity else project
    return list(wandb.Api().runs(path, filters={"group": group} if group else None))


def load_wandb_project(
    project: str, group: str | None = None, entity: str | None = None
) -> pd.DataFrame:
    """One line per online run of a W&B project (or of one ``group``): ``WANDB_COLUMNS`` (source:
    the run's URL), then each logged scalar's last value (W&B's summary). Needs ``wandb login``."""
    rows = []
    for run in _wandb_runs(project, group, entity):
        summary = {
            k: float(v)
            for k, v in run.summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("_")
        }
        info = [run.id, run.name, run.group, list(run.tags), run.project, dict(run.config)]
        rows.append({**dict(zip(WANDB_COLUMNS, [*info, run.url], strict=True)), **summary})
    return pd.DataFrame(rows, columns=None if rows else WANDB_COLUMNS)


def wandb_project_history(
    project: str,
    keys: Sequence[str] = ("val/map_50",),
    group: str | None = None,
    entity: str | None = None,
) -> pd.DataFrame:
    """The logged ``keys`` of a W&B project's online runs, with run_id, name and step (the
    trainer's global step); only the rows that log every one of them."""
    frames = []
    for run in _wandb_runs(project, group, entity):
        history = run.history(keys=[*keys, "trainer/global_step"], pandas=True)
        if history.empty:
            continue
        # Lightning's global step (logged as trainer/global_step), else W&B's own _step
        step = history["trainer/global_step" if "trainer/global_step" in history else "_step"]
        frame = pd.DataFrame({"run_id": run.id, "name": run.name, "step": step.astype(int)})
        frames.append(frame.join(history.reindex(columns=list(keys))))
    if not frames:
        return pd.DataFrame(columns=["run_id", "name", "step", *keys])
    return pd.concat(frames, ignore_index=True)
