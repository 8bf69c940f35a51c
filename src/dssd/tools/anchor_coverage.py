"""Default-box coverage: can a model's default boxes reach a dataset's objects at all?

An object that no default box overlaps with IoU > 0.5 gets only its best box as a (poor) positive.
Per object of a split, in the S x S input (IoU is invariant to scaling the axes), this reports the
share covered by size and source layer, positives per object and the best-IoU histogram.

    python -m dssd.tools.anchor_coverage model=ssd321 data=shapes
    python -m dssd.tools.anchor_coverage model=dssd513 --out coverage/ --picture
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from torch import Tensor
from torchvision.ops import box_area, box_convert, box_iou

from dssd.config import compose_train
from dssd.data.datamodule import dataset_items
from dssd.errors import UserError, creatable_directory, user_errors, writable_directory
from dssd.results.tables import cell, percent_cell
from dssd.tools import HelpFormatter

# COCO's size classes: area in original-image pixels
COCO_AREAS = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, np.inf)}
# finer bins: sqrt(area) in pixels of the network's input
SIZE_EDGES = (0, 8, 16, 32, 64, 128, 256, 1024)
IOU_EDGES = np.linspace(0.0, 1.0, 11)


@dataclass(frozen=True)
class Coverage:
    """Per object (``N``): its best IoU with any default box, that box's source layer, the number
    of default boxes with IoU > ``threshold`` and the best IoU on each layer (``[N, K]``)."""

    best_iou: np.ndarray
    best_layer: np.ndarray
    positives: np.ndarray
    layer_best_iou: np.ndarray
    threshold: float

    @property
    def covered(self) -> np.ndarray:
        return self.best_iou > self.threshold


def prior_layers(feature_sizes: Sequence[int], boxes_per_location: Sequence[int]) -> Tensor:
    """The source layer of each default box, in the network's order (layer, row, column, box)."""
    counts = [f * f * a for f, a in zip(feature_sizes, boxes_per_location, strict=True)]
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def coverage(
    priors: Tensor, layers: Tensor, boxes: Tensor, threshold: float = 0.5, chunk: int = 512
) -> Coverage:
    """Coverage of ``boxes`` (``[N, 4]`` xyxy, normalised to the image) by ``priors``
    (``[P, 4]`` cxcywh, normalised) whose source layers are ``layers`` (``[P]``)."""
    anchors = box_convert(priors.double(), "cxcywh", "xyxy")
    num_layers = int(layers.max()) + 1
    parts = []
    for part in boxes.double().split(chunk):
        iou = box_iou(part, anchors)  # [n, P]
        value, index = iou.max(dim=1)
        layer_iou = iou.new_zeros(len(part), num_layers)
        layer_iou.scatter_reduce_(1, layers.expand_as(iou), iou, reduce="amax")
        parts.append((value, layers[index], (iou > threshold).sum(dim=1), layer_iou))
    return Coverage(*(torch.cat(column).numpy() for column in zip(*parts, strict=True)), threshold)


def object_boxes(anns: Sequence[dict[str, Any]]) -> tuple[Tensor, np.ndarray]:
    """Every object's box normalised to its image (``[N, 4]`` xyxy) and its area in pixels."""
    pixels = [np.asarray(ann["boxes"], np.float64).reshape(-1, 4) for ann in anns]
    scales = [np.array([ann["width"], ann["height"]] * 2, np.float64) for ann in anns]
    boxes = np.concatenate([p / s for p, s in zip(pixels, scales, strict=True)])
    p = np.concatenate(pixels)
    return torch.from_numpy(boxes), (p[:, 2] - p[:, 0]) * (p[:, 3] - p[:, 1])


def report(result: Coverage, areas: np.ndarray, input_side: np.ndarray) -> dict[str, Any]:
    """The tables of the report as plain data (``input_side``: sqrt(area) in input pixels)."""
    covered = result.covered

    def mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if len(values) else None

    def row(mask: np.ndarray) -> dict[str, Any]:
        return {
            "objects": int(mask.sum()),
            "covered": mean(covered[mask]),
            "mean_best_iou": mean(result.best_iou[mask]),
            "mean_positives": mean(result.positives[mask]),
        }

    by_coco = {name: row((areas >= lo) & (areas < hi)) for name, (lo, hi) in COCO_AREAS.items()}
    by_side = {
        f"{lo}-{hi}": row((input_side >= lo) & (input_side < hi))
        for lo, hi in zip(SIZE_EDGES[:-1], SIZE_EDGES[1:], strict=True)
    }
    by_layer = [
        {
            "layer": k,
            "best_here": int((result.best_layer == k).sum()),
            "covered_by_layer": mean(result.layer_best_iou[:, k] > result.threshold),
        }
        for k in range(result.layer_best_iou.shape[1])
    ]
    histogram = np.histogram(result.best_iou, bins=IOU_EDGES)[0]
    return {
        "objects": len(covered),
        "covered": mean(covered),
        "mean_positives": mean(result.positives),
        "no_positive": int((result.positives == 0).sum()),
        "by_coco_size": by_coco,
        "by_input_size": by_side,
        "by_layer": by_layer,
        "best_iou_histogram": {
            f"{lo:.1f}-{hi:.1f}": int(c)
            for lo, hi, c in zip(IOU_EDGES[:-1], IOU_EDGES[1:], histogram, strict=True)
        },
    }


def markdown(name: str, data: dict[str, Any], threshold: float) -> str:
    """The report as markdown tables."""
    lines = [
        f"## Default-box coverage: {name}",
        "",
        f"{data['objects']} objects; covered (best IoU > {threshold}): "
        f"{percent_cell(data['covered'])}%; positives per object: "
        f"{cell(data['mean_positives'], 2)}; objects without a positive: {data['no_positive']}",
        "",
        "| size | objects | covered % | mean best IoU | positives / object |",
        "|---|---:|---:|---:|---:|",
    ]
    sizes = [(f"COCO {k}", r) for k, r in data["by_coco_size"].items()]
    sizes += [(f"sqrt(area) {k} px", r) for k, r in data["by_input_size"].items()]
    lines += [
        f"| {label} | {r['objects']} | {percent_cell(r['covered'])} "
        f"| {cell(r['mean_best_iou'], 2)} | {cell(r['mean_positives'], 2)} |"
        for label, r in sizes
    ]
    lines += ["", "| layer | objects whose best box is here | covered by this layer alone % |"]
    lines.append("|---:|---:|---:|")
    lines += [
        f"| {r['layer']} | {r['best_here']} | {percent_cell(r['covered_by_layer'])} |"
        for r in data["by_layer"]
    ]
    lines += ["", "| best IoU | objects |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in data["best_iou_histogram"].items()]
    return "\n".join(lines)


def draw_layer(
    image: np.ndarray, priors: Tensor, layers: Tensor, layer: int, truth: np.ndarray
) -> np.ndarray:
    """``image`` with the default boxes of ``layer`` at the locations nearest its centre (blue;
    four of them on an even map) and the ground-truth boxes ``truth`` (pixels, green)."""
    from torchvision.utils import draw_bounding_boxes

    boxes = priors[layers == layer].double()
    nearest = (boxes[:, :2] - 0.5).abs().sum(dim=1)
    boxes = boxes[nearest <= nearest.min() + 1e-9]
    scale = torch.tensor(image.shape[1::-1] * 2, dtype=torch.float64)  # W, H, W, H
    anchors = box_convert(boxes, "cxcywh", "xyxy") * scale
    drawn = torch.from_numpy(image).permute(2, 0, 1)
    drawn = draw_bounding_boxes(drawn, anchors, colors="blue", width=1)
    if len(truth):
        drawn = draw_bounding_boxes(drawn, torch.as_tensor(truth), colors="lime", width=2)
    return drawn.permute(1, 2, 0).numpy()


def measure(
    net: Any, data_cfg: Any, split: str, threshold: float
) -> tuple[dict[str, Any], list[tuple[Any, int]], list[dict[str, Any]], Tensor]:
    """The coverage report of ``net``'s default boxes on a split of ``data_cfg``'s dataset, the
    split's (reader, index) items and their annotations, and each default box's source layer."""
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit" if split != "test" else "test")
    items = dataset_items(datamodule.datasets[split])
    anns = [reader.objects(i) for reader, i in items]
    if not any(len(ann["boxes"]) for ann in anns):
        raise UserError(
            f"the {split} data of data.root={data_cfg.root} holds no objects ({len(anns)} images)"
        )
    boxes, areas = object_boxes(anns)
    layers = prior_layers(net.feature_sizes, net.default_boxes.boxes_per_location)
    result = coverage(net.priors, layers, boxes, threshold)
    side = net.image_size * np.sqrt(box_area(boxes).numpy())
    return report(result, areas, side), items, anns, layers


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dssd.tools.anchor_coverage",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=ssd321")
    parser.add_argument(
        "--split", default="train", choices=["train", "val", "test"], help="the objects measured"
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="matching IoU threshold")
    parser.add_argument("--layer", type=int, default=0, help="the source layer of --picture")
    parser.add_argument("--picture", action="store_true", help="draw --layer over an image")
    parser.add_argument(
        "--out", type=Path, help="write coverage.md, .json (and .png) here; default: print only"
    )
    args = parser.parse_args(argv)
    if not 0 < args.threshold <= 1:
        parser.error(f"--threshold {args.threshold}: an IoU in (0, 1]")
    if args.picture and not args.out:
        parser.error("--picture draws into --out: give --out DIR")
    if args.out:
        if args.out.suffix.lower() in (".md", ".json", ".png") and not args.out.is_dir():
            parser.error(f"--out {args.out}: give the directory coverage.md and .json go to")
        try:
            creatable_directory(args.out, "--out")
        except UserError as err:
            parser.error(str(err))
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Compose, build the network's default boxes and the split's objects, measure, write."""
    cfg = compose_train(args.overrides)
    net = instantiate(cfg.model.net)
    if args.picture and not 0 <= args.layer < len(net.feature_sizes):
        raise UserError(
            f"--layer {args.layer}: the network's source layers are 0..{len(net.feature_sizes) - 1}"
        )
    data, items, anns, layers = measure(net, cfg.data, args.split, args.threshold)
    name = " ".join(args.overrides) or "train.yaml defaults"
    text = markdown(f"{name} ({args.split}, {len(net.priors)} default boxes)", data, args.threshold)
    print(text)
    if args.out:
        writable_directory(args.out, "--out")
        (args.out / "coverage.md").write_text(text + "\n")
        (args.out / "coverage.json").write_text(json.dumps(data, indent=2) + "\n")
        if args.picture:
            from PIL import Image

            from dssd.data.voc import read_image

            first = next(k for k, a in enumerate(anns) if len(a["boxes"]))
            reader, index = items[first]
            image = read_image(reader.image_paths[index])
            picture = draw_layer(image, net.priors, layers, args.layer, anns[first]["boxes"])
            Image.fromarray(picture).save(args.out / f"layer{args.layer}.png")
    return data


def main(argv: Sequence[str] | None = None) -> None:
    # the data module's lines: the images read, and the shapes data built where there is none
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors():
        run(parse_args(argv))


if __name__ == "__main__":
    main()
