"""What a run shows on Weights & Biases besides the scalars: boxes on images, per-class AP."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from torch import Tensor

from dssd.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def _wandb_logger(trainer: pl.Trainer) -> WandbLogger | None:
    return next((lg for lg in trainer.loggers if isinstance(lg, WandbLogger)), None)


def box_data(
    boxes: Tensor, labels: Tensor, class_names: Sequence[str], scores: Tensor | None = None
) -> list[dict[str, Any]]:
    """W&B box entries from normalised xyxy boxes (fractions of the image, W&B's default)."""
    entries = []
    for i, ((x0, y0, x1, y1), label) in enumerate(
        zip(boxes.tolist(), labels.tolist(), strict=True)
    ):
        caption = class_names[label - 1]
        entry: dict[str, Any] = {
            "position": {"minX": x0, "minY": y0, "maxX": x1, "maxY": y1},
            "class_id": int(label),
        }
        if scores is not None:
            score = float(scores[i])
            caption = f"{caption} {score:.2f}"
            entry["scores"] = {"score": score}
        entry["box_caption"] = caption
        entries.append(entry)
    return entries


class WandbDetectionReport(pl.Callback):
    """Logs to W&B, after each validation, ``num_images`` validation images with their predicted
    (score >= ``min_score``) and ground-truth boxes, and the per-class AP as a table; after a
    test, the test's per-class AP table. Does nothing unless a ``WandbLogger`` is in use.

    ``mean`` and ``std`` are the normalisation the images were given (the data modules' default,
    ImageNet's), undone to draw them.
    """

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
        if wanted <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if _wandb_logger(trainer) is None:
            return
        images, targets = batch
        for image, target, detections in list(zip(images, targets, outputs, strict=True))[:wanted]:
            height, width = target["orig_size"].tolist()
            scale = detections["boxes"].new_tensor([width, height, width, height])
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
            self._log(trainer, pl_module, "val", with_images=True)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, "test", with_images=False)

    def _log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, role: str, with_images: bool
    ) -> None:
        logger = _wandb_logger(trainer)
        if logger is None or not trainer.is_global_zero:
            return
        import wandb

        data: dict[str, Any] = {}
        per_class = getattr(pl_module, "per_class_ap", {}).get(role)
        if per_class:
            rows = [[name, None if ap != ap else ap] for name, ap in per_class.items()]
            data[f"{role}/per_class_ap"] = wandb.Table(columns=["class", "AP"], data=rows)
        if with_images and self.samples:
            data[f"{role}/examples"] = [self._image(pl_module, *s) for s in self.samples]
        if data:
            logger.log_metrics(data, step=trainer.global_step)

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
        class_labels = {i: name for i, name in enumerate(names, start=1)}
        return wandb.Image(
            pixels,
            boxes={
                "predictions": {
                    "box_data": box_data(
                        predicted["boxes"], predicted["labels"], names, predicted["scores"]
                    ),
                    "class_labels": class_labels,
                },
                "ground_truth": {
                    "box_data": box_data(truth["boxes"], truth["labels"], names),
                    "class_labels": class_labels,
                },
            },
        )
