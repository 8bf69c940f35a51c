"""PASCAL VOC mean average precision as a torchmetrics ``Metric``.

The VOC07 test figures of the SSD/DSSD papers come from the official devkit, whose rules differ from
COCO-style evaluation (torchmetrics' ``MeanAveragePrecision``) in ways that move AP by a point or
more: a strict ``>`` IoU threshold, "difficult" objects that are neither counted nor penalised, a
detection matched to its highest-IoU ground truth even when that one is already taken (then it is
a duplicate, a false positive), and 11-point interpolated AP. :class:`VOCMeanAP` reproduces
``voc_eval.py`` of py-faster-rcnn (the Python port of the MATLAB ``VOCevaldet``), including its 11
recall thresholds ``numpy.arange(0.0, 1.1, 0.1)``.

Boxes are in the project's one pixel convention (``dssd.data.voc``, "Box convention"): continuous
pixel edges, so a VOC box ``xmin..xmax`` (1-based, inclusive) is ``[xmin - 1, xmax]`` and its
width ``xmax - xmin + 1`` is already the devkit's. The IoU is therefore the plain continuous one,
with no ``+1``: it equals the devkit's IoU of the same boxes written in the devkit's coordinates.

The matching only ever compares a detection with the ground truths of its own image, and a
detection's fate depends only on the higher-scored detections of the same class in the same image.
So ``update`` decides TP/FP/ignored per image right away (:func:`match_image`, also what the
detection notebook and the ablation's bootstrap use), and the metric keeps flat per-detection
states (score, label, TP flag, ignored flag) plus a per-class count of positives: torchmetrics'
default cross-process gather (concatenate, sum) is then all DDP needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchvision.ops import box_iou

__all__ = [
    "VOCMeanAP",
    "as_tensors",
    "average_precision",
    "average_precisions",
    "best_matches",
    "check_image",
    "in_area_range",
    "match_image",
]

# voc_eval.py iterates over ``np.arange(0.0, 1.1, 0.1)``, whose elements are ``i * 0.1``: 0.3, 0.6
# and 0.7 come out one ulp above their decimal values, so a recall of exactly 3/10 does not reach
# the 0.3 threshold. Kept as is so that the figures match the reference implementation.
ELEVEN_POINTS: tuple[float, ...] = tuple(i * 0.1 for i in range(11))
# At most this many replicate x detection cells are built at once (float64: 8 bytes each).
_CHUNK_CELLS = 4_000_000


def average_precision(
    images: np.ndarray, tp: np.ndarray, npos: np.ndarray, weights: np.ndarray, use_07_metric: bool
) -> np.ndarray:
    """VOC AP of one class under each row of image ``weights`` [R, images], as [R]: the one AP
    function of the suite (the metric, the analyses and the bootstrap all score with it).

    ``images`` and ``tp`` are the class's detections in descending score order (ignored ones
    left out): the image of each and whether it is a true positive; ``npos`` [images] counts
    each image's positives. An image of weight k counts its detections and positives k times
    (every image once: ``weights = np.ones((1, images))``, the plain AP). NaN where the class
    has no positive under a row's weights, 0 where it has positives but no true positive.
    ``use_07_metric``: the VOC2007 11-point interpolation, the mean over t in 0, 0.1, ..., 1 of
    the highest precision at recall >= t (0 where the curve never reaches t); otherwise the
    VOC2010+ area under the monotone precision envelope."""
    positives = weights @ npos  # [R]
    ap = np.full(weights.shape[0], np.nan)
    has = positives > 0
    if not tp.any():  # no true positive: AP 0 wherever the class has positives
        ap[has] = 0.0
        return ap
    # Detections after the last true positive only add false positives at the final recall:
    # they change no AP under any weights. And either AP reads the precision only where the
    # recall grows or at its best beyond a recall level, which is always at a true positive
    # (false positives after one only lower the precision): only those columns are kept.
    last = int(np.flatnonzero(tp)[-1]) + 1
    images, tp = images[:last], tp[:last]
    columns = np.flatnonzero(tp)
    false = (~tp).astype(np.float64)
    step = max(1, _CHUNK_CELLS // last)
    for lo in range(0, weights.shape[0], step):
        w = weights[lo : lo + step][:, images]  # [r, D]
        fps = np.cumsum(w * false, axis=1)[:, columns]  # [r, T]
        tps = np.cumsum(w[:, columns], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tps / positives[lo : lo + step, None]
        precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        if use_07_metric:
            # the best precision at a recall >= t: the envelope at the first column reaching t
            padded = np.concatenate([envelope, np.zeros((len(envelope), 1))], axis=1)
            points = [
                np.take_along_axis(padded, (recall < t).sum(axis=1, keepdims=True), axis=1)[:, 0]
                for t in ELEVEN_POINTS
            ]
            chunk = np.sum(points, axis=0) / 11.0
        else:
            with np.errstate(invalid="ignore"):  # NaN recall: no positive drawn, NaN AP
                gained = np.diff(recall, axis=1, prepend=0.0)
            chunk = (gained * envelope).sum(axis=1)
        ap[lo : lo + step] = np.where(has[lo : lo + step], chunk, np.nan)
    return ap


def average_precisions(
    scores: Tensor, labels: Tensor, tp: Tensor, npos: Tensor, use_07_metric: bool = True
) -> Tensor:
    """VOC AP of each class ``1..len(npos)`` from flat per-detection ``scores``, ``labels`` and
    ``tp`` flags (ignored detections already dropped) and the per-class count of positives.

    Detections are ranked by descending score, stably (ties keep the order given). Returns float64
    [len(npos)]: NaN for a class without positives, 0 for one with positives but no detections.
    """
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    labels = labels.cpu()[order].numpy()
    tp = tp.cpu()[order].numpy().astype(bool)
    npos = npos.cpu().numpy()
    once = np.ones((1, 1))
    ap = [
        average_precision(
            np.zeros(int((labels == c).sum()), np.int64),
            tp[labels == c],
            npos[c - 1 : c],
            once,
            use_07_metric,
        )[0]
        for c in range(1, len(npos) + 1)
    ]
    return torch.tensor(ap, dtype=torch.float64)


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
    tp = torch.zeros(n, dtype=torch.bool)
    ignored = torch.zeros(n, dtype=torch.bool)
    if n == 0 or gt_boxes.shape[0] == 0:
        return tp, ignored
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
    """Validate image ``i``'s dicts (those of :meth:`VOCMeanAP.update`, labels in
    ``1..num_classes``); return its detections sorted by descending score (stable) and its ground
    truths, on the CPU (boxes in float64)."""
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
        scores_out, labels_out, tp_out, ignored_out = [], [], [], []
        npos = torch.zeros(self.num_classes, dtype=torch.long)
        for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
            p_boxes, p_scores, p_labels, t_boxes, t_labels, t_difficult = check_image(
                i, pred, target, self.num_classes
            )
            npos += torch.bincount(t_labels[~t_difficult] - 1, minlength=self.num_classes)
            tp, ignored = match_image(
                p_boxes, p_labels, t_boxes, t_labels, t_difficult, self.iou_threshold
            )
            scores_out.append(p_scores)
            labels_out.append(p_labels)
            tp_out.append(tp)
            ignored_out.append(ignored)
        if not scores_out:
            return
        device = self.device
        self.scores.append(torch.cat(scores_out).to(device))
        self.labels.append(torch.cat(labels_out).to(device))
        self.tp.append(torch.cat(tp_out).to(device=device, dtype=torch.uint8))
        self.ignored.append(torch.cat(ignored_out).to(device=device, dtype=torch.uint8))
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
        # Ignored detections add neither TP nor FP: they only repeat the previous curve point, so
        # dropping them changes no AP.
        keep = ~ignored
        ap = average_precisions(
            scores[keep], labels[keep], tp[keep], self.npos.cpu(), self.use_07_metric
        )

        valid = ~torch.isnan(ap)
        mean = ap[valid].mean() if valid.any() else torch.tensor(float("nan"), dtype=torch.float64)
        device = self.npos.device
        return {
            "map": mean.to(device=device, dtype=torch.float32),
            "ap_per_class": ap.to(device=device, dtype=torch.float32),
            "classes": torch.arange(1, self.num_classes + 1, dtype=torch.long, device=device),
        }
