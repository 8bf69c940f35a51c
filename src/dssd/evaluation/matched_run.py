"""A run's detections matched to the ground truth once, by the devkit's rule: the one type every
VOC figure of the suite reads from.

:class:`MatchedRun` holds the verdict of each detection (true positive, false positive, or
ignored on a difficult object; :func:`dssd.evaluation.matching.match_image`) and each image's
count of positives. From it come the VOC metric's AP (:class:`dssd.evaluation.metrics.VOCMeanAP`),
AP by object size by COCO's rule (:meth:`MatchedRun.for_size`), the bootstrap's AP under
resampled images (per-image weights, :mod:`dssd.evaluation.bootstrap`), the error analysis'
AP with each error type fixed (:mod:`dssd.analysis.errors`) and the precision-recall curves,
all through one AP function, :func:`average_precision`.

An image drawn k times by a resample counts its detections and its positives k times. (This
equals the AP of the resample with the image copied k times: the points of a precision/recall
curve that the copies would add in between are always dominated by a neighbour.)
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_area

from dssd.data.voc import read_voc_results
from dssd.evaluation.matching import best_matches, match_image

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


@dataclass(frozen=True, eq=False)
class ObjectSizes:
    """What COCO's rule for AP by object size needs besides the verdicts. Per detection: whether
    its IoU with its best object of the class is above the threshold, that object's area and its
    own box's area; per object: its image, label, difficult flag and area (pixels)."""

    det_above: np.ndarray
    det_match_area: np.ndarray
    det_area: np.ndarray
    gt_image: np.ndarray
    gt_label: np.ndarray
    gt_difficult: np.ndarray
    gt_area: np.ndarray


@dataclass(frozen=True, eq=False)
class MatchedRun:
    """One run's detections judged by the devkit's rules, flat over the images.

    Per detection: its ``image`` index, ``label`` (``1..C``), ``score``, and the ``tp`` and
    ``ignored`` flags (neither: a false positive). ``npos`` [images, C] counts each image's
    non-difficult objects per class. ``sizes`` is set when the run was built from boxes
    (:meth:`build`), for :meth:`for_size`.
    """

    image: np.ndarray
    label: np.ndarray
    score: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    npos: np.ndarray
    sizes: ObjectSizes | None = None

    @property
    def num_images(self) -> int:
        return self.npos.shape[0]

    @property
    def num_classes(self) -> int:
        return self.npos.shape[1]

    @classmethod
    def build(
        cls,
        detections: Sequence[Mapping[str, Any]],
        targets: Sequence[Mapping[str, Any]],
        num_classes: int,
        iou_threshold: float = 0.5,
    ) -> MatchedRun:
        """Match per-image ``detections`` ("boxes" in pixel edges, "scores", "labels") to
        ``targets`` ("boxes", "labels", "difficult"), aligned image by image."""
        if len(detections) != len(targets):
            raise ValueError(f"{len(detections)} images of detections, {len(targets)} of targets")
        columns: dict[str, list[np.ndarray]] = {name: [] for name in _FIELDS}
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
            columns["image"].append(np.full(len(labels), i))
            columns["label"].append(labels.numpy())
            columns["score"].append(scores[order].numpy())
            columns["tp"].append(tp.numpy())
            columns["ignored"].append(ignored.numpy())
            columns["det_above"].append((best > iou_threshold).numpy())
            columns["det_match_area"].append(areas[index].numpy() if len(areas) else best.numpy())
            columns["det_area"].append(box_area(boxes).numpy())
            columns["gt_image"].append(np.full(len(gt_labels), i))
            columns["gt_label"].append(gt_labels.numpy())
            columns["gt_difficult"].append(difficult.numpy())
            columns["gt_area"].append(areas.numpy())
        flat = {name: _concatenate(parts, _FIELDS[name]) for name, parts in columns.items()}
        counted = ~flat["gt_difficult"]
        npos = _count_positives(
            flat["gt_image"][counted], flat["gt_label"][counted], len(targets), num_classes
        )
        verdicts = {name: flat.pop(name) for name in ("image", "label", "score", "tp", "ignored")}
        return cls(**verdicts, npos=npos, sizes=ObjectSizes(**flat))

    @classmethod
    def from_results(
        cls,
        directory: str | Path,
        image_ids: Sequence[Any],
        targets: Sequence[Mapping[str, Any]],
        class_names: Sequence[str],
        iou_threshold: float = 0.5,
    ) -> MatchedRun:
        """Match the devkit result files in ``directory`` (``voc_results=``) to the test set
        given by ``image_ids`` and ``targets`` (:func:`results_per_image`)."""
        detections = results_per_image(directory, image_ids, class_names)
        return cls.build(detections, targets, len(class_names), iou_threshold)

    @classmethod
    def pooled(cls, score: Any, label: Any, tp: Any, ignored: Any, npos: Any) -> MatchedRun:
        """Verdicts already made, with every image's detections pooled as if of one image and
        ``npos`` [C] the positives of all: enough for the plain AP (no image weights), which is
        what the VOC metric's states and the error analysis hold. Arrays or tensors; ties in
        score keep the order given."""

        def array(value: Any, dtype: Any) -> np.ndarray:
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().numpy()
            return np.asarray(value).astype(dtype, copy=False)

        label = array(label, np.int64)
        return cls(
            image=np.zeros(len(label), np.int64),
            label=label,
            score=array(score, np.float64),
            tp=array(tp, bool),
            ignored=array(ignored, bool),
            npos=array(npos, np.int64)[None, :],
        )

    def for_size(self, area_range: tuple[float, float]) -> MatchedRun:
        """The run's verdicts by COCO's rule for AP by object size, for box areas (pixels) in
        ``[low, high)``: objects outside the range are ignored like difficult ones (so are the
        detections that match them), and so are the false positives whose own box is outside
        it.

        The devkit gives every detection its best object of the class whatever that object's
        size, so the rule only relabels the verdicts of all sizes: a true positive on an object
        outside the range is ignored, and the first detection on an object inside it stays
        its true positive."""
        s = self.sizes
        if s is None:
            raise ValueError("this run holds no boxes: build it with MatchedRun.build")
        low, high = area_range
        counted = ~s.gt_difficult & (s.gt_area >= low) & (s.gt_area < high)
        on_inside = (s.det_match_area >= low) & (s.det_match_area < high)
        inside = (s.det_area >= low) & (s.det_area < high)
        tp = self.tp & on_inside
        ignored = self.ignored | (s.det_above & ~on_inside) | (~tp & ~inside)
        npos = _count_positives(
            s.gt_image[counted], s.gt_label[counted], self.num_images, self.num_classes
        )
        return replace(self, tp=tp, ignored=ignored, npos=npos)

    @cached_property
    def by_class(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """For class ``c + 1`` at index ``c``: the (image index, TP flag) of every detection that
        is not ignored, by descending score (stable: ties keep the order of the run). An ignored
        detection adds neither a TP nor an FP, only a repeat of the curve's last point: leaving it
        out changes no AP."""
        keep = ~self.ignored
        image, label, score, tp = (a[keep] for a in (self.image, self.label, self.score, self.tp))
        per_class = []
        for c in range(1, self.num_classes + 1):
            mask = label == c
            order = np.argsort(-score[mask], kind="stable")
            per_class.append((image[mask][order], tp[mask][order]))
        return tuple(per_class)

    def class_aps(
        self, weights: np.ndarray | None = None, use_07_metric: bool = True
    ) -> np.ndarray:
        """The VOC AP of every class under each row of image ``weights`` [R, images] (default:
        every image once), as [R, C]; NaN where a class has no positive."""
        if weights is None:
            weights = np.ones((1, self.num_images))
        weights = np.asarray(weights, np.float64)
        return np.stack(
            [
                average_precision(images, tp, self.npos[:, c], weights, use_07_metric)
                for c, (images, tp) in enumerate(self.by_class)
            ],
            axis=1,
        )

    def mean_ap(self, weights: np.ndarray | None = None, use_07_metric: bool = True) -> np.ndarray:
        """The VOC mAP under each row of image ``weights`` [R, images] (default: every image
        once, the plain mAP), as [R]: the mean AP over the classes with positives."""
        aps = self.class_aps(weights, use_07_metric)
        with warnings.catch_warnings():  # a resample without any positive: NaN, no warning
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(aps, axis=1)

    def precision_recall(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Class ``c + 1``'s recall and precision after each of its detections, in score order."""
        _, tp = self.by_class[c]
        tps, fps = np.cumsum(tp), np.cumsum(~tp)
        recall = tps / max(int(self.npos[:, c].sum()), 1)
        precision = tps / np.maximum(tps + fps, 1)
        return recall.astype(np.float64), precision.astype(np.float64)


# the flat per-detection, then per-object, arrays of MatchedRun.build and their dtypes
_FIELDS = {
    "image": np.int64,
    "label": np.int64,
    "score": np.float64,
    "tp": bool,
    "ignored": bool,
    "det_above": bool,
    "det_match_area": np.float64,
    "det_area": np.float64,
    "gt_image": np.int64,
    "gt_label": np.int64,
    "gt_difficult": bool,
    "gt_area": np.float64,
}


def _concatenate(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def _count_positives(
    image: np.ndarray, label: np.ndarray, num_images: int, num_classes: int
) -> np.ndarray:
    npos = np.zeros((num_images, num_classes), np.int64)
    np.add.at(npos, (image, label - 1), 1)
    return npos


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
