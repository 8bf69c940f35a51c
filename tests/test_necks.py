"""The necks beside DSSD's decoder (FPN, PANet, BiFPN): shapes, wiring, parameter counts done by
hand, and every neck as a config choice that trains, folds and feeds the same heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor

from conftest import run_in_process, tiny_run
from dssd.models import FPN, SSD, BiFPN, Decoder, PANet, count_batchnorms, fold_batchnorm
from dssd.models.deconvolution import transposed_conv_shape
from dssd.models.necks import WeightedFusion, stride2_padding
from test_configs import compose_train

NECKS = {"dssd": Decoder, "fpn": FPN, "panet": PANet, "bifpn": BiFPN}
# the encoder map sizes of SSD321, SSD513 and the 193-input ResNet-18 SSD
SIZES = {
    "321": [40, 20, 10, 5, 3, 1],
    "513": [64, 32, 16, 8, 4, 2, 1],
    "193": [24, 12, 6, 3, 1],
    "321, maps rounded up": [41, 21, 10, 5, 3, 1],
}


def encoder_maps(sizes: list[int], seed: int = 0) -> tuple[list[int], list[Tensor]]:
    """Random encoder maps of the given sizes, with channels that differ between levels."""
    generator = torch.Generator().manual_seed(seed)
    channels = [12 + 4 * (i % 3) for i in range(len(sizes))]
    maps = [
        torch.randn(2, c, s, s, generator=generator) for c, s in zip(channels, sizes, strict=True)
    ]
    return channels, maps


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("neck", NECKS.values(), ids=NECKS.keys())
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_a_neck_gives_one_map_per_input_at_its_size(neck, sizes: list[int]) -> None:
    channels, maps = encoder_maps(sizes)
    module = neck(channels, sizes, channels=8).eval()
    with torch.no_grad():
        out = module(maps)
    assert [tuple(x.shape[-2:]) for x in out] == [(s, s) for s in sizes]
    assert [x.shape[1] for x in out] == module.out_channels
    assert all(torch.isfinite(x).all() for x in out)


@pytest.mark.parametrize(("size", "target", "padding"), [(40, 20, 1), (5, 3, 1), (3, 1, 0)])
def test_stride2_padding_gives_the_target_size(size: int, target: int, padding: int) -> None:
    assert stride2_padding(size, target) == padding
    x = torch.zeros(1, 1, size, size)
    assert F.max_pool2d(x, 3, 2, padding).shape[-1] == target
    with pytest.raises(ValueError, match="no 3x3 stride-2 window"):
        stride2_padding(size, size)


# Parameter counts done by hand from the papers' definitions, for encoder channels c_i,
# neck width C and n levels.
def fpn_count(channels: list[int], width: int) -> int:
    # a 1x1 lateral (with bias) per level, a 3x3 output conv (with bias) per level
    return sum(c * width + width for c in channels) + len(channels) * (9 * width**2 + width)


def panet_count(channels: list[int], width: int) -> int:
    # FPN, then per step up the bottom-up path a 3x3/2 conv and a 3x3 conv, both with bias
    return fpn_count(channels, width) + (len(channels) - 1) * 2 * (9 * width**2 + width)


def bifpn_count(channels: list[int], width: int, repeats: int) -> int:
    n = len(channels)
    # a 1x1 conv + BN (2 per channel) on each input of another width
    projections = sum(c * width + 2 * width for c in channels if c != width)
    # each node: depthwise 3x3, pointwise 1x1, BN; n - 1 top-down nodes of 2 inputs, n - 2
    # bottom-up nodes of 3 and the top one of 2, one fusion weight per input
    node = 9 * width + width**2 + 2 * width
    per_layer = 2 * (n - 1) * node + 2 * (n - 1) + 3 * (n - 2) + 2
    return projections + repeats * per_layer


def decoder_count(channels: list[int], sizes: list[int], width: int) -> int:
    # per step from the coarsest map: a k x k transposed conv (with bias), a 3x3 conv + BN on
    # the decoder path, 3x3 conv + BN, 3x3 conv + BN on the encoder path (Figure 3)
    total, decoder_channels = 0, channels[-1]
    for k in reversed(range(len(channels) - 1)):
        kernel, _, _ = transposed_conv_shape(sizes[k + 1], sizes[k])
        total += decoder_channels * width * kernel**2 + width
        total += 9 * width**2 + 2 * width
        total += 9 * channels[k] * width + 2 * width + 9 * width**2 + 2 * width
        decoder_channels = width
    return total


@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_parameter_counts_match_a_count_by_hand(sizes: list[int]) -> None:
    channels, _ = encoder_maps(sizes)
    width = 8
    assert count(FPN(channels, sizes, width)) == fpn_count(channels, width)
    assert count(PANet(channels, sizes, width)) == panet_count(channels, width)
    for repeats in (1, 3):
        bifpn = BiFPN(channels, sizes, width, repeats=repeats)
        assert count(bifpn) == bifpn_count(channels, width, repeats)
    assert count(Decoder(channels, sizes, width)) == decoder_count(channels, sizes, width)
    # an input already of the neck's width is not projected
    assert count(BiFPN([width] * len(sizes), sizes, width, 1)) == bifpn_count(
        [width] * len(sizes), width, 1
    )


def test_panet_starts_its_bottom_up_path_from_fpns_finest_map() -> None:
    channels, maps = encoder_maps(SIZES["321"])
    panet = PANet(channels, SIZES["321"], 8).eval()
    with torch.no_grad():
        fpn_out, out = panet.fpn(maps), panet(maps)
        assert torch.equal(out[0], fpn_out[0])
        # N_1 = fuse(down(N_0) + P_1)
        assert torch.allclose(out[1], panet.fuse[0](panet.down[0](out[0]) + fpn_out[1]))


def test_weighted_fusion_is_fast_normalised_fusion() -> None:
    node = WeightedFusion(2, 4).eval()
    with torch.no_grad():
        node.weights.copy_(torch.tensor([3.0, -1.0]))  # ReLU turns the second input off
        a, b = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
        assert torch.allclose(node([a, b]), node.conv(a * 3 / (3 + node.eps)), atol=1e-6)


def test_bifpn_layer_wires_the_papers_graph() -> None:
    """Three levels written out: which inputs feed which node (EfficientDet, Figure 2d)."""
    sizes = [20, 10, 5]
    bifpn = BiFPN([8, 8, 8], sizes, 8, repeats=1).eval()
    layer = bifpn.layers[0]
    maps = [torch.randn(2, 8, s, s) for s in sizes]

    def up(x: Tensor, like: Tensor) -> Tensor:
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    with torch.no_grad():
        td1 = layer.top_down[1]([maps[1], up(maps[2], maps[1])])
        td0 = layer.top_down[0]([maps[0], up(td1, maps[0])])
        out1 = layer.bottom_up[0]([maps[1], td1, F.max_pool2d(td0, 3, 2, 1)])
        out2 = layer.bottom_up[1]([maps[2], F.max_pool2d(out1, 3, 2, 1)])
        for got, want in zip(bifpn(maps), [td0, out1, out2], strict=True):
            assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("neck", ["none", *NECKS])
def test_every_neck_is_a_config_choice_that_trains(neck: str) -> None:
    """`neck=...` on the CPU-sized model: the same prediction modules, heads and default boxes
    whatever the neck, and gradients reach every parameter of the neck."""
    cfg = compose_train("model=ssd_r18", "pm=c", f"neck={neck}")
    torch.manual_seed(0)
    net: SSD = instantiate(cfg.model.net)
    plain: SSD = instantiate(compose_train("model=ssd_r18", "pm=c").model.net)
    assert (net.decoder is None) == (neck == "none")
    if net.decoder is not None:
        assert isinstance(net.decoder, NECKS[neck])
        assert net.decoder.out_channels[0] == cfg.model.net.neck_channels
    assert torch.equal(net.priors, plain.priors)
    assert len(net.prediction_modules) == len(plain.prediction_modules)
    loc, conf = net(torch.randn(2, 3, net.image_size, net.image_size))
    assert loc.shape == (2, len(net.priors), 4) and conf.shape[:2] == (2, len(net.priors))
    (loc.square().mean() + conf.square().mean()).backward()
    if net.decoder is not None:
        assert all(p.grad is not None for p in net.decoder.parameters())


@pytest.mark.parametrize("neck", ["panet", "bifpn"])
def test_folding_batch_norm_keeps_a_necks_outputs(neck: str) -> None:
    torch.manual_seed(0)
    net = instantiate(compose_train("model=ssd_r18", f"neck={neck}").model.net)
    net.train()
    with torch.no_grad():  # give every BN real running statistics
        for _ in range(3):
            net(torch.randn(2, 3, net.image_size, net.image_size))
    net.eval()
    folded = fold_batchnorm(net)
    if neck == "bifpn":
        assert count_batchnorms(net.decoder) > 0
    assert count_batchnorms(folded) == 0
    x = torch.randn(1, 3, net.image_size, net.image_size)
    with torch.no_grad():
        for a, b in zip(net(x), folded(x), strict=True):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_bifpn_needs_a_layer() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        BiFPN([8, 8], [4, 2], 8, repeats=0)


def test_train_py_trains_and_tests_with_a_neck(tiny_shapes: Path, tmp_path: Path) -> None:
    proc = run_in_process(
        "train.py",
        "neck=bifpn",
        "pm=c",
        *tiny_run(tiny_shapes),
        "trainer.fast_dev_run=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
    )
    assert "test/map_50" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("neck", ["none", "fpn", "panet", "dssd"])
def test_train_py_trains_and_tests_with_every_neck(
    neck: str, tiny_shapes: Path, tmp_path: Path
) -> None:
    extra = ["fusion=prod"] if neck == "dssd" else []
    proc = run_in_process(
        "train.py",
        f"neck={neck}",
        *extra,
        *tiny_run(tiny_shapes),
        "trainer.fast_dev_run=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
    )
    assert "test/map_50" in proc.stdout
