"""The PASCAL VOC devkit's matching of one image's detections to its ground truth, and the checks
of the per-image dicts every scorer here takes.

The VOC07 test figures of the SSD/DSSD papers come from the official devkit, whose rules differ from
COCO-style evaluation in ways that move AP by a point or more: a strict ``>`` IoU threshold,
"difficult" objects that are neither counted nor penalised, and a detection matched to its
highest-IoU ground truth even when that one is already taken (then it is a duplicate, a false
positive). :func:`match_image` reproduces ``voc_eval.py`` of py-faster-rcnn (the Python port of the
MATLAB ``VOCevaldet``); it is the suite's one matcher by that rule.

Boxes are in the project's one pixel convention (``dssd.data.voc``, "Box convention"): continuous
pixel edges, so a VOC box ``xmin..xmax`` (1-based, inclusive) is ``[xmin - 1, xmax]`` and its
width ``xmax - xmin + 1`` is already the devkit's. The IoU is therefore the plain continuous one,
with no ``+1``: it equals the devkit's IoU of the same boxes written in the devkit's coordinates.

A detection's fate depends only on the higher-scored detections of its class in its own image, so
a run is matched image by image, once (:class:`dssd.evaluation.matched_run.MatchedRun`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou


def best_matches(
    boxes: Tensor, labels: Tensor, gt_boxes: Tensor, gt_labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Each detection's highest-IoU ground truth of its class (the first one on ties, like
    ``np.argmax``) and that IoU, in float64 as the devkit's numpy so that IoUs at a threshold
    compare the same way; ``-inf`` where the image has no object of the class (index 0 then)."""
    if gt_boxes.shape[0] == 0:
        n = boxes.shape[0]
        return torch.zeros(n, dtype=torch.long), torch.full(
            (n,), float("-inf"), dtype=torch.float64
        )
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
    """The devkit's verdict on one image's detections, given in descending score order.

    Each detection takes its highest-IoU ground truth of the same class (the first one on ties,
    like ``np.argmax``), taken or difficult alike. Above the threshold (strictly): a difficult
    ground truth makes it ignored (neither TP nor FP); of the detections on a non-difficult one,
    the first (highest-scored) is the TP and the later ones are duplicates (FP). Below it: FP.
    Boxes are xyxy in continuous pixel edges (see the module doc). Returns the bool flags
    ``(tp, ignored)`` per detection; a detection that is neither is a false positive.
    """
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


def _as_boxes(value: Any, where: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{where}: expected a tensor, got {type(value).__name__}")
    if value.numel() == 0:
        return value.reshape(0, 4)
    if value.ndim != 2 or value.shape[1] != 4:
        raise ValueError(f"{where}: expected shape [N, 4] (xyxy), got {list(value.shape)}")
    return value


def _as_vector(value: Any, n: int, where: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{where}: expected a tensor, got {type(value).__name__}")
    if value.numel() == 0 and n == 0:
        return value.reshape(0)
    if value.ndim != 1 or value.shape[0] != n:
        raise ValueError(f"{where}: expected shape [{n}] (one per box), got {list(value.shape)}")
    return value


def in_area_range(boxes: Tensor, area_range: tuple[float, float]) -> Tensor:
    """Whether each xyxy box's area (pixels) is in ``[low, high)``: COCO's rule for AP by object
    size compares box areas with such ranges."""
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return (area >= area_range[0]) & (area < area_range[1])


def as_tensors(value: Any, keys: Sequence[str]) -> Any:
    """The dict with its ``keys`` entries (numpy arrays or tensors) as tensors, so that numpy
    input passes :func:`check_image`; anything else as is, for it to reject."""
    if not isinstance(value, Mapping):
        return value
    return {
        key: torch.as_tensor(item) if key in keys and item is not None else item
        for key, item in value.items()
    }


def check_image(
    i: int, pred: Any, target: Any, num_classes: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Validate image ``i``'s dicts (those of :meth:`dssd.evaluation.metrics.VOCMeanAP.update`,
    labels in ``1..num_classes``); return its detections sorted by descending score (stable) and
    its ground truths, on the CPU (boxes in float64)."""
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
    p_boxes = _as_boxes(pred["boxes"], f"preds[{i}]['boxes']")
    n = p_boxes.shape[0]
    p_scores = _as_vector(pred["scores"], n, f"preds[{i}]['scores']")
    p_labels = _as_vector(pred["labels"], n, f"preds[{i}]['labels']")
    t_boxes = _as_boxes(target["boxes"], f"targets[{i}]['boxes']")
    m = t_boxes.shape[0]
    t_labels = _as_vector(target["labels"], m, f"targets[{i}]['labels']")
    if target.get("difficult") is None:
        t_difficult = torch.zeros(m, dtype=torch.bool)
    else:
        t_difficult = _as_vector(target["difficult"], m, f"targets[{i}]['difficult']")
    for name, labels in (("preds", p_labels), ("targets", t_labels)):
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{name}[{i}]['labels'] must be integers, got {labels.dtype}")
        if labels.numel() and (labels.min() < 1 or labels.max() > num_classes):
            raise ValueError(
                f"{name}[{i}]['labels'] must lie in 1..{num_classes} (0 is background), "
                f"got values in {int(labels.min())}..{int(labels.max())}"
            )
    p_scores = p_scores.detach().to("cpu", torch.float32)
    order = torch.sort(p_scores, descending=True, stable=True).indices
    return (
        p_boxes.detach().to("cpu", torch.float64)[order],
        p_scores[order],
        p_labels.detach().to("cpu", torch.long)[order],
        t_boxes.detach().to("cpu", torch.float64),
        t_labels.detach().to("cpu", torch.long),
        t_difficult.detach().to("cpu").bool(),
    )
