"""Paired bootstrap over test images for differences of VOC mAP between runs scored on the same
images: resample the images (one draw for every run), rescore each matched run under the image
weights, and give percentile intervals and p-values (for :func:`holm`). This measures the sampling
of the test images for the seeds run, not the spread over training seeds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dssd.evaluation.matched_run import MatchedRun


@dataclass(frozen=True)
class Difference:
    """A difference of mean mAP (row minus baseline, over paired seeds), its interval and two-sided
    bootstrap p-value (twice the smaller share of resamples on either side of 0, at most 1)."""

    delta: float
    low: float
    high: float
    p_value: float = float("nan")

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def map_statistic(run: MatchedRun, weights: np.ndarray | None, use_07_metric: bool) -> np.ndarray:
    """The VOC mAP [R, 1] under image ``weights``: a statistic of :func:`paired_differences`."""
    return run.mean_ap(weights, use_07_metric)[:, None]


def paired_bootstrap(
    runs: Sequence[MatchedRun],
    baselines: Sequence[MatchedRun],
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    use_07_metric: bool = True,
) -> Difference:
    """Mean over the paired runs of ``mAP(run) - mAP(baseline)``, with its bootstrap interval."""
    statistic = partial(map_statistic, use_07_metric=use_07_metric)
    return paired_differences(runs, baselines, statistic, num_samples, confidence, seed)[0]


def paired_differences(
    runs: Sequence[MatchedRun],
    baselines: Sequence[MatchedRun],
    statistic: Callable[[MatchedRun, np.ndarray | None], np.ndarray],
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Difference]:
    """:func:`paired_bootstrap` of each of the K figures ``statistic(run, weights)`` gives as [R, K]
    (plain for ``weights=None``), e.g. :meth:`MatchedRun.class_aps`, over its non-NaN resamples.
    One image has no sampling to measure: its intervals and p-values are NaN."""
    if not runs or len(runs) != len(baselines):
        raise ValueError(f"need paired runs, got {len(runs)} and {len(baselines)}")
    sizes = {r.num_images for r in (*runs, *baselines)}
    if len(sizes) != 1:
        raise ValueError(f"the runs were scored on different numbers of images: {sorted(sizes)}")
    n = sizes.pop()
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=num_samples).astype(np.float64)

    def delta(w: np.ndarray | None) -> np.ndarray:
        pairs = [statistic(a, w) - statistic(b, w) for a, b in zip(runs, baselines, strict=True)]
        return np.mean(pairs, axis=0)

    plain, samples = delta(None)[0], delta(weights)
    tail = 100 * (1.0 - confidence) / 2
    differences = []
    for k in range(samples.shape[1]):
        column = samples[:, k][~np.isnan(samples[:, k])]
        low = high = p_value = np.nan
        if column.size and n > 1:  # one image: every resample is the run itself
            low, high = np.percentile(column, [tail, 100 - tail])
            p_value = min(1.0, 2 * min(np.mean(column <= 0), np.mean(column >= 0)))
        differences.append(Difference(float(plain[k]), float(low), float(high), float(p_value)))
    return differences


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down correction: which ``p_values`` of one family stay significant at family-wise
    error rate ``alpha`` (the i-th smallest of m finite ones must be <= ``alpha / (m - i)``)."""
    p = np.asarray(p_values, np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    significant = np.zeros(len(p), bool)
    order = finite[np.argsort(p[finite], kind="stable")]
    for i, index in enumerate(order):
        if p[index] > alpha / (len(order) - i):
            break
        significant[index] = True
    return significant.tolist()
