"""Tests of dssd.analysis.errors: TIDE error types and their dAP.

Hand-built images whose verdicts and APs are worked out by hand, the base mAP against
dssd.evaluation.metrics.VOCMeanAP, and (when the ``tidecv`` package is installed) the error counts
and the fixed detections against TIDE's own implementation on random images.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dssd.analysis.errors import ERROR_TYPES, Verdict, analyse_errors
from dssd.evaluation.matched_run import MatchedRun
from dssd.evaluation.metrics import VOCMeanAP
from hand_built import box, image

# ---------------------------------------------------------------------------------------------
# Every error type on one image
# ---------------------------------------------------------------------------------------------

# Objects 100 px apart; a shift of 5 px of a 10 px square gives IoU 50 / 150 = 1/3 (in [0.1, 0.5]).
OBJECTS = [
    (1, box(0)),  # taken by the first detection
    (1, box(100)),  # taken, then a duplicate
    (2, box(200)),  # found with the wrong class
    (1, box(300)),  # badly localised
    (2, box(400)),  # wrong class and badly localised: TIDE does not count it as found
    (1, box(500)),  # nothing near it
    (1, box(600)),  # difficult
]
DIFFICULT = [False] * 6 + [True]
# (score, label, box, expected verdict), given out of score order on purpose
DETECTIONS = [
    (0.70, 1, box(405), Verdict.BOTH),
    (0.95, 1, box(0), Verdict.TP),
    (0.85, 1, box(101), Verdict.DUPL),
    (0.90, 1, box(100), Verdict.TP),
    (0.80, 1, box(200), Verdict.CLS),
    (0.75, 1, box(305), Verdict.LOC),
    (0.65, 1, box(800, 800), Verdict.BKG),
    (0.60, 1, box(600), Verdict.IGNORED),
]


def test_every_error_type_on_one_image() -> None:
    pred, target = image([d[:3] for d in DETECTIONS], OBJECTS, DIFFICULT)
    result = analyse_errors([pred], [target], num_classes=2)
    verdicts = result.images[0].verdict.tolist()
    assert verdicts == [int(d[3]) for d in DETECTIONS]
    assert result.images[0].missed.tolist() == [False] * 4 + [True, True, False]
    assert result.counts == {"cls": 1, "loc": 1, "both": 1, "dupl": 1, "bkg": 1, "miss": 2}
    # by the detection's label (all class 1), by the object's for the missed ones
    assert result.counts_per_class["cls"].tolist() == [1, 0]
    assert result.counts_per_class["miss"].tolist() == [1, 1]
    # the classification error would be a true positive of the object's class
    cls = [i for i, d in enumerate(DETECTIONS) if d[3] == Verdict.CLS][0]
    assert bool(result.images[0].fixed[cls]) and int(result.images[0].fixed_label[cls]) == 2


def test_numpy_input_gives_the_same_verdicts() -> None:
    pred, target = image([d[:3] for d in DETECTIONS], OBJECTS, DIFFICULT)
    as_numpy = [{k: v.numpy() for k, v in d.items()} for d in (pred, target)]
    a = analyse_errors([pred], [target], num_classes=2)
    b = analyse_errors([as_numpy[0]], [as_numpy[1]], num_classes=2)
    assert torch.equal(a.images[0].verdict, b.images[0].verdict)
    assert a.counts == b.counts and a.map == b.map


def test_image_without_detections_or_objects() -> None:
    empty_pred, with_objects = image([], [(1, box(0)), (1, box(100))], [False, True])
    stray, no_objects = image([(0.5, 1, box(0))], [])
    result = analyse_errors([empty_pred, stray], [with_objects, no_objects], num_classes=1)
    assert result.images[0].missed.tolist() == [True, False]
    assert result.images[1].verdict.tolist() == [Verdict.BKG]
    assert result.counts["miss"] == 1 and result.counts["bkg"] == 1


def test_thresholds_are_checked() -> None:
    with pytest.raises(ValueError, match="bg_iou"):
        analyse_errors([], [], num_classes=1, fg_iou=0.1, bg_iou=0.5)
    with pytest.raises(ValueError, match="num_classes"):
        analyse_errors([], [], num_classes=0)
    pred, target = image([(0.5, 3, box(0))], [])
    with pytest.raises(ValueError, match="labels"):
        analyse_errors([pred], [target], num_classes=2)


# ---------------------------------------------------------------------------------------------
# dAP worked out by hand: one class, two objects A and B
# ---------------------------------------------------------------------------------------------

A, B = box(0), box(100)


def deltas(dets, gts, num_classes: int = 1, use_07_metric: bool = False):
    pred, target = image(dets, gts)
    return analyse_errors([pred], [target], num_classes, use_07_metric=use_07_metric)


def test_dap_background() -> None:
    # FP, TP, TP: precision 1/2 then 2/3 at recall 1/2 and 1 -> AP 2/3; without the FP: 1
    result = deltas([(0.9, 1, box(800)), (0.8, 1, A), (0.7, 1, B)], [(1, A), (1, B)])
    assert result.map == pytest.approx(2 / 3)
    assert result.delta_map["bkg"] == pytest.approx(1 / 3)
    assert all(result.delta_map[t] == 0 for t in ERROR_TYPES if t != "bkg")


def test_dap_duplicate() -> None:
    # TP, FP, TP: 1/2 * 1 + 1/2 * 2/3 = 5/6; without the duplicate: 1
    result = deltas([(0.9, 1, A), (0.8, 1, box(1)), (0.7, 1, B)], [(1, A), (1, B)])
    assert result.counts["dupl"] == 1
    assert result.map == pytest.approx(5 / 6)
    assert result.delta_map["dupl"] == pytest.approx(1 / 6)


def test_dap_localisation_fixes_only_the_best_error_per_object() -> None:
    # FP, FP, TP: 1/2 * 1/3 = 1/6. Fixed: the first error on B becomes a TP and the second one
    # goes (it would be its duplicate): TP, TP -> 1. Were it kept: TP, FP, TP -> 5/6.
    dets = [(0.9, 1, box(105)), (0.8, 1, box(104)), (0.7, 1, A)]
    result = deltas(dets, [(1, A), (1, B)])
    assert result.counts["loc"] == 2 and result.counts["miss"] == 0
    assert result.map == pytest.approx(1 / 6)
    assert result.delta_map["loc"] == pytest.approx(5 / 6)


def test_dap_missed_object_11_point() -> None:
    # One TP, B missed: recall 1/2 reaches 6 of the 11 thresholds -> 6/11; without B: 1
    result = deltas([(0.9, 1, A)], [(1, A), (1, B)], use_07_metric=True)
    assert result.counts["miss"] == 1
    assert result.map == pytest.approx(6 / 11)
    assert result.delta_map["miss"] == pytest.approx(5 / 11)


def test_dap_classification_moves_the_detection_to_the_right_class() -> None:
    # Class 1 has A, class 2 has B. A class-1 detection on B (FP), then a TP on A: class 1 AP 1/2,
    # class 2 AP 0, mAP 1/4. Fixed: both classes 1 -> mAP 1.
    result = deltas([(0.9, 1, B), (0.8, 1, A)], [(1, A), (2, B)], num_classes=2)
    assert result.counts["cls"] == 1 and result.counts["miss"] == 0
    assert result.map == pytest.approx(1 / 4)
    assert result.delta_map["cls"] == pytest.approx(3 / 4)
    assert result.delta_ap_per_class["cls"].tolist() == pytest.approx([1 / 2, 1])
    # counted in the detection's class; class 2 gains AP from a fix with no cls error of its own
    assert result.counts_per_class["cls"].tolist() == [1, 0]


def test_dap_both_removes_the_detection() -> None:
    # A class-1 detection near class-2 B (IoU 1/3), then a TP on A: class 1 AP 1/2, class 2 AP 0.
    # Fixing "both" removes it: class 1 AP 1, mAP 1/2. B is missed; without it class 2 has no
    # positives, so the mAP is class 1's alone: 1/2.
    result = deltas([(0.9, 1, box(105)), (0.8, 1, A)], [(1, A), (2, B)], num_classes=2)
    assert result.counts["both"] == 1 and result.counts["miss"] == 1
    assert result.map == pytest.approx(1 / 4)
    assert result.delta_map["both"] == pytest.approx(1 / 4)
    assert result.delta_map["miss"] == pytest.approx(1 / 4)


# ---------------------------------------------------------------------------------------------
# Random images: the base mAP is VOCMeanAP's; the counts and fixes are tidecv's
# ---------------------------------------------------------------------------------------------


def random_images(seed: int, num_images: int = 60, num_classes: int = 3):
    """Images of objects in disjoint grid cells (so that the devkit's matching and TIDE's agree)
    with detections that are jittered, relabelled or stray copies of them."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(num_images):
        cells = rng.choice(16, size=rng.integers(1, 6), replace=False)
        corner = np.stack([cells % 4, cells // 4], axis=1) * 100.0 + rng.uniform(
            0, 30, (len(cells), 2)
        )
        size = rng.uniform(20, 60, (len(cells), 2))
        gt = np.concatenate([corner, corner + size], axis=1)
        gt_labels = rng.integers(1, num_classes + 1, len(cells))
        source = rng.integers(0, len(cells), rng.integers(0, 12))
        jitter = rng.normal(0, 1, (len(source), 4)) * rng.choice([1.0, 6.0, 15.0], (len(source), 1))
        boxes = gt[source] + jitter * np.concatenate([size[source]] * 2, axis=1) / 20
        labels = np.where(
            rng.random(len(source)) < 0.2,
            rng.integers(1, num_classes + 1, len(source)),
            gt_labels[source],
        )
        stray = rng.uniform(0, 400, (rng.integers(0, 3), 2))
        boxes = np.concatenate([boxes, np.concatenate([stray, stray + 20], axis=1)])
        labels = np.concatenate([labels, rng.integers(1, num_classes + 1, len(stray))])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append(
            {
                "boxes": torch.tensor(boxes),
                "scores": torch.tensor(rng.random(len(boxes))),
                "labels": torch.tensor(labels),
            }
        )
        targets.append(
            {
                "boxes": torch.tensor(gt),
                "labels": torch.tensor(gt_labels),
                "difficult": torch.zeros(len(gt), dtype=torch.bool),
            }
        )
    return preds, targets


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_base_map_is_the_metrics(use_07_metric: bool) -> None:
    preds, targets = random_images(0)
    targets[0]["difficult"][0] = True
    metric = VOCMeanAP(num_classes=3, use_07_metric=use_07_metric)
    metric.update(preds, targets)
    expected = metric.compute()
    result = analyse_errors(preds, targets, num_classes=3, use_07_metric=use_07_metric)
    assert result.map == pytest.approx(float(expected["map"]), abs=1e-6)
    assert result.ap_per_class.float().tolist() == pytest.approx(
        expected["ap_per_class"].tolist(), abs=1e-6
    )


def test_counts_and_fixes_match_tidecv() -> None:
    tidecv = pytest.importorskip("tidecv")
    from tidecv.errors import main_errors

    preds, targets = random_images(1)
    result = analyse_errors(preds, targets, num_classes=3, use_07_metric=False)
    assert sum(len(p["scores"]) for p in preds) >= 200

    gt, dets = tidecv.Data("gt"), tidecv.Data("dets")
    for i, (pred, target) in enumerate(zip(preds, targets, strict=True)):
        for b, c in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            gt.add_ground_truth(i, c, [b[0], b[1], b[2] - b[0], b[3] - b[1]])
        for b, s, c in zip(
            pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True
        ):
            dets.add_detection(i, c, s, [b[0], b[1], b[2] - b[0], b[3] - b[1]])
    run = tidecv.TIDE().evaluate(gt, dets, mode=tidecv.TIDE.BOX)
    types = {
        "cls": main_errors.ClassError,
        "loc": main_errors.BoxError,
        "both": main_errors.OtherError,
        "dupl": main_errors.DuplicateError,
        "bkg": main_errors.BackgroundError,
        "miss": main_errors.MissedError,
    }
    counts = run.count_errors()
    assert result.counts == {name: counts[kind] for name, kind in types.items()}
    assert min(result.counts.values()) > 0

    # TIDE's fixed detections, scored with the VOC AP, give our fixed APs
    for name, kind in types.items():
        fixed = run.fix_errors(lambda error, kind=kind: isinstance(error, kind))
        scores, labels, tp = [], [], []
        npos = torch.zeros(3, dtype=torch.long)
        for c, obj in fixed.objs.items():
            npos[c - 1] = obj.num_gt_positives
            for score, correct, _ in obj.data_points.values():
                scores.append(score)
                labels.append(c)
                tp.append(correct)
        ignored = np.zeros(len(scores), bool)
        run = MatchedRun.pooled(scores, labels, tp, ignored, npos)
        ap = run.class_aps(use_07_metric=False)[0]
        ours = result.ap_per_class + result.delta_ap_per_class[name]
        assert ours.tolist() == pytest.approx(ap.tolist(), abs=1e-9), name
