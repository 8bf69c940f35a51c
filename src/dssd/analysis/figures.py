"""The figures of an analysis (:mod:`dssd.analysis.breakdown`, :mod:`dssd.analysis.comparison`):
plots as matplotlib figures, drawn without a display, and galleries of image crops as RGB arrays
(boxes drawn by torchvision); :mod:`dssd.analysis.writing` saves them."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted

import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torchvision.utils import draw_bounding_boxes, make_grid  # noqa: E402

from dssd.analysis.breakdown import (  # noqa: E402
    RECALL_GRID,
    RunAnalysis,
    RunDetections,
    object_sizes,
)
from dssd.analysis.comparison import Comparison, DeltaRow  # noqa: E402
from dssd.analysis.errors import ERROR_TYPES  # noqa: E402
from dssd.data.voc import read_image  # noqa: E402

TRUTH_COLOUR, DETECTION_COLOUR, BASELINE_COLOUR = "#2ca02c", "#d62728", "#1f77b4"


def pr_curves(analysis: RunAnalysis, class_names: Sequence[str]) -> Figure:
    """Each class's precision-recall curve (its VOC AP in the legend), and the mean interpolated
    curve of each COCO object size."""
    fig, (by_class, by_size) = plt.subplots(1, 2, figsize=(12, 5), layout="tight")
    for name, (recall, precision), ap in zip(
        class_names, analysis.curves, analysis.ap_per_class, strict=True
    ):
        if recall.size:
            by_class.plot(recall, precision, label=f"{name} ({100 * ap:.1f})")
    by_class.set_title(f"per class (VOC AP, %); mAP {100 * analysis.map:.1f}")
    for size in analysis.coco_sizes:
        curve = analysis.size_curves[size.name]
        if np.isfinite(curve).all():
            label = f"{size.name}: {size.objects} objects, AP {100 * size.ap:.1f}"
            by_size.plot(RECALL_GRID, curve, label=label)
    by_size.set_title("per object size (mean over classes, interpolated)")
    for ax in (by_class, by_size):
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small", loc="lower left")
    return fig


def confusion(analysis: RunAnalysis, class_names: Sequence[str]) -> Figure:
    """The confusion matrix with background, shaded by each true class's share, with counts."""
    matrix = analysis.confusion
    labels = [*class_names, "background"]
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = 1.2 + 0.55 * len(labels)
    fig, ax = plt.subplots(figsize=(side + 1.5, side), layout="tight")
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (t, p), count in np.ndenumerate(matrix):
        if count:
            colour = "white" if shares[t, p] > 0.5 else "black"
            ax.text(p, t, str(count), ha="center", va="center", fontsize="x-small", color=colour)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="true")
    ax.set_title(f"confusion matrix (IoU 0.5, score >= {analysis.score_threshold:g})")
    fig.colorbar(image, ax=ax, label="share of the true class's row")
    return fig


def errors(analysis: RunAnalysis) -> Figure:
    """How many errors of each type, and the mAP each would gain if fixed (TIDE's dAP), over all
    objects and per COCO size."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4), layout="tight")
    left.bar(ERROR_TYPES, [analysis.errors.counts[e] for e in ERROR_TYPES], color="#7f7f7f")
    left.set(title="errors (all sizes)", ylabel="count")
    groups = {"all": analysis.errors, **analysis.size_errors}
    width = 0.8 / len(groups)
    positions = np.arange(len(ERROR_TYPES))
    for k, (size, found) in enumerate(groups.items()):
        gains = [100 * found.delta_map[name] for name in ERROR_TYPES]
        right.bar(positions + (k - (len(groups) - 1) / 2) * width, gains, width, label=size)
    right.set_xticks(positions, ERROR_TYPES)
    right.set(title=f"mAP gained if fixed (base {100 * analysis.map:.1f})", ylabel="dAP (points)")
    right.legend(fontsize="small")
    return fig


def sizes(analysis: RunAnalysis) -> Figure:
    """Objects per size bin, with the AP and the share found at the operating point."""
    bins = analysis.fine_sizes
    names = [b.name for b in bins]
    fig, ax = plt.subplots(figsize=(10, 4), layout="tight")
    ax.bar(names, [b.objects for b in bins], color="#c7c7c7", label="objects")
    ax.set(xlabel="sqrt(area) of the object, original-image pixels", ylabel="objects")
    share = ax.twinx()
    share.plot(names, [100 * b.ap for b in bins], "o-", color="#d62728", label="AP")
    found = [100 * b.found / b.objects if b.objects else np.nan for b in bins]
    label = f"found at score >= {analysis.score_threshold:g}"
    share.plot(names, found, "s--", color="#1f77b4", label=label)
    share.set(ylabel="%", ylim=(0, 100))
    for position, b in enumerate(bins):
        if b.low in (32, 96):  # COCO's small / medium / large bounds
            ax.axvline(position - 0.5, color="black", linestyle=":", linewidth=1)
    share.legend(loc="upper right", fontsize="small")
    ax.set_title(
        "AP by object size: "
        + ", ".join(f"{b.name} {100 * b.ap:.1f}" for b in analysis.coco_sizes)
        + f" (COCO bounds {', '.join(f'{b.high:g}' for b in analysis.coco_sizes[:-1])} px)"
    )
    return fig


def _tile(
    path: str,
    focus: np.ndarray | None,
    boxes: np.ndarray,
    colours: Sequence[str],
    caption: str,
    side: int,
) -> torch.Tensor:
    """The image at ``path`` (cropped around the ``focus`` box if given) scaled into a padded
    ``side``-pixel square with ``boxes`` drawn, under a ``caption``: [3, side + 18, side] uint8."""
    image = read_image(path)
    x0, y0, x1, y1 = 0, 0, image.shape[1], image.shape[0]
    if focus is not None:  # half the box's size on each side, at least 48 pixels across
        box_w, box_h = focus[2] - focus[0], focus[3] - focus[1]
        pad_x = max(0.5 * box_w, (48 - box_w) / 2, 0)
        pad_y = max(0.5 * box_h, (48 - box_h) / 2, 0)
        x0, y0 = int(max(0, focus[0] - pad_x)), int(max(0, focus[1] - pad_y))
        x1, y1 = int(min(x1, np.ceil(focus[2] + pad_x))), int(min(y1, np.ceil(focus[3] + pad_y)))
    part = image[y0:y1, x0:x1]
    scale = side / max(part.shape[:2])
    width, height = max(1, round(part.shape[1] * scale)), max(1, round(part.shape[0] * scale))
    square = np.zeros((side, side, 3), np.uint8)
    square[:height, :width] = cv2.resize(part, (width, height), interpolation=cv2.INTER_AREA)
    shifted = (np.asarray(boxes, np.float64).reshape(-1, 4) - [x0, y0, x0, y0]) * scale
    drawn = draw_bounding_boxes(
        torch.from_numpy(square).permute(2, 0, 1),
        torch.from_numpy(np.clip(shifted, 0, side - 1)),
        colors=list(colours),
        width=2,
    )
    strip = np.full((18, side, 3), 255, np.uint8)
    cv2.putText(strip, caption, (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return torch.cat([torch.from_numpy(strip).permute(2, 0, 1), drawn], dim=1)


def _grid(tiles: Sequence[torch.Tensor], side: int) -> np.ndarray:
    """Tiles in rows of four on white (one blank tile when there are none), as HxWx3 uint8."""
    if not tiles:
        tiles = [torch.full((3, side + 18, side), 255, dtype=torch.uint8)]
    grid = make_grid(list(tiles), nrow=min(4, len(tiles)), padding=4, pad_value=255)
    return grid.permute(1, 2, 0).numpy()


def false_positive_gallery(
    test: RunDetections, picks: Sequence[tuple[int, int, str]], side: int = 224
) -> np.ndarray:
    """Crops around false positives (red; type, class, score and image above) and the objects
    near them (green), from :func:`dssd.analysis.breakdown.worst_false_positives`."""
    tiles = []
    for i, k, kind in picks:
        pred = test.preds[i]
        box = np.asarray(pred["boxes"], np.float64)[k]
        truth = np.asarray(test.targets[i]["boxes"], np.float64).reshape(-1, 4)
        name = test.class_names[int(pred["labels"][k]) - 1]
        caption = f"{kind}: {name} {float(pred['scores'][k]):.2f}, image {test.image_ids[i]}"
        colours = [TRUTH_COLOUR] * len(truth) + [DETECTION_COLOUR]
        boxes = np.vstack([truth, box[None]])
        tiles.append(_tile(test.image_paths[i], box, boxes, colours, caption, side))
    return _grid(tiles, side)


def missed_gallery(
    test: RunDetections, picks: Sequence[tuple[int, int]], side: int = 224
) -> np.ndarray:
    """Crops around missed objects (green; class, size and image above), from
    :func:`dssd.analysis.breakdown.largest_missed`."""
    tiles = []
    for i, j in picks:
        target = test.targets[i]
        box = np.asarray(target["boxes"], np.float64).reshape(-1, 4)[j]
        name = test.class_names[int(target["labels"][j]) - 1]
        caption = f"{name}, {object_sizes(target)[j]:.0f} px, image {test.image_ids[i]}"
        tiles.append(_tile(test.image_paths[i], box, box[None], [TRUTH_COLOUR], caption, side))
    return _grid(tiles, side)


def _deltas(ax, rows: Sequence[DeltaRow], title: str) -> None:
    """``rows``' differences (points, first at the top) with their intervals, drawn into ``ax``."""
    names = [r.name for r in rows][::-1]
    delta = np.array([100 * r.difference.delta for r in rows])[::-1]
    low = np.array([100 * r.difference.low for r in rows])[::-1]
    high = np.array([100 * r.difference.high for r in rows])[::-1]
    colours = [
        "#2ca02c" if lo > 0 else "#d62728" if hi < 0 else "#7f7f7f"
        for lo, hi in zip(low, high, strict=True)
    ]
    positions = np.arange(len(rows))
    error = np.abs(np.vstack([delta - low, high - delta]))
    ax.errorbar(delta, positions, xerr=error, fmt="none", ecolor="#7f7f7f", capsize=3)
    ax.scatter(delta, positions, c=colours, zorder=3)
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(positions, names)
    ax.set(title=title, xlabel="AP difference, run - baseline (points)")
    ax.grid(axis="x", alpha=0.3)


def comparison(result: Comparison, run_name: str, baseline_name: str) -> Figure:
    """AP differences per class and per object size with their bootstrap intervals (green: the
    interval excludes 0 upwards, red: downwards)."""
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 0.8 + 0.35 * max(len(result.classes), len(result.sizes))), layout="tight"
    )
    level = f"{100 * result.confidence:g}%"
    _deltas(left, [result.overall, *result.classes], f"per class, {level} interval")
    _deltas(right, result.sizes, f"per object size (sqrt(area), px), {level} interval")
    fig.suptitle(f"{run_name} vs {baseline_name} ({result.seeds} paired seed(s))")
    return fig


def found_gallery(
    test: RunDetections, rows: Sequence[tuple[int, np.ndarray, np.ndarray]], side: int = 320
) -> np.ndarray:
    """Whole test images with the objects only the run found (red) and only the baseline found
    (blue), the others in green; ``rows`` are (image, run-only flags, baseline-only flags)."""
    tiles = []
    for i, run_only, baseline_only in rows:
        boxes = np.asarray(test.targets[i]["boxes"], np.float64).reshape(-1, 4)
        colours = np.where(
            run_only, DETECTION_COLOUR, np.where(baseline_only, BASELINE_COLOUR, TRUTH_COLOUR)
        )
        caption = (
            f"image {test.image_ids[i]}: {int(run_only.sum())} run only, "
            f"{int(baseline_only.sum())} baseline only"
        )
        tiles.append(_tile(test.image_paths[i], None, boxes, colours.tolist(), caption, side))
    return _grid(tiles, side)
