"""PASCAL VOC mean average precision as a torchmetrics ``Metric``.

The devkit's rules (strict IoU threshold, difficult objects, duplicates) are those of
:func:`dssd.evaluation.matching.match_image`; the AP is the 11-point interpolated one of VOC2007
test (the papers' figures) or the all-point one of VOC2010+, including the devkit's 11 recall
thresholds ``numpy.arange(0.0, 1.1, 0.1)`` (:func:`dssd.evaluation.matched_run.average_precision`).

A detection's fate depends only on the higher-scored detections of the same class in the same
image, so ``update`` decides TP/FP/ignored per image right away and the metric keeps flat
per-detection states (score, label, TP flag, ignored flag) plus a per-class count of positives:
torchmetrics' default cross-process gather (concatenate, sum) is then all DDP needs, and
``compute`` scores them as one :class:`dssd.evaluation.matched_run.MatchedRun`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from dssd.evaluation.matched_run import MatchedRun
from dssd.evaluation.matching import check_image, match_image

__all__ = ["VOCMeanAP"]


class VOCMeanAP(Metric):
    """PASCAL VOC mAP with the official devkit's matching rules, DDP-friendly.

    Args:
        num_classes: number of foreground classes; labels are ``1..num_classes`` (0 is background
            and must not appear in predictions or targets).
        iou_threshold: a detection can match a ground truth only when their IoU is strictly
            greater than this (the devkit's ``ovmax > ovthresh``).
        use_07_metric: VOC2007 11-point interpolated AP (default, the papers' VOC07 test figures);
            ``False`` gives the VOC2010+ all-point AP.
        class_names: optional names of classes ``1..num_classes`` (kept as ``self.class_names``
            for reports; not part of the computed result).

    ``update(preds, targets)`` takes the same lists of dicts as
    ``torchmetrics.detection.MeanAveragePrecision``: per image, ``preds`` has ``boxes`` [N, 4]
    xyxy in continuous pixel edges (what the readers and the post-processor give), ``scores``
    [N] and ``labels`` [N]; ``targets`` has ``boxes`` [M, 4], ``labels`` [M] and optionally
    ``difficult`` (bool [M], all False when absent).

    Per class, detections of all images are ranked by descending score (ties keep the order of
    arrival) and judged by :func:`match_image`. The number of positives is the number of
    non-difficult ground truths of the class.

    ``compute()`` returns a dict of tensors:

    - ``map``: scalar, mean of ``ap_per_class`` over the classes with at least one non-difficult
      ground truth (NaN if there is none);
    - ``ap_per_class``: [num_classes], the AP of classes ``1..num_classes``; **NaN** for a class
      without any non-difficult ground truth (AP is undefined: there is no recall), which is thus
      left out of ``map``. A class with positives but no detections has AP 0;
    - ``classes``: [num_classes] int64, ``1..num_classes``, the label of each AP entry.

    (torchmetrics squeezes one-element results, so with ``num_classes=1`` the last two are 0-d.)

    The matching runs on the CPU in float64 (exact at the threshold, like the devkit's numpy);
    states live on the metric's device. Scores are kept as float32.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    scores: list[Tensor] | Tensor
    labels: list[Tensor] | Tensor
    tp: list[Tensor] | Tensor
    ignored: list[Tensor] | Tensor
    npos: Tensor

    def __init__(
        self,
        num_classes: int,
        iou_threshold: float = 0.5,
        use_07_metric: bool = True,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= float(iou_threshold) < 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}")
        if class_names is not None:
            class_names = tuple(class_names)
            if len(class_names) != num_classes:
                raise ValueError(
                    f"class_names has {len(class_names)} names but num_classes is {num_classes}"
                )
        self.num_classes = num_classes
        self.iou_threshold = float(iou_threshold)
        self.use_07_metric = bool(use_07_metric)
        self.class_names: tuple[str, ...] | None = class_names

        # One entry per detection, in per-image descending-score order. The flags are uint8 so
        # that every backend's all_gather takes them.
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("tp", default=[], dist_reduce_fx="cat")
        self.add_state("ignored", default=[], dist_reduce_fx="cat")
        self.add_state(
            "npos", default=torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(
        self, preds: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Tensor]]
    ) -> None:
        """Match one batch of images' detections to their ground truths (see the class doc)."""
        if not isinstance(preds, Sequence) or not isinstance(targets, Sequence):
            raise ValueError(
                "preds and targets must be lists of dicts (one per image), got "
                f"{type(preds).__name__} and {type(targets).__name__}"
            )
        if len(preds) != len(targets):
            raise ValueError(
                f"preds and targets must have one entry per image: got {len(preds)} preds and "
                f"{len(targets)} targets"
            )
        per_image = []  # (scores, labels, tp, ignored) of each image
        npos = torch.zeros(self.num_classes, dtype=torch.long)
        for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            p_boxes, p_scores, p_labels, t_boxes, t_labels, t_difficult = check_image(
                i, pred, target, self.num_classes
            )
            npos += torch.bincount(t_labels[~t_difficult] - 1, minlength=self.num_classes)
            tp, ignored = match_image(
                p_boxes, p_labels, t_boxes, t_labels, t_difficult, self.iou_threshold
            )
            per_image.append((p_scores, p_labels, tp, ignored))
        if not per_image:
            return
        scores, labels, tp, ignored = (torch.cat(parts) for parts in zip(*per_image, strict=True))
        device = self.device
        self.scores.append(scores.to(device))
        self.labels.append(labels.to(device))
        self.tp.append(tp.to(device=device, dtype=torch.uint8))
        self.ignored.append(ignored.to(device=device, dtype=torch.uint8))
        self.npos += npos.to(device)

    def compute(self) -> dict[str, Tensor]:
        """Per-class AP and their mean over the classes with positives (see the class doc)."""
        if isinstance(self.scores, list) and not self.scores:
            scores = torch.zeros(0)
            labels = torch.zeros(0, dtype=torch.long)
            tp = ignored = torch.zeros(0, dtype=torch.bool)
        else:
            scores = dim_zero_cat(self.scores).cpu()
            # .long()/.bool(): a rank without data contributes a float32 empty tensor to the gather.
            labels = dim_zero_cat(self.labels).cpu().long()
            tp = dim_zero_cat(self.tp).cpu().bool()
            ignored = dim_zero_cat(self.ignored).cpu().bool()
        run = MatchedRun.pooled(scores, labels, tp, ignored, self.npos)
        ap = torch.from_numpy(run.class_aps(use_07_metric=self.use_07_metric)[0])
        valid = ~torch.isnan(ap)
        mean = ap[valid].mean() if valid.any() else torch.tensor(float("nan"), dtype=torch.float64)
        device = self.npos.device
        return {
            "map": mean.to(device=device, dtype=torch.float32),
            "ap_per_class": ap.to(device=device, dtype=torch.float32),
            "classes": torch.arange(1, self.num_classes + 1, dtype=torch.long, device=device),
        }
