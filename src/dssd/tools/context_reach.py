"""How far a detector looks when it predicts a small object: of the input gradient of what its
heads read at that object's default box, the share that lies farther than ``--distance`` pixels
from the object's box (its context), and the radii around the object's centre that hold half and
90% of it (the effective receptive field, Luo et al. 2016, measured where the object is). The
context probe (``make ablation ABLATION=shapes_context``) asks whether DSSD's deconvolution module
makes the prediction at a small ring reach its shape's outline, 40 px away, where SSD's does not.

    python -m dssd.tools.context_reach logs/ablation/shapes_context/ssd_pm_c_control/seed0 \\
        logs/ablation/shapes_context/dssd_prod/seed0
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou

from dssd.analysis.analyser import find_run
from dssd.deployment.inference import load_checkpoint, load_test_data, restore_detector
from dssd.errors import user_errors
from dssd.models.ssd import SSD
from dssd.results.tables import markdown_table
from dssd.tools import HelpFormatter, at_least, number
from dssd.tools.anchor_coverage import prior_layers


@dataclass(frozen=True)
class Reach:
    """One object's measurement: the source map it is predicted from, the share of the gradient
    beyond the distance, and the radii (original-image pixels) holding 50% and 90% of it."""

    level: int
    share_beyond: float
    radius_50: float
    radius_90: float


def best_default_box(net: SSD, box: Tensor) -> tuple[int, int, int]:
    """Source map, row and column of the default box overlapping ``box`` (xyxy, normalised) most."""
    priors = box_convert(net.priors, "cxcywh", "xyxy")
    index = int(box_iou(box[None], priors)[0].argmax())
    sizes, per_cell = net.feature_sizes, net.default_boxes.boxes_per_location
    layers = prior_layers(sizes, per_cell)
    level = int(layers[index])
    row, col = divmod((index - int((layers < level).sum())) // per_cell[level], sizes[level])
    return level, row, col


def input_gradients(net: SSD, image: Tensor, cells: Sequence[tuple[int, int, int]]) -> list[Tensor]:
    """Per (source ``level``, ``row``, ``col``) of ``cells``: |d(||f||^2 / 2) / d input| summed
    over colours, ``[S, S]``, where ``f`` is the prediction module's output the heads read at that
    cell. One forward pass serves every cell of the image."""
    x = image[None].detach().clone().requires_grad_(True)
    maps = net.sources(x)
    outputs = {level: net.prediction_modules[level](maps[level]) for level in {c[0] for c in cells}}
    gradients = []
    for k, (level, row, col) in enumerate(cells):
        energy = outputs[level][0, :, row, col].float().pow(2).sum() / 2
        (gradient,) = torch.autograd.grad(energy, x, retain_graph=k < len(cells) - 1)
        gradients.append(gradient[0].abs().sum(0))
    return gradients


def measure(
    gradient: Tensor, box: Sequence[float], size: tuple[int, int], distance: float, level: int
) -> Reach:
    """The :class:`Reach` of a ``[S, S]`` input gradient for an object ``box`` (xyxy, pixels of an
    image of ``size`` = (height, width))."""
    height, width = size
    side = gradient.shape[-1]
    # each input pixel's centre in original-image pixels
    pixel = torch.arange(side, dtype=torch.float64) + 0.5
    yy, xx = torch.meshgrid(pixel * height / side, pixel * width / side, indexing="ij")
    x0, y0, x1, y1 = box
    dx = torch.clamp(torch.maximum(x0 - xx, xx - x1), min=0)
    dy = torch.clamp(torch.maximum(y0 - yy, yy - y1), min=0)
    weight = gradient.double() / gradient.sum().clamp(min=1e-30)
    beyond = float(weight[(dx**2 + dy**2).sqrt() > distance].sum())
    from_centre = ((xx - (x0 + x1) / 2) ** 2 + (yy - (y0 + y1) / 2) ** 2).sqrt().flatten()
    order = from_centre.argsort()
    cumulative = weight.flatten()[order].cumsum(0)
    radii = [float(from_centre[order][torch.searchsorted(cumulative, q)]) for q in (0.5, 0.9)]
    return Reach(level, beyond, *radii)


def run_reach(
    path: str, objects: int, max_size: float, distance: float, data_root: str | None
) -> tuple[str, list[Reach]]:
    """The run's name and the :class:`Reach` of its first ``objects`` non-difficult test objects
    under ``max_size`` px (sqrt of the box area)."""
    run = find_run(path, option="")
    checkpoint, config = load_checkpoint(run.checkpoint)
    net: SSD = restore_detector(checkpoint, config.model).net.float().eval()
    dataset = load_test_data(config, **({"root": data_root} if data_root else {})).datasets["test"]
    reaches: list[Reach] = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        height, width = target["orig_size"].tolist()
        scale = torch.tensor([width, height, width, height])
        small = [
            box
            for box, difficult in zip(target["boxes"], target["difficult"], strict=True)
            if not difficult
            and float((box[2] - box[0]) * (box[3] - box[1]) * width * height) < max_size**2
        ][: objects - len(reaches)]
        if not small:
            continue
        cells = [best_default_box(net, box.float()) for box in small]
        gradients = input_gradients(net, image, cells)
        for box, cell, gradient in zip(small, cells, gradients, strict=True):
            pixels = (box * scale).tolist()
            reaches.append(measure(gradient, pixels, (height, width), distance, cell[0]))
        if len(reaches) == objects:
            break
    return run.name, reaches


def reach_table(results: Sequence[tuple[str, list[Reach]]], distance: float) -> str:
    """Each run's measurements as a markdown table: mean share beyond ``distance``, median radii."""
    header = ["run", "objects", "maps", f"share beyond {distance:g} px", "r50 (px)", "r90 (px)"]
    rows = []
    for name, reaches in results:
        if not reaches:
            rows.append([name, 0, "–", "–", "–", "–"])
            continue
        levels = np.bincount([r.level for r in reaches])
        shares = np.array([r.share_beyond for r in reaches])
        rows.append(
            [
                name,
                len(reaches),
                ", ".join(f"{k}: {n}" for k, n in enumerate(levels) if n),
                f"{100 * shares.mean():.1f}% ± {100 * shares.std():.1f}",
                f"{np.median([r.radius_50 for r in reaches]):.1f}",
                f"{np.median([r.radius_90 for r in reaches]):.1f}",
            ]
        )
    return markdown_table(header, rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m dssd.tools.context_reach RUN [RUN ...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m dssd.tools.context_reach",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="run directories or checkpoints")
    positive = number(lambda x: 0 < x < math.inf, "a length in pixels, above 0")
    parser.add_argument("--objects", type=at_least(1), default=100, help="objects per run")
    parser.add_argument(
        "--max-size", type=positive, default=32.0, help="sqrt(box area) below this, px"
    )
    parser.add_argument("--distance", type=positive, default=40.0, help="context beyond this, px")
    parser.add_argument("--data-root", help="the test data's root (default: the run's data.root)")
    args = parser.parse_args(argv)
    with user_errors():
        results = [
            run_reach(path, args.objects, args.max_size, args.distance, args.data_root)
            for path in args.runs
        ]
    print(reach_table(results, args.distance))


if __name__ == "__main__":
    main()
