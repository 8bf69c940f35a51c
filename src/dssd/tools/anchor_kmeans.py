"""Box-shape analysis of the DSSD paper's Table 1: k-means of the training boxes on sqrt(area).

The paper clusters VOC 07+12 trainval boxes (on the square network input) from two clusters up,
adding one while the error drops by more than 20%; it stopped at seven and, from the clusters'
W/H, added the 1.6 aspect ratio. This reruns it on a VOC-layout dataset or COCO annotation file.
Per cluster, W/H is the *mean* W/H of its boxes and the last column the mean of max(W/H, H/W);
COCO crowd boxes and boxes with no width or height are skipped.

    python -m dssd.tools.anchor_kmeans --root data/shapes --split trainval --size 321
    python -m dssd.tools.anchor_kmeans --coco instances_train2017.json --size 513
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.cluster.vq import kmeans2

from dssd.data.coco import load_coco, trained_on
from dssd.data.shapes import CLASSES
from dssd.data.voc import VOCDataset
from dssd.errors import UserError, user_errors
from dssd.tools import HelpFormatter, at_least, number


@dataclass(frozen=True)
class KMeansResult:
    """One clustering; per-cluster arrays are ordered by increasing centre (box size)."""

    k: int
    centres: np.ndarray  # [k] sqrt(box area) of each centre, in the boxes' units
    labels: np.ndarray  # [N] cluster index of each box
    share: np.ndarray  # [k] percentage of the boxes in each cluster
    wh_ratio: np.ndarray  # [k] mean W/H of the cluster's boxes
    max_ratio: np.ndarray  # [k] mean max(W/H, H/W) of the cluster's boxes
    error: float  # sum of squared distances of the features to their centres


def _features(widths: np.ndarray, heights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated float arrays of the widths and heights."""
    w, h = np.asarray(widths, np.float64).ravel(), np.asarray(heights, np.float64).ravel()
    if w.shape != h.shape:
        raise ValueError(f"{w.size} widths but {h.size} heights")
    if not ((w > 0).all() and (h > 0).all()):
        raise ValueError("box widths and heights must be positive")
    return w, h


def kmeans_boxes(
    widths: np.ndarray, heights: np.ndarray, k: int, seed: int = 0, iters: int = 100
) -> KMeansResult:
    """k-means of boxes on sqrt(W * H); needs at least ``k`` distinct box areas."""
    w, h = _features(widths, heights)
    x = np.sqrt(w * h)
    if not 1 <= k <= np.unique(x).size:
        raise ValueError(f"k={k} needs 1 <= k <= {np.unique(x).size} (distinct box areas)")
    # scipy: k-means++ start seeded by ``seed``, then ``iters`` rounds of Lloyd's algorithm (1-D
    # converges in far fewer); an emptied cluster keeps its centre (warning silenced: harmless)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        centres, labels = kmeans2(
            x, k, iter=iters, minit="++", missing="warn", seed=np.random.default_rng(seed)
        )
    order = np.argsort(centres)
    centres, labels = centres[order], np.argsort(order)[labels]

    counts = np.bincount(labels, minlength=k)
    ratio, denom = w / h, np.maximum(counts, 1)  # an emptied cluster reports zeros
    return KMeansResult(
        k=k,
        centres=centres,
        labels=labels,
        share=100.0 * counts / len(x),
        wh_ratio=np.bincount(labels, weights=ratio, minlength=k) / denom,
        max_ratio=np.bincount(labels, weights=np.maximum(ratio, 1 / ratio), minlength=k) / denom,
        error=float(((x - centres[labels]) ** 2).sum()),
    )


def improvement(previous: KMeansResult, current: KMeansResult) -> float:
    """Relative error reduction from ``previous`` to ``current`` (0.25 = 25% lower error)."""
    return (previous.error - current.error) / previous.error if previous.error > 0 else 0.0


def grow_clusters(
    widths: np.ndarray,
    heights: np.ndarray,
    start: int = 2,
    min_improvement: float = 0.2,
    max_k: int = 12,
    seed: int = 0,
) -> list[KMeansResult]:
    """The paper's schedule: from ``start`` clusters, add one (up to ``max_k`` and the number of
    distinct areas) while the error drops by more than ``min_improvement``. Returns the accepted
    clusterings; the last one is the chosen k."""
    w, h = _features(widths, heights)
    limit = min(max_k, np.unique(np.sqrt(w * h)).size)
    results = [kmeans_boxes(w, h, min(start, limit), seed)]
    for k in range(results[-1].k + 1, limit + 1):
        candidate = kmeans_boxes(w, h, k, seed)
        if improvement(results[-1], candidate) <= min_improvement:
            break
        results.append(candidate)
    return results


def format_table(results: Sequence[KMeansResult]) -> str:
    """The chosen (last) clustering in the layout of the paper's Table 1, clusters sorted by share
    (largest first), followed by the k sequence with its errors and improvements."""
    chosen = results[-1]
    order = np.argsort(-chosen.share, kind="stable")
    rows = [
        ("cluster", [str(i + 1) for i in range(chosen.k)]),
        ("sqrt(area)", [f"{c:.1f}" for c in chosen.centres[order]]),
        ("share %", [f"{s:.1f}" for s in chosen.share[order]]),
        ("W/H", [f"{r:.2f}" for r in chosen.wh_ratio[order]]),
        ("max(W/H, H/W)", [f"{r:.2f}" for r in chosen.max_ratio[order]]),
    ]
    head = max(len(name) for name, _ in rows)
    width = max(len(cell) for _, cells in rows for cell in cells)
    lines = [
        f"{name:<{head}}  " + "  ".join(f"{c:>{width}}" for c in cells) for name, cells in rows
    ]
    lines += ["", f"{'k':>3}  {'error':>14}  {'improvement':>11}"]
    for i, result in enumerate(results):
        gain = f"{100 * improvement(results[i - 1], result):.1f}%" if i else "-"
        lines.append(f"{result.k:>3}  {result.error:>14.1f}  {gain:>11}")
    lines.append(f"chosen k = {chosen.k} ({len(chosen.labels)} boxes)")
    return "\n".join(lines)


def _keep_positive(wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The widths and heights of ``wh`` (``[N, 2]``) without degenerate boxes (W/H undefined)."""
    wh = wh[(wh > 0).all(axis=1)]
    return wh[:, 0], wh[:, 1]


def voc_boxes(
    root: str | Path, split: str, class_names: Sequence[str], size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights (pixels; on an S x S input when ``size`` is given) of a VOC split's
    boxes, difficult ones included (annotations only, no image decoded): those a training set
    reads with ``data.strict=false``, which passes over images without a file and malformed
    objects, counted in a warning."""
    wh = [np.zeros((0, 2))]
    for ann in VOCDataset(root, split, class_names, strict=False, train=True).annotations:
        boxes = ann["boxes"].astype(np.float64)  # 0-based xyxy: x1 - x0 is the pixel width
        scale = (size / ann["width"], size / ann["height"]) if size else (1.0, 1.0)
        wh.append((boxes[:, 2:] - boxes[:, :2]) * scale)
    return _keep_positive(np.concatenate(wh))


def coco_boxes(path: str | Path, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Widths and heights of the boxes training uses in a COCO instances file (no crowd regions;
    see :func:`dssd.data.coco.trained_on`), as :func:`voc_boxes` gives them."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"COCO annotation file {path} is not a file")
    coco = load_coco(path).dataset  # a file the COCO reader accepts (ids, keys)
    if "annotations" not in coco:
        raise UserError(f"{path}: an image-info file, without 'annotations': no boxes to cluster")
    anns = [a for a in coco["annotations"] if trained_on(a)]
    what = "annotation's 'bbox'"
    try:
        wh = np.array([a["bbox"][2:4] for a in anns], np.float64).reshape(-1, 2)
        if size:  # each box on its image's S x S resize
            what = "image's 'width' or 'height'"
            sides = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
            image_wh = np.array([sides[a["image_id"]] for a in anns], np.float64).reshape(-1, 2)
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise UserError(f"{path}: an {what} is missing or not numbers ({err!r})") from None
    if size:
        if not (image_wh > 0).all():
            raise UserError(
                f"{path}: an image with a box has a width or height of 0 or less, so its boxes "
                f"have no size on a {size}x{size} input"
            )
        wh = wh * size / image_wh
    return _keep_positive(wh)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: read the boxes, grow the clusters, print the table."""
    parser = argparse.ArgumentParser(
        prog="python -m dssd.tools.anchor_kmeans",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--root", type=Path, help="VOC-layout dataset root")
    source.add_argument("--coco", type=Path, help="COCO instances JSON file")
    parser.add_argument("--split", default="trainval", help="VOC split (ImageSets/Main/<split>)")
    parser.add_argument(
        "--classes", default=",".join(CLASSES), help="comma-separated VOC class names"
    )
    parser.add_argument(
        "--size", type=int, help="measure boxes on an S x S resized input; default: as stored"
    )
    parser.add_argument("--start", type=int, default=2, help="first number of clusters")
    parser.add_argument(
        "--min-improvement",
        type=number(lambda x: 0 <= x < 1, "a share in [0, 1), e.g. 0.2 for 20%"),
        default=0.2,
        help="stop adding clusters when one more lowers the error by less than this share",
    )
    parser.add_argument("--max-k", type=int, default=12, help="most clusters")
    parser.add_argument("--seed", type=at_least(0), default=0, help="of the k-means initialisation")
    args = parser.parse_args(argv)
    if not 1 <= args.start <= args.max_k:
        parser.error(f"need 1 <= --start <= --max-k, got {args.start}, {args.max_k}")
    if args.size is not None and args.size < 1:
        parser.error(f"--size {args.size}: an input side of at least 1 px")
    with user_errors():
        if args.coco is not None:
            widths, heights = coco_boxes(args.coco, args.size)
        else:
            classes = [c.strip() for c in args.classes.split(",") if c.strip()]
            widths, heights = voc_boxes(args.root, args.split, classes, args.size)
        if widths.size == 0:
            source = args.coco if args.coco is not None else f"{args.root} split {args.split}"
            raise UserError(f"{source}: holds no boxes to cluster")
        results = grow_clusters(
            widths, heights, args.start, args.min_improvement, args.max_k, args.seed
        )
    units = f"on a {args.size}x{args.size} input" if args.size else "in original pixels"
    print(f"k-means of {widths.size} boxes on sqrt(box area), {units}")
    print(format_table(results))


if __name__ == "__main__":
    main()
