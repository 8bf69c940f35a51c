"""SSD training augmentation as albumentations transforms (photometric distortion, zoom-out, crop).

They draw from ``py_random``, which ``A.Compose(seed=...)`` and ``Compose.set_random_seed`` seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torchvision.ops import box_iou

from dssd.data.transforms import IMAGENET_MEAN

# Caffe SSD's VOC crop samplers: the whole image, or a patch's minimum IoU with some box
SSD_MIN_IOUS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0)


class PhotometricDistort(A.ImageOnlyTransform):
    """SSD's photometric distortion of a uint8 RGB image, each step with probability ``op_p``:
    brightness delta, then contrast factor before or after (random order) saturation factor and hue
    shift (degrees). Not ColorJitter's formulas; clipped to [0, 255] after each step, as in Caffe.
    """

    def __init__(
        self,
        brightness: float = 32.0,
        contrast: float = 0.5,
        saturation: float = 0.5,
        hue: float = 18.0,
        op_p: float = 0.5,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation
        self.hue = hue
        self.op_p = op_p

    def get_params(self) -> dict[str, Any]:
        rnd = self.py_random

        def draw(low: float, high: float, identity: float) -> float:
            return rnd.uniform(low, high) if rnd.random() < self.op_p else identity

        return {
            "brightness_delta": draw(-self.brightness, self.brightness, 0.0),
            "contrast_factor": draw(1 - self.contrast, 1 + self.contrast, 1.0),
            "saturation_factor": draw(1 - self.saturation, 1 + self.saturation, 1.0),
            "hue_shift": draw(-self.hue, self.hue, 0.0),
            "contrast_first": rnd.random() < 0.5,
        }

    def apply(
        self,
        img: np.ndarray,
        brightness_delta: float,
        contrast_factor: float,
        saturation_factor: float,
        hue_shift: float,
        contrast_first: bool,
        **params: Any,
    ) -> np.ndarray:
        out = np.clip(img.astype(np.float32) + brightness_delta, 0, 255)
        if contrast_first:
            out = np.clip(out * contrast_factor, 0, 255)
        if saturation_factor != 1.0 or hue_shift != 0.0:
            hsv = cv2.cvtColor(out / 255.0, cv2.COLOR_RGB2HSV)  # float input: H in [0, 360) degrees
            hsv[..., 0] = (hsv[..., 0] + hue_shift) % 360.0
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation_factor, 0, 1)
            out = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0, 0, 255)
        if not contrast_first:
            out = np.clip(out * contrast_factor, 0, 255)
        return np.round(out).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness", "contrast", "saturation", "hue", "op_p")


class Expand(A.DualTransform):
    """SSD's zoom-out: the image at a random place on a canvas up to ``max_ratio`` times larger,
    filled with ``fill`` (the mean RGB colour, 0-255: zero after normalisation)."""

    def __init__(
        self,
        max_ratio: float = 4.0,
        fill: Sequence[float] = tuple(255 * m for m in IMAGENET_MEAN),
        p: float = 0.5,
    ) -> None:
        super().__init__(p=p)
        if max_ratio < 1:
            raise ValueError(f"max_ratio must be >= 1, got {max_ratio}")
        self.max_ratio = max_ratio
        self.fill = tuple(float(v) for v in fill)

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(1.0, self.max_ratio)
        canvas_h, canvas_w = int(height * ratio), int(width * ratio)
        return {
            "canvas_shape": (canvas_h, canvas_w),
            "top": int(self.py_random.uniform(0, canvas_h - height)),
            "left": int(self.py_random.uniform(0, canvas_w - width)),
        }

    def apply(
        self,
        img: np.ndarray,
        canvas_shape: tuple[int, int],
        top: int,
        left: int,
        **params: Any,
    ) -> np.ndarray:
        fill = np.asarray(self.fill, np.float32)
        if np.issubdtype(img.dtype, np.integer):
            fill = np.round(fill)
        canvas = np.full((*canvas_shape, *img.shape[2:]), fill.astype(img.dtype), img.dtype)
        canvas[top : top + img.shape[0], left : left + img.shape[1]] = img
        return canvas

    def apply_to_bboxes(
        self,
        bboxes: np.ndarray,
        canvas_shape: tuple[int, int],
        top: int,
        left: int,
        shape: tuple[int, ...],
        **params: Any,
    ) -> np.ndarray:
        height, width = shape[:2]
        canvas_h, canvas_w = canvas_shape
        out = bboxes.copy()
        out[:, [0, 2]] = (bboxes[:, [0, 2]] * width + left) / canvas_w
        out[:, [1, 3]] = (bboxes[:, [1, 3]] * height + top) / canvas_h
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_ratio", "fill")


def centres_inside(patch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Which xyxy boxes [N, 4] have their centre strictly inside the xyxy ``patch``."""
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    return np.all((centres > patch[:2]) & (centres < patch[2:]), axis=1)


class MinIoURandomCrop(A.DualTransform):
    """SSD's crop sampler: a random patch holding a box centre whose IoU with some box (the max, as
    Caffe SSD; ssd.pytorch uses the min) is at least a random ``min_ious`` entry. ``selection``
    "mode" picks one sampler, "pooled" (the released Caffe code) one among those that succeed.
    Boxes centred in the patch are clipped to it, the others dropped.
    """

    def __init__(
        self,
        min_ious: Sequence[float | None] = SSD_MIN_IOUS,
        min_scale: float = 0.3,
        aspect_range: tuple[float, float] = (0.5, 2.0),
        max_tries: int = 50,
        selection: str = "mode",
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        if not min_ious:
            raise ValueError("min_ious must not be empty")
        if selection not in ("mode", "pooled"):
            raise ValueError(f"selection must be 'mode' or 'pooled', got {selection!r}")
        self.min_ious = tuple(min_ious)
        self.min_scale = min_scale
        self.aspect_range = tuple(aspect_range)
        self.max_tries = max_tries
        self.selection = selection

    def get_params_dependent_on_data(
        self, params: dict[str, Any], data: dict[str, Any]
    ) -> dict[str, Any]:
        height, width = params["shape"][:2]
        bboxes = np.asarray(data.get("bboxes", np.zeros((0, 4))), np.float64)
        boxes = bboxes[:, :4] * [width, height, width, height]
        if self.selection == "mode":
            min_iou = self.py_random.choice(self.min_ious)
            return {"patch": self._sample(min_iou, boxes, width, height), "min_iou": min_iou}
        found = [(self._sample(m, boxes, width, height), m) for m in self.min_ious]
        found = [(patch, m) for patch, m in found if patch is not None or m is None]
        patch, min_iou = self.py_random.choice(found) if found else (None, None)
        return {"patch": patch, "min_iou": min_iou}

    def _sample(
        self, min_iou: float | None, boxes: np.ndarray, width: int, height: int
    ) -> tuple[int, int, int, int] | None:
        """A patch meeting ``min_iou``, or None (the whole image)."""
        if min_iou is None or len(boxes) == 0:
            return None
        rnd = self.py_random
        for _ in range(self.max_tries):
            w = int(rnd.uniform(self.min_scale * width, width))
            h = int(rnd.uniform(self.min_scale * height, height))
            if w < 1 or h < 1 or not self.aspect_range[0] <= h / w <= self.aspect_range[1]:
                continue
            left = int(rnd.uniform(0, width - w))
            top = int(rnd.uniform(0, height - h))
            patch = np.array([left, top, left + w, top + h], np.float64)
            iou = box_iou(torch.from_numpy(patch[None]), torch.from_numpy(boxes))
            if iou.max() >= min_iou and centres_inside(patch, boxes).any():
                return (left, top, left + w, top + h)
        return None

    def apply(self, img: np.ndarray, patch: tuple[int, int, int, int] | None, **params: Any):
        if patch is None:
            return img
        x0, y0, x1, y1 = patch
        return img[y0:y1, x0:x1]

    def apply_to_bboxes(
        self,
        bboxes: np.ndarray,
        patch: tuple[int, int, int, int] | None,
        shape: tuple[int, ...],
        **params: Any,
    ) -> np.ndarray:
        if patch is None:
            return bboxes
        height, width = shape[:2]
        boxes = bboxes[:, :4] * np.array([width, height, width, height], np.float64)
        keep = centres_inside(np.asarray(patch, np.float64), boxes)
        low, high = np.tile(patch[:2], 2), np.tile(patch[2:], 2)
        out = bboxes[keep].copy()
        out[:, :4] = (np.clip(boxes[keep], low, high) - low) / (high - low)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "min_scale", "aspect_range", "max_tries", "selection")


def ssd_augmentation(
    mean: Sequence[float] = IMAGENET_MEAN,
    max_expand_ratio: float = 4.0,
    expand_p: float = 0.5,
    photometric: bool = True,
    hue: float = 18.0,
    crop_selection: str = "mode",
) -> list[A.BasicTransform]:
    """The SSD augmentation for ``build_transforms(augment=...)``: distort, zoom out, crop.
    ``hue`` is in degrees (the released Caffe code's 18 are OpenCV units of 2 degrees: 36)."""
    head: list[A.BasicTransform] = [PhotometricDistort(hue=hue)] if photometric else []
    fill = tuple(255.0 * m for m in mean)
    crop = MinIoURandomCrop(selection=crop_selection)
    return [*head, Expand(max_ratio=max_expand_ratio, fill=fill, p=expand_p), crop]
