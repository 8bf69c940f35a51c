"""Albumentations pipelines that turn a VOC sample into a network input and a normalised target:
[augment] -> Resize(S, S) -> HorizontalFlip(0.5) -> Normalize -> ToTensorV2 (no augment or flip in
evaluation)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor

from dssd.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AlbumentationsTransform = A.BasicTransform | A.BaseCompose
Augment = AlbumentationsTransform | Sequence[AlbumentationsTransform]


class DetectionTransform:
    """An albumentations pipeline over (HxWx3 uint8 RGB image, target with pixel xyxy "boxes"):
    gives a float tensor [3, S, S] and the target with "boxes" in [0, 1] and "orig_size" (H, W).
    Boxes that vanish are dropped with their label, difficult flag and "area" (the annotation's
    own, in original-image pixels, for the COCO metric's sizes; 0 where none is given).
    """

    def __init__(self, transforms: Sequence[AlbumentationsTransform]) -> None:
        self.pipeline = A.Compose(
            list(transforms),
            bbox_params=A.BboxParams(
                format="pascal_voc",
                label_fields=["labels", "difficult", "area"],
                clip=True,
                filter_invalid_bboxes=True,
            ),
            # from torch, so that pl.seed_everything makes augmentation reproducible
            seed=torch.initial_seed() % 2**32,
        )

    def __call__(self, image: np.ndarray, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        boxes = np.asarray(target["boxes"], np.float32).reshape(-1, 4)
        out = self.pipeline(
            image=image,
            bboxes=boxes,
            labels=np.asarray(target["labels"], np.int64),
            difficult=np.asarray(target["difficult"], bool),
            area=np.asarray(target.get("area", np.zeros(len(boxes))), np.float32),
        )
        tensor = out["image"]
        out_h, out_w = tensor.shape[-2:]
        boxes = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        boxes /= torch.tensor([out_w, out_h, out_w, out_h], dtype=torch.float32)
        return tensor, {
            "boxes": boxes,
            "labels": torch.as_tensor(np.asarray(out["labels"], np.int64)),
            "difficult": torch.as_tensor(np.asarray(out["difficult"], bool)),
            "area": torch.as_tensor(np.asarray(out["area"], np.float32)),
            "image_id": target["image_id"],
            "orig_size": torch.tensor(image.shape[:2], dtype=torch.int64),
            "skipped_images": target.get("skipped_images", ()),
        }


def check_augment(augment: object) -> None:
    """Refuse a ``data.augment`` that is not a transform or sequence of them (e.g. ``ssd``)."""
    items = augment if isinstance(augment, Sequence) and not isinstance(augment, str) else [augment]
    if augment is None or all(isinstance(a, AlbumentationsTransform) for a in items):
        return
    raise UserError(
        f"data.augment must be a transform config (or a list of them), or null; got {augment!r}. "
        "To switch SSD's augmentation on, give its config: "
        "'data.augment={_target_:dssd.data.augment.ssd_augmentation}'"
    )


def build_transforms(
    size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    augment: Augment | None = None,
) -> DetectionTransform:
    """The training or evaluation pipeline for ``size`` x ``size`` inputs."""
    head: list[AlbumentationsTransform] = []
    if train and augment is not None:
        head = [augment] if isinstance(augment, AlbumentationsTransform) else list(augment)
    resize = [A.Resize(size, size)] + ([A.HorizontalFlip(p=0.5)] if train else [])
    tail = [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return DetectionTransform(head + resize + tail)


def rank_seed() -> int:
    """A seed from this process's (or DataLoader worker's) torch seed and its DDP rank."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    return int(np.random.SeedSequence([torch.initial_seed() % 2**32, rank]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed numpy, ``random`` and the transform from the worker's
    torch seed and the DDP rank, so that workers and GPUs draw different augmentations."""
    seed = rank_seed()
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if isinstance(transform, DetectionTransform):
        transform.pipeline.set_random_seed(seed)  # albumentations ignores the global seeds
