"""The range of VOC APs that near-tied scores allow, for comparing the AP of two code paths.

Two computations of one detector (eager and exported, batch norms folded or not, another batch
composition or device) give scores that differ in their last bits, so detections whose scores
nearly tie can be ranked either way, and each way has its own AP. An AP from one path is
therefore checked against the range of APs the other path's detections give over every ranking
of their near-ties, not against a fixed tolerance: a tie can move an AP by more than any small
fixed tolerance (a class with few objects), and a fixed large one would hide real differences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dssd.analysis.analyser import find_run, load_test_detections, load_test_split
from dssd.deployment.detector import Detector
from dssd.evaluation.matched_run import MatchedRun
from dssd.evaluation.matching import check_image, match_image


def ap_range_over_ties(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    tolerance: float,
    use_07_metric: bool = True,
) -> tuple[Tensor, Tensor]:
    """The lowest and the highest VOC AP of each class (NaN without positives) over the rankings
    of the detections whose scores lie within ``tolerance`` of each other (chained), the
    devkit's matching applied as the metric applies it (``preds`` and ``targets`` as
    :class:`dssd.evaluation.metrics.VOCMeanAP` takes them). The lowest ranks each group of near-ties
    false positives first, the highest true positives first; with no near-ties both are the AP."""
    scores, labels, tp = [], [], []
    npos = torch.zeros(num_classes, dtype=torch.long)
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        boxes, p_scores, p_labels, t_boxes, t_labels, t_difficult = check_image(
            i, pred, target, num_classes
        )
        npos += torch.bincount(t_labels[~t_difficult] - 1, minlength=num_classes)
        flags, ignored = match_image(boxes, p_labels, t_boxes, t_labels, t_difficult)
        scores.append(p_scores[~ignored].double())
        labels.append(p_labels[~ignored])
        tp.append(flags[~ignored])
    scores, labels, tp = torch.cat(scores), torch.cat(labels), torch.cat(tp)
    # by class, then by decreasing score; a new group where the class changes or a gap exceeds
    # the tolerance
    order = torch.argsort(-scores, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]
    scores, labels, tp = scores[order], labels[order], tp[order]
    breaks = (labels[1:] != labels[:-1]) | (scores[:-1] - scores[1:] > tolerance)
    group = torch.cat([torch.zeros(1, dtype=torch.long), breaks.long().cumsum(0)])
    bounds = []
    for true_positives_first in (False, True):
        flag = tp.long() if true_positives_first else 1 - tp.long()
        # within a group, the chosen kind first; scores that keep this order when ranked
        ranked = torch.argsort(group * 2 + (1 - flag), stable=True)
        rank_scores = -torch.arange(len(ranked), dtype=torch.float64)
        none_ignored = torch.zeros_like(tp)
        run = MatchedRun.pooled(rank_scores, labels[ranked], tp[ranked], none_ignored, npos)
        bounds.append(torch.from_numpy(run.class_aps(use_07_metric=use_07_metric)[0]))
    return bounds[0], bounds[1]


# Scores of one network computed by two code paths in one precision differ by less than this
# (eager PyTorch against onnxruntime in float32: up to 1e-6 on the tiny test runs)
SCORE_TOLERANCE = 1e-5


def analysed_ap_ranges(run: Path, precision: str | None = None) -> dict[str, tuple[float, float]]:
    """The range over near-ties of each class's AP (class name to lowest and highest), of the
    test detections that src/analyze.py computes for ``run`` (a run directory or checkpoint), in
    the run's precision or in ``precision``: near-ties are ties within one precision, so a
    float32 code path (an exported file) is compared with the checkpoint in float32."""
    found = find_run(run)
    if precision is None:
        test = load_test_detections(found, source="checkpoint")
        preds = test.preds
    else:  # the same images and batches, in ``precision``
        detector = Detector.from_checkpoint(found.checkpoint, fold_bn=False, precision=precision)
        detector.batch_size = int(detector.run_config.data.batch_size)
        test = load_test_split(detector.run_config)
        preds = detector.predict(list(test.image_paths))
    low, high = ap_range_over_ties(
        preds, test.targets, len(test.class_names), SCORE_TOLERANCE, test.use_07_metric
    )
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(test.class_names)}


def map_range(ranges: dict[str, tuple[float, float]]) -> tuple[float, float]:
    """The range of the mAP, the mean AP of the classes with positives, from their ranges."""
    bounds = [b for b in ranges.values() if not math.isnan(b[0])]
    return sum(b[0] for b in bounds) / len(bounds), sum(b[1] for b in bounds) / len(bounds)


def within(value: float, bounds: tuple[float, float], margin: float = 1e-6) -> bool:
    """Whether ``value`` lies in ``bounds`` to ``margin`` (the float32 and the six digits the
    metrics and tables report); NaN (no positives) only in NaN bounds."""
    low, high = bounds
    if math.isnan(value) or math.isnan(low):
        return math.isnan(value) and math.isnan(low) and math.isnan(high)
    return low - margin <= value <= high + margin
