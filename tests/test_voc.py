"""The VOC reader on hand-written annotation files, including the error cases."""

from __future__ import annotations

import os
import re
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from dssd.data.voc import VOCAnnotationError, VOCDataset, parse_voc_xml, read_image

CLASSES = ("cat", "dog")
CLASS_TO_INDEX = {"cat": 1, "dog": 2}


def voc_xml(
    *objects: str, size: str = "<width>40</width><height>30</height><depth>3</depth>"
) -> str:
    return f"<annotation><size>{size}</size>{''.join(objects)}</annotation>"


def voc_object(name: str = "cat", box: str = "1 2 10 20", extra: str = "") -> str:
    """An <object>; a ``box`` with fewer than four values leaves out the last coordinates."""
    coords = zip(("xmin", "ymin", "xmax", "ymax"), box.split(), strict=False)
    tags = "".join(f"<{t}>{v}</{t}>" for t, v in coords)
    return f"<object><name>{name}</name>{extra}<bndbox>{tags}</bndbox></object>"


def annotated_size(xml: str) -> tuple[int, int]:
    """The width and height an annotation's <size> gives, 40 x 30 where it gives none usable."""
    found = [re.search(rf"<{tag}>\s*([0-9.]+)\s*</{tag}>", xml) for tag in ("width", "height")]
    if not all(found):
        return 40, 30
    width, height = (int(float(match.group(1))) for match in found)
    return (width, height) if width > 0 and height > 0 else (40, 30)


def write_voc(root: Path, annotations: dict[str, str], split: str = "trainval") -> Path:
    """A VOC layout with the given annotation XML texts and a solid red image for each, of the
    size its annotation gives."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, xml in annotations.items():
        (root / "Annotations" / f"{image_id}.xml").write_text(xml)
        width, height = annotated_size(xml)
        red_bgr = np.zeros((height, width, 3), np.uint8)
        red_bgr[..., 2] = 255
        cv2.imwrite(str(root / "JPEGImages" / f"{image_id}.jpg"), red_bgr)
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n")
    return root


def parse(tmp_path: Path, xml: str) -> dict:
    path = tmp_path / "000001.xml"
    path.write_text(xml)
    return parse_voc_xml(path, CLASS_TO_INDEX)


def test_parse_converts_boxes_and_reads_flags(tmp_path: Path) -> None:
    ann = parse(
        tmp_path,
        voc_xml(
            voc_object("cat", "1 2 10 20"),  # no <difficult>: means 0
            voc_object("dog", "5 6 40 30", "<difficult>1</difficult><truncated>1</truncated>"),
        ),
    )
    np.testing.assert_array_equal(ann["boxes"], [[0, 1, 10, 20], [4, 5, 40, 30]])
    assert ann["boxes"].dtype == np.float32
    assert ann["labels"].tolist() == [1, 2] and ann["labels"].dtype == np.int64
    assert ann["difficult"].tolist() == [False, True]
    assert ann["truncated"].tolist() == [False, True]
    assert (ann["width"], ann["height"]) == (40, 30)


def test_flags_read_as_the_devkit_reads_them_or_as_words(tmp_path: Path) -> None:
    """The devkit reads <difficult> as an integer; annotation tools also write true/false."""
    flags = ["0", "1", "2", "false", "True", " FALSE "]
    objects = [voc_object(extra=f"<difficult>{flag}</difficult>") for flag in flags]
    ann = parse(tmp_path, voc_xml(*objects))
    assert ann["difficult"].tolist() == [False, True, True, False, True, False]


def test_parse_image_without_objects(tmp_path: Path) -> None:
    ann = parse(tmp_path, voc_xml())
    assert ann["boxes"].shape == (0, 4) and ann["boxes"].dtype == np.float32
    assert ann["labels"].shape == (0,) and ann["difficult"].shape == (0,)


@pytest.mark.parametrize(
    ("xml", "problem"),
    [
        ("<annotation><size><width>4</width>", "malformed XML"),
        ("<annotation><object/></annotation>", "missing <size>"),
        (voc_xml(size="<width>40</width>"), "missing <height>"),
        (voc_xml(voc_object(box="1 2 10")), "missing <ymax>"),
        (voc_xml("<object><name>cat</name></object>"), "no <bndbox>"),
        (voc_xml(voc_object(box="1 2 ten 20")), "<xmax> is not a finite number: 'ten'"),
        (voc_xml(voc_object(box="1 2 nan 20")), "<xmax> is not a finite number: 'nan'"),
        (voc_xml(size="<width>inf</width><height>30</height>"), "<width> is not a finite number"),
        (voc_xml(size="<width>0</width><height>0</height>"), "<size> of 0x0 pixels"),
        (voc_xml(voc_object(box="10 2 1 20")), "empty box"),
        (voc_xml(voc_object(extra="<difficult>yes</difficult>")), "<difficult> is not 0, 1, true"),
    ],
)
def test_parse_errors_name_the_file_and_the_problem(tmp_path: Path, xml: str, problem: str) -> None:
    with pytest.raises(VOCAnnotationError) as err:
        parse(tmp_path, xml)
    assert "000001.xml" in str(err.value) and problem in str(err.value)


def test_unknown_class_names_class_file_and_class_list(tmp_path: Path) -> None:
    with pytest.raises(VOCAnnotationError) as err:
        parse(tmp_path, voc_xml(voc_object("horse")))
    message = str(err.value)
    assert "'horse'" in message and "000001.xml" in message and "['cat', 'dog']" in message


def test_dataset_reads_rgb_images_and_targets(tmp_path: Path) -> None:
    root = write_voc(
        tmp_path,
        {
            "a": voc_xml(voc_object("dog", extra="<difficult>1</difficult>"), voc_object()),
            "b": voc_xml(),
        },
    )
    dataset = VOCDataset(root, "trainval", CLASSES)
    assert len(dataset) == 2 and dataset.ids == ["a", "b"]
    image, target = dataset[0]
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    assert image[..., 0].mean() > 200 and image[..., 2].mean() < 50  # red stays red: RGB order
    assert target["labels"].tolist() == [2, 1] and target["image_id"] == "a"
    assert target["difficult"].tolist() == [True, False]
    assert dataset[1][1]["boxes"].shape == (0, 4)

    easy = VOCDataset(root, "trainval", CLASSES, keep_difficult=False)
    assert easy[0][1]["labels"].tolist() == [1]
    # a sequence: iterating ends after the last image, an index past it is an IndexError
    assert [target["image_id"] for _, target in dataset] == ["a", "b"]
    assert dataset[-1][1]["image_id"] == "b"
    with pytest.raises(IndexError, match="index 2 is out of range for 2 images"):
        dataset[2]


def test_dataset_applies_transform(tmp_path: Path) -> None:
    root = write_voc(tmp_path, {"a": voc_xml(voc_object())})
    dataset = VOCDataset(
        root, "trainval", CLASSES, transform=lambda img, t: (img.shape, t["image_id"])
    )
    assert dataset[0] == ((30, 40, 3), "a")


def test_missing_root_explains_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        VOCDataset(missing, "trainval", CLASSES)
    assert str(missing) in str(err.value) and "make data" in str(err.value)
    # a split file given as the root: said to be a file, not said to be missing
    split_file = write_voc(tmp_path, {"a": voc_xml()}) / "ImageSets" / "Main" / "trainval.txt"
    with pytest.raises(FileNotFoundError, match=f"{split_file} is a file, not a directory"):
        VOCDataset(split_file, "trainval", CLASSES)


def test_missing_split_file_explains_the_fix(tmp_path: Path) -> None:
    root = write_voc(tmp_path, {"a": voc_xml()})
    with pytest.raises(FileNotFoundError) as err:
        VOCDataset(root, "val", CLASSES)
    assert "val.txt" in str(err.value) and "make data" in str(err.value)


def test_broken_annotation_fails_at_construction(tmp_path: Path) -> None:
    root = write_voc(tmp_path, {"a": voc_xml(), "b": "<annotation>"})
    with pytest.raises(VOCAnnotationError, match="b.xml"):
        VOCDataset(root, "trainval", CLASSES)


def test_images_opencv_refuses_or_that_are_no_regular_file_are_named(tmp_path: Path) -> None:
    """A header announcing 40000 x 40000 pixels, which OpenCV's decoder refuses with an exception
    of its own (it crashed predict.py), and a named pipe, whose reading would wait for a writer,
    are OSErrors naming the file, as an undecodable file is."""
    huge = tmp_path / "huge.png"  # 8-bit grey, its first rows' data, then the end
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 0, 0, 0, 0)
    chunks = [(b"IHDR", header), (b"IDAT", zlib.compress(bytes(100))), (b"IEND", b"")]
    huge.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + b"".join(
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
            for kind, data in chunks
        )
    )
    with pytest.raises(OSError, match="huge.png: its header announces more pixels than OpenCV"):
        read_image(str(huge))  # a path as text, as the analysis's galleries give it
    pipe = tmp_path / "pipe.jpg"
    os.mkfifo(pipe)
    raised: list[BaseException] = []
    reader = threading.Thread(target=lambda: raised.extend(catch(read_image, pipe)), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a named pipe waits for a writer"
    assert [str(e) for e in raised] == [f"cannot read image {pipe}: not a regular file"]


def catch(function: Callable[..., Any], *args: Any) -> list[BaseException]:
    """The exception ``function(*args)`` raises, as a list of one (empty if none)."""
    try:
        function(*args)
    except Exception as err:
        return [err]
    return []


def test_undecodable_image_names_the_file(tmp_path: Path) -> None:
    """A training set names it when it reads it; an evaluation set, which cannot pass over it,
    when it is built."""
    root = write_voc(tmp_path, {"a": voc_xml()})
    (root / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg")
    dataset = VOCDataset(root, "trainval", CLASSES, train=True)
    with pytest.raises(OSError, match="a.jpg"):
        dataset[0]
    with pytest.raises(OSError, match="a.jpg"):
        VOCDataset(root, "trainval", CLASSES)
