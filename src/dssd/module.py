"""The LightningModule: trains a detector with the MultiBox loss and evaluates it with COCO mAP
(and, on VOC data, the VOC devkit's mAP)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torchmetrics import MeanMetric
from torchmetrics.detection import MeanAveragePrecision

from dssd.errors import UserError
from dssd.metrics import VOCMeanAP
from dssd.stages import freeze_modules

# the MultiBox loss's terms, logged as <role>/<name>
LOSSES = ("loss", "loss_loc", "loss_conf")


def coco_metric_names(max_detections: Sequence[int]) -> list[str]:
    """The scalar entries of MeanAveragePrecision.compute() logged each evaluation: the columns
    of the paper's COCO table (Table 6), AR at each detection cap and AR by size at the largest."""
    return [
        "map",
        "map_50",
        "map_75",
        "map_small",
        "map_medium",
        "map_large",
        *(f"mar_{cap}" for cap in max_detections),
        "mar_small",
        "mar_medium",
        "mar_large",
    ]


class GatheredMeanAveragePrecision(MeanAveragePrecision):
    """torchmetrics' COCO mAP, whose per-image states every process gathers in one collective,
    in rank order.

    torchmetrics gathers each image's tensors in a collective of their own and interleaves the
    processes' images: processes holding different numbers of images (the unequal shares of
    :class:`dssd.data.datamodule.EvaluationShard`) would call different numbers of collectives
    and hang or crash, and the order would not be the dataset's.
    """

    def _sync_dist(self, dist_sync_fn: Any = None, process_group: Any = None) -> None:
        group = process_group or self.process_group
        states = {name: [t.cpu() for t in getattr(self, name)] for name in self._reductions}
        gathered: list[Any] = [None] * torch.distributed.get_world_size(group)
        torch.distributed.all_gather_object(gathered, states, group=group)
        for name in self._reductions:
            setattr(self, name, [t.to(self.device) for part in gathered for t in part[name]])


def coco_map_metric(
    max_detections: Sequence[int] = (1, 10, 200), class_metrics: bool = False
) -> GatheredMeanAveragePrecision:
    """COCO-style mAP, gathered across processes in rank order; AP and AR by size are taken at
    the largest of the three detection caps.

    SSD keeps 200 detections per image, hence the default caps; ``(1, 10, 100)`` is the official
    COCO protocol. The faster_coco_eval backend is used because pycocotools' backend reports -1
    whenever the largest cap is not 100. ``class_metrics`` adds the AP of each class.

    The IoU and recall thresholds are pycocotools' own float64 values: torchmetrics' defaults
    come from a float32 ``linspace`` (0.55 becomes 0.5500000119...), which moves a recall of
    exactly 3/10 or an IoU of exactly 0.55 to the other side and the AP away from the official
    evaluation's.
    """
    return GatheredMeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
        rec_thresholds=np.linspace(0.0, 1.0, 101).tolist(),
        max_detection_thresholds=list(max_detections),
        backend="faster_coco_eval",
        class_metrics=class_metrics,
    )


def evaluation_metrics(
    num_classes: int, use_07_metric: bool | None, max_detections: Sequence[int]
) -> nn.ModuleDict:
    """COCO mAP for any data; with ``use_07_metric`` set (VOC data), the VOC devkit's mAP too.

    The per-class AP comes from the VOC metric on VOC data and from the COCO one otherwise.
    """
    coco = coco_map_metric(max_detections, class_metrics=use_07_metric is None)
    metrics: dict[str, nn.Module] = {"coco": coco}
    if use_07_metric is not None:
        metrics["voc"] = VOCMeanAP(num_classes, use_07_metric=use_07_metric)
    return nn.ModuleDict(metrics)


def pixel_targets(targets: Iterable[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Targets in the metrics' format: boxes in original-image pixels, difficult also as crowd.

    Marking difficult objects ``iscrowd`` makes the COCO evaluator ignore detections on them
    rather than count them as false positives or misses, close to the VOC rule (which the VOC
    metric applies exactly, from ``difficult``).
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
                "difficult": t["difficult"],
            }
        )
    return out


class DetectionEvaluation(pl.LightningModule):
    """The evaluation every detector here shares: COCO mAP on validation and test, and on VOC data
    the VOC devkit's mAP and the AP of each class, logged at the end of each evaluation.

    Subclasses produce the detections and hand them to :meth:`update_metrics`.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        use_07_metric: bool | None = None,
        coco_max_detections: Sequence[int] = (1, 10, 200),
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.coco_max_detections = tuple(coco_max_detections)
        self.evaluators = nn.ModuleDict(
            {
                role: evaluation_metrics(len(self.class_names), use_07_metric, coco_max_detections)
                for role in ("val", "test")
            }
        )
        # The last evaluation's AP of each class, by role then class name (NaN: no ground truth).
        self.per_class_ap: dict[str, dict[str, float]] = {}

    def update_metrics(
        self, role: str, detections: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]
    ) -> None:
        """Add a batch's detections (original-image pixels) and its ground truth (the data's
        targets, normalised boxes) to the ``role`` metrics."""
        ground_truth = pixel_targets(targets)
        for metric in self.evaluators[role].values():
            metric.update(detections, ground_truth)

    def on_validation_epoch_start(self) -> None:
        self._reset_metrics("val")

    def on_test_epoch_start(self) -> None:
        self._reset_metrics("test")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def _reset_metrics(self, role: str) -> None:
        """Start an evaluation from empty metric states, which are this process's own: the states
        built in ``__init__`` are shared with other processes when ``ddp_spawn`` hands them the
        module through shared memory, and summing into them would count every process's data
        in each."""
        for metric in self.evaluators[role].values():
            metric.reset()

    def _log_metrics(self, role: str) -> None:
        """Log the metrics of the epoch (already gathered across processes) and reset them."""
        metrics = self.evaluators[role]
        coco = metrics["coco"].compute()
        for name in coco_metric_names(self.coco_max_detections):
            self.log(f"{role}/{name}", coco[name], prog_bar=name == "map_50", sync_dist=False)
        if "voc" in metrics:
            voc = metrics["voc"].compute()
            self.log(f"{role}/voc_map", voc["map"], prog_bar=True, sync_dist=False)
            labels, aps = voc["classes"], voc["ap_per_class"]
        else:  # COCO reports -1 for a class without ground truth
            labels, aps = (
                coco["classes"],
                coco["map_per_class"].where(coco["map_per_class"] >= 0, torch.nan),
            )
        ap_by_label = dict(zip(labels.reshape(-1).tolist(), aps.reshape(-1).tolist(), strict=True))
        self.per_class_ap[role] = {
            name: ap_by_label.get(label, float("nan"))
            for label, name in enumerate(self.class_names, start=1)
        }
        for name, ap in self.per_class_ap[role].items():
            if ap == ap:  # NaN: no ground truth of the class
                self.log(f"{role}/ap/{name}", ap, sync_dist=False)
        for metric in metrics.values():
            metric.reset()


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
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

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


class ExportedModelEvaluation(DetectionEvaluation):
    """Tests an exported detector file (:class:`dssd.export.ExportedModel`, run by onnxruntime or
    TorchScript) with the same metrics, and the same result writers, as a checkpoint.

    Args:
        model: the exported model: ``model.detect(images, orig_sizes) -> list[dict]`` and
            ``model.class_names``.
        class_names: the names of labels 1..C of the evaluated data.
        use_07_metric: the VOC devkit's AP rule of the evaluated data (as in DetectionModule).
        coco_max_detections: the three detection caps of the COCO metrics.
    """

    def __init__(
        self,
        model: Any,
        class_names: Sequence[str],
        use_07_metric: bool | None = None,
        coco_max_detections: Sequence[int] = (1, 10, 200),
    ) -> None:
        if len(class_names) != len(model.class_names):
            raise UserError(
                f"the data has {len(class_names)} classes, the exported model "
                f"{len(model.class_names)}: evaluate it on data with the classes it was built for"
            )
        super().__init__(class_names, use_07_metric, coco_max_detections)
        self.model = model

    def test_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> list[dict]:
        images, targets = batch
        orig_sizes = torch.stack([t["orig_size"] for t in targets])
        detections = [
            {key: value.to(images.device) for key, value in found.items()}
            for found in self.model.detect(images, orig_sizes)
        ]
        self.update_metrics("test", detections, targets)
        return detections
