"""Deterministic generator of the embedded "shapes" detection dataset.

Filled shapes of six classes (many small, some occluded or truncated) on noisy backgrounds, in VOC
layout plus COCO JSON, so the project runs with no download; each image has its own random stream.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np

from dssd.errors import UserError
from dssd.tools import HelpFormatter

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ellipse")

FORMAT_VERSION = 2
STAMP_FILE = ".complete"
PARTIAL_STAMP_FILE = ".complete.partial"  # present while a generation is under way
# Generation order (ids count on across splits): trainval and test do not depend on val's size.
SPLITS = ("trainval", "test", "val")
# Output entries owned by the generator; only these are removed when regenerating.
_MANAGED = ("JPEGImages", "Annotations", "ImageSets", "annotations", STAMP_FILE)

MIN_OBJECT_SIZE = 10.0  # smallest sqrt(box area), pixels
MAX_OBJECT_FRACTION = 0.6  # largest sqrt(box area) as a fraction of min(image w, h)
CROWDED_MAX_SIZE = 40.0  # largest object in a crowded image, pixels
MAX_BOX_IOU = 0.4  # a new object's box may overlap each earlier box up to this IoU
MIN_VISIBLE = 0.1  # objects occluded beyond this are never placed
DIFFICULT_VISIBLE = 0.5  # less visible than this -> difficult
DIFFICULT_SIZE = 12.0  # sqrt(box area) below this -> difficult
MIN_COLOUR_DISTANCE = 120.0  # RGB distance of an object's colour from what lies beneath it
EMPTY_FRACTION = 0.02
# the smallest image side that holds a shape, px
MIN_IMAGE_SIZE = 4
CROWDED_FRACTION = 0.1
PLACEMENT_TRIES = 30
# Context variant: region sizes (of the shorter side), ring diameters, rings per region, and each
# ring box's least distance inside its region (pixels).
CONTEXT_REGION_FRACTION = (0.55, 0.9)
CONTEXT_RING_SIZES = (20.0, 31.0)
CONTEXT_RINGS = (1, 3)
CONTEXT_DISTANCE = 40
CONTEXT_TRIES = 200  # geometries tried per region before it is left out
# stars and crosses are too thin to hold a ring that deep
CONTEXT_RING_CLASSES = ("circle", "square", "triangle", "ellipse")
VARIANTS = ("plain", "context")
_IMAGES_PER_WORKER = 256


@dataclass(frozen=True)
class ShapeObject:
    """One annotated object; ``box``: inclusive 0-based pixels (col0, row0, col1, row1)."""

    label: int  # index into CLASSES
    box: tuple[int, int, int, int]
    truncated: bool
    difficult: bool


_Record = tuple[str, int, int, list[ShapeObject]]  # image id, width, height, objects


@dataclass(frozen=True)
class _Placed:
    """A shape placed on the image: class, region of interest, its mask inside it, tight box."""

    label: int
    roi: tuple[slice, slice]
    mask: np.ndarray  # bool, shape of the roi
    box: tuple[int, int, int, int]
    truncated: bool


def _unit_polygon(rng: np.random.Generator, cls: str) -> tuple[np.ndarray, float, bool]:
    """Outline [K, 2] in a unit box at the origin, width:height aspect to stretch it, rotatable."""
    if cls in ("circle", "ellipse"):
        t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
        pts = 0.5 * np.stack([np.cos(t), np.sin(t)], axis=1)
        if cls == "circle":
            return pts, rng.uniform(0.9, 1.1), False
        return pts, rng.uniform(1.5, 3.0), True
    if cls == "square":
        pts = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
        return pts, rng.uniform(0.9, 1.1), False
    if cls == "triangle":
        pts = np.array([[rng.uniform(-0.5, 0.5), -0.5], [0.5, 0.5], [-0.5, 0.5]])
        return pts, math.exp(rng.uniform(math.log(0.4), math.log(2.5))), True
    if cls == "star":
        t = np.linspace(0.0, 2.0 * np.pi, 10, endpoint=False) - np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, 0.5, 0.5 * rng.uniform(0.38, 0.5))
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
        return pts, rng.uniform(0.9, 1.1), True
    if cls == "cross":
        a = rng.uniform(0.13, 0.2)  # half thickness of the arms
        pts = np.array(
            [
                [-a, -0.5], [a, -0.5], [a, -a], [0.5, -a], [0.5, a], [a, a],
                [a, 0.5], [-a, 0.5], [-a, a], [-0.5, a], [-0.5, -a], [-a, -a],
            ]
        )  # fmt: skip
        return pts, rng.uniform(0.9, 1.1), True
    raise ValueError(f"unknown shape class {cls!r}")


def _sample_shape(
    rng: np.random.Generator, label: int, size: float, width: int, height: int
) -> _Placed | None:
    """One shape of class ``label`` and sqrt(unrotated box area) ``size``, shrunk to fit, at a
    random place (one in eight may overhang by a third), rasterised; None if wholly outside."""
    pts, aspect, rotatable = _unit_polygon(rng, CLASSES[label])
    pts = pts * np.array([size * math.sqrt(aspect), size / math.sqrt(aspect)])
    if rotatable and rng.random() < 0.7:
        angle = rng.uniform(0.0, 2.0 * np.pi)
        c, s = math.cos(angle), math.sin(angle)
        pts = pts @ np.array([[c, s], [-s, c]])
    pts = pts * min(1.0, 0.9 * min(width, height) / (pts.max(axis=0) - pts.min(axis=0)).max())
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    overhang = (hi - lo) / 3.0 if rng.random() < 0.125 else np.zeros(2)
    pts = pts + rng.uniform(-lo - overhang, np.array([width, height]) - hi + overhang)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    x0, y0 = np.maximum(np.floor(lo).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(hi).astype(int) + 1, [width, height])
    if x1 <= x0 or y1 <= y0:
        return None
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    shift = 4  # sub-pixel vertex precision
    fixed = np.round((pts - [x0, y0]) * (1 << shift)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=shift)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    box = (int(x0 + cols[0]), int(y0 + rows[0]), int(x0 + cols[-1]), int(y0 + rows[-1]))
    # cv2 puts pixel centres on integer coordinates, so the image spans [-0.5, size - 0.5].
    truncated = bool((lo < -0.5).any() or (hi > [width - 0.5, height - 0.5]).any())
    return _Placed(label, (slice(y0, y1), slice(x0, x1)), mask.astype(bool), box, truncated)


def _box_iou(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """IoU of one inclusive pixel box with others; ``torchvision.ops.box_iou`` made generation take
    42.0 s against 28.1 s (2-core CPU)."""
    b, others = np.asarray(box), np.array(boxes)
    overlap = np.minimum(b[2:], others[:, 2:]) - np.maximum(b[:2], others[:, :2]) + 1
    inter = np.clip(overlap, 0, None).prod(axis=1)
    area = (b[2:] - b[:2] + 1).prod()
    areas = (others[:, 2:] - others[:, :2] + 1).prod(axis=1)
    return inter / (area + areas - inter)


def render_image(
    rng: np.random.Generator, min_size: int, max_size: int, empty: bool = False
) -> tuple[np.ndarray, list[ShapeObject]]:
    """Draw one image (uint8 RGB) and its annotations; each shape is resampled until it respects
    MAX_BOX_IOU and MIN_VISIBLE."""
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    img = _background(rng, width, height)
    if empty:
        count, max_object = 0, 0.0
    elif rng.random() < CROWDED_FRACTION:
        count, max_object = int(rng.integers(10, 26)), CROWDED_MAX_SIZE
    else:
        count, max_object = int(rng.integers(1, 7)), MAX_OBJECT_FRACTION * min(width, height)
    owner = np.full((height, width), -1, np.int16)  # index of the topmost object per pixel
    placed: list[_Placed] = []
    total: list[int] = []
    visible = np.zeros(0, np.int64)
    log_lo, log_hi = math.log(MIN_OBJECT_SIZE), math.log(max(max_object, MIN_OBJECT_SIZE))
    for _ in range(count):
        label = int(rng.integers(len(CLASSES)))
        for _ in range(PLACEMENT_TRIES):
            shape = _sample_shape(rng, label, math.exp(rng.uniform(log_lo, log_hi)), width, height)
            if shape is None or (
                placed and _box_iou(shape.box, [p.box for p in placed]).max() > MAX_BOX_IOU
            ):
                continue
            below = owner[shape.roi][shape.mask]
            hidden = np.bincount(below[below >= 0], minlength=len(placed))
            if ((visible - hidden) < MIN_VISIBLE * np.array(total, np.int64)).any():
                continue
            owner[shape.roi][shape.mask] = len(placed)
            placed.append(shape)
            total.append(int(shape.mask.sum()))
            visible = np.append(visible - hidden, total[-1])
            break
    fractions = visible / np.maximum(np.array(total, np.float64), 1.0)
    objects = [_fill(rng, img, shape, f) for shape, f in zip(placed, fractions, strict=True)]
    return _finish(rng, img), objects


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Float32 RGB background: colour gradient, low-frequency texture, soft blobs, thin lines."""
    corners = rng.uniform(0, 255, (2, 2, 3)).astype(np.float32)
    img = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    gh, gw = rng.integers(3, 9, size=2)
    texture = rng.normal(0.0, rng.uniform(10, 40), (gh, gw, 3)).astype(np.float32)
    img += cv2.resize(texture, (width, height), interpolation=cv2.INTER_CUBIC)

    n_blobs = int(rng.integers(0, 6))
    if n_blobs:
        # Blobs are soft, so they are drawn and blurred at a quarter of the resolution.
        small = (width // 4, height // 4)
        overlay = np.zeros((small[1], small[0], 3), np.float32)
        alpha = np.zeros((small[1], small[0]), np.float32)
        for _ in range(n_blobs):
            centre = (int(rng.integers(small[0])), int(rng.integers(small[1])))
            radius = int(rng.integers(2, max(3, min(small) // 4)))
            cv2.circle(overlay, centre, radius, rng.uniform(0, 255, 3).tolist(), -1)
            cv2.circle(alpha, centre, radius, float(rng.uniform(0.3, 0.7)), -1)
        sigma = float(rng.uniform(1, 3))
        overlay = cv2.resize(cv2.GaussianBlur(overlay, (0, 0), sigma), (width, height))
        alpha = cv2.resize(cv2.GaussianBlur(alpha, (0, 0), sigma), (width, height))[..., None]
        img = img * (1.0 - alpha) + overlay * alpha

    for _ in range(int(rng.integers(0, 9))):
        p0 = (int(rng.integers(width)), int(rng.integers(height)))
        p1 = (int(rng.integers(width)), int(rng.integers(height)))
        colour = rng.uniform(0, 255, 3).tolist()
        cv2.line(img, p0, p1, colour, int(rng.integers(1, 3)), lineType=cv2.LINE_AA)
    return img


def _contrasting_colour(rng: np.random.Generator, beneath: np.ndarray) -> np.ndarray:
    """A random RGB colour at least MIN_COLOUR_DISTANCE from the mean of the pixels beneath."""
    mean = beneath.mean(axis=0)
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - mean) >= MIN_COLOUR_DISTANCE:
            return colour
    return np.where(mean > 127.5, 0.0, 255.0)  # the farthest corner of the colour cube


def render_context_image(
    rng: np.random.Generator, min_size: int, max_size: int, empty: bool = False
) -> tuple[np.ndarray, list[ShapeObject]]:
    """Draw one ``context`` image: small, alike rings whose class only the far outline of the large
    shape (region) around them tells."""
    width, height = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    img = _background(rng, width, height)
    log_lo, log_hi = (math.log(f * min(width, height)) for f in CONTEXT_REGION_FRACTION)
    taken = np.zeros((height, width), bool)
    regions: list[tuple[_Placed, list[tuple[int, int, float]]]] = []
    for _ in range(0 if empty else int(rng.integers(1, 3))):
        label = int(rng.integers(len(CLASSES)))
        count = int(rng.integers(CONTEXT_RINGS[0], CONTEXT_RINGS[1] + 1))
        count *= CLASSES[label] in CONTEXT_RING_CLASSES  # drawn for every class, kept for these
        for _ in range(CONTEXT_TRIES):
            shape = _sample_shape(rng, label, math.exp(rng.uniform(log_lo, log_hi)), width, height)
            if shape is None or taken[shape.roi][shape.mask].any():
                continue
            inside = np.zeros((height + 2, width + 2), np.uint8)  # the image border is an edge
            inside[1:-1, 1:-1][shape.roi] = shape.mask
            depth = cv2.distanceTransform(inside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            rings = _plan_rings(rng, depth[1:-1, 1:-1], count)
            if len(rings) == count:
                taken[shape.roi] |= shape.mask
                regions.append((shape, rings))
                break
    objects = []
    for shape, rings in regions:
        objects.append(_fill(rng, img, shape, visible=1.0))
        colour = _contrasting_colour(rng, img[shape.roi][shape.mask][:1])
        objects += [_draw_ring(img, ring, colour, shape.label) for ring in rings]
    return _finish(rng, img), objects


def _plan_rings(
    rng: np.random.Generator, depth: np.ndarray, count: int
) -> list[tuple[int, int, float]]:
    """Up to ``count`` rings (row, column, radius) CONTEXT_DISTANCE inside ``depth``'s region."""
    log_lo, log_hi = (math.log(s) for s in CONTEXT_RING_SIZES)
    free = depth.copy()
    rings = []
    for _ in range(count):
        radius = math.exp(rng.uniform(log_lo, log_hi)) / 2
        # the box's corners are radius * sqrt(2) from the centre
        rows, cols = np.nonzero(free >= CONTEXT_DISTANCE + radius * math.sqrt(2) + 1)
        if rows.size == 0:
            break
        pick = int(rng.integers(rows.size))
        rings.append((int(rows[pick]), int(cols[pick]), radius))
        centre = (int(cols[pick]), int(rows[pick]))
        cv2.circle(free, centre, math.ceil(2 * radius + CONTEXT_RING_SIZES[1]), 0.0, -1)
    return rings


def _too_small(box: tuple[int, int, int, int]) -> bool:
    """Whether a box (inclusive pixels) is below DIFFICULT_SIZE, so difficult."""
    return math.sqrt((box[2] - box[0] + 1) * (box[3] - box[1] + 1)) < DIFFICULT_SIZE


def _draw_ring(
    img: np.ndarray, ring: tuple[int, int, float], colour: np.ndarray, label: int
) -> ShapeObject:
    """Paint one ring marker (outer radius, inner radius half of it) and return its annotation."""
    cy, cx, radius = ring
    r = math.ceil(radius)
    yy, xx = np.ogrid[-r : r + 1, -r : r + 1]
    distance = np.sqrt(yy**2 + xx**2)
    mask = (distance <= radius) & (distance >= radius / 2)
    img[cy - r : cy + r + 1, cx - r : cx + r + 1][mask] = colour
    rows, cols = np.nonzero(mask)
    box = (cx - r + int(cols.min()), cy - r + int(rows.min()))
    box += (cx - r + int(cols.max()), cy - r + int(rows.max()))
    return ShapeObject(label, box, False, _too_small(box))


def _fill(rng: np.random.Generator, img: np.ndarray, shape: _Placed, visible: float) -> ShapeObject:
    """Paint a placed shape in a colour that contrasts with what lies beneath; its annotation."""
    region = img[shape.roi]
    region[shape.mask] = _contrasting_colour(rng, region[shape.mask])
    difficult = bool(visible < DIFFICULT_VISIBLE or _too_small(shape.box))
    return ShapeObject(shape.label, shape.box, shape.truncated, difficult)


def _finish(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Blur (sometimes) and pixel noise over the whole float image; the uint8 result."""
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    # OpenCV's generator, seeded from ``rng``, draws the pixel noise twice as fast as numpy's.
    cv2.setRNGSeed(int(rng.integers(2**31)))
    noise = np.empty_like(img)
    cv2.randn(noise, (0.0,) * 3, (float(rng.uniform(3, 15)),) * 3)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _voc_xml(image_id: str, width: int, height: int, objects: list[ShapeObject]) -> bytes:
    """PASCAL VOC annotation XML; boxes 1-based inclusive as in the original dataset."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "shapes"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = CLASSES[obj.label]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        bndbox = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box, strict=True):
            ET.SubElement(bndbox, tag).text = str(value + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def _coco_split(records: list[_Record]) -> dict:
    """COCO instances dict of one split; image ids are the integer VOC ids, categories 1..C."""
    images, annotations = [], []
    for image_id, width, height, objects in records:
        images.append(
            {"id": int(image_id), "file_name": f"{image_id}.jpg", "width": width, "height": height}
        )
        for obj in objects:
            x0, y0, x1, y1 = obj.box
            w, h = float(x1 - x0 + 1), float(y1 - y0 + 1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": int(image_id),
                    "category_id": obj.label + 1,
                    "bbox": [float(x0), float(y0), w, h],
                    "area": w * h,
                    # pycocotools ignores crowd regions: the VOC devkit's rule for difficult ones
                    "iscrowd": int(obj.difficult),
                    "difficult": int(obj.difficult),
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    return {
        "info": {"description": "dssd embedded shapes dataset", "version": FORMAT_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _write_image(
    root: Path, seed: int, min_size: int, max_size: int, variant: str, index: int, empty: bool
) -> _Record:
    """Render image ``index`` (id index + 1) from its own random stream; write its JPEG and XML."""
    image_id = f"{index + 1:06d}"
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    render = render_context_image if variant == "context" else render_image
    image, objects = render(rng, min_size, max_size, empty=empty)
    height, width = image.shape[:2]
    jpg = root / "JPEGImages" / f"{image_id}.jpg"
    cv2.imwrite(str(jpg), image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    xml = _voc_xml(image_id, width, height, objects)
    (root / "Annotations" / f"{image_id}.xml").write_bytes(xml)
    return image_id, width, height, objects


def _write_images(write: partial[_Record], empty: list[bool], workers: int | None) -> list[_Record]:
    """``write(index, empty[index])`` for every image, in order, in up to ``workers`` processes."""
    workers = min(workers or os.cpu_count() or 1, math.ceil(len(empty) / _IMAGES_PER_WORKER))
    if workers <= 1:
        return list(map(write, range(len(empty)), empty))
    # "spawn" rather than fork: the caller may be a multi-threaded training process.
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=cv2.setNumThreads,  # one OpenCV thread per process avoids oversubscription
        initargs=(1,),
    ) as pool:
        return list(pool.map(write, range(len(empty)), empty, chunksize=16))


class ForeignDataError(UserError, FileExistsError):
    """The output directory holds a dataset the generator did not write, or one it wrote with
    other parameters (replaced only with ``overwrite``)."""


class ShapesSettingError(UserError, ValueError):
    """A generator setting that cannot be used, or an output path that is not a directory."""


def _clear(root: Path) -> None:
    """Remove the generator's outputs; unstamped VOC folders may be a real dataset: refuse."""
    existing = [root / name for name in _MANAGED if (root / name).exists()]
    ours = (root / STAMP_FILE).exists() or (root / PARTIAL_STAMP_FILE).exists()
    if existing and not ours:
        raise ForeignDataError(
            f"{root} holds {', '.join(p.name for p in existing)} that the shapes generator did "
            "not write (another dataset?); refusing to overwrite them: choose another directory"
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def generate_shapes(
    root: str | Path,
    num_trainval: int = 2000,
    num_test: int = 300,
    num_val: int = 300,
    seed: int = 0,
    min_size: int = 256,
    max_size: int = 384,
    overwrite: bool = False,
    workers: int | None = None,
    variant: str = "plain",
) -> Path:
    """Write the shapes dataset under ``root`` and return it; a no-op when it is complete with the
    same parameters, unless ``overwrite``, which a complete dataset of other parameters needs to
    be replaced. ``workers`` do not change the output."""
    # checked before anything on disk changes: a finished dataset at ``root`` is cleared below
    if not MIN_IMAGE_SIZE <= min_size <= max_size:
        raise ShapesSettingError(
            f"need {MIN_IMAGE_SIZE} <= min_size <= max_size (px), got {min_size}, {max_size}"
        )
    if min(num_trainval, num_test, num_val) < 0:
        counts = f"{num_trainval}, {num_test}, {num_val}"
        raise ShapesSettingError(f"image counts cannot be negative: {counts}")
    if seed < 0:
        raise ShapesSettingError(f"the seed must be >= 0, got {seed}")
    if variant not in VARIANTS:
        choices = ", ".join(VARIANTS)
        raise ShapesSettingError(f"unknown shapes variant {variant!r}; choose one of {choices}")
    root = Path(root)
    stamp = {
        "format_version": FORMAT_VERSION,
        "num_trainval": num_trainval,
        "num_test": num_test,
        "num_val": num_val,
        "seed": seed,
        "min_size": min_size,
        "max_size": max_size,
        # the plain data's stamp predates variants, and stays as it was
        **({"variant": variant} if variant != "plain" else {}),
    }
    existing = read_stamp(root)
    if not overwrite and existing == stamp:
        return root
    if not overwrite and existing and existing.get("format_version") == FORMAT_VERSION:
        settings = [({**{"variant": "plain"}, **d}) for d in (existing, stamp)]
        asked = ", ".join(
            f"{key} {settings[0].get(key)} (asked {value})"
            for key, value in settings[1].items()
            if settings[0].get(key) != value
        )
        raise ForeignDataError(
            f"{root} holds a shapes dataset made with other settings: {asked}. Runs trained on "
            "it would be tested on other images: give its settings, another directory, or "
            "--overwrite (overwrite=True) to replace it"
        )
    if root.exists() and not root.is_dir():
        raise ShapesSettingError(f"{root} is a file, not a directory to write the dataset into")

    root.mkdir(parents=True, exist_ok=True)
    _clear(root)
    (root / PARTIAL_STAMP_FILE).write_text(json.dumps(stamp))
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    # Empty images are chosen up front so that every split is sure to contain some.
    layout_rng = np.random.default_rng(seed)
    empty, split_of = [], []
    for split, count in zip(SPLITS, (num_trainval, num_test, num_val), strict=True):
        chosen = layout_rng.choice(count, math.ceil(EMPTY_FRACTION * count), replace=False)
        empty += np.isin(np.arange(count), chosen).tolist()
        split_of += [split] * count

    write = partial(_write_image, root, seed, min_size, max_size, variant)
    records = _write_images(write, empty, workers)
    for split in SPLITS:
        split_records = [r for r, s in zip(records, split_of, strict=True) if s == split]
        ids = "".join(f"{r[0]}\n" for r in split_records)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(ids)
        coco = json.dumps(_coco_split(split_records))
        (root / "annotations" / f"instances_{split}.json").write_text(coco)

    (root / STAMP_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
    (root / PARTIAL_STAMP_FILE).unlink()
    return root


def ensure_shapes(root: str | Path, variant: str = "plain") -> Path:
    """``root``, built with the default parameters unless it holds a complete dataset of this format
    and ``variant`` (any size or seed)."""
    stamp = read_stamp(root)
    if stamp is None or stamp.get("format_version") != FORMAT_VERSION:
        # said, so that a mistyped data.root is seen for what it is
        log.info("No complete shapes dataset in %s: building the %r data there", root, variant)
        return generate_shapes(root, variant=variant)
    if stamp.get("variant", "plain") != variant:
        raise UserError(
            f"{root} holds the {stamp.get('variant', 'plain')!r} shapes data, not {variant!r}: "
            f"point data.root at another directory, or build it there with python -m "
            f"dssd.data.shapes --out {root} --variant {variant} --overwrite"
        )
    return Path(root)


def read_stamp(root: str | Path) -> dict | None:
    """Parameters of the complete dataset under ``root``, or None when there is none."""
    path = Path(root) / STAMP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def summarize(root: str | Path) -> dict[str, dict[str, int]]:
    """Per split: number of images, objects, difficult objects and empty images."""
    summary = {}
    for split in SPLITS:
        coco = json.loads((Path(root) / "annotations" / f"instances_{split}.json").read_text())
        summary[split] = {
            "images": len(coco["images"]),
            "objects": len(coco["annotations"]),
            "difficult": sum(a["difficult"] for a in coco["annotations"]),
            "empty": len(coco["images"]) - len({a["image_id"] for a in coco["annotations"]}),
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    """Command line entry point used by ``make data``."""
    parser = argparse.ArgumentParser(
        prog="python -m dssd.data.shapes",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("data/shapes"), help="output directory")
    defaults = inspect.signature(generate_shapes).parameters
    for name, meaning in (
        ("num_trainval", "training images (trainval split)"),
        ("num_test", "test images (test split)"),
        ("num_val", "validation images (val split, drawn after the others)"),
        ("seed", "of every image's layout and drawing"),
        ("min_size", "least image width and height, px"),
        ("max_size", "largest image width and height, px"),
    ):
        option = f"--{name.replace('_', '-')}"
        parser.add_argument(option, type=int, default=defaults[name].default, help=meaning)
    parser.add_argument(
        "--variant",
        choices=VARIANTS,
        default="plain",
        help="plain, or context (small rings whose class only the large shape around them tells)",
    )
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    args = vars(parser.parse_args(argv))  # generate_shapes's keyword arguments, and --out
    out = args.pop("out")

    before = read_stamp(out)
    start = time.perf_counter()
    try:
        root = generate_shapes(out, **args)
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    fresh = args["overwrite"] or before != read_stamp(root)
    state = f"generated in {time.perf_counter() - start:.1f}s" if fresh else "already up to date"
    print(f"shapes dataset at {root.resolve()}: {state}")
    for split, counts in summarize(root).items():
        words = (f"{v} {k.removesuffix('s') if v == 1 else k}" for k, v in counts.items())
        print(f"  {split:9s} " + ", ".join(words))


if __name__ == "__main__":
    main()
