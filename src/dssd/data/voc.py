"""PASCAL VOC reader (VOC2007/2012 layout, also the embedded shapes data) and devkit result files.

Policy, shared with the COCO reader: configuration mistakes raise a ``UserError`` naming the file
when the dataset is built; boxes are clipped to the image, those left without area dropped;
``strict=False`` drops, in a training set, malformed objects, annotation files and listed images
whose file is missing, and replaces an image that cannot be decoded or decodes at another size
than its annotation's by the next (an evaluation set stops at each instead: passing over one of
its objects or images would change the figures); it reads a repeated listing of an image once.
``dataset.skips`` counts each case. Boxes are xyxy pixel edges everywhere (pixel ``i``
spans ``[i, i + 1)``): VOC ``xmin..xmax`` (1-based, inclusive) is ``[xmin - 1, xmax]``.
"""

from __future__ import annotations

import copy
import glob
import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import compress
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from dssd.errors import DatasetNotFoundError, UserError

log = logging.getLogger(__name__)

MISSING_DATA_HINT = (
    "a dataset in the VOC layout holds Annotations/, ImageSets/Main/<split>.txt and JPEGImages/ "
    "(`make data` builds the embedded one in data/shapes)"
)

Transform = Callable[[np.ndarray, dict[str, Any]], Any]
# what a sample's target takes of its annotation ("area": the COCO reader's, where given)
TARGET_KEYS = ("boxes", "labels", "difficult", "area")
ORIENTATION_TAG = 0x0112  # EXIF's


class VOCAnnotationError(UserError, ValueError):
    """An annotation file that cannot be used; the message names the file and the problem."""


class UnknownClassError(VOCAnnotationError):
    """A class name that is not configured: a configuration mistake, raised even when not strict."""


def _text(node: ET.Element, tag: str, path: Path) -> str:
    """Stripped text of the required child ``tag`` of ``node``."""
    text = (node.findtext(tag) or "").strip()
    if not text:
        raise VOCAnnotationError(f"{path}: missing <{tag}> in <{node.tag}>")
    return text


def _number(node: ET.Element, tag: str, path: Path) -> float:
    """Finite numeric value of the required child ``tag`` of ``node``."""
    text = _text(node, tag, path)
    try:
        value = float(text)
    except ValueError:
        value = np.nan
    if not np.isfinite(value):
        raise VOCAnnotationError(f"{path}: <{tag}> is not a finite number: {text!r}")
    return value


def _flag(node: ET.Element, tag: str, path: Path) -> bool:
    """Optional flag child ``tag``: an integer (0 false, as the devkit reads it) or true/false; a
    missing tag means 0, as in the VOC devkit."""
    text = (node.findtext(tag) or "0").strip().lower()
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text) != 0
    except ValueError:
        raise VOCAnnotationError(f"{path}: <{tag}> is not 0, 1, true or false: {text!r}") from None


# A VOC box (xmin, ymin, xmax, ymax) minus this is the same box in pixel edges.
_VOC_INDEX_OFFSET = np.array([1.0, 1.0, 0.0, 0.0])


def voc_to_edges(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """VOC boxes [N, 4] (1-based, inclusive pixel indices) as pixel edges ("Box convention")."""
    return np.asarray(boxes, np.float64).reshape(-1, 4) - _VOC_INDEX_OFFSET


def edges_to_voc(boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Pixel-edge boxes [N, 4] as the devkit's 1-based inclusive indices (the inverse)."""
    return np.asarray(boxes, np.float64).reshape(-1, 4) + _VOC_INDEX_OFFSET


def parse_voc_xml(
    path: Path,
    class_to_index: dict[str, int],
    skips: Counter[str] | None = None,
    strict: bool | None = None,
) -> dict[str, Any]:
    """One VOC annotation file as "boxes" (float32 [N, 4] pixel edges), "labels", "difficult",
    "truncated", "width", "height"; with ``skips`` malformed objects are dropped. ``strict``
    (default: without ``skips``) refuses an empty box, which else is left to :func:`sanitize`."""
    strict = skips is None if strict is None else strict
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise VOCAnnotationError(f"{path}: malformed XML ({err})") from None
    except OSError as err:
        raise VOCAnnotationError(f"{path}: cannot read the annotation file ({err})") from None
    size = root.find("size")
    if size is None:
        raise VOCAnnotationError(f"{path}: missing <size>")
    width, height = int(_number(size, "width", path)), int(_number(size, "height", path))
    if width < 1 or height < 1:  # every box would be clipped away
        raise VOCAnnotationError(f"{path}: <size> of {width}x{height} pixels")

    boxes, labels, difficult, truncated = [], [], [], []
    for obj in root.iter("object"):
        try:
            name = _text(obj, "name", path)
            if name not in class_to_index:
                raise UnknownClassError(
                    f"{path}: object class {name!r} is not among the configured classes "
                    f"{list(class_to_index)}"
                )
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise VOCAnnotationError(f"{path}: object {name!r} has no <bndbox>")
            box = tuple(_number(bndbox, t, path) for t in ("xmin", "ymin", "xmax", "ymax"))
            if strict and (box[2] < box[0] or box[3] < box[1]):
                raise VOCAnnotationError(f"{path}: object {name!r} has an empty box {box}")
            flags = _flag(obj, "difficult", path), _flag(obj, "truncated", path)
        except VOCAnnotationError as err:
            if skips is None or isinstance(err, UnknownClassError):
                raise
            skips["malformed_objects"] += 1
            continue
        boxes.append(box)
        labels.append(class_to_index[name])
        difficult.append(flags[0])
        truncated.append(flags[1])
    return {
        "boxes": voc_to_edges(boxes).astype(np.float32),
        "labels": np.asarray(labels, np.int64),
        "difficult": np.asarray(difficult, bool),
        "truncated": np.asarray(truncated, bool),
        "width": width,
        "height": height,
    }


def select_objects(ann: dict[str, Any], keep: np.ndarray) -> dict[str, Any]:
    """``ann`` with only the objects where ``keep`` is true (per-object arrays are filtered)."""
    n = len(ann["boxes"])
    return {k: v[keep] if isinstance(v, np.ndarray) and len(v) == n else v for k, v in ann.items()}


def sanitize(ann: dict[str, Any], skips: Counter[str]) -> dict[str, Any]:
    """Clip the boxes of ``ann`` to its width x height and drop those left without area."""
    boxes = ann["boxes"]
    clipped = np.clip(boxes, 0.0, np.array([ann["width"], ann["height"]] * 2, np.float32))
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    skips["invalid_boxes"] += int((~keep).sum())
    skips["clipped_boxes"] += int((keep & (clipped != boxes).any(axis=1)).sum())
    ann = select_objects({**ann, "boxes": clipped}, keep)
    if len(ann["boxes"]) == 0:
        skips["empty_images"] += 1
    return ann


def repaired(skips: Mapping[str, int]) -> bool:
    """Whether any sample was dropped or changed; images without objects are kept, as negatives."""
    return any(n for kind, n in skips.items() if kind != "empty_images")


def describe_skips(skips: Mapping[str, int], first: Mapping[str, str] | None = None) -> str:
    """The non-zero counts in words, e.g. "40 empty_images, 1 unreadable_annotations", each
    repair with where its ``first`` case is, if given ("2 clipped_boxes, first in a.xml")."""
    first = first or {}
    return ", ".join(
        f"{n} {kind}" + (f", first in {first[kind]}" if kind in first else "")
        for kind, n in sorted(skips.items())
        if n
    )


class ImageError(UserError, OSError):
    """An image that cannot be used, where it cannot be passed over; the message says why."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an HxWx3 uint8 RGB array; OSError if it cannot be read or decoded.
    Decoding from memory also refuses a JPEG whose end is missing, which ``cv2.imread`` would
    return with its missing rows grey and only a line on stderr."""
    path = Path(path)
    if path.exists() and not path.is_file():  # reading a named pipe would wait for a writer
        raise OSError(f"cannot read image {path}: not a regular file")
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise OSError(f"cannot read image {path}: {err.strerror or err}") from None
    if data.size == 0:  # which OpenCV's decoder refuses with an assertion, not None
        raise OSError(f"cannot decode image {path}: the file is empty")
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as err:  # e.g. a header announcing more pixels than OpenCV decodes
        reason = f"OpenCV refuses it ({err.err})"
        if "MAX_IMAGE_PIXELS" in err.err:
            reason = (
                "its header announces more pixels than OpenCV decodes (damaged, or a real "
                "image that the environment variable OPENCV_IO_MAX_IMAGE_PIXELS lets through)"
            )
        raise OSError(f"cannot decode image {path}: {reason}") from None
    if image is None:
        raise OSError(f"cannot decode image {path}: not an image file, or its end is missing")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def check_size(image: np.ndarray, annotation: Mapping[str, Any], path: Path) -> None:
    """Raise OSError when ``image`` is not the width x height of its ``annotation``: its boxes
    would fall elsewhere on it, so it is as unusable as an image that cannot be decoded."""
    _check_width_height(image.shape[1], image.shape[0], annotation, path)


def check_header(path: Path, annotation: Mapping[str, Any]) -> None:
    """:func:`check_size` from the file's header, about a twentieth of a decode's time. An image
    with an EXIF orientation, which the decoder applies in its own way for each format, or that
    the header reader does not know is decoded instead. A JPEG whose end is missing passes here
    and fails when decoded."""
    try:
        with Image.open(path) as header:
            upright = header.getexif().get(ORIENTATION_TAG, 1) == 1
            size = header.size
    except (OSError, Image.DecompressionBombError):  # unknown here, or too large for a header
        upright = False
    if upright:
        _check_width_height(*size, annotation, path)
    else:
        check_size(read_image(path), annotation, path)


def _check_width_height(width: int, height: int, annotation: Mapping[str, Any], path: Path) -> None:
    expected = annotation.get("width"), annotation.get("height")
    if expected == (None, None) or expected == (width, height):
        return
    if expected == (height, width):
        why = (
            " (an EXIF orientation tag, which the decoder applies, turns a photo): correct the "
            "annotation's size, or store the image upright"
        )
    else:
        why = ": the image is not the one annotated, or was resized after; correct either"
    raise OSError(
        f"image {path} decodes to {width}x{height}, but its annotation gives "
        f"{expected[0]}x{expected[1]}{why}"
    )


# why an evaluation set refuses to pass over a bad image or object whatever ``strict`` says
EVALUATION_STOPS = (
    "an evaluation set stops at it even with data.strict=false: passing over it would change "
    "the figures"
)


class DetectionImages(Dataset):
    """Base of the VOC and COCO readers: annotations parsed up front (a broken file fails at once)
    into ``ids``, ``image_paths`` and ``annotations``, images decoded on access. ``train``: a
    training set, where (not ``strict``) bad objects and images are passed over, and an
    undecodable image is replaced by the next; :meth:`role_view` gives the parsed files to
    another role."""

    def __init__(self, transform: Transform | None, strict: bool, train: bool) -> None:
        self.transform = transform
        self.strict = strict
        self.train = train
        # whether bad objects, annotation files and listed images without a file are passed over
        self.skips_bad = train and not strict
        self.skips: Counter[str] = Counter()
        # where the first case of each kind of skip or repair (but empty_images) was met
        self.first_skips: dict[str, str] = {}
        self.ids: list[Any] = []
        self.image_paths: list[Path] = []
        self.annotations: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.ids)

    def objects(self, index: int) -> dict[str, Any]:
        """The annotation of image ``index`` as this set's targets take it: in a training set
        without the objects training leaves out (COCO's crowd boxes)."""
        annotation = self.annotations[index]
        if self.train and "trained" in annotation:
            return select_objects(annotation, annotation["trained"])
        return annotation

    @contextmanager
    def noting_skips(self, where: object) -> Iterator[None]:
        """Record ``where`` as the first case of each kind of skip or repair that reading it,
        inside the block, counts."""
        before = Counter(self.skips)
        yield
        for kind in self.skips - before:
            if kind != "empty_images":
                self.first_skips.setdefault(kind, str(where))

    def role_view(self, transform: Transform | None, train: bool) -> DetectionImages:
        """These parsed files for another role (e.g. the validation images held out of training
        files): its own transform and ``train``, the annotations shared, not parsed again."""
        view = copy.copy(self)
        view.transform, view.train = transform, train
        return view

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):  # also ends ``for sample in dataset``
            raise IndexError(f"index {index} is out of range for {len(self)} images")
        passed_over = []
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            try:
                image = read_image(self.image_paths[i])
                check_size(image, self.annotations[i], self.image_paths[i])
            except OSError as err:
                if self.strict or not self.train:
                    raise self.unusable(err) from None
                self.skips["unreadable_images"] += 1
                passed_over.append(self.ids[i])
                log.warning("skipping image: %s", err)
                continue
            target = {k: v for k, v in self.objects(i).items() if k in TARGET_KEYS}
            # skipped_images: the ids of the unreadable images passed over, for the main
            # process's DataSkipReport (two samples can pass over the same image)
            target |= {"image_id": self.ids[i], "skipped_images": tuple(passed_over)}
            return (image, target) if self.transform is None else self.transform(image, target)
        raise OSError(f"none of the {len(self)} images of the dataset can be read or decoded")

    def unusable(self, err: OSError, more: str = "") -> ImageError:
        """The error for an image that cannot be decoded or is not its annotation's size
        (``err``), where it cannot be passed over; ``more`` adds how many others are. In an
        evaluation set the error says so, whatever ``strict`` says."""
        if self.strict and self.train:
            return ImageError(f"{err}{more}; data.strict=false skips it in training")
        return ImageError(
            f"{err}{more}: {EVALUATION_STOPS}; repair the file or remove its image from the split"
        )

    def _check_headers(self) -> None:
        """In an evaluation set, which stops at an image it cannot use, find such images when it
        is built rather than part way through testing (after a whole fit, in ``train.py``):
        each image's size read from its header against its annotation's."""
        bad: list[OSError] = []
        for path, annotation in zip(self.image_paths, self.annotations, strict=True):
            try:
                check_header(path, annotation)
            except OSError as err:
                bad.append(err)
        if bad:
            more = f" (and {len(bad) - 1} more of its {len(self)} images)" if len(bad) > 1 else ""
            raise self.unusable(bad[0], more)

    def _check_images(self, image_paths: Sequence[Path], listed_in: Path) -> list[bool]:
        """Which of the images listed in ``listed_in`` have a file (one stat each, so that a
        partly unpacked dataset shows when it is built, not mid-run). Missing ones raise when
        ``strict``, else they are counted as ``missing_images`` and their images skipped."""
        present = [path.is_file() for path in image_paths]
        missing = [path for path, found in zip(image_paths, present, strict=True) if not found]
        if missing:
            # e.g. 000001.JPG or .png beside it, where the VOC layout reads 000001.jpg
            others = sorted(
                p.name for p in missing[0].parent.glob(f"{glob.escape(missing[0].stem)}.*")
            )
            beside = f", beside which are {', '.join(others)}" if others else ""
            message = (
                f"{len(missing)} of the {len(present)} images listed in {listed_in} have no file "
                f"(e.g. {missing[0]}{beside})"
            )
            if self.strict:
                raise DatasetNotFoundError(
                    f"{message}: restore them, or data.strict=false skips them in training"
                )
            if not self.train:
                raise DatasetNotFoundError(
                    f"{message}: {EVALUATION_STOPS}; restore them or remove them from {listed_in}"
                )
            self.skips["missing_images"] += len(missing)
            log.warning("%s: skipping them", message)
        return present


class VOCDataset(DetectionImages):
    """A split of a VOC-layout dataset (ImageSets/Main/<split>.txt, Annotations/, JPEGImages/);
    labels are 1..C in ``class_names`` order."""

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str],
        transform: Transform | None = None,
        keep_difficult: bool = True,
        strict: bool = True,
        train: bool = False,
    ) -> None:
        super().__init__(transform, strict, train)
        self.root = Path(root)
        self.split = split
        self.class_names = tuple(class_names)
        if not self.root.is_dir():
            problem = "is a file, not a directory" if self.root.exists() else "does not exist"
            raise DatasetNotFoundError(f"dataset root {self.root} {problem}: {MISSING_DATA_HINT}")
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetNotFoundError(
                f"split file {split_file} does not exist (no split {split!r} in {self.root}): "
                f"{MISSING_DATA_HINT}"
            )
        class_to_index = {name: i + 1 for i, name in enumerate(self.class_names)}
        image_ids = self._read_split(split_file)
        image_paths = [self.root / "JPEGImages" / f"{image_id}.jpg" for image_id in image_ids]
        present = self._check_images(image_paths, split_file)
        for image_id, image_path in compress(zip(image_ids, image_paths, strict=True), present):
            xml = self.root / "Annotations" / f"{image_id}.xml"
            with self.noting_skips(xml):
                try:
                    skips = self.skips if self.skips_bad else None
                    ann = parse_voc_xml(xml, class_to_index, skips, strict)
                except VOCAnnotationError as err:
                    if strict or isinstance(err, UnknownClassError):
                        raise
                    if not train:
                        raise VOCAnnotationError(f"{err}: {EVALUATION_STOPS}") from None
                    self.skips["unreadable_annotations"] += 1
                    log.warning("skipping image %s: %s", image_id, err)
                    continue
                if not keep_difficult:
                    ann = select_objects(ann, ~ann["difficult"])
                self.ids.append(image_id)
                self.image_paths.append(image_path)
                self.annotations.append(sanitize(ann, self.skips))
        if not train:
            self._check_headers()

    def _read_split(self, split_file: Path) -> list[str]:
        """The image ids of ``split_file``, one a line; an id listed again is an error when
        ``strict``, else counted as ``duplicate_images`` and read once."""
        try:
            lines = split_file.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as err:
            raise VOCAnnotationError(f"{split_file}: not UTF-8 text ({err})") from None
        listed = [line.strip() for line in lines if line.strip()]
        more = next((line for line in listed if len(line.split()) > 1), None)
        if more is not None:
            raise VOCAnnotationError(
                f"{split_file}: the line {more!r} holds more than an image id (a per-class file "
                "such as cat_trainval.txt gives each image with 1, 0 or -1): give a split that "
                "lists ids alone, such as trainval"
            )
        image_ids = list(dict.fromkeys(listed))
        if len(image_ids) < len(listed):
            again = next(i for i, n in Counter(listed).items() if n > 1)
            message = (
                f"{split_file} lists {len(listed) - len(image_ids)} image ids again (e.g. "
                f"{again!r}), which would weigh those images twice"
            )
            if self.strict:
                raise VOCAnnotationError(f"{message}: list each once, or data.strict=false does")
            self.skips["duplicate_images"] += len(listed) - len(image_ids)
            log.warning("%s: reading each once", message)
        return image_ids


RESULTS_FILE = "comp4_det_test_{}.txt"


def write_voc_results(
    directory: str | Path,
    image_ids: Sequence[Any],
    detections: Sequence[dict[str, Any]],
    class_names: Sequence[str],
) -> list[Path]:
    """Write detections as the devkit's ``comp4_det_test_<class>.txt`` files (1-based inclusive
    boxes, full precision: the devkit scores exactly the metric's boxes); their paths."""
    lines: dict[str, list[str]] = {name: [] for name in class_names}
    for image_id, det in zip(image_ids, detections, strict=True):
        name = str(image_id)
        if not name or any(c.isspace() for c in name):
            raise ValueError(f"image id {name!r} cannot be written in a devkit result file")
        boxes = edges_to_voc(det["boxes"])
        scores = np.asarray(det["scores"], np.float64).reshape(-1)
        labels = np.asarray(det["labels"]).reshape(-1)
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            if not 1 <= label <= len(class_names):
                raise ValueError(f"label {label} is not in 1..{len(class_names)}")
            coords = " ".join(map(repr, box))
            lines[class_names[label - 1]].append(f"{name} {score!r} {coords}\n")
    Path(directory).mkdir(parents=True, exist_ok=True)
    paths = [Path(directory) / RESULTS_FILE.format(class_name) for class_name in lines]
    for path, class_lines in zip(paths, lines.values(), strict=True):
        path.write_text("".join(class_lines))
    return paths


def read_voc_results(
    directory: str | Path, class_names: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Detections by image id ("boxes" in pixel edges, "scores", "labels") from devkit result
    files; a missing file or malformed line raises VOCAnnotationError."""
    rows: dict[str, list[tuple[float, ...]]] = {}
    for label, class_name in enumerate(class_names, start=1):
        path = Path(directory) / RESULTS_FILE.format(class_name)
        if not path.is_file():
            raise VOCAnnotationError(f"{path}: no result file for class {class_name!r}")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 6:
                    raise ValueError(f"{len(fields)} fields")
                values = tuple(float(v) for v in fields[1:])
            except ValueError as err:
                raise VOCAnnotationError(
                    f"{path}:{number}: expected '<image id> <score> <xmin> <ymin> <xmax> <ymax>' "
                    f"({err}): {line!r}"
                ) from None
            rows.setdefault(fields[0], []).append((*values, label))
    results = {}
    for image_id, entries in rows.items():
        table = np.asarray(entries, np.float64).reshape(-1, 6)
        results[image_id] = {
            "boxes": voc_to_edges(table[:, 1:5]),
            "scores": table[:, 0],
            "labels": table[:, 5].astype(np.int64),
        }
    return results
