"""The LightningModule that trains a detector with the MultiBox loss (evaluation: its base,
:class:`dssd.evaluation.module.DetectionEvaluation`)."""

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


def channels_last_hazards(net: nn.Module) -> list[str]:
    """The convolutions of ``net`` that oneDNN's AVX-512 backward corrupts memory on in
    channels-last layout: 1x1, stride 2, fewer than 16 input channels (a ResNet of width 8's
    downsampling; measured with torch 2.14, in float32 and bf16 alike)."""
    return [
        name
        for name, m in net.named_modules()
        if isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride == (2, 2)
        and m.in_channels < 16
    ]


def check_channels_last_training(net: nn.Module) -> None:
    """A UserError naming the first of ``net``'s :func:`channels_last_hazards`, if any: training
    channels-last on a CPU would crash in native code, or silently corrupt memory."""
    if hazards := channels_last_hazards(net):
        raise UserError(
            f"channels-last training on a CPU would crash in {hazards[0]} (a 1x1 stride-2 "
            f"convolution of {net.get_submodule(hazards[0]).in_channels} input channels: "
            "oneDNN's AVX-512 backward corrupts memory below 16): set "
            "model.channels_last=false, or a backbone width of 16 or more"
        )


class DetectionModule(DetectionEvaluation):
    """Trains ``net`` (an SSD/DSSD network: ``net(images) -> (loc, conf)``) with ``loss`` and
    reports mAP on validation and test: COCO's, and on VOC data the devkit's (``voc_map``, 11-point
    if ``use_07_metric``) and per-class AP (``ap/<class>``, kept in ``per_class_ap``).

    ``optimizer`` and ``scheduler`` (stepped every iteration) are Hydra partials. ``freeze`` names
    modules of ``net`` kept fixed (DSSD's stage 1), ``freeze_batchnorm`` fixes every batch norm
    (stage 2). ``run_config``, the only hyper-parameter, lets a checkpoint rebuild the network.
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
        # only plain values as hyper-parameters: checkpoints load with ``weights_only=True``
        super().__init__(class_names, use_07_metric, coco_max_detections)
        self.save_hyperparameters("run_config", logger=False)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = net.to(memory_format=self.memory_format)
        # one image: Lightning's model summary counts each part's FLOPs with it
        self.example_input_array = torch.zeros(1, 3, net.image_size, net.image_size)
        # names, not modules, of the frozen batch norms: sync BN (DDP) replaces the modules
        self.frozen_batchnorms = freeze_modules(self.net, freeze, freeze_batchnorm)
        self.criterion = loss
        means = {role: nn.ModuleDict({n: MeanMetric() for n in LOSSES}) for role in ("val", "test")}
        self.loss_means = nn.ModuleDict(means)
        self.postprocess = postprocess
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The network's raw outputs, the images first put in the module's memory format."""
        return self.net(images.contiguous(memory_format=self.memory_format))

    def train(self, mode: bool = True) -> DetectionModule:
        """Switch modes, keeping the frozen batch norms on their running statistics."""
        super().train(mode)
        for name in self.frozen_batchnorms:
            self.net.get_submodule(name).eval()
        return self

    @torch.no_grad()
    def predict(
        self, images: Tensor, orig_sizes: Tensor, postprocess: nn.Module | None = None
    ) -> list[dict[str, Tensor]]:
        """Detections for a batch: boxes in original-image pixels, scores, labels; by
        ``postprocess`` instead of the module's own when given."""
        loc, conf = self(images)
        postprocess = self.postprocess if postprocess is None else postprocess
        return postprocess(loc, conf, self.net.priors, orig_sizes)

    def on_fit_start(self) -> None:
        if self.memory_format == torch.channels_last and self.device.type == "cpu":
            check_channels_last_training(self.net)

    def training_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> Tensor:
        return self._step("train", batch)

    def validation_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> list[dict]:
        return self._step("val", batch)

    def test_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> list[dict]:
        return self._step("test", batch)

    def predict_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> list[dict]:
        images, targets = batch
        return self.predict(images, torch.stack([t["orig_size"] for t in targets]))

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def _step(self, role: str, batch: tuple[Tensor, list[dict]]) -> Any:
        """Log the losses; return the loss (training) or the detections, the metrics updated."""
        images, targets = batch
        loc, conf = self(images)
        if role != "test" or not self.unscored_test_file:
            losses = self.criterion(loc, conf, self.net.priors, targets)
            self._log_losses(role, losses, batch_size=images.shape[0])
        if role == "train":
            return losses["loss"]
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        detections = self.postprocess(loc, conf, self.net.priors, orig_sizes)
        self.update_metrics(role, detections, targets)
        return detections

    def _reset_metrics(self, role: str) -> None:
        super()._reset_metrics(role)
        for metric in self.loss_means[role].values():
            metric.reset()

    def _log_losses(self, role: str, losses: dict[str, Tensor], batch_size: int) -> None:
        """Training: this process's step losses (no all-reduce per step). Evaluation: their epoch
        means as torchmetrics means, exact across processes (Lightning's ``sync_dist`` mean
        divides by a truncated count, wrong when processes hold unequal shares)."""
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
