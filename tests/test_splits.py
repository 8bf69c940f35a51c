"""Model selection never sees the test split: a real fit on the embedded data and on VOC07+12's
held-out validation touches no test image, and data that would let it is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate

from conftest import tiny_data
from dssd.data.datamodule import VOCDataModule, holdout_indices
from dssd.errors import UserError
from test_configs import compose_train
from test_voc import voc_object, voc_xml, write_voc

CLASSES = ("cat", "dog")


class SeenImages(pl.Callback):
    """Records the image ids of every batch that training and validation see."""

    def __init__(self) -> None:
        self.seen: dict[str, set[Any]] = {"train": set(), "val": set()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen["train"] |= {t["image_id"] for t in batch[1]}

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        self.seen["val"] |= {t["image_id"] for t in batch[1]}


def fit_and_record(*overrides: str) -> tuple[dict[str, set[Any]], set[Any], Any]:
    """Fit the default model for two epochs on the configured data; the ids seen in training and
    validation, the test split's ids and the datamodule."""
    cfg = compose_train(*overrides, "model.channels_last=false")
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    recorder = SeenImages()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    trainer.fit(model, datamodule=datamodule)
    test = datamodule.datasets["test"]
    return recorder.seen, {test[i][1]["image_id"] for i in range(len(test))}, datamodule


def test_fit_on_the_embedded_data_never_sees_a_test_image(tiny_shapes: Path) -> None:
    seen, test, _ = fit_and_record(*tiny_data(tiny_shapes))
    split = (tiny_shapes / "ImageSets" / "Main").joinpath
    assert seen["train"] == set(split("trainval.txt").read_text().split())
    assert seen["val"] == set(split("val.txt").read_text().split())
    assert test == set(split("test.txt").read_text().split()) and len(test) == 8
    assert not (seen["train"] | seen["val"]) & test


def devkit(root: Path) -> Path:
    """VOCdevkit/VOC2007 (trainval: 6 images, test: 3) and VOC2012 (trainval: 4)."""
    box = voc_object("cat", "1 2 30 20")
    write_voc(root / "VOC2007", {f"a{i}": voc_xml(box) for i in range(6)})
    write_voc(root / "VOC2007", {f"t{i}": voc_xml(box) for i in range(3)}, split="test")
    write_voc(root / "VOC2012", {f"b{i}": voc_xml(box) for i in range(4)})
    return root


def test_fit_on_voc0712_validates_on_held_out_training_images(tmp_path: Path) -> None:
    root = devkit(tmp_path / "VOCdevkit")
    seen, test, datamodule = fit_and_record(
        "data=voc0712",
        f"data.root={root}",
        "data.val_holdout=3",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.class_names=[cat,dog]",
    )
    assert test == {"t0", "t1", "t2"}
    assert len(seen["val"]) == 3 and not seen["val"] & seen["train"]
    everything = {f"a{i}" for i in range(6)} | {f"b{i}" for i in range(4)}
    # training drops its last incomplete batch of each shuffled epoch, so it may miss an image
    assert seen["train"] | seen["val"] <= everything and len(seen["train"]) >= 5
    assert not (seen["train"] | seen["val"]) & test
    # the held-out images are the same for the same seed, and others for another
    sets = {f"{role}_sets": datamodule.sets[role] for role in ("train", "test")}
    again = VOCDataModule(str(root), CLASSES, val_holdout=3, **sets)
    again.setup("fit")
    val = again.datasets["val"]
    assert {val[i][1]["image_id"] for i in range(3)} == seen["val"]
    assert holdout_indices(10, 3, 0) == holdout_indices(10, 3, 0)
    assert holdout_indices(10, 3, 0)["val"] != holdout_indices(10, 3, 1)["val"]


@pytest.mark.parametrize("role", ["val", "train"])
def test_data_that_shows_test_images_to_fit_is_refused(tmp_path: Path, role: str) -> None:
    box = voc_object("cat", "1 2 30 20")
    root = write_voc(tmp_path, {f"a{i}": voc_xml(box) for i in range(4)})
    # validation on the test split itself, or a test split holding a training image
    test = {"t": voc_xml(box)} if role == "val" else {"a0": voc_xml(box), "t": voc_xml(box)}
    write_voc(tmp_path, test, split="test")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("a1\n")
    splits = {"val_split": "test"} if role == "val" else {"val_split": "val"}
    datamodule = VOCDataModule(str(root), CLASSES, **splits)
    with pytest.raises(UserError, match=f"of the {role} images are test images too"):
        datamodule.setup("fit")


def test_validation_on_training_images_is_refused(tmp_path: Path) -> None:
    """VOC's val.txt is a part of its trainval.txt: validating on it beside training on trainval
    would choose best.ckpt on images the network trained on."""
    box = voc_object("cat", "1 2 30 20")
    root = write_voc(tmp_path, {f"a{i}": voc_xml(box) for i in range(4)})
    write_voc(tmp_path, {"t": voc_xml(box)}, split="test")
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("a1\n")
    datamodule = VOCDataModule(str(root), CLASSES, val_split="val")
    with pytest.raises(UserError, match="1 of the val images are train images too .*a1.jpg"):
        datamodule.setup("fit")
    VOCDataModule(str(root), CLASSES, val_split="val", val_holdout=1).setup("fit")


def test_holdout_that_leaves_nothing_to_train_on_is_refused(tmp_path: Path) -> None:
    root = devkit(tmp_path)
    datamodule = VOCDataModule(
        str(root),
        CLASSES,
        train_sets=[{"root": "VOC2007", "split": "trainval"}],
        test_sets=[{"root": "VOC2007", "split": "test"}],
        val_holdout=6,
    )
    with pytest.raises(UserError, match="leaves no training images"):
        datamodule.setup("fit")
    with pytest.raises(UserError, match="val_holdout must be a whole number >= 0, got -1"):
        VOCDataModule(str(root), CLASSES, val_holdout=-1)


@pytest.mark.parametrize(
    ("setting", "value", "least"),
    [("batch_size", 0, 1), ("num_workers", -1, 0), ("image_size", 0, 1), ("batch_size", 2.5, 1)],
)
def test_a_count_below_its_least_or_not_whole_is_named(
    tmp_path: Path, setting: str, value: object, least: int
) -> None:
    """A loader setting no loader can take fails when the config is built, naming the setting,
    not at the first batch inside torch's DataLoader."""
    with pytest.raises(UserError, match=rf"data\.{setting} must be a whole number >= {least}"):
        VOCDataModule(str(tmp_path), CLASSES, **{setting: value})


@pytest.mark.parametrize("setting", ["strict", "pin_memory", "persistent_workers"])
def test_a_switch_that_is_not_true_or_false_is_named(tmp_path: Path, setting: str) -> None:
    """``data.strict=no`` is the string "no", which would count as true."""
    for value in ("no", 1, None):
        with pytest.raises(UserError, match=rf"data\.{setting} must be true or false, got"):
            VOCDataModule(str(tmp_path), CLASSES, **{setting: value})


def test_a_split_without_images_or_smaller_than_a_batch_is_named(tmp_path: Path) -> None:
    """An empty split tested or validated nothing and reported blank tables at exit 0; a training
    split smaller than a batch gave no batch at all (incomplete ones are dropped)."""
    box = voc_object("cat", "1 2 30 20")
    root = write_voc(tmp_path, {f"a{i}": voc_xml(box) for i in range(3)})
    write_voc(root, {"t0": voc_xml(box)}, split="test")
    write_voc(root, {"v0": voc_xml(box)}, split="val")
    (root / "ImageSets" / "Main" / "empty.txt").write_text("")
    sets = {"train_split": "trainval", "val_split": "empty", "test_split": "test"}
    with pytest.raises(UserError, match="the val data holds no images: 0 images"):
        VOCDataModule(str(root), CLASSES, **sets).setup("fit")
    sets["val_split"] = "val"
    datamodule = VOCDataModule(str(root), CLASSES, **sets, batch_size=4, num_workers=0)
    datamodule.setup("fit")
    with pytest.raises(UserError, match="data.batch_size=4, but the training data holds 3 images"):
        datamodule.train_dataloader()
    datamodule.batch_size = 3
    assert len(datamodule.train_dataloader()) == 1
