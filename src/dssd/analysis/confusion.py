"""Confusion matrix with background: which classes a detector mistakes for which, and how often
it fires on background or misses an object, at one operating point (detections scoring at least
``score_threshold``; AP, by contrast, sweeps over all scores).

Rows are true classes, columns predicted classes, index ``C`` background: ``[t, p]`` counts objects
of class ``t`` matched by a detection of class ``p``, ``[C, p]`` detections that matched no object
(background or duplicates), ``[t, C]`` missed objects. Matching is class-agnostic, by COCO's greedy
rule (by descending score, each detection takes the free object of highest IoU, at least
``iou_threshold``; faster_coco_eval's ``PreviewResults``), so a detection on an object of another
class is a confusion rather than a false positive plus a miss.

Difficult objects are COCO's ignored (``iscrowd``) regions and appear nowhere: a detection that
takes no free non-difficult object is ignored when its crowd overlap (intersection over its own
area) with a difficult one is at least ``iou_threshold``. As the library counts a detection on a
crowd region as a matched pair and an unmatched one as a miss, the difficult objects are removed
from its ground truth before counting.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from faster_coco_eval import COCO
from faster_coco_eval.extra import PreviewResults

from dssd.data.coco import detections_to_coco_results
from dssd.errors import quiet_loggers
from dssd.evaluation.matching import check_image


def confusion_matrix(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> np.ndarray:
    """The ``[C + 1, C + 1]`` int64 confusion matrix (module doc) of ``preds`` against ``targets``,
    per-image dicts as :class:`dssd.evaluation.metrics.VOCMeanAP` takes them; raises ``ValueError``
    naming the image at fault."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if not 0 < iou_threshold < 1:
        raise ValueError(f"iou_threshold must lie in (0, 1), got {iou_threshold}")
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} prediction dicts but {len(targets)} target dicts")
    detections, annotations = [], []
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        p_boxes, p_scores, p_labels, t_boxes, t_labels, t_difficult = check_image(
            i, pred, target, num_classes
        )
        keep = p_scores >= score_threshold
        detections.append(
            {"boxes": p_boxes[keep], "scores": p_scores[keep], "labels": p_labels[keep]}
        )
        for (x0, y0, x1, y1), label, difficult in zip(
            t_boxes.tolist(), t_labels.tolist(), t_difficult.tolist(), strict=True
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": int(difficult),
                    "category_id": label,
                }
            )
    classes = range(1, num_classes + 1)
    truth = {
        "images": [{"id": i + 1} for i in range(len(targets))],
        "annotations": annotations,
        "categories": [{"id": c, "name": str(c)} for c in classes],
    }
    # faster_coco_eval's progress and warning log lines hidden (its errors still show)
    with quiet_loggers("faster_coco_eval", level=logging.ERROR):
        gt = COCO(truth)
        results = detections_to_coco_results(
            detections, range(1, len(preds) + 1), {c: c for c in classes}
        )
        # Detections are handed over after construction, so that they are not deep-copied.
        preview = PreviewResults(gt, iou_tresh=iou_threshold, useCats=False)
        preview.cocoDt = gt.loadRes(results)
        preview.evaluate()
        if not preview.cocoEval.matched:
            raise RuntimeError("faster_coco_eval failed to match detections to objects")
        for annotation in annotations:
            if annotation["iscrowd"]:
                del preview.cocoGt.anns[annotation["id"]]
        counts = preview.compute_confusion_matrix()  # [C, C + 2]: pairs, then fp and fn columns
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    matrix[:num_classes, :num_classes] = counts[:, :num_classes]
    matrix[num_classes, :num_classes] = counts[:, num_classes]
    matrix[:num_classes, num_classes] = counts[:, num_classes + 1]
    return matrix
