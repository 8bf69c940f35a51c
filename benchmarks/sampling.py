"""How much the choice of test images moves VOC mAP: runs scored on disjoint chunks of one large
test split.

A Table 4 row is one network trained with several seeds and tested on one test split; its seed
std mixes training variance with the sampling of that split's images, and its intervals (the
paired bootstrap, :mod:`dssd.evaluation.bootstrap`) claim to measure the second. For runs whose
test detections (``voc_results=``) cover one large test split (e.g. the shapes generator with
``--num-test 3000``), this prints

- each run's VOC mAP on every chunk of ``--chunk`` images and on the whole split;
- the seed std on each chunk (what a table whose test split is one chunk reports), its root mean
  square over the chunks, and the seed std on the whole split (what a larger test split leaves);
- each run's std over the chunks: the sampling error of one run's mAP on a chunk-sized split;
- for every pair of runs, the paired bootstrap's 95% interval on each chunk against what fresh
  chunks show: the spread of the pair's difference over the chunks, and how many intervals cover
  the difference on the rest of the split (a calibrated interval: about 95 in 100, a little
  fewer since the rest's difference has a sampling error of its own).

    python -m benchmarks.sampling --data-root BIG --results RUN_A/voc RUN_B/voc ... [--chunk 300]
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dssd.data.shapes import CLASSES
from dssd.data.voc import VOCDataset
from dssd.errors import UserError, user_errors
from dssd.evaluation.bootstrap import paired_bootstrap
from dssd.evaluation.matched_run import MatchedRun, results_per_image
from dssd.tools import HelpFormatter, at_least

Z95 = 1.959964  # a normal interval's half-width in standard deviations


@dataclass(frozen=True)
class PairCheck:
    """Two runs' mAP difference (points) on the whole split, the spread of their difference over
    the chunks, the bootstrap's standard error on a chunk (mean 95% width / 2 z), and how many
    chunks' intervals cover the difference on the images outside the chunk."""

    names: tuple[str, str]
    whole: float
    spread: float
    bootstrap_std: float
    covered: int


@dataclass(frozen=True)
class Sampling:
    """VOC mAP (points) of each run on each chunk [runs, chunks] and on the whole split [runs]
    of ``images`` (the chunks' and any left over after the last whole chunk)."""

    names: list[str]
    chunk_maps: np.ndarray
    whole_maps: np.ndarray
    pairs: list[PairCheck]
    images: int

    @property
    def seed_std_chunks(self) -> np.ndarray:
        """The std over the runs on each chunk."""
        return self.chunk_maps.std(axis=0, ddof=1)

    @property
    def seed_std_chunk(self) -> float:
        """Root mean square over the chunks of :attr:`seed_std_chunks`."""
        return float(np.sqrt(np.mean(self.seed_std_chunks**2)))

    @property
    def seed_std_whole(self) -> float:
        return float(self.whole_maps.std(ddof=1))

    @property
    def run_std_chunk(self) -> float:
        """Root mean square over the runs of each run's std over the chunks."""
        return float(np.sqrt(np.mean(self.chunk_maps.std(axis=1, ddof=1) ** 2)))


def measure(
    detections: Mapping[str, Sequence[Mapping[str, Any]]],
    targets: Sequence[Mapping[str, Any]],
    num_classes: int,
    chunk: int = 300,
    num_samples: int = 1000,
    use_07_metric: bool = True,
) -> Sampling:
    """Score every run's per-image ``detections`` (aligned with ``targets``) on the whole split
    and on each of its ``len(targets) // chunk`` leading chunks (images in order)."""
    if len(detections) < 2:
        raise UserError(f"--results: need at least two runs, got {len(detections)}")
    chunks = len(targets) // chunk
    if chunks < 2:
        raise UserError(
            f"--chunk {chunk}: {len(targets)} test images hold fewer than two chunks of {chunk}"
            + (f"; give --chunk {len(targets) // 2} or less" if len(targets) > 1 else "")
        )

    names = list(detections)
    parts = [slice(k * chunk, (k + 1) * chunk) for k in range(chunks)]
    # image weights of the whole split: each chunk alone [chunks], then each chunk's complement
    weights = np.zeros((2 * chunks, len(targets)))
    for k, p in enumerate(parts):
        weights[k, p] = 1.0
    weights[chunks:] = 1.0 - weights[:chunks]
    whole_runs = [MatchedRun.build(detections[n], targets, num_classes) for n in names]
    whole_maps = np.array([100 * run.mean_ap(use_07_metric=use_07_metric)[0] for run in whole_runs])
    weighted = np.array([100 * run.mean_ap(weights, use_07_metric) for run in whole_runs])
    chunk_maps, rest_maps = weighted[:, :chunks], weighted[:, chunks:]
    # the bootstrap resamples a run's every image, so it needs each chunk matched on its own
    matched = {
        name: [MatchedRun.build(found[p], targets[p], num_classes) for p in parts]
        for name, found in detections.items()
    }
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(names), 2):
        intervals = [
            paired_bootstrap([ra], [rb], num_samples, use_07_metric=use_07_metric)
            for ra, rb in zip(matched[a], matched[b], strict=True)
        ]
        widths = [100 * (d.high - d.low) for d in intervals]
        outside = rest_maps[i] - rest_maps[j]
        pairs.append(
            PairCheck(
                names=(a, b),
                whole=float(whole_maps[i] - whole_maps[j]),
                spread=float(np.std(chunk_maps[i] - chunk_maps[j], ddof=1)),
                bootstrap_std=float(np.mean(widths) / (2 * Z95)),
                covered=sum(
                    100 * d.low <= o <= 100 * d.high
                    for d, o in zip(intervals, outside, strict=True)
                ),
            )
        )
    return Sampling(names, chunk_maps, whole_maps, pairs, len(targets))


def report(sampling: Sampling, chunk: int) -> str:
    """The printed summary of :func:`measure`."""
    chunks = sampling.chunk_maps.shape[1]
    lines = [f"VOC mAP on {chunks} chunks of {chunk} test images | on all {sampling.images}"]
    for name, row, whole in zip(
        sampling.names, sampling.chunk_maps, sampling.whole_maps, strict=True
    ):
        lines.append(f"  {name}: {' '.join(f'{v:.2f}' for v in row)} | {whole:.2f}")
    stds = " ".join(f"{v:.2f}" for v in sampling.seed_std_chunks)
    lines += [
        f"std over the runs on each chunk: {stds}",
        f"  root mean square: {sampling.seed_std_chunk:.2f}; "
        f"on all {sampling.images} images: {sampling.seed_std_whole:.2f}",
        f"one run's std over the chunks (root mean square over the runs): "
        f"{sampling.run_std_chunk:.2f}",
        "paired bootstrap on each chunk, against fresh chunks:",
    ]
    for p in sampling.pairs:
        lines.append(
            f"  {p.names[0]} - {p.names[1]}: {p.whole:+.2f} on all; spread over the chunks "
            f"{p.spread:.2f}, bootstrap std {p.bootstrap_std:.2f}; "
            f"{p.covered}/{chunks} intervals cover the difference outside their chunk"
        )
    spread = np.sqrt(np.mean([p.spread**2 for p in sampling.pairs]))
    boot = np.sqrt(np.mean([p.bootstrap_std**2 for p in sampling.pairs]))
    covered = sum(p.covered for p in sampling.pairs)
    lines.append(
        f"  root mean square spread {spread:.2f}, bootstrap std {boot:.2f}; "
        f"{covered}/{chunks * len(sampling.pairs)} intervals cover"
    )
    return "\n".join(lines)


def results_of(directory: Path, image_ids: Sequence[str], args: argparse.Namespace) -> list[dict]:
    """One ``--results`` directory's detections per image of ``--split`` (a run's other split, or
    files that cannot be read, are a :class:`UserError`)."""
    try:
        return results_per_image(directory, image_ids, args.classes)
    except (OSError, ValueError) as err:
        raise UserError(f"--split {args.split}: {err}") from None


def main(argv: Sequence[str] | None = None) -> None:
    with user_errors():
        parser = argparse.ArgumentParser(
            prog="python -m benchmarks.sampling",
            description=__doc__.split("\n\n")[0],
            formatter_class=HelpFormatter,
        )
        parser.add_argument("--data-root", type=Path, required=True, help="VOC-layout dataset root")
        parser.add_argument("--split", default="test", help="VOC split (ImageSets/Main/<split>)")
        parser.add_argument("--classes", nargs="+", default=list(CLASSES), help="VOC class names")
        parser.add_argument(
            "--results", type=Path, nargs="+", required=True, help="voc_results= directories"
        )
        parser.add_argument("--chunk", type=at_least(1), default=300, help="images per chunk")
        parser.add_argument("--samples", type=at_least(2), default=1000, help="bootstrap resamples")
        parser.add_argument(
            "--no-07-metric", action="store_true", help="the area under the curve, not 11 points"
        )
        args = parser.parse_args(argv)
        dataset = VOCDataset(args.data_root, args.split, args.classes)
        # each run by its path below the directory all of them share
        common = Path(os.path.commonpath([d.resolve() for d in args.results]))
        detections = {
            str(d.resolve().relative_to(common)): results_of(d, dataset.ids, args)
            for d in args.results
        }
        if len(detections) < len(args.results):
            parser.error("--results names a directory more than once")
        sampling = measure(
            detections,
            dataset.annotations,
            len(args.classes),
            args.chunk,
            args.samples,
            not args.no_07_metric,
        )
        print(report(sampling, args.chunk))


if __name__ == "__main__":
    main()
