"""COCO reader (faster_coco_eval's COCO API, as the COCO metric) and COCO results export.

Labels are 1..C in category-id order. Crowd boxes are not trained on and are ignored in evaluation
(``difficult``), as is a non-standard ``difficult: 1``, which is still trained on (the VOC rule).
An annotation's ``area`` (in COCO's files the segment's, not the box's) places it among the small,
medium and large objects of the COCO metric, as in pycocotools; without one, its box's area does.
A test file may be an image-info file without ``annotations`` (COCO's test-dev): nothing to score,
its detections are written for the evaluation server.
"""

from __future__ import annotations

import json
import math
import numbers
import shlex
from collections.abc import Mapping, Sequence
from itertools import compress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO

from dssd.data.voc import EVALUATION_STOPS, DetectionImages, Transform, sanitize
from dssd.errors import DatasetNotFoundError, UserError

REQUIRED_KEYS = ("images", "categories")  # and "annotations", but for an image-info file
# what each entry of a list must hold for the COCO index and the reader
ENTRY_KEYS = {
    "images": ("id", "file_name"),
    "categories": ("id", "name"),
    "annotations": ("image_id", "category_id"),
}
# the ids COCO's format gives as whole numbers, which the COCO API, the results file and
# pycocotools' loadRes rely on; an annotation's own id may also be a string, or be left out
INTEGER_IDS = {"images": ("id",), "categories": ("id",), "annotations": ("image_id", "category_id")}


COCO_LAYOUT = (
    "expected data.root=/path/to/coco with annotations/instances_{train,val}2017.json and the "
    "train2017/, val2017/ images"
)


class COCOAnnotationError(UserError, ValueError):
    """A COCO annotation file that cannot be used; the message names the file and the problem."""


def load_coco(path: str | Path) -> COCO:
    """The COCO API's index of an instances JSON file (or of an image-info file, without
    ``annotations``), checked for the keys the reader needs."""
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"COCO annotation file {path} does not exist: {COCO_LAYOUT}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise COCOAnnotationError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise COCOAnnotationError(
            f"{path}: not a COCO instances or image-info file, it lacks {missing}"
        )
    for key, needed in ENTRY_KEYS.items():
        if key in data:
            _check_entries(path, key, data[key], needed)
    for key, field in (("images", "id"), ("images", "file_name"), ("categories", "id")):
        _check_unique(path, key, field, data[key])
    _check_unique(path, "categories", "name", data["categories"])
    # the index files annotations by their id: give id-less ones (home-made files) their place
    for number, ann in enumerate(data.get("annotations", []), start=1):
        ann.setdefault("id", f"#{number}")
    # the COCO tools find annotations by id: of two under one id, pycocotools scores one twice
    _check_unique(path, "annotations", "id", data.get("annotations", []))
    return COCO(data)


def _check_entries(path: Path, key: str, entries: Any, needed: Sequence[str]) -> None:
    """``entries`` (the file's list ``key``) are objects holding ``needed``, with whole-number
    ids (:data:`INTEGER_IDS`); else an error naming the file and the first bad entry."""
    if not isinstance(entries, list):
        raise COCOAnnotationError(f"{path}: {key!r} is a {type(entries).__name__}, not a list")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise COCOAnnotationError(f"{path}: {key}[{i}] is not an object: {entry!r:.200}")
        lacking = [k for k in needed if k not in entry]
        bad_ids = [k for k in INTEGER_IDS[key] if k in entry and not _is_integer(entry[k])]
        if key == "annotations" and not isinstance(entry.get("id", 0), int | str):
            bad_ids.append("id")
        if lacking or bad_ids:
            problem = f"lacks {lacking}" if lacking else f"has {bad_ids} not a whole number"
            raise COCOAnnotationError(f"{path}: {key}[{i}] {problem}: {entry!r:.200}")


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_unique(path: Path, key: str, field: str, entries: Sequence[dict]) -> None:
    """No two of ``entries`` share ``field``: two images under one id would pool their boxes,
    two categories under one id or name lose a class, one file under two ids be read twice,
    of two annotations under one id the COCO tools score the later one twice."""
    seen: set[Any] = set()
    for entry in entries:
        value = entry[field]
        if value in seen:
            raise COCOAnnotationError(
                f"{path}: two {key} have the {field} {entry[field]!r}; give each its own"
            )
        seen.add(value)


def category_names(coco: COCO) -> tuple[str, ...]:
    """Category names in increasing category-id order, that is, in label order."""
    return tuple(cat["name"] for cat in coco.loadCats(sorted(coco.getCatIds())))


def _listed(names: Sequence[str], shown: int = 8) -> str:
    """``names`` counted and quoted, the first ``shown`` of a long list only."""
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return f"{len(names)} ({', '.join(map(repr, names[:shown]))}{more})"


def _class_names_override(names: Sequence[str]) -> str:
    """The Hydra override that sets ``data.class_names`` to ``names`` (quoted where needed)."""
    quoted = (n if n.isidentifier() else '"' + n.replace('"', '\\"') + '"' for n in names)
    return f"data.class_names=[{','.join(quoted)}]"


def trained_on(ann: Mapping[str, Any]) -> bool:
    """Whether training uses an annotation: not crowd, or also ``difficult`` (the embedded data)."""
    return not ann.get("iscrowd", 0) or bool(ann.get("difficult", 0))


class COCODataset(DetectionImages):
    """The images of one COCO instances file with VOCDataset's targets ("image_id": the COCO id);
    paths are relative to ``root``. Its categories must be ``class_names``, if given. An
    evaluation set may read an image-info file (``labelled`` false: every image without
    objects)."""

    def __init__(
        self,
        root: str | Path,
        annotation_file: str | Path,
        image_dir: str | Path,
        transform: Transform | None = None,
        train: bool = False,
        class_names: Sequence[str] | None = None,
        strict: bool = True,
    ) -> None:
        super().__init__(transform, strict, train)
        self.root = Path(root)
        self.annotation_file = self.root / annotation_file
        self.image_dir = self.root / image_dir
        if not self.image_dir.is_dir():
            raise DatasetNotFoundError(
                f"COCO image directory {self.image_dir} does not exist: {COCO_LAYOUT}"
            )
        coco = load_coco(self.annotation_file)
        self.labelled = "annotations" in coco.dataset
        if train and not self.labelled:
            raise COCOAnnotationError(
                f"{self.annotation_file}: an image-info file without annotations (such as "
                "test-dev's) has nothing to train on"
            )
        self.class_names = category_names(coco)
        if class_names is not None and tuple(class_names) != self.class_names:
            raise COCOAnnotationError(
                f"{self.annotation_file}: its {_listed(self.class_names)} categories (in "
                f"category-id order) differ from the {_listed(class_names)} configured class "
                "names (a file to test a network on lists its categories, those without objects "
                "too); to train on the file's: "
                + shlex.quote(_class_names_override(self.class_names))
            )
        self.category_id_to_label = {c: i + 1 for i, c in enumerate(sorted(coco.getCatIds()))}
        self.label_to_category_id = {label: cat for cat, label in self.category_id_to_label.items()}
        entries = coco.dataset["images"]
        self._check_orphans(coco, {entry["id"] for entry in entries})
        images = [self._image_entry(entry) for entry in entries]
        present = self._check_images([path for _, path, _ in images], self.annotation_file)
        for entry, (image_id, path, size) in compress(zip(entries, images, strict=True), present):
            self.ids.append(image_id)
            self.image_paths.append(path)
            with self.noting_skips(f"{self.annotation_file}, image {image_id}"):
                ann = self._objects(coco.imgToAnns[entry["id"]], image_id)
                self.annotations.append(sanitize({**ann, **size}, self.skips))
        if not train:
            self._check_headers()

    def _check_orphans(self, coco: COCO, image_ids: set[Any]) -> None:
        """Annotations of an image the file does not list are an error when ``strict``, else
        counted as ``malformed_objects`` (no image holds them)."""
        orphans = [a for a in coco.dataset.get("annotations", []) if a["image_id"] not in image_ids]
        if not orphans:
            return
        example = f"annotation {orphans[0]['id']!r} of image_id {orphans[0]['image_id']!r}"
        if self.strict:
            raise COCOAnnotationError(
                f"{self.annotation_file}: {len(orphans)} annotations belong to no listed image "
                f"(e.g. {example})"
            )
        self.skips["malformed_objects"] += len(orphans)
        self.first_skips.setdefault("malformed_objects", f"{self.annotation_file}, {example}")

    def _image_entry(self, image: Any) -> tuple[int, Path, dict[str, int]]:
        """An ``images`` entry's id, image path and size, or an error naming the file."""
        try:
            size = {"width": int(image["width"]), "height": int(image["height"])}
            return int(image["id"]), self.image_dir / str(image["file_name"]), size
        except (KeyError, TypeError, ValueError) as err:
            raise COCOAnnotationError(
                f"{self.annotation_file}: malformed image entry {image!r} ({err!r})"
            ) from None

    def _objects(self, anns: list[dict[str, Any]], image_id: int) -> dict[str, np.ndarray]:
        """Boxes, labels, difficult flags (crowd or difficult), areas (0: none given) and
        whether training uses each object (:func:`trained_on`) of one image's annotations."""
        boxes, labels, ignored, areas, trained = [], [], [], [], []
        for ann in anns:
            try:
                for flag in ("iscrowd", "difficult"):
                    value = ann.get(flag, 0)
                    if isinstance(value, str) or value not in (0, 1):
                        raise ValueError(f"{flag} {value!r} is not 0 or 1")
                bbox = ann.get("bbox")
                if not isinstance(bbox, list) or len(bbox) != 4:
                    raise ValueError(f"bbox {bbox!r} is not [x, y, w, h]")
                if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in bbox):
                    raise ValueError(f"bbox {bbox!r} has non-numeric values")
                # Python's json reads NaN and Infinity, which no geometry check would catch
                if not all(math.isfinite(v) for v in bbox):
                    raise ValueError(f"bbox {bbox!r} has values that are not finite")
                x, y, w, h = (float(v) for v in bbox)
                if ann.get("category_id") not in self.category_id_to_label:
                    raise ValueError(f"unknown category_id {ann.get('category_id')!r}")
            except ValueError as err:
                # pycocotools, too, passes over an unknown category: no class scores its objects
                unknown = ann.get("category_id") not in self.category_id_to_label
                if not (self.skips_bad or (unknown and not self.strict)):
                    raise COCOAnnotationError(
                        f"{self.annotation_file}: annotation {ann.get('id')!r} of image "
                        f"{image_id}: {err}" + ("" if self.strict else f": {EVALUATION_STOPS}")
                    ) from None
                self.skips["malformed_objects"] += 1
                continue
            area = ann.get("area", 0.0)
            if not isinstance(area, numbers.Real) or isinstance(area, bool) or not area >= 0:
                self.skips["invalid_areas"] += 1  # only sizes the object: its box's area does
                area = 0.0
            boxes.append((x, y, x + w, y + h))
            labels.append(self.category_id_to_label[ann["category_id"]])
            ignored.append(bool(ann.get("iscrowd", 0)) or bool(ann.get("difficult", 0)))
            areas.append(float(area))
            trained.append(trained_on(ann))
        return {
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "difficult": np.asarray(ignored, bool),
            "area": np.asarray(areas, np.float32),
            "trained": np.asarray(trained, bool),
        }


def detections_to_coco_results(
    detections: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int],
) -> list[dict[str, Any]]:
    """COCO results entries (bbox [x, y, w, h], category ids) for per-image detections."""
    results = []
    for det, image_id in zip(detections, image_ids, strict=True):
        boxes = torch.as_tensor(det["boxes"]).reshape(-1, 4).tolist()
        scores = torch.as_tensor(det["scores"]).tolist()
        labels = torch.as_tensor(det["labels"]).tolist()
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels, strict=True):
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_category_id[int(label)]),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "score": float(score),
                }
            )
    return results


def write_coco_results(path: str | Path, results: list[dict[str, Any]]) -> Path:
    """Write COCO results entries as the JSON list that COCO's ``loadRes`` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))
    return path
