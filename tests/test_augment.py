"""SSD augmentation: photometric distortion, zoom-out, min-IoU crop, the full training pipeline."""

from __future__ import annotations

import random

import albumentations as A
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torchvision.ops import box_iou

from dssd.data.augment import (
    SSD_MIN_IOUS,
    Expand,
    MinIoURandomCrop,
    PhotometricDistort,
    ssd_augmentation,
)
from dssd.data.transforms import build_transforms


def compose(*transforms: A.BasicTransform, seed: int = 0) -> A.Compose:
    """The bbox handling of transforms.DetectionTransform around ``transforms``."""
    bbox_params = A.BboxParams(
        format="pascal_voc", label_fields=["labels", "difficult"], clip=True,
        filter_invalid_bboxes=True,
    )  # fmt: skip
    return A.Compose(list(transforms), bbox_params=bbox_params, seed=seed)


def random_sample(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random uint8 image and 1-6 random boxes of at least 2 pixels a side (float pixels)."""
    height, width = rng.integers(40, 160, size=2)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    n = rng.integers(1, 7)
    size = np.maximum(rng.uniform(0.05, 1.0, (n, 2)) * [width, height], 2)
    x0 = rng.uniform(0, width - size[:, 0])
    y0 = rng.uniform(0, height - size[:, 1])
    boxes = np.stack([x0, y0, x0 + size[:, 0], y0 + size[:, 1]], axis=1).astype(np.float32)
    return image, boxes


def run(pipeline: A.Compose, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> dict:
    difficult = labels % 2 == 0
    return pipeline(image=image, bboxes=boxes, labels=labels, difficult=difficult)


@pytest.mark.parametrize("selection", ["mode", "pooled"])
def test_min_iou_crop_contract_over_random_draws(selection: str) -> None:
    crop = MinIoURandomCrop(selection=selection)
    pipeline = compose(crop, seed=1)
    rng = np.random.default_rng(0)
    cropped_options, kept_whole = set(), 0
    for _ in range(300):
        image, boxes = random_sample(rng)
        labels = np.arange(len(boxes)) + 10  # unique: identifies each box
        out = run(pipeline, image, boxes, labels)
        params = crop.get_applied_params()
        assert params["min_iou"] in SSD_MIN_IOUS
        out_boxes = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
        assert out["labels"].tolist() == sorted(out["labels"].tolist())  # order preserved
        assert out["difficult"].tolist() == (out["labels"] % 2 == 0).tolist()
        if params["patch"] is None:
            # pooled: only the whole-image sampler keeps the image whole (a box always exists)
            assert selection == "mode" or params["min_iou"] is None
            kept_whole += 1
            np.testing.assert_array_equal(out["image"], image)
            np.testing.assert_allclose(out_boxes, boxes, atol=1e-3)
            assert out["labels"].tolist() == labels.tolist()
            continue
        x0, y0, x1, y1 = params["patch"]
        patch = np.array(params["patch"], np.float64)
        cropped_options.add(params["min_iou"])
        np.testing.assert_array_equal(out["image"], image[y0:y1, x0:x1])
        iou = box_iou(torch.from_numpy(patch[None]), torch.from_numpy(boxes.astype(np.float64)))
        assert iou.max() >= params["min_iou"]
        h, w = image.shape[:2]
        assert 0.3 * w - 1 <= x1 - x0 <= w and 0.3 * h - 1 <= y1 - y0 <= h
        assert 0.5 <= (y1 - y0) / (x1 - x0) <= 2
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = np.all((centres > patch[:2]) & (centres < patch[2:]), axis=1)
        assert inside.any()
        assert out["labels"].tolist() == labels[inside].tolist()
        expected = np.clip(boxes[inside], [x0, y0, x0, y0], [x1, y1, x1, y1]) - [x0, y0, x0, y0]
        np.testing.assert_allclose(out_boxes, expected, atol=1e-3)
    assert kept_whole > 0
    assert {0.0, 0.1, 0.3, 0.5, 0.7} <= cropped_options
    if selection == "pooled":  # 1/7 when every sampler finds a patch, more when some fail
        assert 0.08 < kept_whole / 300 < 0.4


def test_min_iou_crop_refuses_an_unknown_selection() -> None:
    with pytest.raises(ValueError, match="selection"):
        MinIoURandomCrop(selection="first")


def test_min_iou_crop_keeps_images_without_boxes() -> None:
    crop = MinIoURandomCrop(min_ious=(0.0,))
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    out = run(compose(crop), image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert crop.get_applied_params()["patch"] is None
    np.testing.assert_array_equal(out["image"], image)
    assert len(out["bboxes"]) == 0 and len(out["labels"]) == 0


def test_expand_places_image_on_mean_canvas_and_shifts_boxes() -> None:
    expand = Expand(max_ratio=3.0, fill=(10.2, 20.0, 30.0), p=1.0)
    pipeline = compose(expand, seed=3)
    rng = np.random.default_rng(1)
    for _ in range(20):
        image, boxes = random_sample(rng)
        image = np.maximum(image, 40)  # distinct from the fill
        labels = np.arange(len(boxes)) + 1
        out = run(pipeline, image, boxes, labels)
        params = expand.get_applied_params()
        top, left = params["top"], params["left"]
        h, w = image.shape[:2]
        canvas = out["image"]
        assert canvas.shape[:2] == params["canvas_shape"]
        assert h <= canvas.shape[0] <= 3 * h and w <= canvas.shape[1] <= 3 * w
        np.testing.assert_array_equal(canvas[top : top + h, left : left + w], image)
        outside = np.ones(canvas.shape[:2], bool)
        outside[top : top + h, left : left + w] = False
        assert (canvas[outside] == [10, 20, 30]).all()
        np.testing.assert_allclose(out["bboxes"], boxes + [left, top, left, top], atol=1e-3)
        assert out["labels"].tolist() == labels.tolist()


def test_photometric_distort_keeps_shape_and_changes_pixels() -> None:
    image = np.random.default_rng(0).integers(30, 220, (32, 48, 3), dtype=np.uint8)
    distort = A.Compose([PhotometricDistort(op_p=1.0)], seed=0)
    out = distort(image=image)["image"]
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - image).mean() > 1


@pytest.mark.parametrize(
    ("kwargs", "param", "expected"),
    [
        ({"contrast": 0, "saturation": 0, "hue": 0}, "brightness_delta", lambda x, v: x + v),
        ({"brightness": 0, "saturation": 0, "hue": 0}, "contrast_factor", lambda x, v: x * v),
    ],
)
def test_photometric_brightness_is_additive_and_contrast_multiplicative(
    kwargs: dict, param: str, expected
) -> None:
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    distort = PhotometricDistort(op_p=1.0, **kwargs)
    pipeline = A.Compose([distort], seed=5)
    for _ in range(5):
        out = pipeline(image=image)["image"]
        value = distort.get_applied_params()[param]
        want = np.clip(np.round(expected(image.astype(np.float64), value)), 0, 255)
        np.testing.assert_allclose(out, want, atol=1)


def test_photometric_hue_and_saturation_ranges() -> None:
    distort = PhotometricDistort(op_p=1.0)
    pipeline = A.Compose([distort], seed=0)
    image = np.full((4, 4, 3), 128, np.uint8)
    draws = []
    for _ in range(200):
        pipeline(image=image)
        draws.append(distort.get_applied_params())
    for key, low, high in [
        ("brightness_delta", -32, 32),
        ("contrast_factor", 0.5, 1.5),
        ("saturation_factor", 0.5, 1.5),
        ("hue_shift", -18, 18),
    ]:
        values = np.array([d[key] for d in draws])
        assert values.min() >= low and values.max() <= high
        assert values.min() < low + 0.2 * (high - low) and values.max() > high - 0.2 * (high - low)
    assert 0.3 < np.mean([d["contrast_first"] for d in draws]) < 0.7


def full_target(boxes: np.ndarray) -> dict:
    n = len(boxes)
    labels = np.arange(n) + 1
    return {"boxes": boxes, "labels": labels, "difficult": labels % 2 == 0, "image_id": "x"}


def test_full_training_pipeline_with_and_without_boxes() -> None:
    transform = build_transforms(64, train=True, augment=ssd_augmentation())
    transform.pipeline.set_random_seed(0)
    rng = np.random.default_rng(2)
    for i in range(60):
        image, boxes = random_sample(rng)
        if i % 3 == 0:
            boxes = np.zeros((0, 4), np.float32)
        tensor, target = transform(image, full_target(boxes))
        assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
        out = target["boxes"]
        assert len(out) == len(target["labels"]) == len(target["difficult"]) <= len(boxes)
        assert ((out >= 0) & (out <= 1)).all()
        assert (out[:, 2:] > out[:, :2]).all()
        assert target["difficult"].tolist() == (target["labels"] % 2 == 0).tolist()


def augmented(seed: int, global_seed: int) -> list[torch.Tensor]:
    """Outputs of a freshly seeded pipeline; the global seeds must not matter."""
    random.seed(global_seed)
    np.random.seed(global_seed)
    torch.manual_seed(global_seed)
    transform = build_transforms(48, train=True, augment=ssd_augmentation())
    transform.pipeline.set_random_seed(seed)
    rng = np.random.default_rng(0)
    outs = []
    for _ in range(8):
        image, boxes = random_sample(rng)
        tensor, target = transform(image, full_target(boxes))
        outs += [tensor, target["boxes"]]
    return outs


def test_augmentation_is_reproducible_from_the_pipeline_seed() -> None:
    first, again, other = augmented(7, 0), augmented(7, 1), augmented(8, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(first, other, strict=True)
    )


def test_hydra_instantiates_the_list() -> None:
    transforms = instantiate({"_target_": "dssd.data.augment.ssd_augmentation"})
    assert [type(t) for t in transforms] == [PhotometricDistort, Expand, MinIoURandomCrop]
    assert transforms[1].p == 0.5 and transforms[1].max_ratio == 4.0
    no_photo = instantiate({"_target_": "dssd.data.augment.ssd_augmentation", "photometric": False})
    assert [type(t) for t in no_photo] == [Expand, MinIoURandomCrop]
