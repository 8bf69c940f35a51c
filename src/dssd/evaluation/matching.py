"""The PASCAL VOC devkit's matching of one image's detections (py-faster-rcnn's ``voc_eval.py``)
and the checks of per-image dicts. Boxes are continuous pixel edges: a VOC box ``xmin..xmax`` is
``[xmin - 1, xmax]``, so the plain IoU, without ``+1``, is the devkit's."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

T = TypeVar("T", Tensor, np.ndarray)


def best_matches(
    boxes: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Each detection's first highest-IoU ground truth of its class (like ``np.argmax``) and that
    IoU, in float64 like the devkit's numpy; ``-inf`` (index 0) without an object of the class."""
    if gt_boxes.shape[0] == 0:
        n = boxes.shape[0]
        return torch.zeros(n, dtype=torch.long), torch.full((n,), -torch.inf, dtype=torch.float64)
    iou = box_iou(boxes.to(torch.float64), gt_boxes.to(torch.float64)).nan_to_num(0.0)
    iou = iou.masked_fill(labels[:, None] != gt_labels[None, :], float("-inf"))
    jmax = iou.argmax(dim=1)
    return jmax, iou.gather(1, jmax[:, None]).squeeze(1)


def match_image(
    boxes: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_difficult: Tensor,
    iou_threshold: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """The devkit's bool flags ``(tp, ignored)`` (neither: FP) of one image's detections, given by
    descending score. Each takes its best ground truth (:func:`best_matches`), taken or not; above
    the threshold (strictly, unlike COCO) a difficult one makes it ignored, and on another the
    first detection is the TP, later ones duplicates (FP)."""
    n = boxes.shape[0]
    if n == 0 or gt_boxes.shape[0] == 0:
        return torch.zeros(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)
    jmax, ovmax = best_matches(boxes, labels, gt_boxes, gt_labels)
    above = ovmax > iou_threshold
    ignored = above & gt_difficult[jmax]
    candidate = above & ~gt_difficult[jmax]
    position = torch.arange(n)
    first = torch.full((gt_boxes.shape[0],), n, dtype=torch.long)
    first = first.scatter_reduce(0, jmax[candidate], position[candidate], reduce="amin")
    tp = candidate & (first[jmax] == position)
    return tp, ignored


def _checked(value: Any, n: int | None, where: str) -> Tensor:
    """``value`` (a tensor, or a numpy array or list made one) checked as boxes [N, 4] (``n`` None)
    or as one entry for each of ``n`` boxes."""
    try:
        value = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{where}: expected an array, got {type(value).__name__}") from None
    if value.numel() == 0 and not n:
        return value.reshape(0, 4) if n is None else value.reshape(0)
    if n is None and (value.ndim != 2 or value.shape[1] != 4):
        raise ValueError(f"{where}: expected shape [N, 4] (xyxy), got {list(value.shape)}")
    if n is not None and (value.ndim != 1 or value.shape[0] != n):
        raise ValueError(f"{where}: expected shape [{n}] (one per box), got {list(value.shape)}")
    return value


def in_range(values: T, bounds: tuple[float, float]) -> T:
    """Whether each value (tensor or array) is in ``[low, high]``: COCO's size ranges include both
    ends (pycocotools), so an object whose area is exactly 32^2 is both small and medium."""
    return (values >= bounds[0]) & (values <= bounds[1])


def in_area_range(boxes: Tensor, area_range: tuple[float, float]) -> Tensor:
    """Whether each xyxy box's area (pixels) is in ``area_range`` (:func:`in_range`)."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return in_range(area, area_range)


def check_finite_scores(scores: Tensor, where: str) -> None:
    """A NaN score would be matched first (``torch.sort``) yet ranked last by the AP's order."""
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{where}: detection scores must be finite, got NaN or infinity")


def check_image(
    i: int, pred: Any, target: Any, num_classes: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Validate image ``i``'s dicts (:meth:`dssd.evaluation.metrics.VOCMeanAP.update`; tensors or
    numpy arrays); return its detections by descending score (stable) and its ground truths, on
    the CPU (boxes float64)."""
    required = (
        ("preds", pred, ("boxes", "scores", "labels")),
        ("targets", target, ("boxes", "labels")),
    )
    for name, d, keys in required:
        if not isinstance(d, Mapping):
            raise ValueError(f"{name}[{i}] must be a dict, got {type(d).__name__}")
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(f"{name}[{i}] lacks key(s) {missing} (has {sorted(d)})")
    p_boxes = _checked(pred["boxes"], None, f"preds[{i}]['boxes']")
    n = p_boxes.shape[0]
    p_scores = _checked(pred["scores"], n, f"preds[{i}]['scores']")
    p_labels = _checked(pred["labels"], n, f"preds[{i}]['labels']")
    t_boxes = _checked(target["boxes"], None, f"targets[{i}]['boxes']")
    m = t_boxes.shape[0]
    t_labels = _checked(target["labels"], m, f"targets[{i}]['labels']")
    if target.get("difficult") is None:
        t_difficult = torch.zeros(m, dtype=torch.bool)
    else:
        t_difficult = _checked(target["difficult"], m, f"targets[{i}]['difficult']")
    for name, labels in (("preds", p_labels), ("targets", t_labels)):
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{name}[{i}]['labels'] must be integers, got {labels.dtype}")
        if labels.numel() and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(
                f"{name}[{i}]['labels'] must lie in 1..{num_classes} (0 is background), "
                f"got values in {int(labels.min())}..{int(labels.max())}"
            )
    p_scores = p_scores.detach().to("cpu", torch.float32)
    check_finite_scores(p_scores, f"preds[{i}]['scores']")
    order = torch.sort(p_scores, descending=True, stable=True).indices
    return (
        p_boxes.detach().to("cpu", torch.float64)[order],
        p_scores[order],
        p_labels.detach().to("cpu", torch.long)[order],
        t_boxes.detach().to("cpu", torch.float64),
        t_labels.detach().to("cpu", torch.long),
        t_difficult.detach().to("cpu").bool(),
    )
