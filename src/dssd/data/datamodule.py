"""LightningDataModules over VOC-layout datasets (PASCAL VOC, VOC07+12, shapes) and over COCO.

Data problems follow the policy in ``dssd.data.voc``: configuration mistakes raise at ``setup``,
bad samples are dropped and counted when ``strict=False``. The counts made while reading the
annotations are logged once per dataset, as a warning, when ``setup`` builds it; undecodable images
are met later, in the DataLoader workers, and are warned about there, each time they are skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from dssd.data import shapes
from dssd.data.coco import COCODataset, category_names, load_coco
from dssd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    DetectionTransform,
    build_transforms,
    seed_worker,
)
from dssd.data.voc import VOCDataset
from dssd.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")
VOCDEVKIT_LAYOUT = (
    "set data.root=/path/to/VOCdevkit, the folder holding VOCdevkit/VOC2007 (and VOCdevkit/VOC2012"
    " for 07+12), each with Annotations/, ImageSets/Main/ and JPEGImages/"
)


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict]]:
    """Stack the images into [B, 3, S, S]; targets stay a list since box counts differ."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


class ConcatDetection(ConcatDataset):
    """Concatenated datasets sharing one transform, exposed as ``transform`` so that
    ``seed_worker`` reseeds it; ``skips`` adds up the parts' counts."""

    def __init__(self, datasets: Sequence[Dataset], transform: DetectionTransform) -> None:
        super().__init__(datasets)
        self.transform = transform

    @property
    def skips(self) -> Counter[str]:
        return sum((d.skips for d in self.datasets), Counter())


class DetectionDataModule(pl.LightningDataModule):
    """Loaders shared by the VOC and COCO DataModules; subclasses build the datasets.

    Training batches are shuffled and the last incomplete one is dropped; predict uses the test
    data.
    """

    def __init__(
        self,
        image_size: int,
        batch_size: int,
        num_workers: int,
        augment: Augment | None,
        mean: Sequence[float],
        std: Sequence[float],
        pin_memory: bool,
        persistent_workers: bool,
        strict: bool,
    ) -> None:
        super().__init__()
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.strict = strict
        self.datasets: dict[str, Dataset] = {}
        # The VOC devkit's AP for this data: 11-point (VOC2007 test) or all-point (VOC2010+);
        # None for COCO-style data, which is evaluated with COCO's metrics only.
        self.use_07_metric: bool | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def num_classes(self) -> int:
        """Number of object classes, background excluded."""
        return len(self.class_names)

    def _dataset(self, role: str, transform: DetectionTransform) -> Dataset:
        """The dataset of a role ("train", "val" or "test"), items passed through ``transform``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        needed = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ROLES,
        }[stage]
        for role in needed:
            if role not in self.datasets:
                train = role == "train"
                transform = build_transforms(
                    self.image_size, train, self.mean, self.std, self.augment
                )
                dataset = self.datasets[role] = self._dataset(role, transform)
                if dataset.skips:
                    log.warning("%s data: %s", role, dict(sorted(dataset.skips.items())))

    def _loader(self, role: str) -> DataLoader:
        train = role == "train"
        # One OpenCV thread: loader workers run beside the training process, and an OpenCV pool in
        # each would fight it for the cores. Set here, before the workers fork: a forked worker
        # that resizes an inherited pool can deadlock. (PyTorch gives each worker one thread.)
        cv2.setNumThreads(1)
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


class VOCDataModule(DetectionDataModule):
    """Train / val / test / predict loaders over VOC-layout splits.

    Each role reads ``<root>/ImageSets/Main/<role>_split.txt``, or, when ``<role>_sets`` is given,
    the concatenation of several ``{root, split}`` sets, relative roots resolved against ``root``
    (VOC07+12: train_sets = VOC2007/trainval + VOC2012/trainval). Labels are 1..C in the order of
    ``class_names`` (0 is background). With ``generate_shapes=True``, ``prepare_data`` first builds
    the embedded shapes dataset at ``root`` (a no-op when it is already there). Evaluation adds
    the VOC devkit's mAP, 11-point with ``use_07_metric`` (VOC2007 test) or all-point (VOC2012).
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
        train_sets: Sequence[Mapping[str, str]] | None = None,
        val_sets: Sequence[Mapping[str, str]] | None = None,
        test_sets: Sequence[Mapping[str, str]] | None = None,
        strict: bool = True,
        use_07_metric: bool = True,
    ) -> None:
        super().__init__(
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            mean=mean,
            std=std,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            strict=strict,
        )
        self.root = root
        self._class_names = tuple(class_names)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.sets = {"train": train_sets, "val": val_sets, "test": test_sets}
        self.generate_shapes = generate_shapes
        self.use_07_metric = use_07_metric

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def prepare_data(self) -> None:
        if self.generate_shapes:
            shapes.generate_shapes(self.root)

    def _dataset(self, role: str, transform: DetectionTransform) -> Dataset:
        sets = self.sets[role]
        if sets is None:
            return VOCDataset(
                self.root, self.splits[role], self.class_names, transform, strict=self.strict
            )
        parts = []
        for entry in sets:
            root = Path(self.root) / entry["root"]
            if not root.is_dir():
                raise DatasetNotFoundError(
                    f"VOC root {root} ({role} set) does not exist: {VOCDEVKIT_LAYOUT}"
                )
            parts.append(
                VOCDataset(root, entry["split"], self.class_names, transform, strict=self.strict)
            )
        return ConcatDetection(parts, transform)


class COCODataModule(DetectionDataModule):
    """Train / val / test / predict loaders over COCO instances files under ``root``.

    Test uses the val files unless ``test_annotations`` / ``test_images`` are given. The paper's
    trainval35k / minival split is obtained by pointing ``train_annotations`` and
    ``val_annotations`` at those files. With ``class_names`` configured, every annotation file
    must have exactly those categories (in category-id order); without, they are read from the val
    annotation file. Crowd boxes are left out of training and flagged ``difficult`` in evaluation.
    """

    def __init__(
        self,
        root: str,
        class_names: Sequence[str] | None = None,
        train_annotations: str = "annotations/instances_train2017.json",
        train_images: str = "train2017",
        val_annotations: str = "annotations/instances_val2017.json",
        val_images: str = "val2017",
        test_annotations: str | None = None,
        test_images: str | None = None,
        image_size: int = 321,
        batch_size: int = 32,
        num_workers: int = 2,
        augment: Augment | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        strict: bool = True,
    ) -> None:
        super().__init__(
            image_size=image_size,
            batch_size=batch_size,
            num_workers=num_workers,
            augment=augment,
            mean=mean,
            std=std,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers,
            strict=strict,
        )
        self.root = root
        self._class_names = None if class_names is None else tuple(class_names)
        self.files = {
            "train": (train_annotations, train_images),
            "val": (val_annotations, val_images),
            "test": (test_annotations or val_annotations, test_images or val_images),
        }

    @property
    def class_names(self) -> tuple[str, ...]:
        """The configured class names, or else those of the val annotation file."""
        if self._class_names is None:
            self._class_names = category_names(load_coco(Path(self.root) / self.files["val"][0]))
        return self._class_names

    @property
    def label_to_category_id(self) -> dict[int, int]:
        """Label -> COCO category id, for ``detections_to_coco_results`` (after ``setup``)."""
        return next(iter(self.datasets.values())).label_to_category_id

    def _dataset(self, role: str, transform: DetectionTransform) -> Dataset:
        annotations, images = self.files[role]
        return COCODataset(
            self.root,
            annotations,
            images,
            transform,
            train=role == "train",
            class_names=self.class_names,
            strict=self.strict,
        )
