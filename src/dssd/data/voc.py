"""PASCAL VOC reader: annotation parsing and a map-style detection dataset.

Works for the real VOC2007/2012 layout and for the embedded shapes dataset, which uses the same
layout. All annotations are parsed when the dataset is built, so a broken file fails at once rather
than in the middle of an epoch.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from dssd.errors import DatasetNotFoundError, UserError

MISSING_DATA_HINT = (
    "build the embedded dataset with `make data`, or set data.root=/path/to/VOCdevkit/VOC2007"
)


class VOCAnnotationError(UserError, ValueError):
    """An annotation file that cannot be used; the message names the file and the problem."""


def _text(node: ET.Element, tag: str, path: Path) -> str:
    """Stripped text of the required child ``tag`` of ``node``."""
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise VOCAnnotationError(f"{path}: missing <{tag}> in <{node.tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, path: Path) -> float:
    """Numeric value of the required child ``tag`` of ``node``."""
    text = _text(node, tag, path)
    try:
        return float(text)
    except ValueError:
        raise VOCAnnotationError(f"{path}: <{tag}> is not a number: {text!r}") from None


def _flag(node: ET.Element, tag: str) -> bool:
    """Optional 0/1 child ``tag``; a missing tag means 0, as in the VOC devkit."""
    child = node.find(tag)
    return child is not None and child.text is not None and child.text.strip() not in ("", "0")


def parse_voc_xml(path: Path, class_to_index: dict[str, int]) -> dict[str, Any]:
    """Parse one VOC annotation file.

    Returns "boxes" (float32 [N, 4] xyxy, 0-based pixel coordinates: xmin - 1, ymin - 1, xmax,
    ymax), "labels" (int64 [N], values of ``class_to_index``; 0 is reserved for background),
    "difficult" and "truncated" (bool [N]), "width" and "height" (int).
    Raises VOCAnnotationError for malformed files and for class names not in ``class_to_index``.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise VOCAnnotationError(f"{path}: malformed XML ({err})") from None
    size = root.find("size")
    if size is None:
        raise VOCAnnotationError(f"{path}: missing <size>")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))

    boxes, labels, difficult, truncated = [], [], [], []
    for obj in root.iter("object"):
        name = _text(obj, "name", path)
        if name not in class_to_index:
            raise VOCAnnotationError(
                f"{path}: object class {name!r} is not among the configured classes "
                f"{list(class_to_index)}"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise VOCAnnotationError(f"{path}: object {name!r} has no <bndbox>")
        x0, y0, x1, y1 = (_number(bndbox, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
        if x1 < x0 or y1 < y0:
            raise VOCAnnotationError(f"{path}: object {name!r} has an empty box {x0, y0, x1, y1}")
        boxes.append((x0 - 1.0, y0 - 1.0, x1, y1))
        labels.append(class_to_index[name])
        difficult.append(_flag(obj, "difficult"))
        truncated.append(_flag(obj, "truncated"))
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
        "difficult": np.asarray(difficult, bool),
        "truncated": np.asarray(truncated, bool),
        "width": width,
        "height": height,
    }


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 RGB array."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read or decode image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class VOCDataset(Dataset):
    """A split of a VOC-layout dataset (ImageSets/Main/<split>.txt, Annotations/, JPEGImages/).

    Items are ``transform(image, target)``; without a transform, ``image`` is the RGB uint8 array
    and ``target`` holds "boxes" (float32 [N, 4] 0-based pixel xyxy), "labels" (int64 [N], 1..C),
    "difficult" (bool [N]) and "image_id" (the id string from the split file). Labels follow the
    order of ``class_names``, starting at 1. With ``keep_difficult=False`` difficult objects are
    dropped.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        transform: Callable[[np.ndarray, dict[str, Any]], Any] | None = None,
        keep_difficult: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.class_names = tuple(class_names)
        self.transform = transform
        if not self.root.is_dir():
            raise DatasetNotFoundError(
                f"dataset root {self.root} does not exist: {MISSING_DATA_HINT}"
            )
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetNotFoundError(
                f"split file {split_file} does not exist (no split {split!r} in {self.root}): "
                f"{MISSING_DATA_HINT}"
            )
        self.ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        class_to_index = {name: i + 1 for i, name in enumerate(self.class_names)}
        self.annotations = [
            parse_voc_xml(self.root / "Annotations" / f"{image_id}.xml", class_to_index)
            for image_id in self.ids
        ]
        if not keep_difficult:
            for ann in self.annotations:
                keep = ~ann["difficult"]
                for key in ("boxes", "labels", "difficult", "truncated"):
                    ann[key] = ann[key][keep]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        image_id = self.ids[index]
        image = read_image(self.root / "JPEGImages" / f"{image_id}.jpg")
        ann = self.annotations[index]
        target = {
            "boxes": ann["boxes"],
            "labels": ann["labels"],
            "difficult": ann["difficult"],
            "image_id": image_id,
        }
        if self.transform is None:
            return image, target
        return self.transform(image, target)
