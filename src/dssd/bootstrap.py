"""Paired bootstrap over test images for differences of VOC mAP between runs.

Two rows of an ablation are scored on the same test images, so the uncertainty of their
difference comes from which images happen to be in the test set: resample the images (with
replacement, the same draw for every run) and recompute each run's mAP on the resample. The VOC
devkit judges each detection within its own image (``dssd.metrics.match_image``), so a run is
matched once and every resample only reweights its images: an image drawn k times counts its
detections and its positives k times. (This equals the mAP of the resample with the image copied
k times: the points of a precision/recall curve that the copies would add in between are always
dominated by a neighbour.)

:class:`RunMatches` holds one run's per-image verdicts, from its devkit result files
(``voc_results=``) or from detections in memory, optionally restricted to objects of one size
range by COCO's rule; :func:`class_aps` and :func:`mean_ap` score them under any set of image
weights; :func:`paired_bootstrap` gives a difference of mean mAPs (or of any such statistic, e.g.
one class's AP) between two rows, over the seeds both have, with its percentile interval.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_area

from dssd.data.voc import read_voc_results
from dssd.metrics import average_precision, best_matches, match_image


@dataclass(frozen=True)
class Matching:
    """One run's detections matched by the devkit's rules, flat over the images (in image order,
    each image's detections by descending score), with the box areas that COCO's rule per
    object size needs (:meth:`RunMatches.from_matching`).

    Per detection: its image, label, score, TP and ignored flags (a difficult object), whether
    its IoU with its best object of the class is above the threshold, that object's area and
    its own box's area. Per object: its image, label, difficult flag and area.
    """

    det_image: np.ndarray
    det_label: np.ndarray
    det_score: np.ndarray
    det_tp: np.ndarray
    det_ignored: np.ndarray
    det_above: np.ndarray
    det_match_area: np.ndarray
    det_area: np.ndarray
    gt_image: np.ndarray
    gt_label: np.ndarray
    gt_difficult: np.ndarray
    gt_area: np.ndarray
    num_images: int
    num_classes: int

    @classmethod
    def build(
        cls,
        detections: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        num_classes: int,
        iou_threshold: float = 0.5,
    ) -> Matching:
        """Match per-image ``detections`` ("boxes" in pixel edges, "scores", "labels") to
        ``targets`` ("boxes", "labels", "difficult"), aligned image by image."""
        if len(detections) != len(targets):
            raise ValueError(f"{len(detections)} images of detections, {len(targets)} of targets")
        det: dict[str, list[np.ndarray]] = {name: [] for name in _DETECTION_FIELDS}
        gt: dict[str, list[np.ndarray]] = {name: [] for name in _OBJECT_FIELDS}
        for i, (found, truth) in enumerate(zip(detections, targets, strict=True)):
            gt_boxes = torch.as_tensor(np.asarray(truth["boxes"]), dtype=torch.float64)
            gt_boxes = gt_boxes.reshape(-1, 4)
            gt_labels = torch.as_tensor(np.asarray(truth["labels"]), dtype=torch.long)
            difficult = torch.as_tensor(np.asarray(truth["difficult"]), dtype=torch.bool)
            scores = torch.as_tensor(np.asarray(found["scores"]), dtype=torch.float64)
            order = torch.sort(scores, descending=True, stable=True).indices
            labels = torch.as_tensor(np.asarray(found["labels"]), dtype=torch.long)[order]
            boxes = torch.as_tensor(np.asarray(found["boxes"]), dtype=torch.float64)
            boxes = boxes.reshape(-1, 4)[order]
            tp, ignored = match_image(boxes, labels, gt_boxes, gt_labels, difficult, iou_threshold)
            index, best = best_matches(boxes, labels, gt_boxes, gt_labels)
            areas = box_area(gt_boxes)
            det["det_image"].append(np.full(len(labels), i))
            det["det_label"].append(labels.numpy())
            det["det_score"].append(scores[order].numpy())
            det["det_tp"].append(tp.numpy())
            det["det_ignored"].append(ignored.numpy())
            det["det_above"].append((best > iou_threshold).numpy())
            det["det_match_area"].append(areas[index].numpy() if len(areas) else best.numpy())
            det["det_area"].append(box_area(boxes).numpy())
            gt["gt_image"].append(np.full(len(gt_labels), i))
            gt["gt_label"].append(gt_labels.numpy())
            gt["gt_difficult"].append(difficult.numpy())
            gt["gt_area"].append(areas.numpy())
        return cls(
            **{name: _concatenate(parts, _DETECTION_FIELDS[name]) for name, parts in det.items()},
            **{name: _concatenate(parts, _OBJECT_FIELDS[name]) for name, parts in gt.items()},
            num_images=len(targets),
            num_classes=num_classes,
        )


# the flat arrays of a Matching and their dtypes
_DETECTION_FIELDS = {
    "det_image": np.int64,
    "det_label": np.int64,
    "det_score": np.float64,
    "det_tp": bool,
    "det_ignored": bool,
    "det_above": bool,
    "det_match_area": np.float64,
    "det_area": np.float64,
}
_OBJECT_FIELDS = {
    "gt_image": np.int64,
    "gt_label": np.int64,
    "gt_difficult": bool,
    "gt_area": np.float64,
}


def _concatenate(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


@dataclass(frozen=True)
class RunMatches:
    """One run's detections on a test set, judged by the devkit's rules.

    ``detections[c]`` holds, for class ``c + 1``, the (image index, TP flag) of every detection
    that is not ignored, in descending score order; ``npos`` [images, classes] counts each
    image's non-difficult objects per class.
    """

    detections: tuple[tuple[np.ndarray, np.ndarray], ...]
    npos: np.ndarray

    @property
    def num_images(self) -> int:
        return self.npos.shape[0]

    @classmethod
    def from_detections(
        cls,
        detections: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        num_classes: int,
        iou_threshold: float = 0.5,
        area_range: tuple[float, float] | None = None,
    ) -> RunMatches:
        """Match per-image ``detections`` ("boxes" in pixel edges, "scores", "labels") to
        ``targets`` ("boxes", "labels", "difficult"), aligned image by image; with
        ``area_range``, for one object size (:meth:`from_matching`)."""
        matching = Matching.build(detections, targets, num_classes, iou_threshold)
        return cls.from_matching(matching, area_range)

    @classmethod
    def from_matching(
        cls, matching: Matching, area_range: tuple[float, float] | None = None
    ) -> RunMatches:
        """The verdicts of ``matching``; with ``area_range`` ``(low, high)`` (box area in
        pixels, ``low <= area < high``), COCO's rule for AP by object size: objects outside the
        range are ignored like difficult ones (so are the detections that match them), and so
        are the false positives whose own box is outside it.

        The devkit gives every detection its best object of the class whatever that object's
        size, so the rule only relabels the verdicts of all sizes: a true positive on an object
        outside the range is ignored, and the first detection on an object inside it stays
        its true positive."""
        m = matching
        counted = ~m.gt_difficult
        tp, ignored = m.det_tp, m.det_ignored
        if area_range is not None:
            low, high = area_range
            counted = counted & (m.gt_area >= low) & (m.gt_area < high)
            on_inside = (m.det_match_area >= low) & (m.det_match_area < high)
            inside = (m.det_area >= low) & (m.det_area < high)
            ignored = ignored | (m.det_above & ~on_inside)
            tp = tp & on_inside
            ignored = ignored | (~tp & ~inside)
        npos = np.zeros((m.num_images, m.num_classes), np.int64)
        np.add.at(npos, (m.gt_image[counted], m.gt_label[counted] - 1), 1)
        keep = ~ignored
        image, label, score, tp = m.det_image[keep], m.det_label[keep], m.det_score[keep], tp[keep]
        per_class = []
        for c in range(1, m.num_classes + 1):
            mask = label == c
            # stable, as the metric: ties keep the image order
            order = np.argsort(-score[mask], kind="stable")
            per_class.append((image[mask][order], tp[mask][order]))
        return cls(tuple(per_class), npos)

    @classmethod
    def from_results(
        cls,
        directory: str | Path,
        image_ids: Sequence[Any],
        targets: Sequence[Mapping[str, Any]],
        class_names: Sequence[str],
        iou_threshold: float = 0.5,
    ) -> RunMatches:
        """Match the devkit result files in ``directory`` (``voc_results=``) to the test set
        given by ``image_ids`` and ``targets`` (:func:`results_per_image`)."""
        detections = results_per_image(directory, image_ids, class_names)
        return cls.from_detections(detections, targets, len(class_names), iou_threshold)


def results_per_image(
    directory: str | Path, image_ids: Sequence[Any], class_names: Sequence[str]
) -> list[dict[str, np.ndarray]]:
    """The detections of the devkit result files in ``directory`` per image of ``image_ids``
    ("boxes" in pixel edges, "scores", "labels"): an image without a line has no detections, a
    line for an image outside the list is an error."""
    results = read_voc_results(directory, class_names)
    known = {str(i) for i in image_ids}
    unknown = sorted(set(results) - known)
    if unknown:
        raise ValueError(
            f"{directory}: detections for {len(unknown)} images that are not in the test set, "
            f"e.g. {unknown[0]!r}"
        )
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    return [results.get(str(i), empty) for i in image_ids]


def class_aps(
    run: RunMatches, weights: np.ndarray | None = None, use_07_metric: bool = True
) -> np.ndarray:
    """The run's VOC AP of every class under each row of image ``weights`` [R, images]
    (default: every image once), as [R, classes]; NaN where a class has no positive."""
    if weights is None:
        weights = np.ones((1, run.num_images))
    weights = np.asarray(weights, np.float64)
    return np.stack(
        [
            average_precision(images, tp, run.npos[:, c], weights, use_07_metric)
            for c, (images, tp) in enumerate(run.detections)
        ],
        axis=1,
    )


def mean_ap(
    run: RunMatches, weights: np.ndarray | None = None, use_07_metric: bool = True
) -> np.ndarray:
    """The run's VOC mAP under each row of image ``weights`` [R, images] (default: every image
    once, the plain mAP), as [R]: the mean AP over the classes with positives."""
    aps = class_aps(run, weights, use_07_metric)
    with warnings.catch_warnings():  # a resample without any positive: NaN, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(aps, axis=1)


@dataclass(frozen=True)
class Difference:
    """A difference of mean mAP (row minus baseline, over paired seeds) and its interval."""

    delta: float
    low: float
    high: float
    seeds: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def paired_bootstrap(
    runs: Sequence[RunMatches],
    baselines: Sequence[RunMatches],
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    use_07_metric: bool = True,
) -> Difference:
    """Mean over the paired runs of ``mAP(run) - mAP(baseline)``, with its percentile interval
    from ``num_samples`` resamples of the test images (one draw shared by every run)."""

    def statistic(run: RunMatches, weights: np.ndarray | None) -> np.ndarray:
        return mean_ap(run, weights, use_07_metric)[:, None]

    return paired_differences(runs, baselines, statistic, num_samples, confidence, seed)[0]


def paired_differences(
    runs: Sequence[RunMatches],
    baselines: Sequence[RunMatches],
    statistic: Callable[[RunMatches, np.ndarray | None], np.ndarray],
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Difference]:
    """:func:`paired_bootstrap` of several figures at once: ``statistic(run, weights)`` gives
    [R, K] values (e.g. every class's AP, :func:`class_aps`) for image weights [R, images] and
    the plain ones for ``None``; one :class:`Difference` per column. Resamples where a figure is
    NaN (it has no positive there) are left out of its interval; NaN without any."""
    if not runs or len(runs) != len(baselines):
        raise ValueError(f"need paired runs, got {len(runs)} and {len(baselines)}")
    sizes = {r.num_images for r in (*runs, *baselines)}
    if len(sizes) != 1:
        raise ValueError(f"the runs were scored on different numbers of images: {sorted(sizes)}")
    n = sizes.pop()
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=num_samples).astype(np.float64)

    def delta(w: np.ndarray | None) -> np.ndarray:
        pairs = [statistic(a, w) - statistic(b, w) for a, b in zip(runs, baselines, strict=True)]
        return np.mean(pairs, axis=0)

    plain, samples = delta(None)[0], delta(weights)
    tail = 100 * (1.0 - confidence) / 2
    differences = []
    for k in range(samples.shape[1]):
        column = samples[:, k][~np.isnan(samples[:, k])]
        low, high = np.percentile(column, [tail, 100 - tail]) if column.size else (np.nan, np.nan)
        differences.append(Difference(float(plain[k]), float(low), float(high), len(runs)))
    return differences
