"""LightningDataModules over VOC-layout datasets (PASCAL VOC, VOC07+12, the embedded shapes) and
over COCO.

Data problems follow the policy in ``dssd.data.voc``: configuration mistakes raise at ``setup``,
bad samples are dropped and counted when ``strict=False``. The counts made while reading the
annotations are logged once per dataset, as a warning, when ``setup`` builds it; undecodable images
are met later, in the DataLoader workers, and are warned about there, each time they are skipped.

Model selection never sees the test split: validation reads its own files or ``val_holdout``
images held out of the training data (a seeded, deterministic choice), and ``setup("fit")``
refuses training or validation images that are also test images.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, Subset

from dssd.data import shapes
from dssd.data.coco import COCODataset, category_names, load_coco
from dssd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    DetectionTransform,
    build_transforms,
    check_augment,
    seed_worker,
)
from dssd.data.voc import DetectionImages, VOCDataset
from dssd.errors import DatasetNotFoundError, UserError

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


class HeldOut(Subset):
    """Some images of a detection dataset (the training part or the validation part of a
    ``val_holdout`` split), with its ``transform`` and ``skips``."""

    @property
    def transform(self) -> DetectionTransform:
        return self.dataset.transform

    @property
    def skips(self) -> Counter[str]:
        return self.dataset.skips


def holdout_indices(size: int, count: int, seed: int) -> dict[str, list[int]]:
    """Split ``range(size)`` into "val" (``count`` indices drawn with ``seed``) and "train" (the
    rest), both in increasing order: the same split for the same size, count and seed."""
    chosen = np.random.default_rng(seed).permutation(size)[:count]
    val = np.isin(np.arange(size), chosen)
    return {"val": np.flatnonzero(val).tolist(), "train": np.flatnonzero(~val).tolist()}


def dataset_items(dataset: Dataset) -> list[tuple[DetectionImages, int]]:
    """Each item of a detection dataset (also concatenated or held out) as its reader and its
    index there, in item order: the way to its annotation and image file without decoding it."""
    if isinstance(dataset, DetectionImages):
        return [(dataset, i) for i in range(len(dataset))]
    if isinstance(dataset, ConcatDataset):
        return [item for part in dataset.datasets for item in dataset_items(part)]
    if isinstance(dataset, Subset):
        items = dataset_items(dataset.dataset)
        return [items[i] for i in dataset.indices]
    raise TypeError(f"cannot list the items of a {type(dataset).__name__}")


def image_files(dataset: Dataset) -> list[str]:
    """The image files of a detection dataset (also concatenated or held out), as absolute
    paths, in item order."""
    return [os.path.abspath(reader.image_paths[i]) for reader, i in dataset_items(dataset)]


class EvaluationShard(DistributedSampler):
    """One process's share of an evaluation dataset under DDP: a contiguous block of it.

    Lightning gives val and test a plain ``DistributedSampler``, which pads the shares to equal
    length by repeating images, so that up to N-1 images count twice in the metrics and the
    result files. Here the shares are left unequal (by one image at most) and nothing repeats,
    and since the blocks follow the processes' ranks, the detections gathered from all processes
    come in the dataset's own order, as one process gives them: the same metrics, to the
    order in which tied scores are ranked, and the same result files. Lightning keeps a
    ``DistributedSampler`` it is given rather than injecting its own.

    Processes with fewer batches are safe in evaluation: DDP synchronises buffers only on the
    first forward pass without gradients, and the metrics and logged values gather once, at the
    end. Every process needs one image, though, for that first forward pass.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        size = len(dataset)
        if size < num_replicas:
            raise UserError(
                f"{size} evaluation images for {num_replicas} processes: each process needs one; "
                "evaluate on fewer devices (src/eval.py tests on one)"
            )
        self.start, self.end = rank * size // num_replicas, (rank + 1) * size // num_replicas
        self.num_samples = self.end - self.start
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))


class DetectionDataModule(pl.LightningDataModule):
    """Loaders shared by the VOC and COCO DataModules; subclasses build the datasets.

    Training batches are shuffled and the last incomplete one is dropped; predict uses the test
    data. With ``val_holdout`` > 0, validation uses that many images of the training data, drawn
    with ``val_holdout_seed`` and left out of training; otherwise it reads its own files.
    """

    def __init__(
        self,
        image_size: int = 321,
        batch_size: int = 32,
        num_workers: int = 2,
        augment: Augment | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        strict: bool = True,
        val_holdout: int = 0,
        val_holdout_seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(val_holdout, int) or isinstance(val_holdout, bool) or val_holdout < 0:
            raise UserError(
                f"data.val_holdout must be a number of images >= 0, got {val_holdout!r}"
            )
        check_augment(augment)
        self.val_holdout = val_holdout
        self.val_holdout_seed = val_holdout_seed
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

    def _dataset(self, files: str, train: bool, transform: DetectionTransform) -> Dataset:
        """The dataset read from the files of a role (``files``: "train", "val" or "test"),
        items passed through ``transform``; ``train`` for training targets."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        # Fitting also builds the test set (reused by the test), to check that neither training
        # nor validation sees a test image.
        needed = {
            "fit": ROLES,
            "validate": ("val",),
            "test": ("test",),
            "predict": ("test",),
            None: ROLES,
        }[stage]
        for role in needed:
            if role not in self.datasets:
                transform = build_transforms(
                    self.image_size, role == "train", self.mean, self.std, self.augment
                )
                dataset = self.datasets[role] = self._role_dataset(role, transform)
                if dataset.skips:
                    log.warning("%s data: %s", role, dict(sorted(dataset.skips.items())))
        if "test" in self.datasets:
            self._check_test_images_unseen()

    def _role_dataset(self, role: str, transform: DetectionTransform) -> Dataset:
        """The dataset of a role; with ``val_holdout``, train and val share the training files."""
        if role == "test" or not self.val_holdout:
            return self._dataset(role, role == "train", transform)
        base = self._dataset("train", role == "train", transform)
        if self.val_holdout >= len(base):
            raise UserError(
                f"data.val_holdout={self.val_holdout} leaves no training images: the training "
                f"data has {len(base)}"
            )
        return HeldOut(
            base, holdout_indices(len(base), self.val_holdout, self.val_holdout_seed)[role]
        )

    def _check_test_images_unseen(self) -> None:
        """Refuse training or validation images that are test images too."""
        test = set(image_files(self.datasets["test"]))
        for role in ("train", "val"):
            if role not in self.datasets:
                continue
            shared = [f for f in image_files(self.datasets[role]) if f in test]
            if shared:
                raise UserError(
                    f"{len(shared)} of the {role} images are test images too (e.g. {shared[0]}): "
                    "a test figure must come from images that neither training nor model "
                    "selection has seen. Give the roles disjoint data (data.val_holdout, the "
                    "val/test splits or files)."
                )

    def _loader(self, role: str) -> DataLoader:
        train = role == "train"
        # One OpenCV thread: loader workers run beside the training process, and an OpenCV pool in
        # each would fight it for the cores. Set here, before the workers fork: a forked worker
        # that resizes an inherited pool can deadlock. (PyTorch gives each worker one thread.)
        cv2.setNumThreads(1)
        dataset = self.datasets[role]
        # The training order and the workers' random streams come from the run's seed alone
        # (torch.initial_seed(), which seed_everything sets), not from the global random stream,
        # which building each network consumes differently: two networks trained with one seed
        # see the same batches with the same augmentations (Table 4's rows are paired by seed).
        generator = torch.Generator().manual_seed(torch.initial_seed()) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            generator=generator,
            sampler=None if train else self._evaluation_shard(dataset),
            drop_last=train,
            num_workers=self.num_workers,
            collate_fn=collate_detection,
            worker_init_fn=seed_worker,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _evaluation_shard(self, dataset: Dataset) -> EvaluationShard | None:
        """This process's :class:`EvaluationShard` of ``dataset`` when the trainer runs several
        processes (Lightning's own sampler settings), else None: the whole dataset in order."""
        trainer = self.trainer
        settings = trainer.distributed_sampler_kwargs if trainer is not None else None
        if not settings or settings["num_replicas"] < 2:
            return None
        return EvaluationShard(dataset, settings["num_replicas"], settings["rank"])

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
    (VOC07+12: train_sets = VOC2007/trainval + VOC2012/trainval). Validation reads its own split
    or sets, or with ``val_holdout`` > 0 that many training images (left out of training; the
    val split is then not read). Labels are 1..C in the order of ``class_names`` (0 is
    background). Evaluation adds the VOC devkit's mAP, 11-point with ``use_07_metric`` (VOC2007
    test) or all-point (VOC2012). The other options (input size, batch size, workers,
    augmentation, strictness, validation hold-out) are :class:`DetectionDataModule`'s.
    """

    def __init__(
        self,
        root: str,
        class_names: Sequence[str],
        train_split: str = "trainval",
        val_split: str = "val",
        test_split: str = "test",
        train_sets: Sequence[Mapping[str, str]] | None = None,
        val_sets: Sequence[Mapping[str, str]] | None = None,
        test_sets: Sequence[Mapping[str, str]] | None = None,
        use_07_metric: bool = True,
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if self.val_holdout and val_sets is not None:
            raise UserError(
                "validation data: give either data.val_holdout (a number of training images to "
                "validate on) or data.val_sets (files of its own), not both"
            )
        self.root = root
        self._class_names = tuple(class_names)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.sets = {"train": train_sets, "val": val_sets, "test": test_sets}
        self.use_07_metric = use_07_metric

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    def _dataset(self, files: str, train: bool, transform: DetectionTransform) -> Dataset:
        sets = self.sets[files]
        if sets is None:
            return VOCDataset(
                self.root, self.splits[files], self.class_names, transform, strict=self.strict
            )
        parts = []
        for entry in sets:
            root = Path(self.root) / entry["root"]
            if not root.is_dir():
                raise DatasetNotFoundError(
                    f"VOC root {root} ({files} set) does not exist: {VOCDEVKIT_LAYOUT}"
                )
            parts.append(
                VOCDataset(root, entry["split"], self.class_names, transform, strict=self.strict)
            )
        return ConcatDetection(parts, transform)


class ShapesDataModule(VOCDataModule):
    """The VOC loaders over the embedded shapes dataset at ``root``, which ``prepare_data`` builds
    there on first use (:func:`dssd.data.shapes.ensure_shapes`); ``variant`` is ``plain`` or
    ``context`` (small rings whose class only the large shape around them tells)."""

    def __init__(
        self, root: str, class_names: Sequence[str], *, variant: str = "plain", **options: Any
    ) -> None:
        super().__init__(root, class_names, **options)
        self.variant = variant

    def prepare_data(self) -> None:
        shapes.ensure_shapes(self.root, self.variant)


class COCODataModule(DetectionDataModule):
    """Train / val / test / predict loaders over COCO instances files under ``root``.

    Test reads ``test_annotations`` / ``test_images`` (val2017 by default). Validation holds out
    ``val_holdout`` images of the training file (5,000 by default), or, with ``val_holdout=0``,
    reads ``val_annotations`` / ``val_images`` (e.g. the paper's minival beside trainval35k as
    ``train_annotations``). With ``class_names`` configured, every annotation file must have
    exactly those categories (in category-id order); without, they are read from the test
    annotation file. Crowd boxes are left out of training and flagged ``difficult`` in evaluation.
    The other options (input size, batch size, workers, augmentation, strictness, validation
    hold-out) are :class:`DetectionDataModule`'s.
    """

    def __init__(
        self,
        root: str,
        class_names: Sequence[str] | None = None,
        train_annotations: str = "annotations/instances_train2017.json",
        train_images: str = "train2017",
        val_annotations: str | None = None,
        val_images: str | None = None,
        test_annotations: str = "annotations/instances_val2017.json",
        test_images: str = "val2017",
        **loader_options: Any,
    ) -> None:
        super().__init__(**loader_options)
        if (val_annotations is not None) == bool(self.val_holdout):
            raise UserError(
                "validation data: give either data.val_holdout (a number of training images to "
                "validate on) or data.val_annotations and data.val_images, not "
                f"{'both' if val_annotations is not None else 'neither'}"
            )
        if val_annotations is not None and val_images is None:
            raise UserError(f"data.val_annotations={val_annotations} needs data.val_images too")
        self.root = root
        self._class_names = None if class_names is None else tuple(class_names)
        self.files = {
            "train": (train_annotations, train_images),
            "val": (val_annotations, val_images),
            "test": (test_annotations, test_images),
        }

    @property
    def class_names(self) -> tuple[str, ...]:
        """The configured class names, or else those of the test annotation file."""
        if self._class_names is None:
            self._class_names = category_names(load_coco(Path(self.root) / self.files["test"][0]))
        return self._class_names

    @property
    def label_to_category_id(self) -> dict[int, int]:
        """Label -> COCO category id, for ``detections_to_coco_results`` (after ``setup``)."""
        dataset = next(iter(self.datasets.values()))
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        return dataset.label_to_category_id

    def _dataset(self, files: str, train: bool, transform: DetectionTransform) -> Dataset:
        annotations, images = self.files[files]
        return COCODataset(
            self.root,
            annotations,
            images,
            transform,
            train=train,
            class_names=self.class_names,
            strict=self.strict,
        )
