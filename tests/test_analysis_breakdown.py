"""dssd.analysis.breakdown and .comparison: AP by object size on hand-built images with known
answers, curves and per-class figures against the VOC metric, and run-against-run deltas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from devkit import voc_ap
from dssd.analysis.breakdown import (
    COCO_SIZES,
    RunDetections,
    analyse_run,
    found_objects,
    interpolated_precision,
)
from dssd.analysis.comparison import compare, most_different
from dssd.evaluation.bootstrap import paired_differences
from dssd.evaluation.matched_run import MatchedRun
from dssd.evaluation.matching import in_area_range, match_image
from dssd.evaluation.metrics import VOCMeanAP

NAMES = ("circle", "square", "star")


def image(boxes, labels, difficult=None) -> dict[str, np.ndarray]:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return {
        "boxes": boxes,
        "labels": np.asarray(labels, np.int64),
        "difficult": np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult),
    }


def detections(boxes, scores, labels) -> dict[str, np.ndarray]:
    return {
        "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
        "scores": np.asarray(scores, np.float64),
        "labels": np.asarray(labels, np.int64),
    }


def make_split(preds, targets, use_07_metric: bool = False) -> RunDetections:
    n = len(targets)
    return RunDetections(
        image_ids=tuple(f"{i:06d}" for i in range(n)),
        image_paths=tuple("unused.jpg" for _ in range(n)),
        preds=tuple(preds),
        targets=tuple(targets),
        class_names=NAMES,
        use_07_metric=use_07_metric,
    )


# One image: a small circle (10 px) and a large one (100 px); detections, best first: a small
# background box, the large circle, the small circle, a large background box.
SMALL, LARGE = [0, 0, 10, 10], [100, 100, 200, 200]
TRUTH = image([SMALL, LARGE], [1, 1])
FOUND = detections(
    [[50, 50, 55, 55], LARGE, SMALL, [300, 300, 400, 400]], [0.95, 0.9, 0.8, 0.6], [1, 1, 1, 1]
)


def test_ap_by_size_follows_cocos_rule_on_a_hand_built_image() -> None:
    """All sizes: FP, TP, TP, FP -> precision 2/3 at full recall, AP 2/3. Small: the large circle
    and its detection are ignored, so are large false positives: FP, TP -> AP 1/2. Large: the
    small background box is ignored: TP, FP -> AP 1. Medium: no object, no AP."""
    test = make_split([FOUND], [TRUTH])
    assert test.matches().mean_ap(use_07_metric=False)[0] == pytest.approx(2 / 3)
    assert test.matches((0, 32)).mean_ap(use_07_metric=False)[0] == pytest.approx(0.5)
    assert test.matches((96, float("inf"))).mean_ap(use_07_metric=False)[0] == pytest.approx(1)
    assert np.isnan(test.matches((32, 96)).mean_ap(use_07_metric=False)[0])

    analysis = analyse_run(test, score_threshold=0.85)
    sizes = {b.name: b for b in analysis.coco_sizes}
    assert [sizes[n].objects for n in ("small", "medium", "large")] == [1, 0, 1]
    assert sizes["small"].ap == pytest.approx(0.5) and sizes["large"].ap == pytest.approx(1)
    # at score >= 0.85 only the large circle is found
    assert [sizes[n].found for n in ("small", "large")] == [0, 1]
    fine = {b.name: b for b in analysis.fine_sizes}
    assert fine["8-16"].objects == 1 and fine["96-128"].objects == 1
    # the 5 px background box is of another fine bin than the 10 px circle: ignored there
    assert fine["8-16"].ap == pytest.approx(1.0) and fine["0-8"].objects == 0
    # errors by size: the small background box is small's only error, the large one large's
    by_size = {"all": analysis.errors, **analysis.size_errors}
    assert {size: found.counts["bkg"] for size, found in by_size.items()} == {
        "all": 2,
        "small": 1,
        "medium": 0,
        "large": 1,
    }
    assert sum(analysis.size_errors["small"].counts.values()) == 1
    # fixing small's error lifts small's AP from 1/2 to 1
    assert analysis.size_errors["small"].delta_map["bkg"] == pytest.approx(0.5)
    # the confusion matrix at that operating point: the large circle found, the small one not,
    # the small background box a false positive
    assert analysis.confusion[0, 0] == 1 and analysis.confusion[0, 3] == 1
    assert analysis.confusion[3, 0] == 1 and analysis.confusion.sum() == 3


def test_interpolated_precision_by_hand() -> None:
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    got = interpolated_precision(recall, precision, np.array([0.0, 0.5, 0.6, 1.0]))
    np.testing.assert_allclose(got, [1.0, 1.0, 2 / 3, 2 / 3])
    # beyond the last recall reached: 0; no detection at all: 0 everywhere
    assert interpolated_precision(np.array([0.5]), np.array([1.0]), np.array([0.9]))[0] == 0
    assert not interpolated_precision(np.zeros(0), np.zeros(0), np.array([0.0, 1.0])).any()


def test_found_objects_by_hand() -> None:
    truth = image([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [1, 2, 1])
    found = detections(
        [
            [0, 0, 10, 10],  # circle on the first circle: found
            [0, 0, 10, 10],  # its duplicate: nothing new
            [20, 20, 30, 30],  # a circle on the square: wrong class, not found
            [40, 40, 50, 50],  # on the last circle, but below the operating point
        ],
        [0.9, 0.8, 0.7, 0.2],
        [1, 1, 1, 1],
    )
    assert found_objects(found, truth, 0.3).tolist() == [True, False, False]
    assert found_objects(found, truth, 0.1).tolist() == [True, False, True]


def random_test_set(seed: int, use_07_metric: bool) -> RunDetections:
    """20 images of non-overlapping objects of every size, with jittered, misclassified and
    background detections."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(20):
        sides = rng.choice([6, 12, 20, 28, 40, 70, 110, 150], size=rng.integers(1, 5))
        boxes = np.array([[200 * k, 0, 200 * k + s, s] for k, s in enumerate(sides)], float)
        labels = rng.integers(1, len(NAMES) + 1, len(boxes))
        difficult = rng.random(len(boxes)) < 0.1
        jitter = rng.normal(0, 0.15, boxes.shape) * sides[:, None]
        flipped = np.where(rng.random(len(boxes)) < 0.2, rng.integers(1, 4, len(boxes)), labels)
        extra = rng.uniform(0, 600, (3, 2))
        background = np.hstack([extra, extra + rng.uniform(5, 80, (3, 2))])
        preds.append(
            detections(
                np.vstack([boxes + jitter, background]),
                rng.random(len(boxes) + 3),
                np.concatenate([flipped, rng.integers(1, 4, 3)]),
            )
        )
        targets.append(image(boxes, labels, difficult))
    return make_split(preds, targets, use_07_metric)


@pytest.mark.parametrize("use_07_metric", [True, False])
def test_run_figures_equal_the_voc_metric(use_07_metric: bool) -> None:
    """mAP and per-class AP equal VOCMeanAP's; each class curve integrates to its AP; the error
    analysis shares the base mAP; the size bins count every non-difficult object once."""
    test = random_test_set(3, use_07_metric)
    metric = VOCMeanAP(num_classes=len(NAMES), use_07_metric=use_07_metric)
    metric.update(
        [{k: torch.as_tensor(v) for k, v in p.items()} for p in test.preds],
        [{k: torch.as_tensor(v) for k, v in t.items()} for t in test.targets],
    )
    expected = metric.compute()
    analysis = analyse_run(test)
    assert analysis.map == pytest.approx(float(expected["map"]))
    assert analysis.errors.map == pytest.approx(analysis.map)
    for c, (recall, precision) in enumerate(analysis.curves):
        # the curve integrated by voc_eval.py's own voc_ap (tests/devkit.py)
        from_curve = voc_ap(recall, precision, use_07_metric)
        assert float(from_curve) == pytest.approx(analysis.ap_per_class[c])
        assert float(expected["ap_per_class"][c]) == pytest.approx(analysis.ap_per_class[c])
    objects = sum(int((~t["difficult"]).sum()) for t in test.targets)
    assert sum(b.objects for b in analysis.coco_sizes) == objects
    assert sum(b.objects for b in analysis.fine_sizes) == objects
    assert analysis.confusion.shape == (len(NAMES) + 1,) * 2


def test_per_class_bootstrap_columns_equal_one_class_at_a_time() -> None:
    a = random_test_set(1, False).matches()
    b = random_test_set(2, False).matches()
    columns = paired_differences([a], [b], lambda r, w: r.class_aps(w, False), num_samples=100)
    for c, difference in enumerate(columns):
        alone = paired_differences(
            [a], [b], lambda r, w, c=c: r.class_aps(w, False)[:, c : c + 1], num_samples=100
        )[0]
        assert difference == alone
        assert difference.delta == pytest.approx(
            a.class_aps(use_07_metric=False)[0, c] - b.class_aps(use_07_metric=False)[0, c]
        )


def two_runs(count: int = 30) -> tuple[RunDetections, RunDetections]:
    """Images with one small and one large circle: the run finds both, the baseline only the
    large one (its small-circle detection is off target)."""
    targets, mine, theirs = [], [], []
    for _ in range(count):
        targets.append(image([SMALL, LARGE], [1, 1]))
        mine.append(detections([LARGE, SMALL], [0.9, 0.8], [1, 1]))
        theirs.append(detections([LARGE, [60, 60, 70, 70]], [0.9, 0.8], [1, 1]))
    return make_split(mine, targets), make_split(theirs, targets)


def test_comparison_finds_the_gain_where_it_is() -> None:
    mine, theirs = two_runs()
    a, b = analyse_run(mine), analyse_run(theirs)
    result = compare([mine], [a], [theirs], [b], num_samples=200)
    sizes = {r.name: r for r in result.sizes}
    assert sizes["small"].difference.delta == pytest.approx(1.0)
    assert sizes["small"].difference.excludes_zero
    assert sizes["large"].difference.delta == 0 and not sizes["large"].difference.excludes_zero
    assert result.overall.difference.delta == pytest.approx(a.map - b.map)
    assert result.overall.difference.low > 0
    assert [(r.run_only, r.baseline_only) for r in result.images] == [(1, 0)] * 30
    errors = {(e.name, e.size): e for e in result.errors}
    assert errors["bkg", "all"].run_count == 0 and errors["bkg", "all"].baseline_count == 30
    # the baseline's off-target boxes are small: small objects' errors, not large ones', and
    # small circles are what it misses
    assert (
        errors["bkg", "small"].baseline_count == 30 and errors["bkg", "large"].baseline_count == 0
    )
    assert (
        errors["miss", "small"].baseline_count == 30 and errors["miss", "large"].baseline_count == 0
    )
    assert errors["miss", "small"].run_count == 0
    # the other way round, the signs turn
    back = compare([theirs], [b], [mine], [a], num_samples=200)
    assert {r.name: r for r in back.sizes}["small"].difference.high < 0
    assert [(r.run_only, r.baseline_only) for r in back.images] == [(0, 1)] * 30


def test_the_gallery_shows_where_the_runs_differ_most_whichever_side_wins() -> None:
    """Ten images where the run finds one object more, one where the baseline finds both: the
    table lists the run's wins first, the gallery leads with the baseline's double win."""
    elsewhere = [60, 60, 70, 70]
    targets = [image([SMALL, LARGE], [1, 1]) for _ in range(11)]
    mine = [detections([LARGE, SMALL], [0.9, 0.8], [1, 1]) for _ in range(10)]
    theirs = [detections([LARGE, elsewhere], [0.9, 0.8], [1, 1]) for _ in range(10)]
    mine.append(detections([elsewhere], [0.9], [1]))
    theirs.append(detections([LARGE, SMALL], [0.9, 0.8], [1, 1]))
    run, baseline = make_split(mine, targets), make_split(theirs, targets)
    a, b = analyse_run(run), analyse_run(baseline)
    result = compare([run], [a], [baseline], [b], num_samples=20)
    assert [(r.run_only, r.baseline_only) for r in result.images] == [(1, 0)] * 10 + [(0, 2)]
    picks = most_different(run, result.images, (a, b), 3)
    assert [i for i, _, _ in picks] == [10, 0, 1]
    assert picks[0][1].tolist() == [False, False] and picks[0][2].tolist() == [True, True]
    assert picks[1][1].tolist() == [True, False] and not picks[1][2].any()


def test_runs_of_other_data_under_the_same_image_ids_are_refused() -> None:
    """Two VOC-layout sets both number their images from 1: same ids, other objects."""
    mine, theirs = two_runs(3)
    relabelled = [{**t, "labels": t["labels"] + 1} for t in theirs.targets]
    other = make_split(theirs.preds, relabelled)
    with pytest.raises(ValueError, match="differ in their objects .first at image 000000"):
        compare([mine], [analyse_run(mine)], [other], [analyse_run(other)], num_samples=20)


def test_identical_runs_differ_nowhere() -> None:
    test = random_test_set(5, True)
    analysis = analyse_run(test)
    result = compare([test, test], [analysis, analysis], [test, test], [analysis, analysis])
    for row in (result.overall, *result.classes, *result.sizes):
        if np.isfinite(row.difference.delta):
            assert row.difference.delta == 0 and not row.difference.excludes_zero
    assert result.images == () and result.seeds == 2


def test_comparison_refuses_other_test_sets() -> None:
    mine, theirs = two_runs()
    fewer = make_split(theirs.preds[:-1], theirs.targets[:-1])
    with pytest.raises(ValueError, match="different images"):
        compare([mine], [analyse_run(mine)], [fewer], [analyse_run(fewer)])
    with pytest.raises(ValueError, match="paired runs"):
        compare([mine, mine], [analyse_run(mine)] * 2, [theirs], [analyse_run(theirs)])


def test_area_range_matches_counts_objects_in_range_only() -> None:
    """MatchedRun.for_size: positives are the in-range objects; a detection matched to
    an out-of-range object and an out-of-range false positive are dropped, not counted."""
    run = MatchedRun.build([FOUND], [TRUTH], len(NAMES), 0.5).for_size((0, 32**2))
    assert run.npos.tolist() == [[1, 0, 0]]
    images, tp = run.by_class[0]
    assert tp.tolist() == [False, True]  # the small background box, then the small circle


@pytest.mark.parametrize("side", [32, 96])
def test_an_object_on_a_size_bound_is_in_both_ranges_as_in_pycocotools(side: int) -> None:
    """pycocotools keeps areas in [low, high]: a box of exactly 32^2 (or 96^2) pixels, found, is
    a positive of both ranges it bounds, where [low, high) made one of them empty."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    box = np.array([[10.0, 10.0, 10.0 + side, 10.0 + side]])
    truth = {"boxes": box, "labels": np.array([1]), "difficult": np.array([False])}
    found = {"boxes": box, "scores": np.array([0.9]), "labels": np.array([1])}
    run = MatchedRun.build([found], [truth], 1)
    ours = {
        name: run.for_size((low**2, high**2)).mean_ap(use_07_metric=False)[0]
        for name, (low, high) in COCO_SIZES.items()
    }
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1}],
        "categories": [{"id": 1}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "bbox": [10, 10, side, side],
                "area": side**2,
                "iscrowd": 0,
                "category_id": 1,
            }
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        results = coco.loadRes(
            [{"image_id": 1, "bbox": [10, 10, side, side], "score": 0.9, "category_id": 1}]
        )
        evaluator = COCOeval(coco, results, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    theirs = dict(zip(COCO_SIZES, evaluator.stats[3:6], strict=True))  # -1: no object
    for name in COCO_SIZES:
        assert (ours[name] == 1.0) == (theirs[name] > 0.99), name  # averaged over 10 IoUs
    assert sum(ap == 1.0 for ap in ours.values()) == 2


def by_size_one_image_at_a_time(test: RunDetections, area_range) -> float:
    """COCO's size rule applied image by image, the plain way: objects outside the range made
    difficult before the devkit's matching, then the false positives outside it dropped."""
    metric_preds, metric_targets = [], []
    for pred, target in zip(test.preds, test.targets, strict=True):
        gt_boxes = torch.as_tensor(target["boxes"])
        difficult = torch.as_tensor(target["difficult"]) | ~in_area_range(gt_boxes, area_range)
        order = torch.sort(torch.as_tensor(pred["scores"]), descending=True, stable=True).indices
        boxes = torch.as_tensor(pred["boxes"])[order]
        labels = torch.as_tensor(pred["labels"])[order]
        tp, ignored = match_image(
            boxes, labels, gt_boxes, torch.as_tensor(target["labels"]), difficult
        )
        keep = ~(ignored | (~tp & ~in_area_range(boxes, area_range)))
        metric_preds.append(
            {
                "boxes": boxes[keep],
                "scores": torch.as_tensor(pred["scores"])[order][keep],
                "labels": labels[keep],
            }
        )
        metric_targets.append(
            {"boxes": gt_boxes, "labels": torch.as_tensor(target["labels"]), "difficult": difficult}
        )
    metric = VOCMeanAP(num_classes=len(NAMES), use_07_metric=test.use_07_metric)
    metric.update(metric_preds, metric_targets)
    return float(metric.compute()["map"])


@pytest.mark.parametrize("seed", [7, 8])
def test_ap_by_size_equals_the_rule_applied_image_by_image(seed: int) -> None:
    test = random_test_set(seed, use_07_metric=seed % 2 == 0)
    for low, high in [(0, 16), (16, 32), (32, 96), (96, float("inf")), (20, 60)]:
        expected = by_size_one_image_at_a_time(test, (low**2, high**2))
        got = float(test.matches((low, high)).mean_ap(use_07_metric=test.use_07_metric)[0])
        assert got == pytest.approx(expected, nan_ok=True), (low, high)
