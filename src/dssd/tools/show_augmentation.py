"""Write a grid of augmented training samples with their boxes, to eyeball the SSD augmentation.

The samples go through the training pipeline (``build_transforms(size, train=True,
augment=ssd_augmentation())``) and are un-normalised; difficult boxes are orange.

    python -m dssd.tools.show_augmentation --root data/shapes --out augmented.png
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.utils import make_grid

from dssd.data.augment import ssd_augmentation
from dssd.data.shapes import CLASSES
from dssd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from dssd.data.voc import VOCDataset
from dssd.errors import UserError, user_errors, writable_file
from dssd.tools import HelpFormatter, at_least

BOX_COLOUR = (0, 255, 0)  # RGB
DIFFICULT_COLOUR = (255, 140, 0)
GAP = 4  # pixels between tiles


def to_image(tensor: Tensor) -> np.ndarray:
    """Undo Normalize + ToTensorV2: a [3, S, S] float tensor back to an SxSx3 uint8 RGB image."""
    image = tensor.permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def draw_sample(tensor: Tensor, target: dict, class_names: Sequence[str]) -> np.ndarray:
    """The un-normalised image with its boxes and class names drawn."""
    image = np.ascontiguousarray(to_image(tensor))
    size = np.array(image.shape[1::-1] * 2)
    boxes = np.round(target["boxes"].numpy() * size).astype(int)
    for box, label, difficult in zip(boxes, target["labels"], target["difficult"], strict=True):
        colour = DIFFICULT_COLOUR if difficult else BOX_COLOUR
        x0, y0, x1, y1 = box.tolist()
        cv2.rectangle(image, (x0, y0), (x1, y1), colour, 1)
        name = class_names[int(label) - 1]  # label 0 is the background
        cv2.putText(image, name, (x0 + 2, max(y0 - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour)
    return image


def grid(tiles: Sequence[np.ndarray], cols: int) -> np.ndarray:
    """Tiles of one size laid out row by row on a white sheet (no margin outside them)."""
    if len(tiles) == 1:  # make_grid returns a single tile as it is, without the padding
        return tiles[0]
    tensors = [torch.from_numpy(tile).permute(2, 0, 1) for tile in tiles]
    sheet = make_grid(tensors, nrow=cols, padding=GAP, pad_value=255)[:, GAP:-GAP, GAP:-GAP]
    return sheet.permute(1, 2, 0).numpy()


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: write the grid and print its path."""
    parser = argparse.ArgumentParser(
        prog="python -m dssd.tools.show_augmentation",
        description=__doc__.split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--root", required=True, help="VOC-layout dataset root")
    parser.add_argument("--split", default="trainval", help="VOC split (ImageSets/Main/<split>)")
    parser.add_argument("--size", type=at_least(1), default=321, help="network input size")
    parser.add_argument("--rows", type=at_least(1), default=3, help="rows of the grid")
    parser.add_argument("--cols", type=at_least(1), default=4, help="columns of the grid")
    parser.add_argument(
        "--seed", type=at_least(0), default=0, help="picks the images and augmentations"
    )
    parser.add_argument("--classes", help="comma-separated class names (default: the shapes set)")
    parser.add_argument("--out", type=Path, default="augmented.png", help="PNG to write")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        parser.error(f"--out {args.out}: a .png or .jpg file")
    with user_errors():
        writable_file(args.out, "--out")
        class_names = args.classes.split(",") if args.classes else list(CLASSES)
        transform = build_transforms(args.size, train=True, augment=ssd_augmentation())
        transform.pipeline.set_random_seed(args.seed)
        dataset = VOCDataset(args.root, args.split, class_names, transform)
        if not len(dataset):
            raise UserError(f"split {args.split} of {args.root} lists no images")
        count = args.rows * args.cols
        rng = np.random.default_rng(args.seed)
        indices = rng.choice(len(dataset), size=count, replace=count > len(dataset))
        tiles = [draw_sample(*dataset[int(i)], class_names) for i in indices]
        sheet = grid(tiles, args.cols)
        if not cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
            raise UserError(f"--out {args.out}: could not write the image")
    print(args.out)


if __name__ == "__main__":
    main()
