"""A run against a baseline on the same test images: where the AP moves and which objects one
finds that the other misses.

Runs are paired seed by seed. AP differences (overall, per class, per object size) are the mean
over the pairs, with the percentile interval of ``make ablation``'s paired bootstrap over the test
images (:func:`dssd.evaluation.bootstrap.paired_differences`); error counts and dAPs are compared as
means over the seeds, without an interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from dssd.analysis.breakdown import RunAnalysis, RunDetections, nan_mean
from dssd.analysis.errors import ERROR_TYPES, ErrorAnalysis
from dssd.evaluation.bootstrap import Difference, map_statistic, paired_differences
from dssd.evaluation.matched_run import MatchedRun

Statistic = Callable[[MatchedRun, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class DeltaRow:
    """One figure (mean over the seeds) of the run and of the baseline, and their difference."""

    name: str
    run: float
    baseline: float
    difference: Difference


@dataclass(frozen=True)
class ErrorRow:
    """An error type's mean count and AP cost (dAP), run and baseline, over all objects (``size``
    "all") or one COCO size."""

    name: str
    size: str
    run_count: float
    baseline_count: float
    run_cost: float
    baseline_cost: float


@dataclass(frozen=True)
class ImageRow:
    """Objects of one test image found (at the operating point) by one side only, summed over
    the seed pairs."""

    index: int
    image_id: str
    run_only: int
    baseline_only: int


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` finds; ``images`` holds the images where the sides differ, those
    where the run finds the most that the baseline misses first."""

    overall: DeltaRow
    classes: tuple[DeltaRow, ...]
    sizes: tuple[DeltaRow, ...]
    errors: tuple[ErrorRow, ...]
    images: tuple[ImageRow, ...]
    seeds: int
    confidence: float


def same_test_set(tests: Sequence[RunDetections]) -> None:
    """Refuse runs that were not tested on the same images with the same classes."""
    first = tests[0]
    for other in tests[1:]:
        if other.class_names != first.class_names:
            raise ValueError(
                f"the runs have different classes: {list(first.class_names)} and "
                f"{list(other.class_names)}"
            )
        if other.image_ids != first.image_ids:
            raise ValueError(
                f"the runs were tested on different images ({len(first.image_ids)} and "
                f"{len(other.image_ids)} images, not the same list): compare runs of one test set"
            )
        # ids repeat across datasets (two VOC-layout sets both number their images): the objects
        # must be the same too
        for image_id, mine, theirs in zip(
            first.image_ids, first.targets, other.targets, strict=True
        ):
            if any(
                not np.array_equal(mine[k], theirs[k]) for k in ("boxes", "labels", "difficult")
            ):
                raise ValueError(
                    f"the runs' test sets name the same images but differ in their objects (first "
                    f"at image {image_id}): the runs were tested on other data; compare runs of "
                    "one test set"
                )


def compare(
    tests: Sequence[RunDetections],
    analyses: Sequence[RunAnalysis],
    baseline_tests: Sequence[RunDetections],
    baseline_analyses: Sequence[RunAnalysis],
    num_samples: int = 1000,
    confidence: float = 0.95,
) -> Comparison:
    """Compare the runs with the baselines, paired in order (seed with seed)."""
    if not tests or len(tests) != len(baseline_tests):
        raise ValueError(f"need paired runs, got {len(tests)} and {len(baseline_tests)}")
    same_test_set([*tests, *baseline_tests])
    use_07 = tests[0].use_07_metric

    def differences(size: str | None, statistic: Statistic) -> list[Difference]:
        """Bootstrap the run's verdicts (of one size bin, if given) against the baseline's; every
        figure uses the same draw of images (seed 0)."""
        sides = [
            [a.matches if size is None else a.size_matches[size] for a in side]
            for side in (analyses, baseline_analyses)
        ]
        return paired_differences(*sides, statistic, num_samples, confidence)

    mean_ap = partial(map_statistic, use_07_metric=use_07)
    class_aps = partial(MatchedRun.class_aps, use_07_metric=use_07)

    def delta_rows(
        names: Sequence[str],
        figures: Callable[[RunAnalysis], Sequence[float]],
        deltas: Sequence[Difference],
    ) -> tuple[DeltaRow, ...]:
        """A row per name: the mean of that entry of ``figures`` over the runs and over the
        baselines, and its difference."""
        runs = [nan_mean(column) for column in zip(*map(figures, analyses), strict=True)]
        baselines = [
            nan_mean(column) for column in zip(*map(figures, baseline_analyses), strict=True)
        ]
        return tuple(DeltaRow(*row) for row in zip(names, runs, baselines, deltas, strict=True))

    def size_aps(analysis: RunAnalysis) -> list[float]:
        return [size.ap for size in (*analysis.coco_sizes, *analysis.fine_sizes)]

    names = [size.name for size in (*analyses[0].coco_sizes, *analyses[0].fine_sizes)]
    overall = delta_rows(["all"], lambda a: [a.map], differences(None, mean_ap))[0]
    class_rows = delta_rows(
        tests[0].class_names, lambda a: a.ap_per_class, differences(None, class_aps)
    )
    size_rows = delta_rows(names, size_aps, [differences(n, mean_ap)[0] for n in names])

    def by_size(analysis: RunAnalysis) -> dict[str, ErrorAnalysis]:
        return {"all": analysis.errors, **analysis.size_errors}

    error_rows = tuple(
        ErrorRow(
            name,
            size,
            nan_mean([by_size(a)[size].counts[name] for a in analyses]),
            nan_mean([by_size(a)[size].counts[name] for a in baseline_analyses]),
            nan_mean([by_size(a)[size].delta_map[name] for a in analyses]),
            nan_mean([by_size(a)[size].delta_map[name] for a in baseline_analyses]),
        )
        for size in by_size(analyses[0])
        for name in ERROR_TYPES
    )
    return Comparison(
        overall,
        class_rows,
        size_rows,
        error_rows,
        found_by_one_side(tests[0], analyses, baseline_analyses),
        len(tests),
        confidence,
    )


def found_by_one_side(
    test: RunDetections, analyses: Sequence[RunAnalysis], baseline_analyses: Sequence[RunAnalysis]
) -> tuple[ImageRow, ...]:
    """Per image, the non-difficult objects only the run finds and only the baseline finds, summed
    over the seed pairs; images where the two agree are left out. Ordered from the image where
    the run is furthest ahead to the one where the baseline is."""
    rows = []
    for i in range(len(test.targets)):
        run_only = baseline_only = 0
        for mine, theirs in zip(analyses, baseline_analyses, strict=True):
            flags = one_side_flags(test, i, mine, theirs)
            run_only += int(flags[0].sum())
            baseline_only += int(flags[1].sum())
        if run_only or baseline_only:
            rows.append(ImageRow(i, str(test.image_ids[i]), run_only, baseline_only))
    rows.sort(key=lambda r: (r.baseline_only - r.run_only, -r.run_only, r.index))
    return tuple(rows)


def one_side_flags(
    test: RunDetections, index: int, mine: RunAnalysis, theirs: RunAnalysis
) -> tuple[np.ndarray, np.ndarray]:
    """Flags over image ``index``'s objects: non-difficult and found by the run only, and by the
    baseline only."""
    counted = ~np.asarray(test.targets[index]["difficult"], bool)
    found, found_by_baseline = mine.found[index], theirs.found[index]
    return found & ~found_by_baseline & counted, found_by_baseline & ~found & counted


def most_different(
    test: RunDetections,
    images: Sequence[ImageRow],
    pair: tuple[RunAnalysis, RunAnalysis],
    count: int,
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Up to ``count`` images on which the two differ most (objects found by either side only,
    summed over the seed pairs), with :func:`one_side_flags` of one seed ``pair``; images on
    which that pair agrees are passed over."""
    picks = []
    for row in sorted(images, key=lambda r: (-(r.run_only + r.baseline_only), r.index)):
        flags = one_side_flags(test, row.index, *pair)
        if len(picks) < count and (flags[0].any() or flags[1].any()):
            picks.append((row.index, *flags))
    return picks
