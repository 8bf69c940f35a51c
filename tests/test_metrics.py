"""Tests of dssd.evaluation.metrics.VOCMeanAP against an independent port of the devkit's
voc_eval.py.

The reference (``tests/devkit.py``) imports nothing from dssd and works in the devkit's own
coordinates (1-based inclusive pixel indices, ``+1`` on widths); the metric takes boxes in pixel
edges, the project's convention, so the reference is fed the same boxes converted to the
devkit's (xmin + 1, ymin + 1, xmax, ymax).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devkit import evaluate_class
from dssd.evaluation.matched_run import MatchedRun
from dssd.evaluation.metrics import VOCMeanAP

# ---------------------------------------------------------------------------------------------
# The reference on lists of dicts of tensors
# ---------------------------------------------------------------------------------------------


def to_devkit(boxes: torch.Tensor) -> list[list[float]]:
    """Pixel-edge boxes as the devkit's 1-based inclusive indices."""
    return (boxes.double().reshape(-1, 4) + torch.tensor([1.0, 1.0, 0.0, 0.0])).tolist()


def ref_voc_eval(
    preds: list[dict],
    targets: list[dict],
    classname: int,
    ovthresh: float = 0.5,
    use_07_metric: bool = True,
) -> tuple[float, dict[str, int]]:
    """AP of one class (NaN without positives) and counts of TP / FP / ignored / duplicates."""
    recs = {}
    for imagename, t in enumerate(targets):
        difficult = t.get("difficult", torch.zeros(len(t["labels"]), dtype=torch.bool))
        recs[imagename] = [
            {"name": int(label), "difficult": int(d), "bbox": box}
            for label, d, box in zip(t["labels"], difficult, to_devkit(t["boxes"]), strict=True)
        ]
    detections = [
        (imagename, float(score), box)
        for imagename, p in enumerate(preds)
        for label, score, box in zip(p["labels"], p["scores"], to_devkit(p["boxes"]), strict=True)
        if int(label) == classname
    ]
    return evaluate_class(recs, detections, classname, ovthresh, use_07_metric)


def ref_all(preds, targets, num_classes, **kwargs) -> tuple[np.ndarray, dict[str, int]]:
    aps, totals = [], {"tp": 0, "fp": 0, "ignored": 0, "duplicate": 0}
    for c in range(1, num_classes + 1):
        ap, counts = ref_voc_eval(preds, targets, c, **kwargs)
        aps.append(ap)
        for k in totals:
            totals[k] += counts[k]
    return np.array(aps), totals


# ---------------------------------------------------------------------------------------------
# Data helpers
# ---------------------------------------------------------------------------------------------


def random_case(seed: int, n_images: int = 12, num_classes: int = 4, ties: bool = False):
    """Images with random gts; detections near gts (right or wrong class, duplicates), random
    boxes, on tenth-pixel coordinates (like the devkit's files) so that IoU ties also happen."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    def randint(lo, hi, shape=()):
        return torch.randint(lo, hi, shape, generator=g)

    preds, targets = [], []
    for _ in range(n_images):
        m = int(randint(0, 6))
        xy = rand(m, 2) * 200
        wh = 10 + rand(m, 2) * 80
        gt = torch.cat([xy, xy + wh], 1).round(decimals=0)
        gt_labels = randint(1, num_classes + 1, (m,))
        difficult = rand(m) < 0.2
        boxes, labels = [], []
        for j in range(m):
            for _ in range(int(randint(0, 4))):  # 0..3 detections per gt: TPs and duplicates
                jitter = (rand(4) - 0.5) * wh[j].repeat(2) * 0.5
                boxes.append(gt[j] + jitter)
                labels.append(gt_labels[j] if rand(()) < 0.85 else randint(1, num_classes + 1))
        for _ in range(int(randint(0, 4))):  # background detections
            xy0 = rand(2) * 200
            boxes.append(torch.cat([xy0, xy0 + 10 + rand(2) * 60]))
            labels.append(randint(1, num_classes + 1))
        n = len(boxes)
        p_boxes = torch.stack(boxes).round(decimals=1) if n else torch.zeros(0, 4)
        scores = rand(n)
        if ties:
            scores = scores.round(decimals=1)
        preds.append(
            {
                "boxes": p_boxes.float(),
                "scores": scores.float(),
                "labels": torch.stack(labels).long() if n else torch.zeros(0, dtype=torch.long),
            }
        )
        targets.append({"boxes": gt.float(), "labels": gt_labels, "difficult": difficult})
    return preds, targets


def pred(boxes, scores, labels) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.as_tensor(scores, dtype=torch.float32),
        "labels": torch.as_tensor(labels, dtype=torch.long),
    }


def target(boxes, labels, difficult=None) -> dict[str, torch.Tensor]:
    out = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.long),
    }
    if difficult is not None:
        out["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return out


def evaluate(preds, targets, num_classes=1, **kwargs) -> dict[str, torch.Tensor]:
    metric = VOCMeanAP(num_classes, **kwargs)
    metric.update(preds, targets)
    return metric.compute()


def assert_same_result(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]) or (
            torch.isnan(a[k]).any() and torch.allclose(a[k], b[k], equal_nan=True, atol=0)
        ), k


A = [10, 10, 60, 60]  # 50 x 50 pixels (edges)
B = [100, 100, 150, 150]
FAR = [300, 300, 350, 350]


# ---------------------------------------------------------------------------------------------
# Against the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_on_random_cases(seed: int, use_07_metric: bool) -> None:
    num_classes = 4
    preds, targets = random_case(seed, num_classes=num_classes, ties=seed % 2 == 1)
    expected, counts = ref_all(preds, targets, num_classes, use_07_metric=use_07_metric)
    # The case exercises every branch of the devkit's loop.
    assert counts["tp"] > 0 and counts["fp"] > 0 and counts["duplicate"] > 0
    assert counts["ignored"] > 0
    result = evaluate(preds, targets, num_classes, use_07_metric=use_07_metric)
    np.testing.assert_allclose(result["ap_per_class"].numpy(), expected, atol=1e-6)
    assert not np.isnan(expected).any()
    assert result["map"].item() == pytest.approx(expected.mean(), abs=1e-6)
    assert result["classes"].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_matches_reference_at_other_thresholds(threshold: float) -> None:
    preds, targets = random_case(100, n_images=8, num_classes=3)
    expected, _ = ref_all(preds, targets, 3, ovthresh=threshold)
    result = evaluate(preds, targets, 3, iou_threshold=threshold)
    np.testing.assert_allclose(result["ap_per_class"].numpy(), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Hand-computed cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_one_perfect_detection_is_ap_1(use_07_metric: bool) -> None:
    result = evaluate([pred([A], [0.9], [1])], [target([A], [1])], use_07_metric=use_07_metric)
    # One class: torchmetrics squeezes the one-element tensors to 0-d.
    assert result["ap_per_class"].shape == () and result["classes"].item() == 1
    assert result["ap_per_class"].item() == 1.0
    assert result["map"].item() == 1.0


@pytest.mark.parametrize(("use_07_metric", "expected"), [(True, 0.5), (False, 0.5)])
def test_one_tp_ranked_below_one_fp(use_07_metric: bool, expected: float) -> None:
    # rec = [0, 1], prec = [0, 1/2]: the max precision at every recall level is 1/2.
    preds = [pred([FAR, A], [0.9, 0.8], [1, 1])]
    result = evaluate(preds, [target([A], [1])], use_07_metric=use_07_metric)
    assert result["map"].item() == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize(("use_07_metric", "expected"), [(True, 28 / 33), (False, 5 / 6)])
def test_fp_between_two_tps(use_07_metric: bool, expected: float) -> None:
    # rec = [.5, .5, 1], prec = [1, .5, 2/3]. 11-point: t = 0..0.5 (6 points) -> 1, t = 0.6..1
    # (5 points) -> 2/3, so (6 + 10/3) / 11 = 28/33. All-point: .5 * 1 + .5 * 2/3 = 5/6.
    preds = [pred([A, FAR, B], [0.9, 0.8, 0.7], [1, 1, 1])]
    result = evaluate(preds, [target([A, B], [1, 1])], use_07_metric=use_07_metric)
    assert result["map"].item() == pytest.approx(expected, abs=1e-7)


def test_duplicate_detection_is_a_false_positive() -> None:
    dup = [11, 11, 61, 61]
    # Same numbers as test_fp_between_two_tps: the duplicate of A plays the FP.
    preds = [pred([A, dup, B], [0.9, 0.8, 0.7], [1, 1, 1])]
    assert evaluate(preds, [target([A, B], [1, 1])])["map"].item() == pytest.approx(28 / 33)
    # The higher-scored one of the two is the TP, whatever the input order.
    preds = [pred([B, dup, A], [0.7, 0.8, 0.9], [1, 1, 1])]
    assert evaluate(preds, [target([A, B], [1, 1])])["map"].item() == pytest.approx(28 / 33)
    # Without the duplicate: AP 1.
    preds = [pred([A, B], [0.9, 0.7], [1, 1])]
    assert evaluate(preds, [target([A, B], [1, 1])])["map"].item() == 1.0


def test_detection_takes_its_best_gt_even_when_already_taken() -> None:
    # Two overlapping gts. The second detection overlaps the taken gt G1 most (IoU 0.9) and the
    # free gt G2 above the threshold too (IoU ~0.6): the devkit makes it a duplicate FP, and G2
    # stays unmatched.
    g1 = [0, 0, 100, 100]
    g2 = [0, 25, 100, 125]
    det2 = [0, 5, 100, 105]
    preds = [pred([g1, det2], [0.9, 0.8], [1, 1])]
    targets = [target([g1, g2], [1, 1])]
    # rec = [.5, .5], prec = [1, .5]: 11-point 6/11, all-point 0.5.
    assert evaluate(preds, targets)["map"].item() == pytest.approx(6 / 11)
    assert evaluate(preds, targets, use_07_metric=False)["map"].item() == pytest.approx(0.5)
    expected, counts = ref_all(preds, targets, 1)
    assert counts == {"tp": 1, "fp": 1, "ignored": 0, "duplicate": 1}
    assert expected[0] == pytest.approx(6 / 11)


def test_detection_on_difficult_gt_is_ignored() -> None:
    # The top detection hits a difficult object: neither TP nor FP, so precision stays 1.
    preds = [pred([B, A], [0.9, 0.8], [1, 1])]
    targets = [target([A, B], [1, 1], difficult=[False, True])]
    assert evaluate(preds, targets)["map"].item() == 1.0
    assert evaluate(preds, targets, use_07_metric=False)["map"].item() == 1.0
    # Missing the difficult object costs nothing either: npos counts only non-difficult gts.
    assert evaluate([pred([A], [0.8], [1])], targets)["map"].item() == 1.0
    # Duplicates on a difficult object are ignored too (it is never "taken").
    preds = [pred([B, B, A], [0.9, 0.85, 0.8], [1, 1, 1])]
    assert evaluate(preds, targets)["map"].item() == 1.0


def test_class_absent_from_an_image() -> None:
    # Class 2 has one gt, in image 1. A class-2 detection in image 0, scored higher, is a FP even
    # though image 0 has a class-1 object at that very place.
    preds = [pred([A, A], [0.9, 0.95], [1, 2]), pred([B], [0.5], [2])]
    targets = [target([A], [1]), target([B], [2])]
    result = evaluate(preds, targets, num_classes=2)
    assert result["ap_per_class"].tolist() == pytest.approx([1.0, 0.5])
    assert result["map"].item() == pytest.approx(0.75)


def test_images_without_detections() -> None:
    # Two gts of which one image's is never detected: recall tops at 1/2.
    empty = {
        "boxes": torch.tensor([]),  # shape [0] accepted like torchmetrics' MeanAveragePrecision
        "scores": torch.tensor([]),
        "labels": torch.tensor([], dtype=torch.long),
    }
    preds = [pred([A], [0.9], [1]), empty]
    targets = [target([A], [1]), target([B], [1])]
    assert evaluate(preds, targets)["map"].item() == pytest.approx(6 / 11)
    assert evaluate(preds, targets, use_07_metric=False)["map"].item() == pytest.approx(0.5)
    # No detections at all: AP 0 (not NaN: the class has positives).
    none = [pred([], [], []), pred([], [], [])]
    result = evaluate(none, targets)
    assert result["ap_per_class"].item() == 0.0
    assert result["map"].item() == 0.0


def test_images_without_gts() -> None:
    # Detections on an image with no objects are FPs; an image with neither changes nothing.
    preds = [pred([A], [0.8], [1]), pred([A], [0.9], [1]), pred([], [], [])]
    targets = [target([A], [1]), target([], []), target([], [])]
    assert evaluate(preds, targets)["map"].item() == pytest.approx(0.5)
    expected, _ = ref_all(preds, targets, 1)
    assert expected[0] == pytest.approx(0.5)


def test_class_without_positives_is_nan_and_left_out_of_map() -> None:
    # Class 2: detections but no gt. Class 3: only a difficult gt. Class 4: nothing at all.
    preds = [pred([A, B, FAR], [0.9, 0.8, 0.7], [1, 2, 3])]
    targets = [target([A, FAR], [1, 3], difficult=[False, True])]
    result = evaluate(preds, targets, num_classes=4)
    ap = result["ap_per_class"]
    assert ap[0].item() == 1.0
    assert torch.isnan(ap[1:]).all()
    assert result["map"].item() == 1.0
    # No class with positives at all: map is NaN too.
    assert torch.isnan(evaluate(preds, [target([], [])], num_classes=4)["map"])
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert torch.isnan(VOCMeanAP(2).compute()["map"])  # compute before any update


def test_iou_exactly_at_threshold_is_not_a_match() -> None:
    gt = [0, 0, 10, 20]  # 10 x 20 pixels: in the devkit's indices 1..10 x 1..20
    det = [0, 0, 10, 10]  # 10 x 10 inside it: IoU = 100 / 200 = 0.5 exactly
    preds, targets = [pred([det], [0.9], [1])], [target([gt], [1])]
    assert evaluate(preds, targets)["map"].item() == 0.0  # `>`, not `>=`
    assert evaluate(preds, targets, iou_threshold=0.49)["map"].item() == 1.0
    expected, _ = ref_all(preds, targets, 1)
    assert expected[0] == 0.0
    expected, _ = ref_all(preds, targets, 1, ovthresh=0.49)
    assert expected[0] == pytest.approx(1.0)


def test_small_boxes_are_not_inflated() -> None:
    # A 6 x 6 object and a detection shifted by 2 pixels: IoU 4 * 6 / (2 * 36 - 24) = 0.5, not
    # a match. Adding +1 to the widths of pixel-edge boxes (a second +1 on top of the edges')
    # would give 5 * 7 / (2 * 49 - 35) = 0.556 and a true positive.
    preds, targets = [pred([[12, 10, 18, 16]], [0.9], [1])], [target([[10, 10, 16, 16]], [1])]
    assert evaluate(preds, targets)["map"].item() == 0.0
    assert ref_all(preds, targets, 1)[0][0] == 0.0


def test_eleven_point_thresholds_follow_voc_eval_py() -> None:
    # voc_eval.py's thresholds np.arange(0, 1.1, 0.1) put 0.3 one ulp above 3/10, so a recall of
    # exactly 3/10 does not count at t = 0.3: 3 TPs out of 10 positives give 3/11, not 4/11.
    gts = [[100 * k, 0, 100 * k + 50, 50] for k in range(10)]
    preds = [pred(gts[:3], [0.9, 0.8, 0.7], [1, 1, 1])]
    targets = [target(gts, [1] * 10)]
    assert evaluate(preds, targets)["map"].item() == pytest.approx(3 / 11, abs=1e-7)
    expected, _ = ref_all(preds, targets, 1)
    assert expected[0] == pytest.approx(3 / 11)


# ---------------------------------------------------------------------------------------------
# State handling: batching, reset, DDP-style merging
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_chunked_updates_equal_one_update(use_07_metric: bool) -> None:
    preds, targets = random_case(7, n_images=15, ties=True)
    whole = evaluate(preds, targets, 4, use_07_metric=use_07_metric)
    metric = VOCMeanAP(4, use_07_metric=use_07_metric)
    for lo, hi in [(0, 1), (1, 6), (6, 6), (6, 13), (13, 15)]:
        metric.update(preds[lo:hi], targets[lo:hi])
    assert_same_result(metric.compute(), whole)


def test_reset() -> None:
    preds, targets = random_case(3)
    metric = VOCMeanAP(4)
    metric.update([pred([FAR], [0.9], [1])], [target([A], [1])])
    assert metric.compute()["map"].item() == 0.0
    metric.reset()
    assert metric.npos.sum().item() == 0 and metric.scores == []
    metric.update(preds, targets)
    assert_same_result(metric.compute(), evaluate(preds, targets, 4))


def test_states_are_flat() -> None:
    preds, targets = random_case(4)
    metric = VOCMeanAP(4)
    metric.update(preds[:5], targets[:5])
    metric.update(preds[5:], targets[5:])
    reductions = {name: getattr(fx, "__name__", fx) for name, fx in metric._reductions.items()}
    assert reductions == {
        "scores": "dim_zero_cat",
        "labels": "dim_zero_cat",
        "tp": "dim_zero_cat",
        "ignored": "dim_zero_cat",
        "npos": "dim_zero_sum",
    }
    n = sum(len(p["scores"]) for p in preds)
    for name in ("scores", "labels", "tp", "ignored"):
        state = getattr(metric, name)
        assert len(state) == 2 and all(t.ndim == 1 for t in state)
        assert sum(len(t) for t in state) == n
    assert metric.npos.shape == (4,)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_merge_state_like_a_ddp_gather() -> None:
    preds, targets = random_case(5, n_images=16)
    whole = evaluate(preds, targets, 4)

    first, second = VOCMeanAP(4), VOCMeanAP(4)
    first.update(preds[:9], targets[:9])
    second.update(preds[9:], targets[9:])
    # merge_state puts the incoming states first: second.merge_state(first) is first + second.
    second.merge_state(first)
    assert_same_result(second.compute(), whole)

    # What torchmetrics' sync does by hand: concatenate each rank's cat states, add the sums.
    ranks = [VOCMeanAP(4) for _ in range(3)]
    ranks[0].update(preds[:4], targets[:4])
    ranks[1].update(preds[4:10], targets[4:10])
    ranks[1].update(preds[10:], targets[10:])
    # ranks[2] saw no data: torchmetrics gathers an empty float tensor for its list states.
    gathered = VOCMeanAP(4)
    for name in ("scores", "labels", "tp", "ignored"):
        parts = [
            torch.cat(getattr(r, name)) if getattr(r, name) else torch.tensor([]) for r in ranks
        ]
        setattr(gathered, name, torch.cat(parts))
    gathered.npos = sum(r.npos for r in ranks)
    assert_same_result(gathered.compute(), whole)


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preds", "targets", "match"),
    [
        ([pred([A], [0.9], [1])], [], "one entry per image"),
        (pred([A], [0.9], [1]), target([A], [1]), "lists of dicts"),
        ([{"boxes": torch.zeros(1, 4), "labels": torch.ones(1)}], [target([A], [1])], "scores"),
        ([pred([A], [0.9], [1])], [{"boxes": torch.zeros(1, 4)}], "labels"),
        ([pred([A], [0.9], [1])], ["not a dict"], "must be a dict"),
        ([pred([A], [0.9], [1])], [target([A], [1], difficult=[True, False])], "difficult"),
        ([pred([A], [0.9, 0.8], [1])], [target([A], [1])], "scores"),
        (
            [{"boxes": torch.zeros(1, 5), "scores": torch.ones(1), "labels": torch.ones(1).long()}],
            [target([A], [1])],
            r"\[N, 4\]",
        ),
        ([pred([A], [0.9], [0])], [target([A], [1])], "background"),
        ([pred([A], [0.9], [1])], [target([A], [3])], r"1\.\.2"),
        ([dict(pred([A], [0.9], [1]), labels=torch.ones(1))], [target([A], [1])], "integers"),
        ([pred([A, A], [0.9, float("nan")], [1, 1])], [target([A], [1])], "finite"),
        ([pred([A], [float("inf")], [1])], [target([A], [1])], "finite"),
    ],
)
def test_invalid_input_raises(preds, targets, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        VOCMeanAP(2).update(preds, targets)


def test_a_matched_run_refuses_a_nan_score() -> None:
    """torch.sort puts NaN first, where it would take the object, and the AP's order last."""
    found = {"boxes": [A, A], "scores": [0.9, float("nan")], "labels": [1, 1]}
    truth = {"boxes": [A], "labels": [1], "difficult": [False]}
    with pytest.raises(ValueError, match="image 0: detection scores must be finite"):
        MatchedRun.build([found], [truth], 2)


def test_constructor_validation() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        VOCMeanAP(0)
    with pytest.raises(ValueError, match="iou_threshold"):
        VOCMeanAP(2, iou_threshold=1.5)


def test_identical_gts_tie_goes_to_the_first_like_np_argmax() -> None:
    # Two gts on the same box: every detection's best gt is the first one (np.argmax), so the
    # second detection is a duplicate although the second gt is free. 11-point: rec = [.5, .5].
    preds = [pred([A, A], [0.9, 0.8], [1, 1])]
    targets = [target([A, A], [1, 1])]
    assert evaluate(preds, targets)["map"].item() == pytest.approx(6 / 11)
    expected, counts = ref_all(preds, targets, 1)
    assert counts["duplicate"] == 1 and expected[0] == pytest.approx(6 / 11)
    # With the first one difficult, both detections are ignored and the second gt is missed.
    targets = [target([A, A], [1, 1], difficult=[True, False])]
    assert evaluate(preds, targets)["map"].item() == 0.0
    expected, counts = ref_all(preds, targets, 1)
    assert counts["ignored"] == 2 and expected[0] == 0.0
