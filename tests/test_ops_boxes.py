"""Tests of dssd.ops.boxes against per-image torchvision references, and of the box coder the
detector config gives the loss and the post-processor."""

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torchvision.ops import box_convert, box_iou

from dssd.ops import BoxCoder, batched_iou, pad_targets

CONF = Path(__file__).resolve().parents[1] / "conf"
VARIANCES = (0.1, 0.1, 0.2, 0.2)


def random_xyxy(*shape: int, generator: torch.Generator) -> torch.Tensor:
    """Random boxes of positive size inside [0, 1]^2, shape ``[*shape, 4]``."""
    xy = torch.rand(*shape, 2, generator=generator) * 0.7
    wh = torch.rand(*shape, 2, generator=generator) * 0.29 + 0.01
    return torch.cat([xy, xy + wh], dim=-1)


def random_priors(num: int, generator: torch.Generator) -> torch.Tensor:
    return box_convert(random_xyxy(num, generator=generator), "xyxy", "cxcywh")


@pytest.mark.parametrize("shared", [True, False])
def test_batched_iou_matches_box_iou_per_image(shared: bool) -> None:
    g = torch.Generator().manual_seed(1)
    boxes1 = random_xyxy(4, 6, generator=g)
    boxes1[1] = 0.0  # an image with only padding
    boxes1[2, 4:] = 0.0  # trailing padding rows
    boxes2 = random_xyxy(7, generator=g) if shared else random_xyxy(4, 7, generator=g)

    iou = batched_iou(boxes1, boxes2)

    assert iou.shape == (4, 6, 7)
    for i in range(4):
        expected = box_iou(boxes1[i], boxes2 if shared else boxes2[i])
        assert torch.equal(iou[i], expected)
    assert (iou[1] == 0).all() and (iou[2, 4:] == 0).all()
    assert (iou[0] > 0).any()


def test_encode_known_values() -> None:
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    gt_cxcywh = torch.tensor([[[0.52, 0.46, 0.3, 0.1]]])

    enc = BoxCoder(VARIANCES).encode(box_convert(gt_cxcywh, "cxcywh", "xyxy"), priors)

    expected = torch.tensor(
        [
            [
                [
                    (0.52 - 0.5) / (0.1 * 0.2),
                    (0.46 - 0.5) / (0.1 * 0.4),
                    math.log(0.3 / 0.2) / 0.2,
                    math.log(0.1 / 0.4) / 0.2,
                ]
            ]
        ]
    )
    torch.testing.assert_close(enc, expected)


@pytest.mark.parametrize("variances", [VARIANCES, (0.2, 0.3, 0.4, 0.5)])
def test_encode_decode_round_trip(variances: tuple[float, ...]) -> None:
    g = torch.Generator().manual_seed(2)
    coder = BoxCoder(variances)
    priors = random_priors(50, g)
    gt = random_xyxy(3, 50, generator=g)

    loc = coder.encode(gt, priors)
    assert loc.shape == (3, 50, 4)
    torch.testing.assert_close(coder.decode(loc, priors), gt, atol=1e-5, rtol=0)

    loc = torch.randn(3, 50, 4, generator=g)
    torch.testing.assert_close(
        coder.encode(coder.decode(loc, priors), priors), loc, atol=1e-4, rtol=0
    )


def test_box_coder_takes_any_sequence_of_four_variances() -> None:
    assert BoxCoder() == BoxCoder([0.1, 0.1, 0.2, 0.2]) == BoxCoder(VARIANCES)
    assert BoxCoder([1, 1, 2, 2]).variances == (1.0, 1.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="4 variances"):
        BoxCoder((0.1, 0.2))


def test_decode_zero_offsets_gives_priors() -> None:
    g = torch.Generator().manual_seed(3)
    priors = random_priors(10, g)
    decoded = BoxCoder(VARIANCES).decode(torch.zeros(2, 10, 4), priors)
    torch.testing.assert_close(decoded, box_convert(priors, "cxcywh", "xyxy").expand(2, -1, -1))


def test_pad_targets() -> None:
    g = torch.Generator().manual_seed(4)
    sizes = [3, 0, 5, 1]
    targets = [
        {"boxes": random_xyxy(n, generator=g), "labels": torch.randint(1, 6, (n,), generator=g)}
        for n in sizes
    ]

    boxes, labels = pad_targets(targets, device="cpu")

    assert boxes.shape == (4, 5, 4) and labels.shape == (4, 5)
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
    for i, (t, n) in enumerate(zip(targets, sizes, strict=True)):
        assert torch.equal(boxes[i, :n], t["boxes"])
        assert torch.equal(labels[i, :n], t["labels"])
        assert (boxes[i, n:] == 0).all() and (labels[i, n:] == 0).all()


def test_pad_targets_all_empty() -> None:
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]

    boxes, labels = pad_targets(targets)

    assert boxes.shape == (2, 1, 4) and labels.shape == (2, 1)
    assert boxes.dtype == torch.float32 and labels.dtype == torch.int64
    assert (boxes == 0).all() and (labels == 0).all()


@pytest.mark.parametrize("variances", [None, (0.2, 0.3, 0.4, 0.5)])
def test_loss_and_postprocessor_from_the_config_share_the_box_coder(
    variances: tuple[float, ...] | None,
) -> None:
    """The config sets the variances once (the loss's coder) and the post-processor follows, so
    it decodes what the loss encodes."""
    overrides = [] if variances is None else [f"model.loss.box_coder.variances={list(variances)}"]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        model_cfg = compose("train", overrides=overrides).model
    loss, postprocess = instantiate(model_cfg.loss), instantiate(model_cfg.postprocess)

    assert loss.box_coder == postprocess.box_coder == BoxCoder(variances or VARIANCES)
    g = torch.Generator().manual_seed(5)
    priors = random_priors(20, g)
    gt = random_xyxy(2, 20, generator=g)
    decoded = postprocess.box_coder.decode(loss.box_coder.encode(gt, priors), priors)
    torch.testing.assert_close(decoded, gt, atol=1e-5, rtol=0)
