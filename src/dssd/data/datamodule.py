"""LightningDataModules over VOC-layout datasets (PASCAL VOC, VOC07+12, the embedded shapes) and
COCO; model selection never sees a test image."""

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
    rank_seed,
    seed_worker,
)
from dssd.data.voc import DetectionImages, VOCDataset, check_header, describe_skips, repaired
from dssd.errors import DatasetNotFoundError, UserError

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")
VOCDEVKIT_LAYOUT = (
    "set data.root=/path/to/VOCdevkit, the folder holding VOC2007 (and VOC2012 for 07+12), each"
    " with Annotations/, ImageSets/Main/ and JPEGImages/"
)


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[Tensor, list[dict]]:
    """Stack the images into [B, 3, S, S]; targets stay a list since box counts differ."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


class ConcatDetection(ConcatDataset):
    """Concatenated datasets sharing one ``transform`` (which ``seed_worker`` reseeds)."""

    def __init__(self, datasets: Sequence[Dataset], transform: DetectionTransform) -> None:
        super().__init__(datasets)
        self.transform = transform

    def role_view(self, transform: DetectionTransform, train: bool) -> ConcatDetection:
        """:meth:`DetectionImages.role_view` of each part."""
        return ConcatDetection([d.role_view(transform, train) for d in self.datasets], transform)

    @property
    def skips(self) -> Counter[str]:
        return sum((d.skips for d in self.datasets), Counter())

    @property
    def first_skips(self) -> dict[str, str]:
        return {k: v for d in reversed(self.datasets) for k, v in d.first_skips.items()}


class HeldOut(Subset):
    """The train or val part of a ``val_holdout`` split, with its dataset's ``transform``."""

    @property
    def transform(self) -> DetectionTransform:
        return self.dataset.transform

    @property
    def skips(self) -> Counter[str]:
        return self.dataset.skips

    @property
    def first_skips(self) -> dict[str, str]:
        return self.dataset.first_skips


def _with_usable_headers(files: Dataset, indices: list[int]) -> list[int]:
    """``indices`` of the training ``files`` less the images whose header does not match their
    annotation (:func:`check_header`), which a validation would stop at: an error when
    ``strict``, else left out and counted as ``unreadable_images``, as training passes them over."""
    items = dataset_items(files)
    kept = []
    for index in indices:
        reader, i = items[index]
        try:
            check_header(reader.image_paths[i], reader.annotations[i])
        except OSError as err:
            if reader.strict:
                raise reader.unusable(err) from None
            with reader.noting_skips(reader.image_paths[i]):
                reader.skips["unreadable_images"] += 1
            log.warning("leaving an image out of the held-out validation images: %s", err)
            continue
        kept.append(index)
    return kept


def holdout_indices(size: int, count: int, seed: int) -> dict[str, list[int]]:
    """``range(size)`` as "val" (``count`` indices drawn with ``seed``) and "train", both sorted."""
    val = np.isin(np.arange(size), np.random.default_rng(seed).permutation(size)[:count])
    return {"val": np.flatnonzero(val).tolist(), "train": np.flatnonzero(~val).tolist()}


def dataset_items(dataset: Dataset) -> list[tuple[DetectionImages, int]]:
    """Each item of a detection dataset as its reader and index there, without decoding it."""
    if isinstance(dataset, DetectionImages):
        return [(dataset, i) for i in range(len(dataset))]
    if isinstance(dataset, ConcatDataset):
        return [item for part in dataset.datasets for item in dataset_items(part)]
    if isinstance(dataset, Subset):
        items = dataset_items(dataset.dataset)
        return [items[i] for i in dataset.indices]
    raise TypeError(f"cannot list the items of a {type(dataset).__name__}")


def image_files(dataset: Dataset) -> list[str]:
    """The image paths of a detection dataset, in item order, links resolved (a root given once
    through a link and once not names the same files)."""
    return [os.path.realpath(reader.image_paths[i]) for reader, i in dataset_items(dataset)]


def _describe(role: str, dataset: Dataset) -> str:
    """How many images a role holds and what was skipped or repaired in its files, e.g. "500 of
    the 3999 training images, held out (the 3999: 80 empty_images)"."""
    counts = describe_skips(dataset.skips, dataset.first_skips)
    if not getattr(dataset, "labelled", True):
        return f"{len(dataset)} images of an image-info file, without annotations to score"
    if not isinstance(dataset, HeldOut):
        return f"{len(dataset)} images" + (f" ({counts})" if counts else "")
    total = len(dataset.dataset)
    part = "held out" if role == "val" else "the rest"
    return f"{len(dataset)} of the {total} training images, {part}" + (
        f" (the {total}: {counts})" if counts else ""
    )


def check_shardable(size: int, processes: int, role: str = "evaluation") -> None:
    """Refuse evaluation data too small for one image per process."""
    if size < processes:
        raise UserError(
            f"{size} {role} images for {processes} processes: each process needs one; "
            "evaluate on fewer devices (src/eval.py tests on one)"
        )


class EvaluationShard(DistributedSampler):
    """One process's contiguous block of an evaluation dataset under DDP: unlike Lightning's sampler
    it repeats no image, and the blocks gather back in dataset order (the same metrics and result
    files as one process). Unequal batch counts are safe in evaluation."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        size = len(dataset)
        check_shardable(size, num_replicas)
        self.start, self.end = rank * size // num_replicas, (rank + 1) * size // num_replicas
        self.num_samples = self.end - self.start
        self.total_size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))


class DetectionDataModule(pl.LightningDataModule):
    """Loaders shared by the VOC and COCO DataModules, which give ``class_names`` and ``_dataset``;
    ``val_holdout`` > 0 validates on that many training images (left out of training) instead of
    the val files."""

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
        for name, value, least in (
            ("image_size", image_size, 1),
            ("batch_size", batch_size, 1),
            ("num_workers", num_workers, 0),
            ("val_holdout", val_holdout, 0),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise UserError(f"data.{name} must be a whole number >= {least}, got {value!r}")
        for name, value in (
            ("pin_memory", pin_memory),
            ("persistent_workers", persistent_workers),
            ("strict", strict),
        ):
            if not isinstance(value, bool):  # strict=no would read as true
                raise UserError(f"data.{name} must be true or false, got {value!r}")
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
        # the roles setup("fit") builds: the test set too, to check that no test image is trained
        # or validated on; a fit that will not test (train.py test=false) leaves it out
        self.fit_roles: tuple[str, ...] = ROLES
        self._training_files: Dataset | None = None  # parsed once for train and val_holdout
        # The devkit AP: 11-point (VOC2007 test), all-point (VOC2010+) or None (COCO metrics only)
        self.use_07_metric: bool | None = None

    @property
    def num_classes(self) -> int:
        """Number of object classes, background excluded."""
        return len(self.class_names)

    def _dataset(self, files: str, train: bool, transform: DetectionTransform) -> Dataset:
        """The dataset of the files of a role; ``train`` for training targets (and the skipping
        of undecodable images, which an evaluation set refuses)."""
        raise NotImplementedError

    def unlabelled_test_file(self) -> str | None:
        """The test annotation file when it holds no annotations to score against (COCO's
        test-dev image info), else None."""
        return None

    def listing_files(self, files: str) -> list[Path]:
        """The files that list the images of the ``files`` role ("train", "val", "test": split
        or annotation files), resolved, which tell two configs' roles apart unread."""
        raise NotImplementedError

    def listed_images(self, files: str) -> set[str] | None:
        """The image paths (links resolved) the ``files`` role's listing files name, read without
        the annotations; None where the listing is the annotation file itself (COCO)."""
        return None

    def setup(self, stage: str | None = None) -> None:
        needed = {"validate": ("val",), "test": ("test",), "predict": ("test",)}.get(
            stage, self.fit_roles
        )
        added = [r for r in needed if r not in self.datasets]  # Lightning calls setup again
        for role in added:
            transform = build_transforms(
                self.image_size, role == "train", self.mean, self.std, self.augment
            )
            dataset = self.datasets[role] = self._role_dataset(role, transform)
            if len(dataset) == 0:
                raise self._no_images(role, dataset)
            level = logging.WARNING if repaired(dataset.skips) else logging.INFO
            log.log(level, "%s data: %s", role, _describe(role, dataset))
        if added:
            self._check_roles_disjoint()
        # where srun or torchrun started the processes, this setup (before the fit loop) is the
        # first that knows their number: said here, not at the first validation after training
        self.check_evaluation_sizes(self.trainer.world_size if self.trainer is not None else 1)

    def _no_images(self, role: str, dataset: Dataset) -> UserError:
        """The error of a role without images, naming the files that list them."""
        files = "train" if role == "val" and self.val_holdout else role
        listed = ", ".join(str(p) for p in self.listing_files(files))
        return UserError(
            f"the {role} data holds no images: {_describe(role, dataset)} (listed in {listed})"
        )

    def check_evaluation_sizes(self, processes: int) -> None:
        """Refuse validation or test data with fewer images than ``processes``."""
        for role, dataset in self.datasets.items():
            if role != "train":
                check_shardable(len(dataset), processes, role)

    def _role_dataset(self, role: str, transform: DetectionTransform) -> Dataset:
        """The dataset of a role; with ``val_holdout``, train and val are parts of the training
        files, parsed once (by the training files' rules: not ``strict``, the held-out images
        have their bad objects passed over too, and those whose header does not match their
        annotation are left out when the split is made, not met at the first validation)."""
        if role == "test" or not self.val_holdout:
            return self._dataset(role, role == "train", transform)
        if self._training_files is None:
            self._training_files = self._dataset("train", True, transform)
        base = self._training_files.role_view(transform, role == "train")
        if not len(base):
            raise self._no_images("train", base)
        if self.val_holdout >= len(base):
            raise UserError(
                f"data.val_holdout={self.val_holdout} leaves no training images: the training "
                f"data has {len(base)}"
            )
        indices = holdout_indices(len(base), self.val_holdout, self.val_holdout_seed)[role]
        if role == "val":
            indices = _with_usable_headers(self._training_files, indices)
        return HeldOut(base, indices)

    def _check_roles_disjoint(self) -> None:
        """Refuse training or validation images that are test images too, and validation images
        that are training images too (VOC's val.txt is part of its trainval.txt)."""
        why = {
            "test": "a test figure must come from images that neither training nor model "
            "selection has seen",
            "train": "best.ckpt would be chosen on images the network was trained on (VOC's "
            "val.txt is a part of trainval.txt: train on data.train_split=train beside it)",
        }
        files = {role: image_files(dataset) for role, dataset in self.datasets.items()}
        for role, other in (("train", "test"), ("val", "test"), ("val", "train")):
            if role not in files or other not in files:
                continue
            seen = set(files[other])
            shared = [f for f in files[role] if f in seen]
            if shared:
                raise UserError(
                    f"{len(shared)} of the {role} images are {other} images too (e.g. "
                    f"{shared[0]}): {why[other]}. Give the roles disjoint data "
                    "(data.val_holdout, the val/test splits or files)."
                )

    def _loader(self, role: str) -> DataLoader:
        train = role == "train"
        # One OpenCV thread, set before workers fork: pools would fight training for the cores,
        # and a forked worker resizing an inherited pool can deadlock.
        cv2.setNumThreads(1)
        dataset = self.datasets[role]
        if train and len(dataset) < self.batch_size:
            raise UserError(
                f"data.batch_size={self.batch_size}, but the training data holds {len(dataset)} "
                "images: every batch would be incomplete, and incomplete training batches are "
                "dropped"
            )
        # Training order and worker streams come from the run's seed alone, not the global stream
        # that building each network consumes differently: Table 4's rows are paired by seed.
        generator = torch.Generator().manual_seed(torch.initial_seed()) if train else None
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if train and self.num_workers == 0 and world_size > 1:
            # this process draws the augmentations, from the seed every rank's transform got:
            # one stream per rank, as workers get from seed_worker
            dataset.transform.pipeline.set_random_seed(rank_seed())
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
        """This process's :class:`EvaluationShard` of ``dataset`` under DDP, else None."""
        settings = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
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
    """Loaders over VOC-layout splits: each role reads its ``<role>_split`` of ``root`` or, given
    ``<role>_sets``, several ``{root, split}`` sets (e.g. VOC2007 + VOC2012 trainval)."""

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
        self.class_names = tuple(class_names)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.sets = {"train": train_sets, "val": val_sets, "test": test_sets}
        for role, sets in self.sets.items():
            for k, entry in enumerate(sets or []):
                if not isinstance(entry, Mapping) or not {"root", "split"} <= set(entry):
                    raise UserError(
                        f"data.{role}_sets.{k}={entry}: give each set as {{root: <a VOC folder, "
                        "e.g. VOC2007, under data.root>, split: <its split, e.g. trainval>}"
                    )
        self.use_07_metric = use_07_metric

    def listing_files(self, files: str) -> list[Path]:
        if files == "val" and self.val_holdout:  # a part of the training files
            return []
        sets = self.sets[files] or [{"root": ".", "split": self.splits[files]}]
        return [
            (Path(self.root) / s["root"] / "ImageSets" / "Main" / f"{s['split']}.txt").resolve()
            for s in sets
        ]

    def listed_images(self, files: str) -> set[str]:
        images = set()
        for split_file in self.listing_files(files):
            text = split_file.read_text(encoding="utf-8-sig")
            folder = split_file.parents[2] / "JPEGImages"
            ids = {line.strip() for line in text.splitlines() if line.strip()}
            images |= {os.path.realpath(folder / f"{image_id}.jpg") for image_id in ids}
        return images

    def _dataset(self, files: str, train: bool, transform: DetectionTransform) -> Dataset:
        sets = self.sets[files]
        options = {"transform": transform, "strict": self.strict, "train": train}
        if sets is None:
            return VOCDataset(self.root, self.splits[files], self.class_names, **options)
        parts = []
        for entry in sets:
            root = Path(self.root) / entry["root"]
            if not root.is_dir():
                raise DatasetNotFoundError(
                    f"VOC root {root} ({files} set) does not exist: {VOCDEVKIT_LAYOUT}"
                )
            parts.append(VOCDataset(root, entry["split"], self.class_names, **options))
        _check_sets_disjoint(parts, files)
        return ConcatDetection(parts, transform)


def _check_sets_disjoint(parts: Sequence[VOCDataset], files: str) -> None:
    """Refuse two sets of one role that list one image (VOC2007 trainval and VOC2007 train): it
    would be read, trained on or scored twice."""
    first: dict[str, VOCDataset] = {}
    for part in parts:
        for image in image_files(part):
            other = first.setdefault(image, part)
            if other is not part:
                raise UserError(
                    f"data.{files}_sets: {other.root} ({other.split}) and {part.root} "
                    f"({part.split}) both list {image}, which would be read twice; give sets "
                    "that do not overlap"
                )


class ShapesDataModule(VOCDataModule):
    """The VOC loaders over the embedded shapes dataset, which ``prepare_data`` builds."""

    def __init__(
        self, root: str, class_names: Sequence[str], *, variant: str = "plain", **options: Any
    ) -> None:
        super().__init__(root, class_names, **options)
        self.variant = variant

    def prepare_data(self) -> None:
        if self.trainer is None or self.trainer.state.fn == "fit":  # a test builds nothing
            shapes.ensure_shapes(self.root, self.variant)

    def setup(self, stage: str | None = None) -> None:
        if Path(self.root).is_file():
            raise DatasetNotFoundError(f"{self.root} is a file, not the folder of a shapes dataset")
        if stage != "fit" and shapes.read_stamp(self.root) is None:  # only a fit builds it
            raise DatasetNotFoundError(
                f"no complete shapes dataset in {self.root}: a test reads the one the run was "
                "tested on, which is not built again here (it may have had other settings). "
                "Give its place (eval.py: +data.root=<dir>; analyze.py: data_root=<dir>), or "
                f"rebuild it with its settings: python -m dssd.data.shapes --out {self.root} ..."
            )
        super().setup(stage)


class COCODataModule(DetectionDataModule):
    """Loaders over COCO instances files under ``root``, whose categories must all be
    ``class_names`` (by default the test file's)."""

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
        """Label -> the test file's COCO category id, for ``detections_to_coco_results`` (after
        ``setup("test")``; each file may number the same categories its own way)."""
        return self.datasets["test"].label_to_category_id

    def unlabelled_test_file(self) -> str | None:
        if "test" in self.datasets:
            labelled = self.datasets["test"].labelled
        else:
            labelled = "annotations" in load_coco(Path(self.root) / self.files["test"][0]).dataset
        return None if labelled else str(Path(self.root) / self.files["test"][0])

    def listing_files(self, files: str) -> list[Path]:
        annotations = self.files[files][0]
        return [] if annotations is None else [(Path(self.root) / annotations).resolve()]

    def _dataset(self, files: str, train: bool, transform: DetectionTransform) -> Dataset:
        dataset = COCODataset(
            self.root, *self.files[files], transform, train, self.class_names, self.strict
        )
        if files != "test" and not dataset.labelled:
            raise UserError(
                f"{dataset.annotation_file}: an image-info file without annotations (such as "
                f"test-dev's) cannot be the {files} files; only the test files may be, to write "
                "their detections for the evaluation server (coco_results=...)"
            )
        return dataset
