"""tests/ties.py: the range of VOC APs that near-tied scores allow holds the AP of every ranking
of the near-ties and nothing wider than their two extreme rankings."""

from __future__ import annotations

import pytest
import torch

from dssd.evaluation.metrics import VOCMeanAP
from test_metrics import evaluate, pred, random_case, target
from ties import ap_range_over_ties

NUM_CLASSES = 4


def voc_ap(preds, targets) -> torch.Tensor:
    metric = VOCMeanAP(NUM_CLASSES)
    metric.update(preds, targets)
    return metric.compute()["ap_per_class"].double()


def test_a_near_tie_between_a_true_and_a_false_positive_spans_both_rankings() -> None:
    """One object, found by the detection scored 0.5; a false positive 1e-7 above it."""
    targets = [target([[0, 0, 10, 10]], [1])]
    preds = [pred([[50, 50, 60, 60], [0, 0, 10, 10]], [0.5 + 1e-7, 0.5], [1, 1])]
    fp_first = evaluate(preds, targets)["map"].item()  # precision 1/2 at recall 1
    tp_first = evaluate([pred(preds[0]["boxes"], [0.5, 0.5 + 1e-7], [1, 1])], targets)["map"]

    low, high = ap_range_over_ties(preds, targets, 1, tolerance=1e-6)

    assert (low.item(), high.item()) == pytest.approx((fp_first, tp_first.item()))
    assert fp_first == pytest.approx(0.5) and tp_first.item() == pytest.approx(1.0)
    # scores further apart than the tolerance: one ranking, one AP
    low, high = ap_range_over_ties(preds, targets, 1, tolerance=1e-9)
    assert low.item() == high.item() == pytest.approx(fp_first)


@pytest.mark.parametrize("seed", range(6))
def test_every_ranking_of_the_near_ties_scores_within_the_range(seed: int) -> None:
    """Scores on a 0.1 grid, so that many tie, each moved by noise below the tolerance in
    twenty ways: each time the metric's AP lies in the range of the unmoved detections."""
    preds, targets = random_case(seed, num_classes=NUM_CLASSES, ties=True)
    low, high = ap_range_over_ties(preds, targets, NUM_CLASSES, tolerance=1e-6)
    generator = torch.Generator().manual_seed(seed)
    aps: list[torch.Tensor] = []
    for _ in range(20):
        moved = [
            {
                **p,
                "scores": p["scores"].double()
                + 4e-7 * torch.rand(len(p["scores"]), generator=generator),
            }
            for p in preds
        ]
        ap = voc_ap(moved, targets)
        has = ~ap.isnan()
        # (the metric reports float32)
        assert (low[has] - 1e-6 <= ap[has]).all() and (ap[has] <= high[has] + 1e-6).all()
        aps.append(ap)
    # the ties were there: the rankings gave different APs
    spans = torch.stack(aps)
    assert (spans.nan_to_num().amax(0) > spans.nan_to_num().amin(0)).any()


@pytest.mark.parametrize("seed", range(3))
def test_without_ties_the_range_is_the_ap(seed: int) -> None:
    preds, targets = random_case(seed, num_classes=NUM_CLASSES, ties=False)
    low, high = ap_range_over_ties(preds, targets, NUM_CLASSES, tolerance=1e-12)
    expected = voc_ap(preds, targets)
    torch.testing.assert_close(low, expected, equal_nan=True)
    torch.testing.assert_close(high, expected, equal_nan=True)
