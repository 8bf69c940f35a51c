"""Batch-norm folding (paper Eq. 1-4): same outputs, no BN left, the input network untouched."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import Tensor, nn

from dssd.models import (
    SSD,
    Decoder,
    ExtraLayers,
    PredictionModule,
    ResNetBackbone,
    count_batchnorms,
    fold_batchnorm,
)

SIZE = 129
SCALES = [0.1, 0.3, 0.5, 0.7, 0.9]


def make_ssd(depth: int, dssd: bool) -> SSD:
    """A small SSD (ResNet-18, plain heads) or DSSD (ResNet-50 Bottlenecks, module (c), deconv)."""
    extras = partial(ExtraLayers, layers=[(2, 2), (2, 2)], mid_channels=16, out_channels=32)
    kwargs = {}
    if dssd:
        kwargs = {
            "prediction_module": partial(
                PredictionModule, variant="c", mid_channels=8, out_channels=16
            ),
            "neck": Decoder,
            "neck_channels": 16,
        }
    return SSD(ResNetBackbone(depth), extras, 3, SIZE, SCALES, **kwargs)


@torch.no_grad()
def randomise(net: nn.Module) -> nn.Module:
    """Give every BN real running statistics and non-trivial affine parameters.

    The loc/conf heads are re-initialised with PyTorch's default init (the project uses std 0.01)
    so that the outputs are not tiny and a tolerance of 1e-4 is a strict test.
    """
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # running statistics = the average over the passes below
    net.train()
    for _ in range(3):
        net(torch.randn(2, 3, SIZE, SIZE))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
        elif isinstance(m, nn.Conv2d) and m.bias is not None:
            m.reset_parameters()
    return net.eval()


@pytest.fixture(scope="module", params=[(18, False), (50, True)], ids=["ssd_r18", "dssd_r50"])
def net(request: pytest.FixtureRequest) -> SSD:
    torch.manual_seed(0)
    return randomise(make_ssd(*request.param))


@torch.no_grad()
def outputs(net: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    """The network's eval-mode output(s) as a tuple."""
    out = net.eval()(x)
    return tuple(out) if isinstance(out, tuple) else (out,)


def test_folded_network_has_no_bn_and_the_same_outputs(net: SSD) -> None:
    x = torch.randn(2, 3, SIZE, SIZE)
    loc, conf = outputs(net, x)
    assert loc.abs().mean() > 0.1 and conf.abs().mean() > 0.1  # the tolerance below means something

    folded = fold_batchnorm(net)

    assert count_batchnorms(net) > 0
    assert count_batchnorms(folded) == 0
    assert not folded.training
    for got, want in zip(outputs(folded, x), (loc, conf), strict=True):
        # float32 rounding grows with the magnitude: random deep nets (DSSD's product fusion
        # above all) reach 1e8, so the error is measured in units of max(1, max |output|).
        assert (got - want).abs().max() < 1e-4 * max(1.0, want.abs().max().item())


def test_folded_network_keeps_its_attributes(net: SSD) -> None:
    folded = fold_batchnorm(net)
    assert type(folded) is SSD
    assert torch.equal(folded.priors, net.priors)
    assert folded.feature_sizes == net.feature_sizes
    assert (folded.num_classes, folded.image_size) == (net.num_classes, net.image_size)


def test_input_network_is_not_modified(net: SSD) -> None:
    x = torch.randn(1, 3, SIZE, SIZE)
    before = outputs(net, x)
    state = copy.deepcopy(net.state_dict())
    bns = count_batchnorms(net)
    net.train()

    fold_batchnorm(net)

    assert net.training
    assert count_batchnorms(net) == bns
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert net.state_dict().keys() == state.keys()
    assert all(torch.equal(a, b) for a, b in zip(outputs(net, x), before, strict=True))


@pytest.mark.parametrize(
    ("conv", "channels"),
    [
        (nn.ConvTranspose2d(6, 8, 3, stride=2, bias=False), 6),
        (nn.ConvTranspose2d(6, 8, 2, stride=2, groups=2), 6),
        (nn.Conv2d(6, 8, 3, padding=1, groups=2), 6),
    ],
    ids=["transposed", "transposed_grouped_bias", "grouped_bias"],
)
def test_conv_bn_pair_folds_into_the_conv(conv: nn.Module, channels: int) -> None:
    torch.manual_seed(0)
    net = randomise_pair(nn.Sequential(conv, nn.BatchNorm2d(8), nn.ReLU()))
    x = torch.randn(2, channels, 5, 5)

    folded = fold_batchnorm(net)

    assert isinstance(folded[1], nn.Identity)
    assert folded[0].bias is not None
    assert (outputs(folded, x)[0] - outputs(net, x)[0]).abs().max() < 1e-5


@torch.no_grad()
def randomise_pair(net: nn.Sequential) -> nn.Sequential:
    """Random running statistics and affine parameters for the BN of a conv -> BN pair."""
    bn = net[1]
    bn.running_mean.normal_(0.0, 1.0)
    bn.running_var.uniform_(0.2, 3.0)
    bn.weight.uniform_(0.5, 1.5)
    bn.bias.normal_(0.0, 1.0)
    return net


class ConvAndBN(nn.Module):
    """A conv and a BN whose wiring each subclass's forward decides."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)


class SharedOutput(ConvAndBN):
    """The conv output feeds the BN and the sum: folding would change the second use."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class ConvCalledTwice(ConvAndBN):
    """The conv is applied twice, once without the BN."""

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) + self.conv(x)


class Untraceable(ConvAndBN):
    """Data-dependent control flow: fx cannot prove anything, so nothing is folded."""

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        return self.bn(y) if y.sum() > 0 else y


def hooked() -> nn.Module:
    """A Sequential pair whose conv output is observed by a forward hook."""
    net = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
    net[0].register_forward_hook(lambda module, inputs, output: None)
    return net


def shared_weight() -> nn.Module:
    """Two conv -> BN pairs whose convs share one weight: only one may be scaled."""
    pair = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    other = nn.Conv2d(4, 4, 3, padding=1, bias=False)
    other.weight = pair[0].weight
    return nn.Sequential(pair, other)


def bn_before_conv() -> nn.Module:
    return nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, padding=1))


@pytest.mark.parametrize(
    "make", [SharedOutput, ConvCalledTwice, Untraceable, hooked, shared_weight, bn_before_conv]
)
def test_unsafe_pairs_are_not_folded(make) -> None:
    torch.manual_seed(0)
    net = make()
    with torch.no_grad():
        for bn in net.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0.0, 1.0)
                bn.bias.normal_(0.0, 1.0)
    x = torch.randn(2, 4, 6, 6)

    folded = fold_batchnorm(net)

    assert count_batchnorms(folded) == 1
    assert torch.equal(outputs(folded, x)[0], outputs(net, x)[0])
