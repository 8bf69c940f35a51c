"""Which errors cost a detector its VOC mAP, in the manner of TIDE (Bolya et al. 2020).

Each devkit false positive (:func:`dssd.evaluation.matching.match_image`) gets the first error type
that fits, against the image's non-difficult objects, with IoUs ``t_f`` = 0.5 and ``t_b`` = 0.1:
``loc`` (best IoU with its own class in ``[t_b, t_f]``), ``cls`` (IoU ``>= t_f`` with another
class), ``dupl`` (IoU ``>= t_f`` with an object of its class taken by a higher-scored detection),
``bkg`` (IoU ``<= t_b`` with every object), else ``both``. A non-difficult object is ``miss`` when
no detection took it and no ``cls``/``loc`` error points at it. True positives and detections on
difficult objects (ignored) have no error type.

An error type's cost, TIDE's dAP, is the mAP (over the classes with positives; at ``t_f``, that of
:class:`dssd.evaluation.metrics.VOCMeanAP`) gained by fixing that type alone: the highest-scored
``loc``/``cls`` error on an object nobody took becomes a true positive of the object's class (the
other errors on it are removed, as TIDE does); ``dupl``, ``bkg`` and ``both`` errors are removed;
missed objects leave the positives. Unlike ``tidecv``, a true positive follows the devkit's rule
(IoU above ``t_f`` with its best object of the class, taken or not) and a detection on a difficult
object is ignored; on images whose objects do not overlap the two agree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from dssd.evaluation.matched_run import MatchedRun
from dssd.evaluation.matching import check_image, in_area_range, match_image
from dssd.evaluation.metrics import valid_mean


class Verdict(IntEnum):
    """What one detection is: a true positive, ignored, or a false positive of one error type."""

    TP = 0
    IGNORED = 1
    CLS = 2
    LOC = 3
    BOTH = 4
    DUPL = 5
    BKG = 6


# TIDE's order of its main error types; "miss" is about objects, the others about detections.
ERROR_TYPES: tuple[str, ...] = ("cls", "loc", "both", "dupl", "bkg", "miss")
_DETECTION_ERRORS: dict[str, Verdict] = {e: Verdict[e.upper()] for e in ERROR_TYPES if e != "miss"}


@dataclass(frozen=True)
class ImageErrors:
    """One image's verdicts: ``verdict`` [K] (:class:`Verdict` values); ``fixed`` [K] the ``cls``
    and ``loc`` errors that become true positives when their type is fixed (the others are removed);
    ``fixed_label`` [K] a detection's label once fixed (the object's class for ``cls``);
    ``missed`` [N] per ground-truth object."""

    verdict: Tensor
    fixed: Tensor
    fixed_label: Tensor
    missed: Tensor


@dataclass(frozen=True)
class ErrorAnalysis:
    """The result of :func:`analyse_errors`: the VOC ``map`` and ``ap_per_class`` [C] (NaN without
    positives) as they are; per name of :data:`ERROR_TYPES`, the errors' ``counts`` and
    ``counts_per_class`` [C] (by the detection's label; the object's for ``miss``) and the gain of
    fixing them alone, ``delta_map`` and ``delta_ap_per_class`` [C]; ``images`` each image's
    :class:`ImageErrors`, detections in the input's order."""

    map: float
    ap_per_class: Tensor
    counts: dict[str, int]
    counts_per_class: dict[str, Tensor]
    delta_map: dict[str, float]
    delta_ap_per_class: dict[str, Tensor]
    images: tuple[ImageErrors, ...]


def classify_image(
    boxes: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    gt_difficult: Tensor,
    fg_iou: float = 0.5,
    bg_iou: float = 0.1,
) -> ImageErrors:
    """TIDE's verdict on one image's detections, given in descending score order (module doc);
    boxes xyxy in continuous pixel edges, as :func:`dssd.evaluation.matching.match_image`."""
    k, n = boxes.shape[0], gt_boxes.shape[0]
    tp, ignored = match_image(boxes, labels, gt_boxes, gt_labels, gt_difficult, fg_iou)
    verdict = torch.full((k,), int(Verdict.BKG), dtype=torch.long)
    verdict[tp] = Verdict.TP
    verdict[ignored] = Verdict.IGNORED
    missed = ~gt_difficult
    keep = ~gt_difficult
    if k == 0 or not keep.any():
        return ImageErrors(verdict, torch.zeros(k, dtype=torch.bool), labels.clone(), missed)

    iou_all = box_iou(boxes.to(torch.float64), gt_boxes.to(torch.float64)).nan_to_num(0.0)
    same_all = labels[:, None] == gt_labels[None, :]
    # The object each true positive took: its best of the class, as in match_image.
    taken_all = torch.zeros(n, dtype=torch.bool)
    taken_all[iou_all.masked_fill(~same_all, float("-inf")).argmax(dim=1)[tp]] = True
    iou, same, taken = iou_all[:, keep], same_all[:, keep], taken_all[keep]

    own = torch.where(same, iou, 0.0).max(dim=1)
    other = torch.where(~same, iou, 0.0).max(dim=1)
    taken_own = torch.where(same & taken, iou, 0.0).amax(dim=1)
    is_loc = (own.values >= bg_iou) & (own.values <= fg_iou)
    is_cls = ~is_loc & (other.values >= fg_iou)
    is_dupl = ~is_loc & ~is_cls & (taken_own >= fg_iou)
    is_bkg = ~is_loc & ~is_cls & ~is_dupl & (iou.amax(dim=1) <= bg_iou)
    error = torch.full((k,), int(Verdict.BOTH), dtype=torch.long)
    for mask, kind in ((is_loc, Verdict.LOC), (is_cls, Verdict.CLS), (is_dupl, Verdict.DUPL)):
        error[mask] = kind
    error[is_bkg] = Verdict.BKG
    false_positive = ~tp & ~ignored
    verdict = torch.where(false_positive, error, verdict)

    # A cls/loc error on an object nobody took could have found it; the highest-scored one would.
    target = torch.where(is_loc, own.indices, other.indices)
    candidate = false_positive & (is_loc | is_cls) & ~taken[target]
    position = torch.arange(k)
    first = torch.full((int(keep.sum()),), k, dtype=torch.long)
    first = first.scatter_reduce(0, target[candidate], position[candidate], reduce="amin")
    fixed = candidate & (first[target] == position)
    fixed_label = torch.where(is_cls & candidate, gt_labels[keep][target], labels)
    found = taken | (first < k)
    missed[keep] = ~found
    return ImageErrors(verdict, fixed, fixed_label, missed)


def analyse_errors(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    fg_iou: float = 0.5,
    bg_iou: float = 0.1,
    use_07_metric: bool = True,
    area_range: tuple[float, float] | None = None,
) -> ErrorAnalysis:
    """Count the errors of each TIDE type and the mAP each would gain if fixed (module doc).

    ``preds`` and ``targets``: per-image dicts, as :meth:`dssd.evaluation.metrics.VOCMeanAP.update`
    takes them; ``use_07_metric`` picks the 11-point or all-point VOC AP. With ``area_range`` (box
    area in pixels, ``[low, high)``) only one object size counts, by COCO's rule: objects and false
    positives of other sizes are ignored (an object only such an error pointed at is not missed).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not 0.0 < bg_iou < fg_iou < 1.0:
        raise ValueError(f"need 0 < bg_iou < fg_iou < 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
    if len(preds) != len(targets):
        raise ValueError(f"{len(preds)} images of preds but {len(targets)} of targets")
    empty = torch.zeros(0, dtype=torch.long)
    images, pooled = [], [(torch.zeros(0), empty, empty, empty.bool(), empty)]
    npos = torch.zeros(num_classes, dtype=torch.long)
    missed = torch.zeros(num_classes, dtype=torch.long)
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        p_boxes, p_scores, p_labels, t_boxes, t_labels, t_difficult = check_image(
            i, pred, target, num_classes
        )
        if area_range is not None:  # objects of other sizes are ignored, as difficult ones
            t_difficult = t_difficult | ~in_area_range(t_boxes, area_range)
        image = classify_image(p_boxes, p_labels, t_boxes, t_labels, t_difficult, fg_iou, bg_iou)
        if area_range is not None:  # and so are false positives of other sizes
            other = (image.verdict >= Verdict.CLS) & ~in_area_range(p_boxes, area_range)
            verdict = image.verdict.masked_fill(other, int(Verdict.IGNORED))
            image = replace(image, verdict=verdict, fixed=image.fixed & ~other)
        npos += torch.bincount(t_labels[~t_difficult] - 1, minlength=num_classes)
        missed += torch.bincount(t_labels[image.missed] - 1, minlength=num_classes)
        pooled.append((p_scores, p_labels, image.verdict, image.fixed, image.fixed_label))
        # back to the input's order (check_image sorted by score, stably)
        scores = torch.as_tensor(pred["scores"]).detach().to("cpu", torch.float32)
        inverse = torch.argsort(torch.sort(scores, descending=True, stable=True).indices)
        reordered = [t[inverse] for t in (image.verdict, image.fixed, image.fixed_label)]
        images.append(ImageErrors(*reordered, image.missed))

    score, label, verdict, fix, fix_label = map(torch.cat, zip(*pooled, strict=True))
    ignored = verdict == Verdict.IGNORED
    tp = verdict == Verdict.TP

    def class_aps(tp: Tensor, label: Tensor, ignored: Tensor, npos: Tensor) -> Tensor:
        run = MatchedRun.pooled(score, label, tp, ignored, npos)
        return torch.from_numpy(run.class_aps(use_07_metric=use_07_metric)[0])

    base = class_aps(tp, label, ignored, npos)
    counts_per_class = {"miss": missed}
    fixed_ap = {}
    for name, kind in _DETECTION_ERRORS.items():
        error = verdict == kind
        counts_per_class[name] = torch.bincount(label[error] - 1, minlength=num_classes)
        new_label = torch.where(error & fix, fix_label, label)
        fixed_ap[name] = class_aps(tp | (error & fix), new_label, ignored | (error & ~fix), npos)
    fixed_ap["miss"] = class_aps(tp, label, ignored, npos - missed)
    base_map = float(valid_mean(base))
    return ErrorAnalysis(
        map=base_map,
        ap_per_class=base,
        counts={name: int(counts_per_class[name].sum()) for name in ERROR_TYPES},
        counts_per_class={name: counts_per_class[name] for name in ERROR_TYPES},
        delta_map={name: float(valid_mean(fixed_ap[name])) - base_map for name in ERROR_TYPES},
        delta_ap_per_class={name: fixed_ap[name] - base for name in ERROR_TYPES},
        images=tuple(images),
    )
