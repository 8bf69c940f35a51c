"""Transforms, collation and the VOC and shapes DataModules."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import albumentations as A
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from dssd.data import shapes
from dssd.data.datamodule import ShapesDataModule, VOCDataModule, collate_detection
from dssd.data.shapes import CLASSES, generate_shapes
from dssd.data.transforms import build_transforms, seed_worker

HEIGHT, WIDTH, SIZE = 60, 120, 64
BOXES = np.array([[0, 0, 30, 60], [90, 10, 120, 40], [40, 20, 60, 30]], np.float32)
LABELS = np.array([3, 1, 2])
DIFFICULT = np.array([False, True, False])


def sample_target(boxes: np.ndarray = BOXES) -> dict:
    n = len(boxes)
    return {"boxes": boxes, "labels": LABELS[:n], "difficult": DIFFICULT[:n], "image_id": "x"}


def left_bright_image() -> np.ndarray:
    """White left half, black right half: shows whether the output was flipped."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    image[:, : WIDTH // 2] = 255
    return image


def normalised(boxes: np.ndarray, flipped: bool = False) -> np.ndarray:
    out = boxes / np.array([WIDTH, HEIGHT, WIDTH, HEIGHT], np.float32)
    if flipped:
        out = np.stack([1 - out[:, 2], out[:, 1], 1 - out[:, 0], out[:, 3]], axis=1)
    return out


def is_flipped(tensor: torch.Tensor) -> bool:
    return bool(tensor[:, :, -1].mean() > tensor[:, :, 0].mean())


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(
        tmp_path_factory.mktemp("shapes"), num_trainval=12, num_test=4, num_val=4
    )


def test_eval_transform_shapes_dtypes_and_normalised_boxes() -> None:
    tensor, target = build_transforms(SIZE, train=False)(left_bright_image(), sample_target())
    assert tensor.shape == (3, SIZE, SIZE) and tensor.dtype == torch.float32
    assert tensor[:, :, 0].mean() > 2 and tensor[:, :, -1].mean() < -1  # ImageNet-normalised
    assert target["boxes"].dtype == torch.float32
    np.testing.assert_allclose(target["boxes"].numpy(), normalised(BOXES), atol=1e-6)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == LABELS.tolist()
    assert target["difficult"].dtype == torch.bool
    assert target["difficult"].tolist() == DIFFICULT.tolist()
    assert target["image_id"] == "x"
    assert target["orig_size"].dtype == torch.int64
    assert target["orig_size"].tolist() == [HEIGHT, WIDTH]


def test_train_flip_moves_boxes_with_the_image() -> None:
    transform = build_transforms(SIZE, train=True)
    seen = set()
    for _ in range(40):
        tensor, target = transform(left_bright_image(), sample_target())
        flipped = is_flipped(tensor)
        seen.add(flipped)
        np.testing.assert_allclose(target["boxes"].numpy(), normalised(BOXES, flipped), atol=1e-6)
        assert target["labels"].tolist() == LABELS.tolist()
        assert target["difficult"].tolist() == DIFFICULT.tolist()
    assert seen == {False, True}


def test_boxes_are_clipped_and_vanishing_ones_dropped_with_their_flags() -> None:
    boxes = np.array([[-10, -5, 20, 20], [110, 50, 130, 70], [125, 0, 140, 10]], np.float32)
    _, target = build_transforms(SIZE, train=False)(left_bright_image(), sample_target(boxes))
    clipped = np.array([[0, 0, 20, 20], [110, 50, 120, 60]], np.float32)
    np.testing.assert_allclose(target["boxes"].numpy(), normalised(clipped), atol=1e-6)
    assert target["labels"].tolist() == [3, 1] and target["difficult"].tolist() == [False, True]


def test_image_without_boxes() -> None:
    for train in (False, True):
        transform = build_transforms(SIZE, train=train)
        _, target = transform(left_bright_image(), sample_target(np.zeros((0, 4), np.float32)))
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
        assert target["difficult"].shape == (0,)


def test_augment_slot_runs_before_resize_in_training_only() -> None:
    crop = A.Crop(x_min=0, y_min=0, x_max=WIDTH // 2, y_max=HEIGHT)  # keeps the white half
    tensor, target = build_transforms(SIZE, train=True, augment=[crop])(
        left_bright_image(), sample_target()
    )
    assert tensor.shape == (3, SIZE, SIZE) and tensor.mean() > 2  # only the white half remains
    assert target["labels"].tolist() == [3, 2]  # the box in the right half is gone
    assert target["difficult"].tolist() == [False, False]
    # Boxes are relative to the 60-pixel crop: x in [0, 30] and [40, 60], or mirrored.
    assert target["boxes"][:, 2].max().item() == pytest.approx(1.0)
    _, target = build_transforms(SIZE, train=False, augment=crop)(
        left_bright_image(), sample_target()
    )
    assert target["labels"].tolist() == LABELS.tolist()


class RepeatedImage(Dataset):
    """The same image and boxes every time, through a training transform."""

    def __init__(self) -> None:
        self.transform = build_transforms(SIZE, train=True)

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self.transform(left_bright_image(), sample_target())


def flips_per_worker(seed: int) -> list[list[bool]]:
    """Flip decisions of two DataLoader workers, each serving every other item."""
    torch.manual_seed(seed)
    loader = DataLoader(RepeatedImage(), batch_size=1, num_workers=2, worker_init_fn=seed_worker)
    flips = [is_flipped(images[0]) for images, _ in loader]
    return [flips[0::2], flips[1::2]]


def test_seed_worker_gives_workers_distinct_reproducible_augmentation() -> None:
    first = flips_per_worker(seed=0)
    assert first[0] != first[1]
    assert flips_per_worker(seed=0) == first


def test_collate_detection_stacks_images_and_keeps_targets() -> None:
    transform = build_transforms(SIZE, train=False)
    batch = [transform(left_bright_image(), sample_target(BOXES[:n])) for n in (3, 0, 1)]
    images, targets = collate_detection(batch)
    assert images.shape == (3, 3, SIZE, SIZE)
    assert [len(t["boxes"]) for t in targets] == [3, 0, 1]


def test_datamodule_loaders_iterate(shapes_root: Path) -> None:
    dm = VOCDataModule(str(shapes_root), CLASSES, image_size=SIZE, batch_size=5, num_workers=0)
    assert dm.num_classes == len(CLASSES)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 12 images, the incomplete last batch dropped
    images, targets = batches[0]
    assert images.shape == (5, 3, SIZE, SIZE) and len(targets) == 5
    for target in targets:
        assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
        assert len(target["boxes"]) == len(target["labels"]) == len(target["difficult"])
        assert ((target["labels"] >= 1) & (target["labels"] <= len(CLASSES))).all()
    images, targets = next(iter(dm.val_dataloader()))
    assert images.shape[0] == 4 and targets[0]["image_id"] == "000017"  # the val split, after test
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == len(dm.predict_dataloader().dataset) == 4


@pytest.mark.parametrize("num_workers", [0, 1])
def test_training_batches_depend_on_the_seed_alone(shapes_root: Path, num_workers: int) -> None:
    """Two runs with one seed get the same batches, augmentations included, however many random
    numbers building their networks drew before the loader started (the training transform
    flips at random); another seed, others."""

    def first_batches(seed: int, draws: int) -> list[tuple[torch.Tensor, list[str]]]:
        pl.seed_everything(seed, workers=True, verbose=False)
        dm = VOCDataModule(
            str(shapes_root), CLASSES, image_size=SIZE, batch_size=3, num_workers=num_workers
        )
        dm.setup("fit")
        torch.randn(draws)  # a network's initialisation
        return [
            (images, [t["image_id"] for t in targets]) for images, targets in dm.train_dataloader()
        ]

    one, other = first_batches(3, 10), first_batches(3, 100_000)
    assert [ids for _, ids in one] == [ids for _, ids in other]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(one, other, strict=True))
    assert [ids for _, ids in first_batches(4, 10)] != [ids for _, ids in one]


def test_only_the_shapes_datamodule_builds_its_data_and_only_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(shapes, "generate_shapes", lambda root, **_: calls.append(root))
    VOCDataModule(str(tmp_path), CLASSES).prepare_data()
    assert calls == []
    ShapesDataModule(str(tmp_path), CLASSES).prepare_data()
    assert calls == [str(tmp_path)]
    # a complete dataset of other sizes (e.g. a test's) is read as it is, not rebuilt
    (tmp_path / shapes.STAMP_FILE).write_text(
        json.dumps({"format_version": shapes.FORMAT_VERSION, "num_trainval": 4})
    )
    ShapesDataModule(str(tmp_path), CLASSES).prepare_data()
    assert calls == [str(tmp_path)]
    # one of another format is rebuilt
    (tmp_path / shapes.STAMP_FILE).write_text(json.dumps({"format_version": 0}))
    ShapesDataModule(str(tmp_path), CLASSES).prepare_data()
    assert calls == [str(tmp_path)] * 2


def test_seed_worker_mixes_in_the_ddp_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    # every DDP process starts from the same seed; its workers must still draw differently
    from dssd.data.transforms import seed_worker

    draws = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        torch.manual_seed(7)
        seed_worker(0)
        draws.append(np.random.rand())
    assert draws[0] != draws[1]


def test_without_workers_each_ddp_process_draws_its_own_augmentations(
    shapes_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every process's transform is seeded alike; with ``num_workers=0`` no worker reseeds it, so
    every rank flipped its images alike. (The ranks read the same images in the same order here:
    no sampler.)"""

    def epoch(rank: int, world_size: int) -> tuple[list[str], torch.Tensor]:
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: world_size > 1)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda *_: rank)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda *_: world_size)
        pl.seed_everything(3, workers=True, verbose=False)
        dm = VOCDataModule(str(shapes_root), CLASSES, image_size=SIZE, batch_size=3, num_workers=0)
        dm.setup("fit")
        dm.trainer = SimpleNamespace(world_size=world_size)
        batches = list(dm.train_dataloader())
        ids = [t["image_id"] for _, targets in batches for t in targets]
        return ids, torch.cat([images for images, _ in batches])

    (ids, one), (again_ids, again) = epoch(1, 2), epoch(1, 2)
    assert ids == again_ids and torch.equal(one, again)
    other_ids, other = epoch(0, 2)
    assert other_ids == ids and not torch.equal(other, one)


def test_a_test_reads_the_shapes_data_and_never_builds_it(tmp_path: Path) -> None:
    """Only a fit builds the embedded data where it is missing: a test of a checkpoint whose data
    moved would else be scored on a new default dataset (300 images of other draws)."""
    from dssd.errors import DatasetNotFoundError
    from dssd.tasks.common import read_data

    root = tmp_path / "shapes"
    for stage in ("test", "validate"):
        datamodule = ShapesDataModule(str(root), CLASSES, num_workers=0)
        with pytest.raises(DatasetNotFoundError, match="no complete shapes dataset in .*shapes"):
            read_data(datamodule, stage)
        assert not root.exists()
    # a file given as the data's place: not advice to build a dataset at that path
    file = tmp_path / "notes.txt"
    file.write_text("")
    with pytest.raises(DatasetNotFoundError, match="notes.txt is a file, not the folder of a"):
        read_data(ShapesDataModule(str(file), CLASSES, num_workers=0), "test")
