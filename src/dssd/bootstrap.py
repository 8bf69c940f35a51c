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

from dssd.data.voc import read_voc_results
from dssd.metrics import ELEVEN_POINTS, in_area_range, match_image

# At most this many replicate x detection cells are built at once (float64: 8 bytes each).
_CHUNK_CELLS = 4_000_000


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
        ``targets`` ("boxes", "labels", "difficult"), aligned image by image.

        With ``area_range`` ``(low, high)`` (box area in pixels, ``low <= area < high``), COCO's
        rule for AP by object size: objects outside the range are ignored like difficult ones
        (so are the detections that match them), and so are the false positives whose own box
        is outside it.
        """
        if len(detections) != len(targets):
            raise ValueError(f"{len(detections)} images of detections, {len(targets)} of targets")
        images, labels, scores, tps = [], [], [], []
        npos = np.zeros((len(targets), num_classes), np.int64)
        for i, (det, truth) in enumerate(zip(detections, targets, strict=True)):
            gt_boxes = torch.as_tensor(np.asarray(truth["boxes"]), dtype=torch.float64)
            gt_boxes = gt_boxes.reshape(-1, 4)
            gt_labels = torch.as_tensor(np.asarray(truth["labels"]), dtype=torch.long)
            difficult = torch.as_tensor(np.asarray(truth["difficult"]), dtype=torch.bool)
            if area_range is not None:
                difficult = difficult | ~in_area_range(gt_boxes, area_range)
            npos[i] = np.bincount(gt_labels[~difficult].numpy() - 1, minlength=num_classes)[
                :num_classes
            ]
            det_scores = torch.as_tensor(np.asarray(det["scores"]), dtype=torch.float64)
            order = torch.sort(det_scores, descending=True, stable=True).indices
            det_labels = torch.as_tensor(np.asarray(det["labels"]), dtype=torch.long)[order]
            det_boxes = torch.as_tensor(np.asarray(det["boxes"]), dtype=torch.float64)
            det_boxes = det_boxes.reshape(-1, 4)[order]
            tp, ignored = match_image(
                det_boxes, det_labels, gt_boxes, gt_labels, difficult, iou_threshold
            )
            if area_range is not None:
                ignored = ignored | (~tp & ~in_area_range(det_boxes, area_range))
            keep = (~ignored).numpy()
            images.append(np.full(int(keep.sum()), i))
            labels.append(det_labels.numpy()[keep])
            scores.append(det_scores[order].numpy()[keep])
            tps.append(tp.numpy()[keep])
        image, label, score, tp = (
            np.concatenate(parts) if parts else np.zeros(0)
            for parts in (images, labels, scores, tps)
        )
        per_class = []
        for c in range(1, num_classes + 1):
            mask = label == c
            # stable, as the metric: ties keep the image order
            order = np.argsort(-score[mask], kind="stable")
            per_class.append((image[mask][order].astype(np.int64), tp[mask][order].astype(bool)))
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


def _average_precision(
    images: np.ndarray, tp: np.ndarray, npos: np.ndarray, weights: np.ndarray, use_07_metric: bool
) -> np.ndarray:
    """AP of one class under each row of ``weights`` [R, images]; NaN where it has no positive."""
    positives = weights @ npos  # [R]
    ap = np.full(weights.shape[0], np.nan)
    has = positives > 0
    if not tp.any():  # no true positive: AP 0 wherever the class has positives
        ap[has] = 0.0
        return ap
    # Detections after the last true positive only add false positives at the final recall:
    # they change no AP under any weights.
    last = int(np.flatnonzero(tp)[-1]) + 1
    images, tp = images[:last], tp[:last].astype(np.float64)
    step = max(1, _CHUNK_CELLS // last)
    for lo in range(0, weights.shape[0], step):
        w = weights[lo : lo + step][:, images]  # [r, D]
        tps = np.cumsum(w * tp, axis=1)
        fps = np.cumsum(w * (1.0 - tp), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tps / positives[lo : lo + step, None]
        precision = tps / np.maximum(tps + fps, np.finfo(np.float64).eps)
        if use_07_metric:
            points = [np.where(recall >= t, precision, 0.0).max(axis=1) for t in ELEVEN_POINTS]
            chunk = np.sum(points, axis=0) / 11.0
        else:
            envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
            gained = np.diff(recall, axis=1, prepend=0.0)
            chunk = (gained * envelope).sum(axis=1)
        ap[lo : lo + step] = np.where(has[lo : lo + step], chunk, np.nan)
    return ap


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
            _average_precision(images, tp, run.npos[:, c], weights, use_07_metric)
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
