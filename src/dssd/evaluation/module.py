"""Scoring detections inside Lightning: COCO mAP (and, on VOC data, the VOC devkit's mAP and the
AP of each class) on validation and test, shared by the training module and by an exported file's
evaluation, so that a file is scored by the same code as its checkpoint."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from dssd.errors import UserError
from dssd.evaluation.metrics import VOCMeanAP


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
    return [
        {
            "boxes": t["boxes"] * t["orig_size"].flip(-1).repeat(2).to(t["boxes"]),  # (w, h, w, h)
            "labels": t["labels"],
            "iscrowd": t["difficult"].long(),
            "difficult": t["difficult"],
        }
        for t in targets
    ]


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
        for metric in metrics.values():
            metric.reset()


class ExportedModelEvaluation(DetectionEvaluation):
    """Tests an exported detector file (:class:`dssd.deployment.export.ExportedModel`, run by
    onnxruntime or TorchScript) with the same metrics, and the same result writers, as a checkpoint.

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
