"""The LightningModule: trains a detector with the MultiBox loss and evaluates it with COCO mAP."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics.detection import MeanAveragePrecision

from dssd.stages import freeze_modules

# The scalar entries of MeanAveragePrecision.compute() that are logged each evaluation.
LOGGED_METRICS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_200",
)


def coco_map_metric() -> MeanAveragePrecision:
    """COCO-style mAP with SSD's 200-detection cap.

    The faster_coco_eval backend is used because pycocotools' backend reports -1 whenever the
    largest detection cap is not 100.
    """
    return MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        max_detection_thresholds=[1, 10, 200],
        backend="faster_coco_eval",
    )


def pixel_targets(targets: Iterable[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Targets in the metric's format: boxes in original-image pixels, difficult as crowd.

    Marking difficult objects ``iscrowd`` makes the COCO evaluator ignore detections on them
    rather than count them as false positives or misses, close to the VOC rule.
    """
    out = []
    for t in targets:
        height, width = t["orig_size"].tolist()
        scale = t["boxes"].new_tensor([width, height, width, height])
        out.append(
            {
                "boxes": t["boxes"] * scale,
                "labels": t["labels"],
                "iscrowd": t["difficult"].long(),
            }
        )
    return out


class DetectionModule(pl.LightningModule):
    """Trains ``net`` (an SSD/DSSD network) and reports COCO mAP on validation and test.

    Args:
        net: the detector; ``net(images) -> (loc, conf)`` and ``net.priors``.
        loss: ``loss(loc, conf, priors, targets) -> dict`` with at least ``"loss"``.
        postprocess: ``postprocess(loc, conf, priors, orig_sizes) -> list[dict]`` detections.
        optimizer: a partial optimizer taking the parameters (from Hydra's ``_partial_``).
        scheduler: a partial LR scheduler taking the optimizer, stepped every iteration.
        channels_last: run the network in channels-last memory format (faster convolutions on
            recent CPUs with bf16 autocast and on tensor-core GPUs).
        freeze: modules of ``net`` kept fixed (``backbone``, ``extras``: DSSD's stage 1), their
            batch norms in eval mode.
        freeze_batchnorm: keep every batch norm of ``net`` fixed (DSSD's stage 2).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        postprocess: nn.Module,
        optimizer: Callable[..., Optimizer],
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        channels_last: bool = False,
        freeze: Sequence[str] = (),
        freeze_batchnorm: bool = False,
    ) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format)
        # A plain list, not registered as submodules: these batch norms stay in eval mode.
        self.frozen_batchnorms = freeze_modules(net, freeze, freeze_batchnorm)
        self.criterion = loss
        self.postprocess = postprocess
        # Kept as plain attributes, not hyper-parameters: checkpoints then hold no pickled
        # callables and load with ``weights_only=True``.
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.val_map = coco_map_metric()
        self.test_map = coco_map_metric()
        # The resolved run configuration, stored in checkpoints so that eval.py can rebuild
        # the exact network from a checkpoint alone.
        self.run_config: dict[str, Any] | None = None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(images)

    def train(self, mode: bool = True) -> DetectionModule:
        """Switch modes, keeping the frozen batch norms on their running statistics."""
        super().train(mode)
        for norm in self.frozen_batchnorms:
            norm.eval()
        return self

    @torch.no_grad()
    def predict(self, images: Tensor, orig_sizes: Tensor) -> list[dict[str, Tensor]]:
        """Detections for a batch: boxes in original-image pixels, scores, labels."""
        loc, conf = self.net(images)
        return self.postprocess(loc, conf, self.net.priors, orig_sizes)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, targets = batch
        return images.contiguous(memory_format=self.memory_format), targets

    def training_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> Tensor:
        images, targets = batch
        loc, conf = self.net(images)
        losses = self.criterion(loc, conf, self.net.priors, targets)
        self._log_losses("train", losses, batch_size=images.shape[0])
        return losses["loss"]

    def validation_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> None:
        self._evaluation_step("val", batch, self.val_map)

    def test_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> None:
        self._evaluation_step("test", batch, self.test_map)

    def predict_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> list[dict]:
        images, targets = batch
        return self.predict(images, torch.stack([t["orig_size"] for t in targets]))

    def on_validation_epoch_end(self) -> None:
        self._log_map("val", self.val_map)

    def on_test_epoch_end(self) -> None:
        self._log_map("test", self.test_map)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["dssd_config"] = self.run_config

    def _evaluation_step(
        self, stage: str, batch: tuple[Tensor, list[dict]], metric: MeanAveragePrecision
    ) -> None:
        images, targets = batch
        loc, conf = self.net(images)
        losses = self.criterion(loc, conf, self.net.priors, targets)
        self._log_losses(stage, losses, batch_size=images.shape[0])
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        metric.update(
            self.postprocess(loc, conf, self.net.priors, orig_sizes), pixel_targets(targets)
        )

    def _log_losses(self, stage: str, losses: dict[str, Tensor], batch_size: int) -> None:
        training = stage == "train"
        for name in ("loss", "loss_loc", "loss_conf"):
            self.log(
                f"{stage}/{name}",
                losses[name],
                prog_bar=name == "loss",
                on_step=training,
                on_epoch=not training,
                batch_size=batch_size,
                sync_dist=not training,
            )

    def _log_map(self, stage: str, metric: MeanAveragePrecision) -> None:
        results = metric.compute()
        metric.reset()
        for name in LOGGED_METRICS:
            self.log(f"{stage}/{name}", results[name], prog_bar=name == "map_50", sync_dist=False)
