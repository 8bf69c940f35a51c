"""Confusion matrix with background: which classes a detector mistakes for which, and how often
it fires on background or misses an object.

The matrix has one row per true class and one column per predicted class, plus a background row
and column (index ``C``). Objects and detections are matched class-agnostically by COCO's greedy
rule (detections by descending score, each taking the free object of highest IoU, at least
``iou_threshold``), so a detection on an object of another class is a class confusion rather than
a false positive plus a miss:

- ``[t, p]``: objects of class ``t`` matched by a detection of class ``p`` (diagonal: correct);
- ``[C, p]``: detections of class ``p`` that matched no object (background or duplicates);
- ``[t, C]``: objects of class ``t`` that no detection matched (misses).

Unlike a ranking metric such as AP, which sweeps over all scores, a confusion matrix counts the
detections at one operating point: only those scoring at least ``score_threshold`` take part.

Difficult objects are COCO's ignored (``iscrowd``) regions and appear nowhere in the matrix,
neither as objects nor through the detections that land on them. As in COCO, a detection takes a
free non-difficult object first; failing that it is ignored when its overlap with a difficult
object (intersection over the detection's area, COCO's crowd overlap) is at least
``iou_threshold``, however many detections land there. The matching and counting are
faster_coco_eval's (``PreviewResults``); that library counts a detection on a crowd region as a
matched pair with it and an unmatched crowd region as a miss, so the difficult objects are removed
from its ground truth before counting.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from faster_coco_eval import COCO
from faster_coco_eval.extra import PreviewResults

from dssd.data.coco import detections_to_coco_results
from dssd.evaluation.matching import as_tensors, check_image


@contextmanager
def _quiet_library() -> Iterator[None]:
    """Silence faster_coco_eval's progress and warning log lines (its errors still show)."""
    library_logger = logging.getLogger("faster_coco_eval")
    level = library_logger.level
    library_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        library_logger.setLevel(level)


def confusion_matrix(
    preds: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.3,
) -> np.ndarray:
    """The ``[C + 1, C + 1]`` int64 confusion matrix of the detections ``preds`` against the ground
    truth ``targets`` (rows: true class, columns: predicted class, index ``C``: background).

    ``preds`` and ``targets`` are per-image dicts of tensors or numpy arrays, as
    :class:`dssd.evaluation.metrics.VOCMeanAP` takes them: pixel xyxy ``"boxes"``, ``"scores"`` and
    ``"labels"`` in ``1..num_classes``, and on the targets an optional boolean ``"difficult"``.
    Raises ``ValueError`` naming the image at fault.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if not 0 < iou_threshold < 1:
        raise ValueError(f"iou_threshold must lie in (0, 1), got {iou_threshold}")
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} prediction dicts but {len(targets)} target dicts")
    detections, annotations = [], []
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        p_boxes, p_scores, p_labels, t_boxes, t_labels, t_difficult = check_image(
            i,
            as_tensors(pred, ("boxes", "scores", "labels")),
            as_tensors(target, ("boxes", "labels", "difficult")),
            num_classes,
        )
        keep = p_scores >= score_threshold
        detections.append(
            {"boxes": p_boxes[keep], "scores": p_scores[keep], "labels": p_labels[keep]}
        )
        sizes = t_boxes[:, 2:] - t_boxes[:, :2]
        for box, size, label, difficult in zip(
            t_boxes.tolist(), sizes.tolist(), t_labels.tolist(), t_difficult.tolist(), strict=True
        ):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "bbox": [box[0], box[1], size[0], size[1]],
                    "area": size[0] * size[1],
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
    with _quiet_library():
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
        # The library counts a matched pair from the object's side and a false positive only
        # for an unmatched detection, so without the difficult objects their detections vanish.
        for annotation in annotations:
            if annotation["iscrowd"]:
                del preview.cocoGt.anns[annotation["id"]]
        counts = preview.compute_confusion_matrix()  # [C, C + 2]: pairs, then fp and fn columns
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    matrix[:num_classes, :num_classes] = counts[:, :num_classes]
    matrix[num_classes, :num_classes] = counts[:, num_classes]
    matrix[:num_classes, num_classes] = counts[:, num_classes + 1]
    return matrix
