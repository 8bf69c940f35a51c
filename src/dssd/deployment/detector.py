"""A trained checkpoint as a detector for any image: files, PIL images or RGB arrays in, boxes in
original-image pixels out, preprocessed by the evaluation pipeline so that the detections are
those ``src/eval.py`` scores."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor

from dssd.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms
from dssd.data.voc import read_image
from dssd.deployment.inference import load_checkpoint, restore_detector
from dssd.errors import UserError
from dssd.models import fold_batchnorm
from dssd.training.module import DetectionModule

ImageInput = str | Path | Image.Image | np.ndarray
T = TypeVar("T")

# the target the evaluation transform expects alongside an image: no boxes
_NO_BOXES = {"boxes": np.zeros((0, 4), np.float32), "labels": [], "difficult": [], "image_id": None}
# Lightning's precisions: float32, or autocast to a type (as Lightning runs an evaluation step)
PRECISIONS: dict[str, torch.dtype | None] = {
    "32-true": None,
    "32": None,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}


def batches(items: Sequence[T] | Iterator[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``size`` items (the last one shorter)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def rgb_array(image: ImageInput) -> np.ndarray:
    """``image`` as an HxWx3 uint8 RGB array: a path decoded as the datasets do (unreadable: a
    :class:`UserError`), a PIL image converted (16-bit grey scaled to 8 bits, as a decoded file
    is, where PIL's conversion would clip it white; 32-bit integer or float pixels, of no known
    range, are a ``ValueError``), or a uint8 HxW, HxWx1, HxWx3 or HxWx4 array (alpha dropped; any
    other array is a ``ValueError``)."""
    if isinstance(image, (str, Path)):
        try:
            return read_image(Path(image))
        except OSError as err:
            raise UserError(f"{image}: not a readable image ({err})") from None
    if isinstance(image, Image.Image):
        if image.mode in ("I", "F"):  # PIL would clip them to 0..255, often all black
            pixels = "32-bit integer" if image.mode == "I" else "float"
            raise ValueError(
                f"a PIL image in mode {image.mode} ({pixels} pixels) has no known range: convert "
                "it to 8-bit RGB first"
            )
        if image.mode.startswith("I;16"):  # 16-bit grey: to 8 bits as OpenCV does
            grey = (np.asarray(image, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=2)
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        kind = type(image).__name__
        raise TypeError(f"expected a path, a PIL image or a numpy array, got {kind}")
    if image.dtype != np.uint8:
        raise ValueError(f"an image array must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or 0 in image.shape:
        raise ValueError(
            f"an image array must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got {image.shape}"
        )
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


class Detector:
    """A :class:`DetectionModule` run on any images in batches of ``batch_size`` on ``device``,
    preprocessed as the evaluation pipeline does. ``precision`` (one of :data:`PRECISIONS`) is by
    default the run's ``trainer.precision``, which ``src/eval.py`` tests in too; ``"32-true"``
    gives float32 everywhere (bf16 autocast is slow on CPUs without native bf16)."""

    def __init__(
        self,
        module: DetectionModule,
        run_config: DictConfig,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        precision: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        default = OmegaConf.select(run_config, "trainer.precision", default="32-true")
        precision = str(default if precision is None else precision)
        if precision not in PRECISIONS:
            raise UserError(
                f"precision={precision}: the detector runs in one of {', '.join(PRECISIONS)}"
            )
        self.precision = precision
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.run_config = run_config
        self.batch_size = batch_size
        self.class_names: tuple[str, ...] = tuple(module.class_names)
        self.image_size = int(run_config.model.net.image_size)
        self.mean = tuple(run_config.data.get("mean") or IMAGENET_MEAN)
        self.std = tuple(run_config.data.get("std") or IMAGENET_STD)
        # the evaluation pipeline: Resize(S, S), Normalize, ToTensorV2
        self.transform = build_transforms(self.image_size, False, self.mean, self.std)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        fold_bn: bool = True,
        batch_size: int = 8,
        precision: str | None = None,
    ) -> Detector:
        """The detector of a ``src/train.py`` checkpoint, rebuilt from its stored run config;
        ``fold_bn`` folds the batch norms into the convolutions (same detections to rounding)."""
        checkpoint, run_config = load_checkpoint(path)
        module = restore_detector(checkpoint, run_config.model)
        if fold_bn:
            module.net = fold_batchnorm(module.net)
        return cls(module, run_config, device, batch_size, precision)

    def preprocess(self, images: Sequence[ImageInput]) -> tuple[Tensor, Tensor]:
        """The network's input batch ``[B, 3, S, S]`` (on the CPU) and the original sizes
        ``[B, 2]`` (height, width; int64) of ``images``."""
        pairs = [self.transform(rgb_array(image), _NO_BOXES) for image in images]
        sizes = [target["orig_size"] for _, target in pairs]
        return torch.stack([tensor for tensor, _ in pairs]), torch.stack(sizes)

    def predict(
        self, images: ImageInput | Sequence[ImageInput], score_threshold: float | None = None
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Detections of one image (a dict) or a list of images (a list of dicts), on the CPU, best
        score first: "boxes" (float32 ``[K, 4]`` xyxy, original-image pixels), "scores" ``[K]``,
        "labels" (int64 ``[K]``, ``1..C``) and "names"; ``score_threshold`` overrides the
        post-processing's own for this call."""
        single = not isinstance(images, (list, tuple))
        found = []
        postprocess = self._postprocess(score_threshold)
        with torch.inference_mode(), self.autocast():
            for batch in batches([images] if single else images, self.batch_size):
                inputs, orig_sizes = self.preprocess(batch)
                inputs, sizes = inputs.to(self.device), orig_sizes.to(self.device)
                for detections in self.module.predict(inputs, sizes, postprocess):
                    detections = {k: v.cpu() for k, v in detections.items()}
                    names = [self.class_names[i - 1] for i in detections["labels"].tolist()]
                    found.append({**detections, "names": names})
        return found[0] if single else found

    def autocast(self) -> AbstractContextManager:
        """The context the network and post-processing run in: autocast for a mixed precision."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)

    def _postprocess(self, threshold: float | None) -> torch.nn.Module:
        """The post-processing, or a copy with its score threshold ``threshold`` (unless None)."""
        postprocess = self.module.postprocess
        if threshold is None:
            return postprocess
        if not hasattr(postprocess, "score_threshold"):
            raise ValueError(f"{type(postprocess).__name__} has no score_threshold to replace")
        postprocess = copy.copy(postprocess)
        postprocess.score_threshold = float(threshold)
        return postprocess
