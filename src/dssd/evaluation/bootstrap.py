"""Paired bootstrap over test images for differences of VOC mAP between runs.

Two rows of an ablation are scored on the same test images, so the uncertainty of their
difference comes from which images happen to be in the test set: resample the images (with
replacement, the same draw for every run) and recompute each run's mAP on the resample. A run is
matched once (:class:`dssd.evaluation.matched_run.MatchedRun`) and every resample only reweights
its images. :func:`paired_bootstrap` gives a difference of mean mAPs (or of any such statistic,
e.g. one class's AP, :func:`paired_differences`) between two rows, over the seeds both have, with
its percentile interval. A table of many such differences marks the ones that stay significant
after Holm's correction for the number of differences in it (:func:`holm`), from each difference's
bootstrap p-value.

What an interval or a mark measures is the sampling of the test images, for the seeds that were
run: not the spread over training seeds, which only more seeds show.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the statistics take matched runs; the intervals and holm need numpy only
    from dssd.evaluation.matched_run import MatchedRun


@dataclass(frozen=True)
class Difference:
    """A difference of mean mAP (row minus baseline, over paired seeds), its interval and its
    two-sided bootstrap p-value: twice the smaller share of resampled differences on either side
    of 0 (at most 1), the smallest ``1 - confidence`` whose percentile interval excludes 0."""

    delta: float
    low: float
    high: float
    seeds: int
    p_value: float = float("nan")

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0


def paired_bootstrap(
    runs: Sequence[MatchedRun],
    baselines: Sequence[MatchedRun],
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    use_07_metric: bool = True,
) -> Difference:
    """Mean over the paired runs of ``mAP(run) - mAP(baseline)``, with its percentile interval
    from ``num_samples`` resamples of the test images (one draw shared by every run)."""

    def statistic(run: MatchedRun, weights: np.ndarray | None) -> np.ndarray:
        return run.mean_ap(weights, use_07_metric)[:, None]

    return paired_differences(runs, baselines, statistic, num_samples, confidence, seed)[0]


def paired_differences(
    runs: Sequence[MatchedRun],
    baselines: Sequence[MatchedRun],
    statistic: Callable[[MatchedRun, np.ndarray | None], np.ndarray],
    num_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Difference]:
    """:func:`paired_bootstrap` of several figures at once: ``statistic(run, weights)`` gives
    [R, K] values (e.g. every class's AP, :meth:`MatchedRun.class_aps`) for image weights [R,
    images] and the plain ones for ``None``; one :class:`Difference` per column. Resamples where a
    figure is NaN (it has no positive there) are left out of its interval; NaN without any."""
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
        low, high = np.percentile(column, [tail, 100 - tail]) if column.size else (np.nan, np.nan)
        p_value = (
            min(1.0, 2 * min(np.mean(column <= 0), np.mean(column >= 0))) if column.size else np.nan
        )
        differences.append(
            Difference(float(plain[k]), float(low), float(high), len(runs), float(p_value))
        )
    return differences


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down correction: which of the ``p_values`` (one family of tests) are
    significant with a family-wise error rate of at most ``alpha``. The i-th smallest p-value
    (from 0) is compared with ``alpha / (m - i)``, m the number of finite p-values, until the first
    that fails; NaN is never significant. (scipy has no Holm correction, and statsmodels' would
    be a dependency for these lines.)"""
    p = np.asarray(p_values, np.float64)
    finite = np.flatnonzero(np.isfinite(p))
    significant = np.zeros(len(p), bool)
    order = finite[np.argsort(p[finite], kind="stable")]
    for i, index in enumerate(order):
        if p[index] > alpha / (len(order) - i):
            break
        significant[index] = True
    return significant.tolist()
