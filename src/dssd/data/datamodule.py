"""LightningDataModule over a VOC-layout dataset (real PASCAL VOC or the embedded shapes set)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dssd.data import shapes
from dssd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Augment, build_transforms, seed_worker
from dssd.data.voc import VOCDataset


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict]]:
    """Stack the images into [B, 3, S, S]; targets stay a list since box counts differ."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


class VOCDataModule(pl.LightningDataModule):
    """Train / val / test / predict loaders over the splits of one VOC-layout root.

    Labels are 1..C in the order of ``class_names`` (0 is background). With
    ``generate_shapes=True``, ``prepare_data`` first builds the embedded shapes dataset at
    ``root`` (a no-op when it is already there). Training batches are shuffled and the last
    incomplete one is dropped; predict uses the test split.
    """

    def __init__(
        self,
        root: str,
        class_names: Sequence[str],
        train_split: str = "trainval",
        val_split: str = "test",
        test_split: str = "test",
        image_size: int = 321,
        batch_size: int = 32,
        num_workers: int = 2,
        augment: Augment | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        generate_shapes: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = True,
    ) -> None:
        super().__init__()
        self.root = root
        self.class_names = tuple(class_names)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.generate_shapes = generate_shapes
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.datasets: dict[str, VOCDataset] = {}

    @property
    def num_classes(self) -> int:
        """Number of object classes, background excluded."""
        return len(self.class_names)

    def prepare_data(self) -> None:
        if self.generate_shapes:
            shapes.generate_shapes(self.root)

    def setup(self, stage: str | None = None) -> None:
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ("train", "val", "test"),
        }[stage]
        for role in needed:
            if role not in self.datasets:
                self.datasets[role] = self._dataset(role)

    def _dataset(self, role: str) -> VOCDataset:
        """The dataset of a role ("train", "val" or "test") with its transform."""
        train = role == "train"
        transform = build_transforms(self.image_size, train, self.mean, self.std, self.augment)
        return VOCDataset(self.root, self.splits[role], self.class_names, transform)

    def _loader(self, role: str) -> DataLoader:
        train = role == "train"
        return DataLoader(
            self.datasets[role],
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            collate_fn=collate_detection,
            worker_init_fn=seed_worker,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
