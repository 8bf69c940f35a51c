"""PASCAL VOC mean average precision as a torchmetrics ``Metric``, DDP-friendly: ``update`` judges
each image at once, into states that torchmetrics' default gather (concatenate, sum) handles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from dssd.evaluation.matched_run import MatchedRun
from dssd.evaluation.matching import check_image, match_image

__all__ = ["VOCMeanAP", "valid_mean"]


def valid_mean(ap: Tensor) -> Tensor:
    """The mean of ``ap`` over its non-NaN entries (the classes with positives), NaN without one."""
    valid = ~torch.isnan(ap)
    return ap[valid].mean() if valid.any() else torch.tensor(float("nan"), dtype=ap.dtype)


class VOCMeanAP(Metric):
    """PASCAL VOC mAP by the devkit's rules (:func:`dssd.evaluation.matching.match_image`), for
    labels ``1..num_classes``, IoU strictly above ``iou_threshold``; ``use_07_metric``: VOC2007's
    11-point AP (the papers' figures), else VOC2010+'s all-point AP.

    ``update(preds, targets)`` takes torchmetrics' ``MeanAveragePrecision`` lists of dicts (boxes
    xyxy in pixel edges, targets with an optional bool ``difficult``). ``compute()`` returns
    ``map``, ``ap_per_class`` [num_classes] (NaN without positives, which ``map`` leaves out) and
    ``classes`` (``1..num_classes``; both 0-d when ``num_classes=1``). Ties in score keep the
    order of arrival; matching runs on the CPU in float64, like the devkit.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= float(iou_threshold) < 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold!r}")
        self.num_classes = num_classes
        self.iou_threshold = float(iou_threshold)
        self.use_07_metric = bool(use_07_metric)

        # One entry per detection; the flags are uint8 so that every backend's all_gather takes them
        for name in ("scores", "labels", "tp", "ignored"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
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
        self.scores.append(scores.to(self.device))
        self.labels.append(labels.to(self.device))
        self.tp.append(tp.to(device=self.device, dtype=torch.uint8))
        self.ignored.append(ignored.to(device=self.device, dtype=torch.uint8))
        self.npos += npos.to(self.device)

    def compute(self) -> dict[str, Tensor]:
        """Per-class AP and their mean over the classes with positives (see the class doc)."""
        states = (self.scores, self.labels, self.tp, self.ignored)
        # pooled() casts the dtypes: a rank without data gathers float32 empty tensors
        run = MatchedRun.pooled(
            *(dim_zero_cat(s) if isinstance(s, Tensor) or s else torch.zeros(0) for s in states),
            self.npos,
        )
        ap = torch.from_numpy(run.class_aps(use_07_metric=self.use_07_metric)[0])
        device = self.npos.device
        return {
            "map": valid_mean(ap).to(device=device, dtype=torch.float32),
            "ap_per_class": ap.to(device=device, dtype=torch.float32),
            "classes": torch.arange(1, self.num_classes + 1, dtype=torch.long, device=device),
        }
