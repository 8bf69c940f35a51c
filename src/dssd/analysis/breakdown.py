"""A test split (:class:`GroundTruth`) and one run's detections on it (:class:`RunDetections`),
taken apart: AP per class and per object size, precision-recall curves, TIDE-style errors
(:mod:`dssd.analysis.errors`), the confusion matrix with background (:mod:`dssd.analysis.confusion`)
and the errors worth looking at.

Every AP is the VOC AP at IoU 0.5 of the run matched once by the devkit's rule
(:class:`dssd.evaluation.matched_run.MatchedRun`), so per-class figures are the test results'. AP by
object size follows COCO's rule (:meth:`MatchedRun.for_size`): objects and false positives of other
sizes are ignored. Sizes are sqrt(area) in original-image pixels, as COCO measures them. The
confusion matrix and the "found" objects count the detections scored at least ``score_threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import numpy as np
import torch

from dssd.analysis.confusion import confusion_matrix
from dssd.analysis.errors import ErrorAnalysis, Verdict, analyse_errors
from dssd.evaluation.matched_run import MatchedRun
from dssd.evaluation.matching import best_matches, in_range, match_image

# COCO's size classes, as bounds on sqrt(area) in original-image pixels
COCO_SIZES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0),
    "medium": (32.0, 96.0),
    "large": (96.0, float("inf")),
}
# finer bins of sqrt(area) in original-image pixels; 32 and 96 are edges, as in COCO
FINE_SIZE_EDGES: tuple[float, ...] = (0, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, float("inf"))
# recall levels of the size bins' mean precision-recall curves (COCO's 101 points)
RECALL_GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class GroundTruth:
    """A test split's images and their objects, in the order of its dataset, in numpy: ``targets``
    "boxes" [N, 4] (xyxy pixel edges of the original image), "labels" [N], "difficult" [N];
    ``use_07_metric`` the data's devkit AP (None without the VOC metric, e.g. COCO: AP all-point,
    as for False)."""

    image_ids: tuple[Any, ...]
    image_paths: tuple[str, ...]
    targets: tuple[dict[str, np.ndarray], ...]
    class_names: tuple[str, ...]
    use_07_metric: bool | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class RunDetections(GroundTruth):
    """A run's detections on its test split beside the ground truth, image by image, in numpy:
    ``preds`` "boxes" [K, 4] (xyxy pixel edges of the original image), "scores" [K], "labels" [K]
    in ``1..C``."""

    preds: tuple[dict[str, np.ndarray], ...]

    @cached_property
    def matched(self) -> MatchedRun:
        """The devkit's matching at IoU 0.5, done once for every size range."""
        return MatchedRun.build(self.preds, self.targets, self.num_classes, 0.5)

    def matches(self, size: tuple[float, float] | None = None) -> MatchedRun:
        """The devkit's verdicts, for objects of sqrt(area) in ``size`` only if given."""
        return self.matched if size is None else self.matched.for_size((size[0] ** 2, size[1] ** 2))


@dataclass(frozen=True)
class SizeBin:
    """AP and counts of the objects whose sqrt(area) is in ``[low, high)`` pixels."""

    name: str
    low: float
    high: float
    objects: int
    ap: float
    found: int


@dataclass(frozen=True)
class RunAnalysis:
    """What :func:`analyse_run` finds; per-class arrays are [C] in label order. ``curves[c]``: class
    ``c + 1``'s (recall, precision) per detection in score order; ``size_errors``: the error
    analysis per COCO size; ``size_curves``: per size bin, the mean interpolated precision at
    :data:`RECALL_GRID`; ``found[i]``: image ``i``'s objects found at the operating point;
    ``matches``, ``size_matches``: the devkit's verdicts behind the APs (for comparisons)."""

    map: float
    ap_per_class: np.ndarray
    positives: np.ndarray
    coco_sizes: tuple[SizeBin, ...]
    fine_sizes: tuple[SizeBin, ...]
    curves: tuple[tuple[np.ndarray, np.ndarray], ...]
    size_curves: dict[str, np.ndarray]
    errors: ErrorAnalysis
    size_errors: dict[str, ErrorAnalysis]
    confusion: np.ndarray
    found: tuple[np.ndarray, ...]
    score_threshold: float
    matches: MatchedRun
    size_matches: dict[str, MatchedRun]


def interpolated_precision(
    recall: np.ndarray, precision: np.ndarray, grid: np.ndarray = RECALL_GRID
) -> np.ndarray:
    """The best precision at a recall of at least each ``grid`` level (0 beyond the last)."""
    if not recall.size:
        return np.zeros(grid.shape)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, grid, side="left")
    return np.where(index < recall.size, envelope[np.minimum(index, recall.size - 1)], 0.0)


def mean_curve(run: MatchedRun) -> np.ndarray:
    """Mean over the classes with positives of their interpolated precision (NaN if none)."""
    curves = [
        interpolated_precision(*run.precision_recall(c))
        for c in range(run.num_classes)
        if run.npos[:, c].sum() > 0
    ]
    return np.mean(curves, axis=0) if curves else np.full(RECALL_GRID.shape, np.nan)


def found_objects(
    pred: dict[str, np.ndarray], target: dict[str, np.ndarray], score_threshold: float
) -> np.ndarray:
    """Which of an image's objects a true positive scored at least ``score_threshold`` takes
    (the devkit's matching at IoU 0.5: each detection takes its best object of the class)."""
    keep = np.asarray(pred["scores"]) >= score_threshold
    scores = torch.as_tensor(np.asarray(pred["scores"])[keep], dtype=torch.float64)
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes = torch.as_tensor(np.asarray(pred["boxes"]).reshape(-1, 4)[keep])[order].double()
    labels = torch.as_tensor(np.asarray(pred["labels"])[keep], dtype=torch.long)[order]
    gt_boxes = torch.as_tensor(np.asarray(target["boxes"]).reshape(-1, 4)).double()
    gt_labels = torch.as_tensor(np.asarray(target["labels"]), dtype=torch.long)
    difficult = torch.as_tensor(np.asarray(target["difficult"]), dtype=torch.bool)
    found = np.zeros(len(gt_labels), bool)
    tp, _ = match_image(boxes, labels, gt_boxes, gt_labels, difficult)
    found[best_matches(boxes, labels, gt_boxes, gt_labels)[0][tp].numpy()] = True
    return found


def object_sizes(target: dict[str, np.ndarray]) -> np.ndarray:
    """sqrt(area) of each object's box, in pixels."""
    boxes = np.asarray(target["boxes"], np.float64).reshape(-1, 4)
    return np.sqrt(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(axis=1))


def size_bins(
    test: RunDetections,
    bounds: dict[str, tuple[float, float]],
    matches: dict[str, MatchedRun],
    found: Sequence[np.ndarray],
) -> tuple[SizeBin, ...]:
    """AP (from ``matches``, per bin), object count and objects found at the operating point for
    each named size range."""
    sizes = np.concatenate([object_sizes(t) for t in test.targets])
    counted = ~np.concatenate([np.asarray(t["difficult"], bool) for t in test.targets])
    hit = np.concatenate(found)
    bins = []
    for name, (low, high) in bounds.items():
        inside = counted & in_range(sizes, (low, high))
        ap = float(matches[name].mean_ap(use_07_metric=test.use_07_metric)[0])
        bins.append(SizeBin(name, low, high, int(inside.sum()), ap, int((inside & hit).sum())))
    return tuple(bins)


def fine_size_bounds() -> dict[str, tuple[float, float]]:
    """:data:`FINE_SIZE_EDGES` as named ranges ("16-24", "256+")."""
    edges = FINE_SIZE_EDGES
    return {
        (f"{lo:g}-{hi:g}" if np.isfinite(hi) else f"{lo:g}+"): (float(lo), float(hi))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    }


def nan_mean(values: Any) -> float:
    """The mean of ``values`` without their NaNs (e.g. the APs of the classes with positives); NaN,
    without numpy's warning, when none is finite."""
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def analyse_run(test: RunDetections, score_threshold: float = 0.3) -> RunAnalysis:
    """Everything :class:`RunAnalysis` holds, for one run's test detections."""
    if not test.preds:
        raise ValueError("no test images to analyse")
    matches = test.matches()
    aps = matches.class_aps(use_07_metric=test.use_07_metric)[0]

    errors_of = partial(
        analyse_errors, test.preds, test.targets, test.num_classes, use_07_metric=test.use_07_metric
    )
    found = tuple(
        found_objects(p, t, score_threshold) for p, t in zip(test.preds, test.targets, strict=True)
    )
    fine = fine_size_bounds()
    size_matches = {name: test.matches(b) for name, b in {**COCO_SIZES, **fine}.items()}
    return RunAnalysis(
        map=nan_mean(aps),
        ap_per_class=aps,
        positives=matches.npos.sum(axis=0),
        coco_sizes=size_bins(test, COCO_SIZES, size_matches, found),
        fine_sizes=size_bins(test, fine, size_matches, found),
        curves=tuple(matches.precision_recall(c) for c in range(test.num_classes)),
        size_curves={name: mean_curve(m) for name, m in size_matches.items()},
        errors=errors_of(),
        size_errors={
            name: errors_of(area_range=(lo**2, hi**2)) for name, (lo, hi) in COCO_SIZES.items()
        },
        confusion=confusion_matrix(
            test.preds, test.targets, test.num_classes, score_threshold=score_threshold
        ),
        found=found,
        score_threshold=score_threshold,
        matches=matches,
        size_matches=size_matches,
    )


def worst_false_positives(
    test: RunDetections, errors: ErrorAnalysis, count: int
) -> list[tuple[int, int, str]]:
    """The ``count`` highest-scored false positives as (image, detection, error type)."""
    found = sorted(
        (-float(pred["scores"][k]), i, k, Verdict(v).name.lower())
        for i, (pred, image) in enumerate(zip(test.preds, errors.images, strict=True))
        for k, v in enumerate(image.verdict.tolist())
        if v not in (Verdict.TP, Verdict.IGNORED)
    )
    return [(i, k, kind) for _, i, k, kind in found[:count]]


def largest_missed(test: RunDetections, errors: ErrorAnalysis, count: int) -> list[tuple[int, int]]:
    """The ``count`` largest objects that no detection found, TIDE's "miss", as (image, object)."""
    missed = sorted(
        (-float(object_sizes(target)[j]), i, int(j))
        for i, (target, image) in enumerate(zip(test.targets, errors.images, strict=True))
        for j in np.flatnonzero(image.missed.numpy())
    )
    return [(i, j) for _, i, j in missed[:count]]
