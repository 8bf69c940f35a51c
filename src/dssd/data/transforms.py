"""Albumentations pipelines that turn a VOC sample into a network input and a normalised target.

Training: [augment] -> Resize(S, S) -> HorizontalFlip(0.5) -> Normalize -> ToTensorV2.
Evaluation: Resize(S, S) -> Normalize -> ToTensorV2.

``augment`` is the slot for the SSD data augmentation (photometric distortion, zoom-out, IoU
crops): any albumentations transforms placed there run on the original-size RGB uint8 image with
pixel ``pascal_voc`` boxes, before the resize.
"""

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
    """Applies an albumentations pipeline to an (image, target) pair with boxes and their flags.

    Input: an HxWx3 uint8 RGB image and a target with "boxes" (float [N, 4] pixel xyxy),
    "labels" (int [N]), "difficult" (bool [N]) and "image_id". Output: a float tensor [3, S, S]
    and a target with "boxes" (float32 [N, 4] xyxy normalised to [0, 1]), "labels" (int64 [N]),
    "difficult" (bool [N]), "image_id" (unchanged) and "orig_size" (int64 [2], original
    height and width). Boxes are clipped to the image; boxes that vanish are dropped together with
    their label and difficult flag.
    """

    def __init__(self, transforms: Sequence[AlbumentationsTransform]) -> None:
        self.pipeline = A.Compose(
            list(transforms),
            bbox_params=A.BboxParams(
                format="pascal_voc",
                label_fields=["labels", "difficult"],
                clip=True,
                filter_invalid_bboxes=True,
            ),
            # Seeded from torch so that pl.seed_everything makes augmentation reproducible;
            # seed_worker reseeds it in each DataLoader worker.
            seed=torch.initial_seed() % 2**32,
        )

    def reseed(self, seed: int) -> None:
        """Reset the random state of the pipeline (albumentations ignores the global seeds)."""
        self.pipeline.set_random_seed(seed)

    def __call__(self, image: np.ndarray, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        height, width = image.shape[:2]
        out = self.pipeline(
            image=image,
            bboxes=np.asarray(target["boxes"], np.float32).reshape(-1, 4),
            labels=np.asarray(target["labels"], np.int64),
            difficult=np.asarray(target["difficult"], bool),
        )
        tensor = out["image"]
        out_h, out_w = tensor.shape[-2:]
        boxes = torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
        boxes /= torch.tensor([out_w, out_h, out_w, out_h], dtype=torch.float32)
        return tensor, {
            "boxes": boxes,
            "labels": torch.as_tensor(np.asarray(out["labels"], np.int64)),
            "difficult": torch.as_tensor(np.asarray(out["difficult"], bool)),
            "image_id": target["image_id"],
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "skipped_images": target.get("skipped_images", 0),
        }


def check_augment(augment: object) -> None:
    """Refuse a ``data.augment`` that is neither a transform nor a sequence of them, such as the
    string ``ssd`` that ``data.augment=ssd`` gives, before any image is read."""
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
    """The training or evaluation pipeline for square ``size`` x ``size`` inputs.

    ``augment`` (one transform or a sequence) is inserted before the resize in training only.
    """
    head: list[AlbumentationsTransform] = []
    if train and augment is not None:
        head = [augment] if isinstance(augment, AlbumentationsTransform) else list(augment)
    resize = [A.Resize(size, size)] + ([A.HorizontalFlip(p=0.5)] if train else [])
    tail = [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return DetectionTransform(head + resize + tail)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker its own random streams.

    Every worker starts with a copy of the same albumentations state, so without this all workers
    would produce the same augmentations. The worker's torch seed (distinct per worker and each
    time the workers start, and derived from the main seed) reseeds numpy, ``random`` and the
    dataset transform. Under DDP every process has the same main seed, so the process's rank is
    mixed in too: otherwise every GPU would draw the same augmentations.
    """
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0
    seed = int(np.random.SeedSequence([torch.initial_seed() % 2**32, rank]).generate_state(1)[0])
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if isinstance(transform, DetectionTransform):
        transform.reseed(seed)
