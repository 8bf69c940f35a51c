"""Scoring detections inside Lightning, shared by the training module and an exported file's
evaluation: COCO mAP, and on VOC data the devkit's mAP and per-class AP."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from dssd.errors import UserError, quiet_loggers
from dssd.evaluation.metrics import VOCMeanAP


def coco_metric_names(max_detections: Sequence[int]) -> list[str]:
    """The COCO scalars logged each evaluation: Table 6's columns, AR per cap and AR by size."""
    sizes = ("small", "medium", "large")
    maps = ["map", "map_50", "map_75", *(f"map_{size}" for size in sizes)]
    return [*maps, *(f"mar_{cap}" for cap in max_detections), *(f"mar_{size}" for size in sizes)]


class GatheredMeanAveragePrecision(MeanAveragePrecision):
    """torchmetrics' COCO mAP, gathering the states in one collective, in rank order: its own
    gather (one per image) hangs on unequal shares (``EvaluationShard``) and reorders images."""

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
    """COCO-style mAP gathered in rank order, by size at the largest detection cap (SSD keeps 200;
    pycocotools' backend reports -1 unless it is COCO's 100), with pycocotools' float64 IoU and
    recall thresholds (torchmetrics' float32 ones, 0.5500000119..., move an IoU of 0.55)."""
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
    """COCO mAP; with ``use_07_metric`` set (VOC data), the VOC devkit's mAP too, which then
    gives the per-class AP instead of the COCO one."""
    metrics: dict[str, nn.Module] = {"coco": coco_map_metric(max_detections, use_07_metric is None)}
    if use_07_metric is not None:
        metrics["voc"] = VOCMeanAP(num_classes, use_07_metric=use_07_metric)
    return nn.ModuleDict(metrics)


def pixel_targets(targets: Iterable[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Targets in the metrics' format: boxes in original-image pixels, difficult objects also
    ``iscrowd``, so that the COCO evaluator ignores detections on them, close to the VOC rule;
    an annotation's own "area" sizes its object for the COCO metric (0: its box's area does)."""
    return [
        {
            "boxes": t["boxes"] * t["orig_size"].flip(-1).repeat(2).to(t["boxes"]),  # (w, h, w, h)
            "labels": t["labels"],
            "iscrowd": t["difficult"].long(),
            "difficult": t["difficult"],
        }
        | ({"area": t["area"]} if "area" in t else {})
        for t in targets
    ]


class DetectionEvaluation(pl.LightningModule):
    """The evaluation every detector shares (:func:`evaluation_metrics` on validation and test);
    subclasses hand their detections to :meth:`update_metrics`."""

    def __init__(
        self,
        class_names: Sequence[str],
        use_07_metric: bool | None = None,
        coco_max_detections: Sequence[int] = (1, 10, 200),
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.coco_max_detections = tuple(coco_max_detections)
        spec = (len(self.class_names), use_07_metric, coco_max_detections)
        self.evaluators = nn.ModuleDict(
            {role: evaluation_metrics(*spec) for role in ("val", "test")}
        )
        # The last evaluation's AP of each class, by role then class name (NaN: no ground truth).
        self.per_class_ap: dict[str, dict[str, float]] = {}
        # the test annotation file when it holds no annotations (COCO's test-dev): nothing to
        # score or log
        self.unscored_test_file: str | None = None

    def update_metrics(
        self, role: str, detections: list[dict[str, Tensor]], targets: list[dict[str, Tensor]]
    ) -> None:
        """Add a batch's detections (pixels) and targets (normalised) to the ``role`` metrics."""
        if role == "test" and self.unscored_test_file:
            return
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
        """Start from empty states of this process's own: ``ddp_spawn`` shares the ones built in
        ``__init__`` between processes, which would then count each other's data."""
        for metric in self.evaluators[role].values():
            metric.reset()

    def _log_metrics(self, role: str) -> None:
        """Log the metrics of the epoch (already gathered across processes) and reset them."""
        metrics = self.evaluators[role]
        if role == "test" and self.unscored_test_file:
            return
        with quiet_loggers("faster_coco_eval", level=logging.WARNING):  # its 20-line summary
            coco = metrics["coco"].compute()
        for name in coco_metric_names(self.coco_max_detections):
            self.log(f"{role}/{name}", coco[name], prog_bar=name == "map_50", sync_dist=False)
        if "voc" in metrics:
            voc = metrics["voc"].compute()
            self.log(f"{role}/voc_map", voc["map"], prog_bar=True, sync_dist=False)
            labels, aps = voc["classes"], voc["ap_per_class"]
        else:  # COCO reports -1 for a class without ground truth
            labels, aps = coco["classes"], coco["map_per_class"]
            aps = aps.where(aps >= 0, torch.nan)
        ap_by_label = dict(zip(labels.reshape(-1).tolist(), aps.reshape(-1).tolist(), strict=True))
        self.per_class_ap[role] = {
            name: ap_by_label.get(label, float("nan"))
            for label, name in enumerate(self.class_names, start=1)
        }
        for name, ap in self.per_class_ap[role].items():
            if ap == ap:  # NaN: no ground truth of the class
                self.log(f"{role}/ap/{name}", ap, sync_dist=False)
        # free the stored detections; not ``_reset_metrics``: a subclass's logged torchmetrics
        # are computed by Lightning after this hook (in the sanity check) and reset by it
        for metric in metrics.values():
            metric.reset()


class ExportedModelEvaluation(DetectionEvaluation):
    """Tests an exported file (:class:`dssd.deployment.export.ExportedModel`: ``detect(images,
    orig_sizes)``, ``class_names``) with the same metrics and result writers as a checkpoint."""

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
        detections = [
            {key: value.to(images.device) for key, value in found.items()}
            for found in self.model.detect(images, torch.stack([t["orig_size"] for t in targets]))
        ]
        self.update_metrics("test", detections, targets)
        return detections
