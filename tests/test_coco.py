"""The COCO reader on a hand-written instances file, results export and the COCO DataModule."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pycocotools.coco import COCO

from dssd.data.coco import (
    COCOAnnotationError,
    COCODataset,
    detections_to_coco_results,
    write_coco_results,
)
from dssd.data.datamodule import COCODataModule
from dssd.errors import DatasetNotFoundError, UserError, user_errors
from test_configs import compose_train

# Non-contiguous ids, listed out of order: labels follow the sorted ids.
CATEGORIES = [
    {"id": 90, "name": "toothbrush"},
    {"id": 1, "name": "person"},
    {"id": 3, "name": "car"},
]
NAMES = ("person", "car", "toothbrush")
ANN_FILE = "annotations/instances_val2017.json"


def annotation(ann_id: int, image_id: int, category_id: int, bbox: list, iscrowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "iscrowd": iscrowd,
        "area": 1.0,
    }


def instances() -> dict:
    """Image 42 (40 x 30) with good, crowd and bad boxes; image 7 without objects."""
    return {
        "images": [
            {"id": 42, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 7, "file_name": "b.jpg", "width": 40, "height": 30},
        ],
        "annotations": [
            annotation(1, 42, 3, [1.5, 2, 10, 20]),
            annotation(2, 42, 90, [30, 10, 20, 30]),  # partly outside: clipped to [30, 10, 40, 30]
            annotation(3, 42, 1, [0, 0, 40, 30], iscrowd=1),
            annotation(4, 42, 1, [5, 5, 0, 10]),  # zero width
            annotation(5, 42, 1, [50, 40, 5, 5]),  # wholly outside
        ],
        "categories": CATEGORIES,
    }


def write_coco(root: Path, data: dict | str, images: str = "val2017") -> Path:
    """A COCO tree with ``data`` as ANN_FILE (and as the train file) and a gray JPEG per image."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text(text)
        (root / split).mkdir(exist_ok=True)
        for name in ("a.jpg", "b.jpg"):
            cv2.imwrite(str(root / split / name), np.full((30, 40, 3), 128, np.uint8))
    return root


def test_eval_targets_keep_crowd_boxes_as_difficult(tmp_path: Path) -> None:
    dataset = COCODataset(write_coco(tmp_path, instances()), ANN_FILE, "val2017")
    assert dataset.class_names == NAMES and dataset.ids == [42, 7]
    assert dataset.label_to_category_id == {1: 1, 2: 3, 3: 90}
    image, target = dataset[0]
    assert image.shape == (30, 40, 3) and target["image_id"] == 42
    np.testing.assert_array_equal(
        target["boxes"], [[1.5, 2, 11.5, 22], [30, 10, 40, 30], [0, 0, 40, 30]]
    )
    assert target["boxes"].dtype == np.float32 and target["labels"].dtype == np.int64
    assert target["labels"].tolist() == [2, 3, 1]
    assert target["difficult"].tolist() == [False, False, True]
    assert dataset[1][1]["boxes"].shape == (0, 4) and dataset[1][1]["image_id"] == 7
    assert dataset.skips == {"invalid_boxes": 2, "clipped_boxes": 1, "empty_images": 1}


def test_training_targets_leave_crowd_boxes_out(tmp_path: Path) -> None:
    root = write_coco(tmp_path, instances())
    dataset = COCODataset(root, ANN_FILE, "val2017", train=True, class_names=NAMES)
    _, target = dataset[0]
    assert target["labels"].tolist() == [2, 3] and not target["difficult"].any()
    assert dataset.objects(0)["labels"].tolist() == [2, 3]  # what the tools read, too


@pytest.mark.parametrize("area", [None, -4.0, "12", float("nan")])
def test_an_area_that_cannot_size_its_object_leaves_it_to_its_box(
    tmp_path: Path, area: object
) -> None:
    """An annotation's area only sizes its object for the COCO metric: one that cannot (null,
    negative, text) is counted and replaced by the box's area, never the box dropped."""
    data = instances()
    data["annotations"][0]["area"] = area
    root = write_coco(tmp_path, data)
    for train, strict in ((True, False), (False, True)):
        dataset = COCODataset(root, ANN_FILE, "val2017", train=train, strict=strict)
        assert (
            dataset.skips["invalid_areas"] == 1
            and "image 42" in dataset.first_skips["invalid_areas"]
        )
        assert dataset.objects(0)["labels"].tolist()[:2] == [2, 3]
        assert dataset.objects(0)["area"][0] == 0.0  # the metric takes the box's area


def test_detections_round_trip_to_category_ids(tmp_path: Path) -> None:
    dataset = COCODataset(write_coco(tmp_path, instances()), ANN_FILE, "val2017")
    detections = [
        {
            "boxes": torch.tensor([[1.0, 2.0, 11.0, 22.0], [0.0, 0.0, 4.0, 3.0]]),
            "scores": torch.tensor([0.5, 0.25]),
            "labels": torch.tensor([3, 1]),
        },
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)},
    ]
    results = detections_to_coco_results(detections, dataset.ids, dataset.label_to_category_id)
    assert results == [
        {"image_id": 42, "category_id": 90, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5},
        {"image_id": 42, "category_id": 1, "bbox": [0.0, 0.0, 4.0, 3.0], "score": 0.25},
    ]
    path = write_coco_results(tmp_path / "out" / "results.json", results)
    loaded = COCO(str(tmp_path / ANN_FILE)).loadRes(str(path))  # pycocotools accepts the file
    assert sorted(loaded.getCatIds()) == [1, 3, 90]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"images": [', "not valid JSON"),
        (json.dumps({"images": [], "annotations": []}), "lacks ['categories']"),
        (json.dumps([]), "lacks ['images', 'categories']"),
    ],
)
def test_malformed_files_name_the_file(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(COCOAnnotationError) as err:
        COCODataset(write_coco(tmp_path, text), ANN_FILE, "val2017")
    assert ANN_FILE in str(err.value) and problem in str(err.value)


def with_changes(**lists: list) -> dict:
    """instances() with some of its lists replaced."""
    return {**instances(), **lists}


def images_plus(*entries: dict) -> list[dict]:
    return [*instances()["images"], *entries]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (with_changes(annotations=None), "'annotations' is a NoneType, not a list"),
        (with_changes(images={"id": 1}), "'images' is a dict, not a list"),
        (with_changes(categories=[*CATEGORIES, "dog"]), "categories[3] is not an object"),
        (with_changes(categories=[{"id": 5}]), "categories[0] lacks ['name']"),
        (with_changes(images=[{"file_name": "a.jpg"}]), "images[0] lacks ['id']"),
        (with_changes(annotations=[{"image_id": 42, "bbox": []}]), "lacks ['category_id']"),
        (with_changes(images=[{"id": [1], "file_name": "a.jpg"}]), "['id'] not a whole number"),
        # ids COCO's format gives as numbers: the COCO API, results files and loadRes need them
        (with_changes(images=[{"id": "img_1", "file_name": "a.jpg"}]), "['id'] not a whole"),
        (with_changes(images=[{"id": "1", "file_name": "a.jpg"}]), "['id'] not a whole number"),
        (with_changes(categories=[{"id": 2.0, "name": "car"}]), "['id'] not a whole number"),
        (
            with_changes(annotations=[{"image_id": "42", "category_id": 1, "bbox": [1, 1, 2, 2]}]),
            "annotations[0] has ['image_id'] not a whole number",
        ),
        (
            with_changes(annotations=[{"id": [1], "image_id": 42, "category_id": 1}]),
            "annotations[0] has ['id'] not a whole number",
        ),
        # two entries under one id or name: boxes pooled, a class lost, a file read twice
        (with_changes(images=images_plus({"id": 7, "file_name": "c.jpg"})), "the id 7"),
        (with_changes(images=images_plus({"id": 8, "file_name": "a.jpg"})), "file_name 'a.jpg'"),
        (
            with_changes(categories=[*CATEGORIES, {"id": 3, "name": "bus"}]),
            "categories have the id 3",
        ),
        (with_changes(categories=[*CATEGORIES, {"id": 4, "name": "car"}]), "the name 'car'"),
        # a merged file numbering each image's objects from 1: the COCO tools index annotations
        # by id and would score the later object twice, the earlier one not at all
        (
            with_changes(
                annotations=[annotation(1, 42, 3, [1, 1, 5, 5]), annotation(1, 7, 1, [2, 2, 5, 5])]
            ),
            "two annotations have the id 1",
        ),
    ],
)
def test_entries_the_index_cannot_use_name_the_file_and_the_entry(
    tmp_path: Path, data: dict, problem: str
) -> None:
    with pytest.raises(COCOAnnotationError) as err:
        COCODataset(write_coco(tmp_path, data), ANN_FILE, "val2017")
    assert ANN_FILE in str(err.value) and problem in str(err.value)


def test_annotations_without_an_id_or_an_image(tmp_path: Path) -> None:
    """Annotation ids are optional (home-made files leave them out); an annotation of an image
    the file does not list is an error, or a counted malformed object when not strict."""
    data = instances()
    for ann in data["annotations"]:
        del ann["id"]
    dataset = COCODataset(write_coco(tmp_path, data), ANN_FILE, "val2017")
    assert dataset[0][1]["labels"].tolist() == [2, 3, 1]
    data["annotations"] += [
        annotation(9, 99, 1, [1, 1, 5, 5]),
        annotation(10, 100, 1, [1, 1, 5, 5]),
    ]
    root = write_coco(tmp_path, data)
    with pytest.raises(COCOAnnotationError, match="2 annotations belong to no listed image"):
        COCODataset(root, ANN_FILE, "val2017")
    dataset = COCODataset(root, ANN_FILE, "val2017", strict=False)
    # no image holds them: an evaluation set, too, passes over them, as pycocotools does
    assert dataset.skips["malformed_objects"] == 2 and len(dataset[0][1]["labels"]) == 3
    assert dataset.first_skips["malformed_objects"].endswith("annotation 9 of image_id 99")


def test_missing_files_are_user_errors(tmp_path: Path) -> None:
    root = write_coco(tmp_path, instances())
    with pytest.raises(DatasetNotFoundError, match="instances_minival2014.json"):
        COCODataset(root, "annotations/instances_minival2014.json", "val2017")
    with pytest.raises(DatasetNotFoundError, match=r"val2014 does not exist: expected data.root"):
        COCODataset(root, ANN_FILE, "val2014")


def test_category_mismatch_names_the_file_and_the_override_that_fits_it(tmp_path: Path) -> None:
    data = instances()
    quoted = 'tooth "brush"'  # names an override must quote, for Hydra and for the shell
    data["categories"] = [
        {**c, "name": {90: quoted, 3: "o'car"}.get(c["id"], c["name"])} for c in CATEGORIES
    ]
    root = write_coco(tmp_path, data)
    with pytest.raises(COCOAnnotationError) as err:
        COCODataset(root, ANN_FILE, "val2017", class_names=("person", "bus", "toothbrush"))
    assert ANN_FILE in str(err.value) and "'bus'" in str(err.value)
    (override,) = shlex.split(str(err.value).rsplit("the file's: ", 1)[1])  # as a shell reads it
    cfg = compose_train("data=coco", override)  # Hydra parses the hint as the file's names
    assert tuple(cfg.data.class_names) == ("person", "o'car", quoted)


@pytest.mark.parametrize("names", ["null", "[]"])
def test_no_class_names_is_one_error_line_not_a_resolver_traceback(
    names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The network's class count resolves from data.class_names before any file is read."""
    cfg = compose_train("data=coco", f"data.class_names={names}")
    with pytest.raises(SystemExit), user_errors():
        OmegaConf.to_container(cfg.model, resolve=True)
    expected = "null" if names == "null" else "empty"
    assert capsys.readouterr().err.startswith(f"error: data.class_names is {expected}: ")


def test_malformed_annotation_raises_or_is_counted(tmp_path: Path) -> None:
    data = instances()
    data["annotations"] += [annotation(6, 42, 1, [1, 2, "x", 4]), annotation(7, 7, 2, [1, 1, 5, 5])]
    root = write_coco(tmp_path, data)
    with pytest.raises(COCOAnnotationError, match="annotation 6 of image 42.*non-numeric"):
        COCODataset(root, ANN_FILE, "val2017")
    dataset = COCODataset(root, ANN_FILE, "val2017", train=True, strict=False)
    assert dataset.skips["malformed_objects"] == 2  # the bad bbox and the unknown category 2
    assert dataset[0][1]["labels"].tolist() == [2, 3]  # crowd: not trained on
    # an evaluation set refuses the bad bbox, strict or not, and, as pycocotools, passes over
    # the unknown category (no class scores it) when not strict
    with pytest.raises(COCOAnnotationError, match="non-numeric values: an evaluation set stops"):
        COCODataset(root, ANN_FILE, "val2017", strict=False)
    del data["annotations"][-2]
    write_coco(tmp_path, data)
    dataset = COCODataset(root, ANN_FILE, "val2017", strict=False)
    assert dataset.skips["malformed_objects"] == 1
    assert dataset[0][1]["labels"].tolist() == [2, 3, 1]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_bbox_that_is_not_finite_is_malformed(tmp_path: Path, value: float) -> None:
    """Python's json reads ``NaN`` and ``Infinity``: such a box was dropped as of zero area, and an
    evaluation set lost an object without a word."""
    data = instances()
    root = write_coco(tmp_path, data)
    clean = COCODataset(root, ANN_FILE, "val2017", train=True, strict=False).skips
    data["annotations"].append(annotation(6, 42, 1, [value, 2, 3, 4]))
    write_coco(tmp_path, data)
    assert "NaN" in (root / ANN_FILE).read_text() or "Infinity" in (root / ANN_FILE).read_text()
    for strict in (True, False):
        with pytest.raises(COCOAnnotationError, match="annotation 6 of image 42.*not finite"):
            COCODataset(root, ANN_FILE, "val2017", strict=strict)
    skips = COCODataset(root, ANN_FILE, "val2017", train=True, strict=False).skips
    assert skips - clean == {"malformed_objects": 1}


@pytest.mark.parametrize("train", [False, True])
def test_a_crowd_flag_other_than_0_or_1_is_malformed(tmp_path: Path, train: bool) -> None:
    """``"iscrowd": "0"`` is a true value, so it would silently ignore the object (and drop it from
    training); booleans and 0/1 read as they are."""
    data = instances()
    data["annotations"] += [
        annotation(6, 7, 1, [1, 1, 9, 9], iscrowd="0"),
        {**annotation(7, 7, 1, [2, 2, 9, 9]), "difficult": None},
        annotation(8, 7, 3, [3, 3, 9, 9], iscrowd=False),
        annotation(9, 7, 3, [4, 4, 9, 9], iscrowd=True),
    ]
    root = write_coco(tmp_path, data)
    with pytest.raises(COCOAnnotationError, match="annotation 6 of image 7: iscrowd '0' is not 0"):
        COCODataset(root, ANN_FILE, "val2017", train=train, strict=train)
    if not train:  # an evaluation set stops at a malformed object, strict or not
        data["annotations"] = data["annotations"][:-4] + data["annotations"][-2:]
        write_coco(tmp_path, data)
    dataset = COCODataset(root, ANN_FILE, "val2017", train=train, strict=False)
    assert dataset.skips["malformed_objects"] == (2 if train else 0)  # annotations 6 and 7
    target = dataset[1][1]
    assert target["labels"].tolist() == ([2] if train else [2, 2])  # category 3
    assert target["difficult"].tolist() == ([False] if train else [False, True])


def test_undecodable_image_is_skipped_or_named(tmp_path: Path) -> None:
    """Not strict, a training set passes over it; an evaluation set refuses, as strict does."""
    root = write_coco(tmp_path, instances())
    (root / "val2017" / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    dataset = COCODataset(root, ANN_FILE, "val2017", train=True, strict=False)
    assert dataset[0][1]["image_id"] == 7 and dataset.skips["unreadable_images"] == 1
    with pytest.raises(UserError, match="a.jpg.*an evaluation set stops at it even with data.st"):
        COCODataset(root, ANN_FILE, "val2017", strict=False)[0]
    with pytest.raises(OSError, match="a.jpg"):
        COCODataset(root, ANN_FILE, "val2017")[0]


def test_an_evaluation_set_refuses_an_image_of_another_size_when_built(tmp_path: Path) -> None:
    """The image entries' width and height are the boxes' frame: an evaluation set checks each
    image's header against them when built; a training set meets it when it reads the image."""
    root = write_coco(tmp_path, instances())
    cv2.imwrite(str(root / "val2017" / "b.jpg"), np.full((40, 30, 3), 128, np.uint8))
    with pytest.raises(UserError, match="b.jpg decodes to 30x40, but its annotation gives 40x30"):
        COCODataset(root, ANN_FILE, "val2017")
    dataset = COCODataset(root, ANN_FILE, "val2017", train=True)
    assert dataset[0][1]["image_id"] == 42
    with pytest.raises(UserError, match="b.jpg decodes to 30x40"):
        dataset[1]


def test_images_without_a_file_are_named_or_skipped_when_built(tmp_path: Path) -> None:
    """Not strict, a training set passes over them; an evaluation set, whose figures would be
    another set's, refuses strict or not."""
    root = write_coco(tmp_path, instances())
    (root / "val2017" / "a.jpg").unlink()
    for strict in (True, False):
        with pytest.raises(DatasetNotFoundError, match=r"1 of the 2 images listed in .*json have"):
            COCODataset(root, ANN_FILE, "val2017", strict=strict)
    dataset = COCODataset(root, ANN_FILE, "val2017", train=True, strict=False)
    assert dataset.ids == [7] and dataset.skips["missing_images"] == 1
    assert dataset[0][1]["image_id"] == 7 and len(dataset.annotations) == 1


def test_an_image_info_file_is_read_as_an_unlabelled_test_set_only(tmp_path: Path) -> None:
    """COCO's test-dev ships its images' ids and the categories without annotations: the test
    role reads its images (no objects), the training and validation roles refuse it."""
    data = instances()
    del data["annotations"]
    root = write_coco(tmp_path, data)
    test = COCODataset(root, ANN_FILE, "val2017")
    assert not test.labelled and test.ids == [42, 7] and test.class_names == NAMES
    assert [len(target["boxes"]) for _, target in test] == [0, 0]
    assert COCODataset(write_coco(tmp_path / "labelled", instances()), ANN_FILE, "val2017").labelled
    with pytest.raises(COCOAnnotationError, match="image-info file .* nothing to train on"):
        COCODataset(root, ANN_FILE, "val2017", train=True)
    options = {"image_size": 32, "batch_size": 1, "num_workers": 0}
    dm = COCODataModule(str(root), val_annotations=ANN_FILE, val_images="val2017", **options)
    assert dm.unlabelled_test_file() == str(root / ANN_FILE)
    with pytest.raises(UserError, match="cannot be the val files; only the test files may"):
        dm.setup("validate")
    labelled = write_coco(tmp_path / "labelled", instances())
    assert COCODataModule(str(labelled), val_holdout=1, **options).unlabelled_test_file() is None


def test_datamodule_reads_class_names_and_iterates(tmp_path: Path) -> None:
    root = write_coco(tmp_path, instances())
    dm = COCODataModule(str(root), image_size=32, batch_size=1, num_workers=0, val_holdout=1)
    assert dm.class_names == NAMES and dm.num_classes == 3
    dm.setup("fit")
    # validation holds out one train2017 image (with evaluation targets: crowd kept, flagged)
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert train.dataset.train and not val.dataset.train
    assert len(train) == 1 and len(val) == 1
    ids = {train[0][1]["image_id"], val[0][1]["image_id"]}
    assert ids == {42, 7}
    (images, targets), *_ = list(dm.train_dataloader())
    assert images.shape == (1, 3, 32, 32) and targets[0]["image_id"] == train[0][1]["image_id"]
    dm.setup("test")
    assert dm.datasets["test"].annotation_file == root / ANN_FILE
    assert dm.label_to_category_id == {1: 1, 2: 3, 3: 90}


def test_results_take_the_category_ids_of_the_test_file(tmp_path: Path) -> None:
    """train.py sets up the training files before the test file: its results files must still
    number the categories as the test file does, not as the first file read."""
    root = write_coco(tmp_path, instances())
    test = instances()
    renumber = {1: 10, 3: 30, 90: 900}
    test["categories"] = [{**c, "id": renumber[c["id"]]} for c in test["categories"]]
    for ann in test["annotations"]:
        ann["category_id"] = renumber[ann["category_id"]]
    (root / ANN_FILE).write_text(json.dumps(test))
    dm = COCODataModule(str(root), NAMES, image_size=32, num_workers=0, val_holdout=1)
    dm.setup("fit")
    dm.setup("test")
    assert dm.label_to_category_id == {1: 10, 2: 30, 3: 900}


def test_config_lists_the_80_categories_and_checks_them(tmp_path: Path) -> None:
    cfg = compose_train("data=coco", f"data.root={tmp_path}")
    names = list(cfg.data.class_names)
    assert len(names) == 80 and names[:3] == ["person", "bicycle", "car"]
    assert names[-1] == "toothbrush" and cfg.data.strict is False
    dm = instantiate(cfg.data)
    assert dm.num_classes == 80
    write_coco(tmp_path, instances())
    with pytest.raises(COCOAnnotationError, match="instances_train2017.json"):
        dm.setup("fit")


def test_a_coco_results_path_that_cannot_be_written_is_refused_up_front(tmp_path: Path) -> None:
    """Checked when the writer is built, before any test: a directory, or a file's child."""
    from dssd.training.callbacks import COCOResultsWriter

    root = write_coco(tmp_path / "coco", instances())
    dm = COCODataModule(str(root), image_size=32, batch_size=1, val_holdout=1)
    (tmp_path / "a_file").write_text("")
    folder, under_a_file = tmp_path / "coco", tmp_path / "a_file" / "results.json"
    with pytest.raises(UserError, match=f"coco_results={folder} is a directory: give the path"):
        COCOResultsWriter(str(folder), dm)
    message = f"coco_results={under_a_file}: {under_a_file.parent} is a file, not a directory"
    with pytest.raises(UserError, match=re.escape(message)):
        COCOResultsWriter(str(under_a_file), dm)
    assert COCOResultsWriter(str(tmp_path / "new" / "results.json"), dm).path


def test_coco_sizes_follow_the_annotations_area_as_in_pycocotools(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    """COCO's files give each object the area of its segment, smaller than its box's, and the
    small, medium and large figures bin objects by it. From the file on disk through the reader,
    the evaluation transform and the metric, every COCO figure equals pycocotools' on that file
    (detections: the objects' boxes, shifted, with random scores, and some boxes on nothing)."""
    from pycocotools.cocoeval import COCOeval

    from dssd.data.transforms import build_transforms
    from dssd.evaluation.module import coco_metric_names, evaluation_metrics, pixel_targets

    data = json.loads((tiny_shapes / "annotations" / "instances_test.json").read_text())
    for i, ann in enumerate(data["annotations"]):
        ann["area"] = ann["bbox"][2] * ann["bbox"][3] * (0.3, 0.6, 1.0)[i % 3]
    annotations = tmp_path / "segment_areas.json"
    annotations.write_text(json.dumps(data))
    dataset = COCODataset(
        tiny_shapes, annotations, "JPEGImages", transform=build_transforms(64, train=False)
    )
    rng = np.random.default_rng(0)
    num_classes = len(dataset.class_names)
    metric = evaluation_metrics(num_classes, None, (1, 10, 200))["coco"]
    detections, image_ids = [], []
    for index in range(len(dataset)):
        _, target = dataset[index]
        truth = dataset.annotations[index]
        corners = rng.uniform(0, 100, (3, 2))
        on_nothing = np.concatenate([corners, corners + rng.uniform(8, 80, (3, 2))], axis=1)
        shifted = truth["boxes"] + rng.uniform(-4, 4, truth["boxes"].shape)
        boxes = np.concatenate([shifted, on_nothing])
        labels = np.concatenate([truth["labels"], rng.integers(1, num_classes + 1, 3)])
        found = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32),
            "scores": torch.as_tensor(rng.uniform(0.05, 1.0, len(boxes)), dtype=torch.float32),
            "labels": torch.as_tensor(labels),
        }
        metric.update([found], pixel_targets([target]))
        detections.append(found)
        image_ids.append(target["image_id"])
    results = write_coco_results(
        tmp_path / "detections.json",
        detections_to_coco_results(detections, image_ids, dataset.label_to_category_id),
    )
    computed = metric.compute()

    truth = COCO(str(annotations))
    evaluator = COCOeval(truth, truth.loadRes(str(results)), "bbox")
    evaluator.params.maxDets = [1, 10, 200]
    evaluator.evaluate()
    evaluator.accumulate()
    # [IoU, recall, class, area, cap] and [IoU, class, area, cap]
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]

    def mean(values: np.ndarray) -> float:
        return float(values[values > -1].mean()) if (values > -1).any() else -1.0

    reference = [
        mean(precision[:, :, :, 0, 2]),
        mean(precision[0, :, :, 0, 2]),
        mean(precision[5, :, :, 0, 2]),
        *(mean(precision[:, :, :, area, 2]) for area in (1, 2, 3)),
        *(mean(recall[:, :, 0, cap]) for cap in range(3)),
        *(mean(recall[:, :, area, 2]) for area in (1, 2, 3)),
    ]
    assert len({round(v, 6) for v in reference[3:6]}) == 3  # the sizes are told apart
    for name, value in zip(coco_metric_names((1, 10, 200)), reference, strict=True):
        assert float(computed[name]) == pytest.approx(value, abs=1e-6), name


def test_held_out_validation_parses_the_training_files_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With val_holdout, train and val are parts of one parse of the training files (train2017's
    JSON is 448 MB), so both lines give the same counts; the held-out part is evaluation data
    (crowd boxes kept, as difficult) read by the training files' rules (not strict, a malformed
    object is passed over, not refused as in the test files)."""
    import dssd.data.datamodule as datamodule
    from dssd.data.datamodule import holdout_indices

    write_coco(tmp_path, instances())
    train = instances()
    train["annotations"].append(annotation(6, 42, 1, [1, 2, "x", 4]))
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(train))
    parsed: list[str] = []

    def counted(root: Path, annotation_file: str, *args: object, **kwargs: object) -> COCODataset:
        parsed.append(annotation_file)
        return COCODataset(root, annotation_file, *args, **kwargs)

    monkeypatch.setattr(datamodule, "COCODataset", counted)
    seed = next(s for s in range(20) if holdout_indices(2, 1, s)["val"] == [0])  # image 42
    dm = COCODataModule(
        str(tmp_path), NAMES, val_holdout=1, val_holdout_seed=seed, strict=False, num_workers=0
    )
    dm.setup("fit")
    assert sorted(parsed) == sorted(["annotations/instances_train2017.json", ANN_FILE])
    val, held_in = dm.datasets["val"], dm.datasets["train"]
    assert val.skips == held_in.skips and val.skips["malformed_objects"] == 1
    assert val.first_skips["malformed_objects"].endswith("instances_train2017.json, image 42")
    _, target = val[0]
    assert target["image_id"] == 42 and target["difficult"].tolist() == [False, False, True]
    assert held_in[0][1]["image_id"] == 7 and held_in.transform is not val.transform
