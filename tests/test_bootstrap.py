"""The paired bootstrap of mAP differences (dssd.evaluation.bootstrap) on cases with a known answer,
and its weighted mAP against VOCMeanAP on physically resampled image lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from dssd.data.voc import write_voc_results
from dssd.evaluation.bootstrap import holm, paired_bootstrap
from dssd.evaluation.matched_run import MatchedRun, results_per_image
from dssd.evaluation.metrics import VOCMeanAP
from test_metrics import random_case

NUM_CLASSES = 4


def voc_map(preds: list[dict], targets: list[dict], use_07_metric: bool = True) -> float:
    metric = VOCMeanAP(NUM_CLASSES, use_07_metric=use_07_metric)
    metric.update(preds, targets)
    return float(metric.compute()["map"])


@pytest.mark.parametrize("use_07_metric", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_weighted_map_equals_the_metric_on_the_resampled_images(
    seed: int, use_07_metric: bool
) -> None:
    preds, targets = random_case(seed, n_images=15, num_classes=NUM_CLASSES)
    run = MatchedRun.build(preds, targets, NUM_CLASSES)
    assert run.mean_ap(use_07_metric=use_07_metric)[0] == pytest.approx(
        voc_map(preds, targets, use_07_metric), abs=1e-6
    )
    # an image drawn k times counts k times: the metric on the list with the copies
    counts = np.random.default_rng(seed).multinomial(15, np.full(15, 1 / 15), size=3)
    weighted = run.mean_ap(counts, use_07_metric)
    for row, value in zip(counts, weighted, strict=True):
        copies = [i for i, k in enumerate(row) for _ in range(k)]
        expected = voc_map([preds[i] for i in copies], [targets[i] for i in copies], use_07_metric)
        assert value == pytest.approx(expected, abs=1e-6)


def test_identical_rows_have_an_interval_around_zero() -> None:
    preds, targets = random_case(1, n_images=20, num_classes=NUM_CLASSES)
    run = MatchedRun.build(preds, targets, NUM_CLASSES)
    difference = paired_bootstrap([run, run], [run, run], num_samples=300)
    assert difference.delta == 0.0 and difference.low <= 0.0 <= difference.high
    assert not difference.excludes_zero
    assert difference.p_value == 1.0  # every resampled difference is 0


def missing_one_object_per_image(
    preds: list[dict], targets: list[dict]
) -> tuple[list[dict], list[dict]]:
    """Two rows: ``base`` drops every detection near one object of each image, ``better`` is
    ``base`` plus a perfect detection of that object: one more true positive on every image."""
    base, better = [], []
    for pred, truth in zip(preds, targets, strict=True):
        j = next(i for i, d in enumerate(truth["difficult"]) if not d)
        near = box_iou(pred["boxes"], truth["boxes"][j : j + 1]).squeeze(1) > 0.1
        keep = ~near
        kept = {k: v[keep] for k, v in pred.items()}
        base.append(kept)
        better.append(
            {
                "boxes": torch.cat([kept["boxes"], truth["boxes"][j : j + 1]]),
                "scores": torch.cat([kept["scores"], torch.tensor([0.5])]),
                "labels": torch.cat([kept["labels"], truth["labels"][j : j + 1]]),
            }
        )
    return base, better


def test_a_row_with_more_true_positives_on_every_image_is_better() -> None:
    preds, targets = random_case(2, n_images=60, num_classes=NUM_CLASSES)
    kept = [i for i, t in enumerate(targets) if (~t["difficult"]).any()]
    preds, targets = [preds[i] for i in kept], [targets[i] for i in kept]
    base_preds, better_preds = missing_one_object_per_image(preds, targets)
    base = MatchedRun.build(base_preds, targets, NUM_CLASSES)
    better = MatchedRun.build(better_preds, targets, NUM_CLASSES)
    up = paired_bootstrap([better], [base], num_samples=500)
    assert up.delta > 0 and up.low > 0 and up.excludes_zero
    assert up.delta == pytest.approx(float(better.mean_ap()[0] - base.mean_ap()[0]))
    down = paired_bootstrap([base], [better], num_samples=500)
    assert down.delta == pytest.approx(-up.delta) and down.high < 0 and down.excludes_zero
    # no resample reverses the sign (the interval at every level excludes 0)
    assert up.p_value == down.p_value == 0.0


def test_one_image_has_no_interval_nor_p_value() -> None:
    """Every resample of one image is the image itself: a zero-width interval and p = 0 would
    pass any correction, so the bootstrap says nothing."""
    preds, targets = random_case(2, n_images=60, num_classes=NUM_CLASSES)
    kept = next(i for i, t in enumerate(targets) if (~t["difficult"]).any())
    base_preds, better_preds = missing_one_object_per_image([preds[kept]], [targets[kept]])
    base = MatchedRun.build(base_preds, [targets[kept]], NUM_CLASSES)
    better = MatchedRun.build(better_preds, [targets[kept]], NUM_CLASSES)
    up = paired_bootstrap([better], [base], num_samples=50)
    assert up.delta > 0
    assert np.isnan([up.low, up.high, up.p_value]).all() and not up.excludes_zero
    assert holm([up.p_value]) == [False]


def test_the_p_value_is_the_level_at_which_the_interval_reaches_zero() -> None:
    """A percentile interval at confidence 1 - p has 0 at its edge: a little wider includes it,
    a little narrower does not."""
    runs = [
        MatchedRun.build(*random_case(seed, n_images=15, num_classes=NUM_CLASSES), NUM_CLASSES)
        for seed in (5, 6)
    ]
    for a, b in (runs, runs[::-1]):
        difference = paired_bootstrap([a], [b], num_samples=400)
        assert 0.0 < difference.p_value < 1.0
        wider = paired_bootstrap(
            [a], [b], num_samples=400, confidence=1 - difference.p_value + 0.01
        )
        narrower = paired_bootstrap(
            [a], [b], num_samples=400, confidence=1 - difference.p_value - 0.01
        )
        assert not wider.excludes_zero and narrower.excludes_zero


def test_holm_on_worked_cases_and_against_adjusted_p_values() -> None:
    # sorted 0.005 <= 0.05/4 and 0.01 <= 0.05/3, then 0.03 > 0.05/2 stops the procedure
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # NaN is never significant and does not count as a test: 0.02 <= 0.05/2, 0.03 <= 0.05/1
    assert holm([0.02, float("nan"), 0.03]) == [True, False, True]
    assert holm([]) == []
    # Holm's adjusted p-values, the usual other formulation: max over j <= i of (m - j) p_(j)
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.uniform(0, 0.1, rng.integers(1, 12)) ** rng.uniform(0.5, 2)
        order = np.argsort(p)
        adjusted = np.empty(len(p))
        adjusted[order] = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
        assert holm(p, 0.05) == (adjusted <= 0.05).tolist()


def test_seeds_are_averaged_pairwise() -> None:
    runs = []
    for seed in (3, 4):
        preds, targets = random_case(seed, n_images=12, num_classes=NUM_CLASSES)
        runs.append(MatchedRun.build(preds, targets, NUM_CLASSES))
    difference = paired_bootstrap(runs, runs[::-1], num_samples=200)
    assert difference.delta == pytest.approx(0.0, abs=1e-12)  # (a - b + b - a) / 2
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap(runs, runs[:1])


def test_runs_read_from_devkit_result_files_match_the_in_memory_ones(tmp_path: Path) -> None:
    preds, targets = random_case(5, n_images=10, num_classes=NUM_CLASSES)
    ids = [f"img{i}" for i in range(10)]
    names = [f"c{c}" for c in range(1, NUM_CLASSES + 1)]
    write_voc_results(tmp_path, ids, preds, names)
    from_files = MatchedRun.build(results_per_image(tmp_path, ids, names), targets, NUM_CLASSES)
    in_memory = MatchedRun.build(preds, targets, NUM_CLASSES)
    assert from_files.mean_ap()[0] == pytest.approx(in_memory.mean_ap()[0], abs=1e-9)
    with pytest.raises(ValueError, match="not in the split scored"):
        results_per_image(tmp_path, ids[:5], names)
