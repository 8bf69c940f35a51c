"""A run's detections matched once by the devkit's rule, scored by one AP function for every VOC
figure. An image drawn k times by a resample counts k times: the AP with the image copied k times
(the curve points the copies would add are always dominated by a neighbour)."""

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
from dssd.evaluation.matching import best_matches, check_finite_scores, in_range, match_image

# voc_eval.py's ``np.arange(0.0, 1.1, 0.1)``, i.e. ``i * 0.1``: 0.3, 0.6 and 0.7 are one ulp above
# their decimal values (a recall of exactly 3/10 misses 0.3), kept to match the reference.
ELEVEN_POINTS: tuple[float, ...] = tuple(i * 0.1 for i in range(11))
# At most this many replicate x detection cells are built at once (float64: 8 bytes each).
_CHUNK_CELLS = 4_000_000


def average_precision(
    images: np.ndarray, tp: np.ndarray, npos: np.ndarray, weights: np.ndarray, use_07_metric: bool
) -> np.ndarray:
    """VOC AP [R] of one class under each row of image ``weights`` [R, images] (NaN: no positive).
    ``images``, ``tp``: image and TP flag of its non-ignored detections by descending score;
    ``npos`` [images]: positives per image. ``use_07_metric``: VOC2007's mean over t in 0, 0.1, ...,
    1 of the best precision at recall >= t, else VOC2010+'s area under the precision envelope."""
    positives = weights @ npos  # [R]
    ap = np.full(weights.shape[0], np.nan)
    has = positives > 0
    if not tp.any():  # no true positive: AP 0 wherever the class has positives
        ap[has] = 0.0
        return ap
    # Either AP reads the precision only where the recall grows or at its best beyond a recall
    # level, i.e. at a TP: only TP columns are kept, and nothing after the last TP matters.
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
    """What AP by object size needs (areas in pixels). Per detection: its best object's IoU above
    the threshold, that object's area, its own area; per object: image, label, difficult, area."""

    det_above: np.ndarray
    det_match_area: np.ndarray
    det_area: np.ndarray
    gt_image: np.ndarray
    gt_label: np.ndarray
    gt_difficult: np.ndarray
    gt_area: np.ndarray


@dataclass(frozen=True, eq=False)
class MatchedRun:
    """One run's detections judged by the devkit's rules, flat over the images: per detection its
    ``image`` index, ``label`` (``1..C``), ``score``, ``tp`` and ``ignored`` flags (neither: FP);
    ``npos`` [images, C], each image's non-difficult objects; ``sizes`` from :meth:`build`."""

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
        """Match per-image ``detections`` (boxes in pixel edges, scores, labels) to ``targets``."""
        if len(detections) != len(targets):
            raise ValueError(f"{len(detections)} images of detections, {len(targets)} of targets")
        # with no image, one without detections or objects gives the arrays their dtypes
        empty = {"boxes": [], "scores": [], "labels": [], "difficult": []}
        pairs = list(zip(detections, targets, strict=True)) or [(empty, empty)]
        parts = []
        for i, (found, truth) in enumerate(pairs):
            gt_boxes = torch.as_tensor(np.asarray(truth["boxes"]), dtype=torch.float64)
            gt_boxes = gt_boxes.reshape(-1, 4)
            gt_labels = torch.as_tensor(np.asarray(truth["labels"]), dtype=torch.long)
            difficult = torch.as_tensor(np.asarray(truth["difficult"]), dtype=torch.bool)
            scores = torch.as_tensor(np.asarray(found["scores"]), dtype=torch.float64)
            check_finite_scores(scores, f"image {i}")
            order = torch.sort(scores, descending=True, stable=True).indices
            labels = torch.as_tensor(np.asarray(found["labels"]), dtype=torch.long)[order]
            boxes = torch.as_tensor(np.asarray(found["boxes"]), dtype=torch.float64)
            boxes = boxes.reshape(-1, 4)[order]
            tp, ignored = match_image(boxes, labels, gt_boxes, gt_labels, difficult, iou_threshold)
            index, best = best_matches(boxes, labels, gt_boxes, gt_labels)
            areas = box_area(gt_boxes)
            parts.append(
                {
                    "image": np.full(len(labels), i),
                    "label": labels.numpy(),
                    "score": scores[order].numpy(),
                    "tp": tp.numpy(),
                    "ignored": ignored.numpy(),
                    "det_above": (best > iou_threshold).numpy(),
                    "det_match_area": (areas[index] if len(areas) else best).numpy(),
                    "det_area": box_area(boxes).numpy(),
                    "gt_image": np.full(len(gt_labels), i),
                    "gt_label": gt_labels.numpy(),
                    "gt_difficult": difficult.numpy(),
                    "gt_area": areas.numpy(),
                }
            )
        flat = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        counted = ~flat["gt_difficult"]
        npos = _count_positives(
            flat["gt_image"][counted], flat["gt_label"][counted], len(targets), num_classes
        )
        verdicts = {name: flat.pop(name) for name in ("image", "label", "score", "tp", "ignored")}
        return cls(**verdicts, npos=npos, sizes=ObjectSizes(**flat))

    @classmethod
    def pooled(cls, score: Any, label: Any, tp: Any, ignored: Any, npos: Any) -> MatchedRun:
        """Verdicts already made (arrays or tensors), pooled as if of one image with ``npos`` [C]
        positives: enough for the plain AP. Ties in score keep the order given."""

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
        """The verdicts by COCO's rule for AP by size, areas (pixels) in ``area_range`` (both ends
        included, :func:`in_range`): objects outside are ignored like difficult ones, with the
        detections on them, and so are the false positives whose own box is outside; detections
        keep their best object of any size (COCO matches them again, objects inside first)."""
        s = self.sizes
        if s is None:
            raise ValueError("this run holds no boxes: build it with MatchedRun.build")
        counted = ~s.gt_difficult & in_range(s.gt_area, area_range)
        on_inside = in_range(s.det_match_area, area_range)
        inside = in_range(s.det_area, area_range)
        tp = self.tp & on_inside
        ignored = self.ignored | (s.det_above & ~on_inside) | (~tp & ~inside)
        npos = _count_positives(
            s.gt_image[counted], s.gt_label[counted], self.num_images, self.num_classes
        )
        return replace(self, tp=tp, ignored=ignored, npos=npos)

    @cached_property
    def by_class(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Per class (``c + 1`` at index ``c``): the (image index, TP flag) of its non-ignored
        detections (which alone move the AP), by descending score, ties in the run's order."""
        keep = ~self.ignored
        image, label, score, tp = (a[keep] for a in (self.image, self.label, self.score, self.tp))
        order = np.argsort(-score, kind="stable")
        image, label, tp = image[order], label[order], tp[order]
        return tuple((image[label == c], tp[label == c]) for c in range(1, self.num_classes + 1))

    def class_aps(
        self, weights: np.ndarray | None = None, use_07_metric: bool = True
    ) -> np.ndarray:
        """VOC AP [R, C] of every class under image ``weights`` [R, images] (default: each once)."""
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
        """VOC mAP [R] over the classes with positives, ``weights`` as in :meth:`class_aps`."""
        aps = self.class_aps(weights, use_07_metric)
        with warnings.catch_warnings():  # a resample without any positive: NaN, no warning
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(aps, axis=1)

    def precision_recall(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        """Class ``c + 1``'s recall and precision after each of its detections, in score order."""
        _, tp = self.by_class[c]
        tps = np.cumsum(tp)
        return tps / max(int(self.npos[:, c].sum()), 1), tps / np.maximum(tps + np.cumsum(~tp), 1)


def _count_positives(
    image: np.ndarray, label: np.ndarray, num_images: int, num_classes: int
) -> np.ndarray:
    npos = np.zeros((num_images, num_classes), np.int64)
    np.add.at(npos, (image, label - 1), 1)
    return npos


def results_per_image(
    directory: str | Path, image_ids: Sequence[Any], class_names: Sequence[str]
) -> list[dict[str, np.ndarray]]:
    """The detections ("boxes" in pixel edges, "scores", "labels") of the devkit result files in
    ``directory`` per image of ``image_ids``; an image outside the list is an error."""
    results = read_voc_results(directory, class_names)
    unknown = sorted(set(results) - {str(i) for i in image_ids})
    if unknown:
        raise ValueError(
            f"{directory}: detections for {len(unknown)} images that are not in the split scored "
            f"({len(image_ids)} images), e.g. {unknown[0]!r}"
        )
    empty = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    return [results.get(str(i), empty) for i in image_ids]
