"""The LightningModule that trains a detector with the MultiBox loss; its evaluation is
:class:`dssd.evaluation.module.DetectionEvaluation`'s."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric

from dssd.errors import UserError
from dssd.evaluation.module import DetectionEvaluation
from dssd.training.stages import freeze_modules

# the MultiBox loss's terms, logged as <role>/<name>
LOSSES = ("loss", "loss_loc", "loss_conf")


class DetectionModule(DetectionEvaluation):
    """Trains ``net`` (an SSD/DSSD network) and reports mAP on validation and test.

    Every evaluation logs the COCO metrics (``val/map``, ``val/map_50``, ...); on VOC data also
    the VOC devkit's mAP (``val/voc_map``, 11-point or all-point as ``use_07_metric`` says), and
    the AP of each class (``val/ap/<class>``, also kept in ``per_class_ap``).

    Args:
        net: the detector; ``net(images) -> (loc, conf)``, ``net.priors`` and ``net.num_classes``.
        loss: ``loss(loc, conf, priors, targets) -> dict`` with at least ``"loss"``.
        postprocess: ``postprocess(loc, conf, priors, orig_sizes) -> list[dict]`` detections.
        optimizer: a partial optimizer taking the parameters (from Hydra's ``_partial_``).
        class_names: the names of labels 1..C of the evaluated data, one per class of ``net``.
        use_07_metric: the VOC devkit's AP rule of the evaluated data: 11-point (VOC2007 test),
            all-point (False, VOC2010+), or None for data without the VOC metric (COCO).
        scheduler: a partial LR scheduler taking the optimizer, stepped every iteration.
        channels_last: run the network in channels-last memory format (faster convolutions on
            recent CPUs with bf16 autocast and on tensor-core GPUs).
        freeze: modules of ``net`` kept fixed (``backbone``, ``extras``: DSSD's stage 1), their
            batch norms in eval mode.
        freeze_batchnorm: keep every batch norm of ``net`` fixed (DSSD's stage 2).
        coco_max_detections: the three detection caps of the COCO metrics (AR@1/10/200 by
            default; ``[1, 10, 100]`` with ``postprocess.max_detections=100`` is COCO's protocol).
        run_config: the resolved run configuration, saved as the only hyper-parameter, so that a
            checkpoint alone rebuilds the exact network (``src/eval.py``).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        postprocess: nn.Module,
        optimizer: Callable[..., Optimizer],
        class_names: Sequence[str],
        use_07_metric: bool | None = None,
        scheduler: Callable[[Optimizer], LRScheduler] | None = None,
        channels_last: bool = False,
        freeze: Sequence[str] = (),
        freeze_batchnorm: bool = False,
        coco_max_detections: Sequence[int] = (1, 10, 200),
        run_config: dict[str, Any] | None = None,
    ) -> None:
        if len(class_names) != net.num_classes:
            raise UserError(
                f"the data has {len(class_names)} classes, the network {net.num_classes}: "
                "evaluate a network on data with the classes it was built for"
            )
        # Only the run configuration, a dict of plain values, is a hyper-parameter: checkpoints
        # then hold no pickled callables and load with ``weights_only=True``. The loggers get it
        # from the training task.
        super().__init__(class_names, use_07_metric, coco_max_detections)
        self.save_hyperparameters("run_config", logger=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format)
        # Names, not modules, of the batch norms that stay in eval mode: sync BN (DDP) replaces
        # the modules themselves.
        names = {id(m): name for name, m in self.net.named_modules()}
        frozen = freeze_modules(self.net, freeze, freeze_batchnorm)
        self.frozen_batchnorms = [names[id(m)] for m in frozen]
        self.criterion = loss
        self.loss_means = nn.ModuleDict(
            {
                role: nn.ModuleDict({name: MeanMetric() for name in LOSSES})
                for role in ("val", "test")
            }
        )
        self.postprocess = postprocess
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.net(images)

    def train(self, mode: bool = True) -> DetectionModule:
        """Switch modes, keeping the frozen batch norms on their running statistics."""
        super().train(mode)
        for name in self.frozen_batchnorms:
            self.net.get_submodule(name).eval()
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

    def validation_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> list[dict]:
        return self._evaluation_step("val", batch)

    def test_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> list[dict]:
        return self._evaluation_step("test", batch)

    def predict_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> list[dict]:
        images, targets = batch
        return self.predict(images, torch.stack([t["orig_size"] for t in targets]))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _evaluation_step(self, role: str, batch: tuple[Tensor, list[dict]]) -> list[dict]:
        """Log the losses, update the metrics; return the detections (for callbacks)."""
        images, targets = batch
        loc, conf = self.net(images)
        losses = self.criterion(loc, conf, self.net.priors, targets)
        self._log_losses(role, losses, batch_size=images.shape[0])
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        detections = self.postprocess(loc, conf, self.net.priors, orig_sizes)
        self.update_metrics(role, detections, targets)
        return detections

    def _reset_metrics(self, role: str) -> None:
        super()._reset_metrics(role)
        for metric in self.loss_means[role].values():
            metric.reset()

    def _log_losses(self, role: str, losses: dict[str, Tensor], batch_size: int) -> None:
        """Training: this step's losses (this process's own, to spare an all-reduce per step).
        Evaluation: their means over the images of the epoch, as torchmetrics means, which
        gather sums and counts from every process exactly (Lightning's own ``sync_dist`` mean
        divides by a count truncated to an integer, wrong when processes hold unequal shares)."""
        for name in LOSSES:
            value = losses[name]
            if role != "train":
                value = self.loss_means[role][name]
                value.update(losses[name].detach().float(), weight=batch_size)
            self.log(
                f"{role}/{name}",
                value,
                prog_bar=name == "loss",
                on_step=role == "train",
                on_epoch=role != "train",
                batch_size=batch_size,
            )
