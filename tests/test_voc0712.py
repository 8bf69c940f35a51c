"""VOC07+12: concatenated VOC sets in the DataModule, and the non-strict handling of bad samples."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image
from torch._utils import ExceptionWrapper

from dssd.data.datamodule import VOCDataModule, holdout_indices
from dssd.data.transforms import DetectionTransform
from dssd.data.voc import VOCAnnotationError, VOCDataset, read_image
from dssd.errors import DatasetNotFoundError, UserError, user_errors
from test_configs import compose_train
from test_voc import voc_object, voc_xml, write_voc

CLASSES = ("cat", "dog")


@pytest.fixture
def devkit(tmp_path: Path) -> Path:
    """VOCdevkit/VOC2007 (trainval: 2 images, test: 1), VOC2012 (trainval: 3, of which train: 2
    and val: 1)."""
    root = tmp_path / "VOCdevkit"
    write_voc(root / "VOC2007", {"a": voc_xml(voc_object("cat")), "b": voc_xml()})
    write_voc(root / "VOC2007", {"c": voc_xml(voc_object("dog"))}, split="test")
    dogs = {i: voc_xml(voc_object("dog"), voc_object("dog")) for i in ("d", "e", "f")}
    write_voc(root / "VOC2012", dogs)
    (root / "VOC2012" / "ImageSets" / "Main" / "train.txt").write_text("e\nf\n")
    (root / "VOC2012" / "ImageSets" / "Main" / "val.txt").write_text("d\n")
    return root


def test_sets_are_concatenated(devkit: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = VOCDataModule(
        str(devkit),
        CLASSES,
        image_size=32,
        batch_size=2,
        num_workers=0,
        train_sets=[
            {"root": "VOC2007", "split": "trainval"},
            {"root": str(devkit / "VOC2012"), "split": "train"},  # absolute roots work too
        ],
        val_sets=[{"root": "VOC2012", "split": "val"}],
        test_sets=[{"root": "VOC2007", "split": "test"}],
    )
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    # an image without objects is kept as a negative: counted, not a warning
    (record,) = [r for r in caplog.records if r.getMessage().startswith("train data")]
    assert record.levelno == logging.INFO
    assert record.getMessage() == "train data: 4 images (1 empty_images)"
    val = [r.getMessage() for r in caplog.records if r.getMessage().startswith("val data")]
    assert val == ["val data: 1 images"]  # nothing skipped or repaired: the count alone
    train = dm.datasets["train"]
    assert len(train) == 4 and len(dm.datasets["val"]) == 1 and len(dm.datasets["test"]) == 1
    ids = [train[i][1]["image_id"] for i in range(4)]
    labels = [train[i][1]["labels"].tolist() for i in range(4)]
    assert ids == ["a", "b", "e", "f"]
    assert labels == [[1], [], [2, 2], [2, 2]]
    assert isinstance(train.transform, DetectionTransform)  # what seed_worker reseeds
    assert train.skips == {"empty_images": 1}
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0][0].shape == (2, 3, 32, 32)
    assert dm.val_dataloader().dataset[0][1]["image_id"] == "d"


def test_held_out_roles_say_what_they_are_part_of(
    devkit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With val_holdout, train and val are parts of the training files, whose counts they share:
    their lines say so rather than each claiming the whole files' counts."""
    dm = VOCDataModule(
        str(devkit),
        CLASSES,
        train_sets=[{"root": "VOC2007", "split": "trainval"}],
        test_sets=[{"root": "VOC2007", "split": "test"}],
        val_holdout=1,
    )
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    lines = [r.getMessage() for r in caplog.records if " data: " in r.getMessage()]
    assert lines == [
        "train data: 1 of the 2 training images, the rest (the 2: 1 empty_images)",
        "val data: 1 of the 2 training images, held out (the 2: 1 empty_images)",
        "test data: 1 images",
    ]


def test_missing_set_root_names_path_and_layout(devkit: Path) -> None:
    dm = VOCDataModule(
        str(devkit), CLASSES, train_sets=[{"root": "VOC2010", "split": "trainval"}], val_holdout=1
    )
    with pytest.raises(DatasetNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(devkit / "VOC2010") in message and "VOCdevkit, the folder holding VOC2007" in message


@pytest.mark.parametrize(
    ("config", "train", "test"),
    [
        ("voc0712", ["a", "b", "d", "e", "f"], ["c"]),
        # VOC2012 test has no public annotations: VOC2012 val is tested, so not trained on
        ("voc07++12", ["a", "b", "c", "e", "f"], ["d"]),
    ],
)
def test_configs_describe_the_paper_splits(
    devkit: Path, config: str, train: list[str], test: list[str]
) -> None:
    cfg = compose_train(f"data={config}", f"data.root={devkit}", "data.val_holdout=2")
    assert cfg.data.strict is False and len(cfg.data.class_names) == 20
    assert cfg.data.class_names[0] == "aeroplane" and cfg.data.class_names[-1] == "tvmonitor"
    dm = instantiate(cfg.data, class_names=CLASSES)
    assert dm.image_size == cfg.model.net.image_size and dm.num_classes == 2
    dm.setup()
    # validation: 2 of the training images, held out of training
    seen = {
        role: [dm.datasets[role][i][1]["image_id"] for i in range(len(dm.datasets[role]))]
        for role in ("train", "val", "test")
    }
    assert len(seen["val"]) == 2 and len(seen["train"]) == len(train) - 2
    assert sorted(seen["train"] + seen["val"]) == sorted(train)
    assert seen["test"] == test


def nasty_devkit(root: Path) -> Path:
    """One image of each kind of bad sample; images are 40 x 30."""
    return write_voc(
        root,
        {
            "good": voc_xml(voc_object("cat", "1 2 10 20")),
            "boxes": voc_xml(
                voc_object("cat", "10 2 1 20"),  # negative width
                voc_object("dog", "50 40 60 45"),  # wholly outside the image
                voc_object("dog", "-4 5 50 20", "<difficult>1</difficult>"),  # partly outside
                voc_object("cat", "1 2 ten 20"),  # non-numeric field
                voc_object("cat", "1 2 10"),  # missing field
                "<object><name>dog</name></object>",  # no bndbox
            ),
            "broken": "<annotation><size>",
            "empty": voc_xml(),
        },
    )


def test_non_strict_drops_and_counts_bad_objects_and_files(tmp_path: Path) -> None:
    dataset = VOCDataset(nasty_devkit(tmp_path), "trainval", CLASSES, strict=False, train=True)
    assert dataset.ids == ["good", "boxes", "empty"]
    _, target = dataset[1]
    np.testing.assert_array_equal(target["boxes"], [[0, 4, 40, 20]])  # clipped to 40 x 30
    assert target["labels"].tolist() == [2] and target["difficult"].tolist() == [True]
    assert dataset[2][1]["boxes"].shape == (0, 4)
    assert dataset.skips == {
        "invalid_boxes": 2,
        "clipped_boxes": 1,
        "malformed_objects": 3,
        "unreadable_annotations": 1,
        "empty_images": 1,
    }


def test_strict_raises_on_the_first_bad_file(tmp_path: Path) -> None:
    with pytest.raises(VOCAnnotationError, match="boxes.xml.*empty box"):
        VOCDataset(nasty_devkit(tmp_path), "trainval", CLASSES)


def test_boxes_outside_the_image_are_repaired_even_when_strict(tmp_path: Path) -> None:
    xml = voc_xml(voc_object("cat", "0 0 45 10"), voc_object("dog", "41 1 50 10"))
    dataset = VOCDataset(write_voc(tmp_path, {"a": xml}), "trainval", CLASSES)
    np.testing.assert_array_equal(dataset[0][1]["boxes"], [[0, 0, 40, 10]])
    assert dataset.skips == {"clipped_boxes": 1, "invalid_boxes": 1}


def test_unknown_class_is_an_error_even_when_not_strict(tmp_path: Path) -> None:
    root = write_voc(tmp_path, {"a": voc_xml(voc_object("horse"))})
    with pytest.raises(VOCAnnotationError, match="a.xml.*'horse'"):
        VOCDataset(root, "trainval", CLASSES, strict=False)


def test_missing_annotation_file_is_a_user_error(tmp_path: Path) -> None:
    root = write_voc(tmp_path, {"a": voc_xml()})
    (root / "Annotations" / "a.xml").unlink()
    with pytest.raises(VOCAnnotationError, match="a.xml.*cannot read"):
        VOCDataset(root, "trainval", CLASSES)


def test_undecodable_image_is_skipped_when_not_strict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = write_voc(tmp_path, {"a": voc_xml(voc_object("cat")), "b": voc_xml(voc_object("dog"))})
    (root / "JPEGImages" / "a.jpg").write_bytes(b"not a jpeg")
    dataset = VOCDataset(root, "trainval", CLASSES, strict=False, train=True)
    with caplog.at_level(logging.WARNING):
        assert dataset[0][1]["image_id"] == "b"  # the next readable sample
    assert "a.jpg" in caplog.text
    assert dataset[1][1]["image_id"] == "b"
    assert dataset.skips["unreadable_images"] == 1
    # an evaluation set would score "b" twice and "a" never: it stops, naming the file
    with pytest.raises(UserError, match="a.jpg.*an evaluation set stops at it even with data"):
        VOCDataset(root, "trainval", CLASSES, strict=False)[0]
    # strict: an error naming the file and the setting that skips it, which commands print alone
    with pytest.raises(
        UserError, match="a.jpg: not an image file, or its end is missing; data.strict=false skips"
    ):
        VOCDataset(root, "trainval", CLASSES, train=True)[0]
    # which does not skip it in an evaluation set: the error says what does
    with pytest.raises(UserError, match="a.jpg: not an image.*an evaluation set stops at it"):
        VOCDataset(root, "trainval", CLASSES)


def test_an_image_of_another_size_than_its_annotation_is_named_or_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Boxes are in the annotation's pixels: an image decoded at another size (a photo turned by
    its EXIF tag) is an error naming both sizes, or a counted skip in a non-strict training set."""
    root = write_voc(tmp_path, {"a": voc_xml(voc_object("cat")), "b": voc_xml(voc_object("dog"))})
    cv2.imwrite(str(root / "JPEGImages" / "a.jpg"), np.zeros((40, 30, 3), np.uint8))  # turned
    with pytest.raises(UserError, match="a.jpg decodes to 30x40, but its annotation gives 40x30"):
        VOCDataset(root, "trainval", CLASSES)[0]
    with pytest.raises(UserError, match="a.jpg decodes.*an evaluation set stops at it even"):
        VOCDataset(root, "trainval", CLASSES, strict=False)[0]
    dataset = VOCDataset(root, "trainval", CLASSES, strict=False, train=True)
    with caplog.at_level(logging.WARNING):
        assert dataset[0][1]["image_id"] == "b"
    assert +dataset.skips == {"unreadable_images": 1} and "a.jpg decodes to 30x40" in caplog.text


def test_an_evaluation_set_checks_its_images_sizes_when_built(tmp_path: Path) -> None:
    """An evaluation set stops at an image it cannot use, so it reads every image's size from
    its header when built (before a fit, not after it), counting the others; the header's size
    must be what the decoder gives: an image turned by its EXIF orientation is decoded."""
    xmls = {name: voc_xml(voc_object("cat")) for name in ("a", "b", "c", "d")}  # 40x30 each
    root = write_voc(tmp_path, xmls)
    images = root / "JPEGImages"
    cv2.imwrite(str(images / "a.jpg"), np.zeros((40, 30, 3), np.uint8))  # 30x40
    cv2.imwrite(str(images / "b.jpg"), np.zeros((50, 30, 3), np.uint8))
    with pytest.raises(
        UserError,
        match=r"a.jpg decodes to 30x40, but its annotation gives 40x30.* \(and 1 more of its 4 "
        r"images\): an evaluation set stops at it even with data.strict=false",
    ):
        VOCDataset(root, "trainval", CLASSES)
    for name in ("a", "b"):
        cv2.imwrite(str(images / f"{name}.jpg"), np.zeros((30, 40, 3), np.uint8))
    assert len(VOCDataset(root, "trainval", CLASSES)) == 4
    # stored 30 wide and 40 high with orientation 6 (turn a quarter clockwise): decoded 40x30
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(images / "c.jpg", exif=exif.tobytes())
    assert read_image(images / "c.jpg").shape == (30, 40, 3)
    assert len(VOCDataset(root, "trainval", CLASSES)) == 4
    # the same turn of an image stored 40 wide: decoded 30x40, which the header alone would miss
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(images / "d.jpg", exif=exif.tobytes())
    with pytest.raises(UserError, match="d.jpg decodes to 30x40"):
        VOCDataset(root, "trainval", CLASSES, strict=False)
    # a training set reads no image when built; it meets d when it reads it
    dataset = VOCDataset(root, "trainval", CLASSES, train=True)
    with pytest.raises(UserError, match="d.jpg decodes to 30x40"):
        dataset[3]


def test_fitting_stops_before_training_at_a_test_image_it_could_not_score(devkit: Path) -> None:
    """Fitting builds the test set too (to keep it apart from training), so a test image of
    another size than its annotation stops ``train.py`` before the fit, not after it."""
    cv2.imwrite(str(devkit / "VOC2007" / "JPEGImages" / "c.jpg"), np.zeros((40, 30, 3), np.uint8))
    dm = VOCDataModule(
        str(devkit),
        CLASSES,
        train_sets=[{"root": "VOC2012", "split": "train"}],
        test_sets=[{"root": "VOC2007", "split": "test"}],
        val_holdout=1,
    )
    with pytest.raises(UserError, match="c.jpg decodes to 30x40.*an evaluation set stops at it"):
        dm.setup("fit")


@pytest.mark.parametrize("strict", [True, False])
def test_a_held_out_image_of_another_size_is_met_when_the_split_is_made(
    devkit: Path, strict: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A validation held out of the training files would stop at it after the first stretch of
    training: it is refused when the split is made (strict), or left out and counted, as
    training passes over it."""
    cv2.imwrite(str(devkit / "VOC2012" / "JPEGImages" / "d.jpg"), np.zeros((40, 30, 3), np.uint8))
    seed = next(s for s in range(100) if 0 in holdout_indices(3, 2, s)["val"])  # d held out
    dm = VOCDataModule(
        str(devkit),
        CLASSES,
        train_sets=[{"root": "VOC2012", "split": "trainval"}],
        test_sets=[{"root": "VOC2007", "split": "test"}],
        val_holdout=2,
        val_holdout_seed=seed,
        strict=strict,
    )
    if strict:
        with pytest.raises(UserError, match="d.jpg decodes to 30x40.*data.strict=false skips it"):
            dm.setup("fit")
        return
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "leaving an image out of the held-out validation images: image" in caplog.text
    assert len(dm.datasets["val"]) == 1 and len(dm.datasets["train"]) == 1
    assert dm.datasets["val"].skips["unreadable_images"] == 1
    assert dm.datasets["val"].first_skips["unreadable_images"].endswith("d.jpg")


def test_a_test_image_reached_through_a_link_is_still_a_test_image(
    devkit: Path, tmp_path: Path
) -> None:
    link = tmp_path / "link"
    link.symlink_to(devkit)
    dm = VOCDataModule(
        str(devkit),
        CLASSES,
        train_sets=[
            {"root": "VOC2007", "split": "trainval"},
            {"root": str(link / "VOC2007"), "split": "test"},
        ],
        test_sets=[{"root": "VOC2007", "split": "test"}],
        val_holdout=1,
    )
    with pytest.raises(UserError, match="of the (train|val) images are test images too"):
        dm.setup("fit")


def test_eval_says_when_the_test_images_are_part_of_a_split_the_run_trained_on(
    devkit: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """VOC2012 val is a part of VOC2012 trainval: a run trained on trainval and tested on val has
    seen its images though no split file is shared (voc0712's run tested with voc07++12)."""
    from omegaconf import OmegaConf

    from dssd.tasks.evaluation import warn_seen_test_files

    trained = {
        "_target_": "dssd.data.VOCDataModule",
        "root": str(devkit),
        "class_names": list(CLASSES),
        "train_sets": [{"root": "VOC2012", "split": "trainval"}],
        "val_holdout": 1,
    }
    for split, said in (
        ("val", "1 of the 1 test images are images the checkpoint's run trained"),
        ("test", None),
    ):
        root = "VOC2012" if split == "val" else "VOC2007"
        tested = VOCDataModule(str(devkit), CLASSES, test_sets=[{"root": root, "split": split}])
        tested.setup("test")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            warn_seen_test_files(tested, OmegaConf.create(trained))
        assert (said in caplog.text) if said else "has seen" not in caplog.text, caplog.text


def test_sets_of_one_role_that_overlap_or_lack_a_key_are_named(devkit: Path) -> None:
    """VOC2012 trainval and train in one role read e and f twice, uncounted; a set without its
    split was a KeyError traceback."""
    overlapping = [{"root": "VOC2012", "split": "trainval"}, {"root": "VOC2012", "split": "train"}]
    dm = VOCDataModule(str(devkit), CLASSES, train_sets=overlapping, val_holdout=1)
    with pytest.raises(
        UserError,
        match=r"data.train_sets: .*VOC2012 \(trainval\) and .*VOC2012 "
        r"\(train\) both list .*e.jpg, which would be read twice",
    ):
        dm.setup("fit")
    with pytest.raises(UserError, match=r"data.test_sets.0=\{'root': 'VOC2007'\}: give each set"):
        VOCDataModule(str(devkit), CLASSES, test_sets=[{"root": "VOC2007"}])


def test_a_fit_without_a_test_builds_no_test_set(devkit: Path) -> None:
    """train.py test=false sets ``fit_roles`` without the test: data=voc07++12 trains on VOC2007
    test, which a fit that tests refuses."""
    sets = {
        "train_sets": [
            {"root": "VOC2007", "split": "trainval"},
            {"root": "VOC2007", "split": "test"},
        ],
        "test_sets": [{"root": "VOC2007", "split": "test"}],
        "val_holdout": 1,
    }
    with pytest.raises(UserError, match="of the (train|val) images are test images too"):
        VOCDataModule(str(devkit), CLASSES, **sets).setup("fit")
    dm = VOCDataModule(str(devkit), CLASSES, **sets)
    dm.fit_roles = ("train", "val")
    dm.setup("fit")
    assert sorted(dm.datasets) == ["train", "val"]


def test_a_truncated_jpeg_is_named_or_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``cv2.imread`` returns a JPEG cut short with its missing rows grey and only a line on
    stderr; the reader treats it as undecodable. A whole JPEG with bytes after its end marker (a
    camera's trailer) reads as ``cv2.imread`` reads it."""
    root = write_voc(tmp_path, {"a": voc_xml(voc_object("cat")), "b": voc_xml(voc_object("dog"))})
    noise = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    whole = cv2.imencode(".jpg", noise)[1].tobytes()
    path = root / "JPEGImages" / "a.jpg"
    path.write_bytes(whole + b"trailer")
    assert np.array_equal(read_image(path), cv2.imread(str(path))[..., ::-1])
    path.write_bytes(whole[: len(whole) * 2 // 3])
    assert cv2.imread(str(path)) is not None  # what the check is for
    # a header that reads: an evaluation set is built, and stops when it decodes the image
    evaluation = VOCDataset(root, "trainval", CLASSES)
    with pytest.raises(UserError, match="a.jpg: not an image file, or its end is missing: an ev"):
        evaluation[0]
    with pytest.raises(
        UserError, match="a.jpg: not an image file, or its end is missing; data.strict=false"
    ):
        VOCDataset(root, "trainval", CLASSES, train=True)[0]
    dataset = VOCDataset(root, "trainval", CLASSES, strict=False, train=True)
    with caplog.at_level(logging.WARNING):
        assert dataset[0][1]["image_id"] == "b"
    assert +dataset.skips == {"unreadable_images": 1} and "its end is missing" in caplog.text


def test_an_image_stored_under_another_suffix_is_named_beside_the_missing_one(
    tmp_path: Path,
) -> None:
    root = write_voc(tmp_path, {"a": voc_xml(voc_object("cat")), "b": voc_xml()})
    (root / "JPEGImages" / "a.jpg").rename(root / "JPEGImages" / "a.JPG")
    with pytest.raises(DatasetNotFoundError, match=r"a.jpg, beside which are a.JPG\): restore"):
        VOCDataset(root, "trainval", CLASSES)


def test_a_per_class_split_file_is_named_not_read_as_ids(tmp_path: Path) -> None:
    """VOC's cat_trainval.txt lists every image with 1, 0 or -1: read as ids, every image had "no
    file", and the error blamed the data."""
    root = write_voc(tmp_path, {"a": voc_xml(voc_object("cat")), "b": voc_xml()})
    (root / "ImageSets" / "Main" / "cat_trainval.txt").write_text("a  1\nb -1\n")
    with pytest.raises(VOCAnnotationError, match=r"cat_trainval.txt: the line 'a  1' holds more"):
        VOCDataset(root, "cat_trainval", CLASSES, strict=False, train=True)


def test_split_files_listing_an_image_again_or_not_utf8(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An id listed twice would be trained on and scored twice (and could land in both halves
    of a held-out split): strict, an error; not strict, read once and counted. A byte-order mark
    is read past; a file in another encoding is an error naming it."""
    root = write_voc(tmp_path, {i: voc_xml(voc_object("cat")) for i in "abc"})
    split = root / "ImageSets" / "Main" / "trainval.txt"
    split.write_text("a\nb\na\nc\na\n")
    with pytest.raises(VOCAnnotationError, match=r"lists 2 image ids again \(e.g. 'a'\)"):
        VOCDataset(root, "trainval", CLASSES)
    with caplog.at_level(logging.WARNING):
        dataset = VOCDataset(root, "trainval", CLASSES, strict=False)
    assert dataset.ids == ["a", "b", "c"] and +dataset.skips == {"duplicate_images": 2}
    assert "reading each once" in caplog.text
    split.write_bytes("a\nb\n".encode("utf-8-sig"))
    assert VOCDataset(root, "trainval", CLASSES).ids == ["a", "b"]
    split.write_bytes("a\nb\n".encode("utf-16"))
    with pytest.raises(VOCAnnotationError, match="trainval.txt: not UTF-8 text"):
        VOCDataset(root, "trainval", CLASSES)


def test_images_without_a_file_are_named_or_skipped_when_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A partly unpacked dataset shows when it is built: strict, or in an evaluation set, as an
    error naming the split file, the count and an example; in a training set not strict, as a
    counted skip of those images."""
    xmls = {i: voc_xml(voc_object("cat")) for i in "abc"}
    root = write_voc(tmp_path, xmls)
    for image_id in "ac":
        (root / "JPEGImages" / f"{image_id}.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"2 of the 3 images listed in .*trainval.txt"):
        VOCDataset(root, "trainval", CLASSES)
    with pytest.raises(DatasetNotFoundError, match=r"2 of the 3 .*an evaluation set stops at it"):
        VOCDataset(root, "trainval", CLASSES, strict=False)
    with caplog.at_level(logging.WARNING):
        dataset = VOCDataset(root, "trainval", CLASSES, strict=False, train=True)
    assert dataset.ids == ["b"] and len(dataset.annotations) == 1
    assert +dataset.skips == {"missing_images": 2}  # + drops the zero counts
    assert "a.jpg): skipping them" in caplog.text


def test_datamodule_forwards_strict_and_logs_the_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = nasty_devkit(tmp_path)
    for split in ("val", "test"):
        write_voc(root, {split: voc_xml(voc_object("cat"))}, split=split)
    with pytest.raises(VOCAnnotationError):
        VOCDataModule(str(root), CLASSES).setup("fit")  # strict
    dm = VOCDataModule(str(root), CLASSES, strict=False)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert len(dm.datasets["train"]) == 3
    (record,) = [r for r in caplog.records if r.getMessage().startswith("train data")]
    assert record.levelno == logging.WARNING and "2 invalid_boxes" in record.getMessage()
    # each repair names the file of its first case, so that a count leads to a file
    xml = root / "Annotations" / "boxes.xml"
    for kind in ("2 invalid_boxes", "1 clipped_boxes", "3 malformed_objects"):
        assert f"{kind}, first in {xml}" in record.getMessage()
    assert f"1 unreadable_annotations, first in {root / 'Annotations' / 'broken.xml'}" in (
        record.getMessage()
    )
    # validating on those files stops at the first bad object, strict or not
    with pytest.raises(VOCAnnotationError, match="boxes.xml: .*an evaluation set stops at it"):
        VOCDataModule(str(root), CLASSES, val_split="trainval", strict=False).setup("validate")


def test_a_user_error_in_a_loader_worker_is_reported_as_its_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DataLoader re-raises a worker's error with the worker's traceback in its text; the
    command prints the message alone, as for an error raised in the main process."""
    message = "cannot read or decode image a.jpg: repair it\nor remove it"
    try:
        raise UserError(message)
    except UserError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(SystemExit), user_errors():
        wrapped.reraise()
    assert capsys.readouterr().err == f"error: {message}\n"


def test_box_geometry_is_repaired_in_evaluation_sets_too(tmp_path: Path) -> None:
    """A box of zero width (VOC's xmax one below xmin) or wholly outside the image is dropped
    and counted in every role, not strict; only strict refuses the empty one."""
    xml = voc_xml(
        voc_object("cat", "10 2 9 20"), voc_object("dog", "50 40 60 45"), voc_object("cat")
    )
    root = write_voc(tmp_path, {"a": xml})
    dataset = VOCDataset(root, "trainval", CLASSES, strict=False)
    assert +dataset.skips == {"invalid_boxes": 2} and len(dataset.objects(0)["boxes"]) == 1
    with pytest.raises(VOCAnnotationError, match="a.xml: object 'cat' has an empty box"):
        VOCDataset(root, "trainval", CLASSES)
