"""Necks that followed DSSD's decoder: FPN, PANet and BiFPN, as choices of the ``neck`` group.

Each is built like :class:`~dssd.models.deconvolution.Decoder`, ``neck(in_channels, sizes,
channels)`` from the encoder maps (largest first), and returns as many maps of the same sizes; as
SSD's maps are not all halves (321: 40, 20, 10, 5, 3, 1), a step up interpolates to the target
size (nearest), a step down is a 3x3/2 window padded to give it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork


def stride2_padding(in_size: int, out_size: int) -> int:
    """Padding of a 3x3/2 window mapping ``in_size`` to ``out_size`` (1 to halve, 0 for 3 -> 1)."""
    for padding in (1, 0):
        if (in_size + 2 * padding - 3) // 2 + 1 == out_size:
            return padding
    raise ValueError(f"no 3x3 stride-2 window maps {in_size} to {out_size}")


class FPN(nn.Module):
    """Feature Pyramid Network (Lin et al. 2017), torchvision's: a 1x1 lateral per map, a
    top-down path of nearest upsampling and sums, and a 3x3 output convolution per level."""

    def __init__(self, in_channels: Sequence[int], sizes: Sequence[int], channels: int) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(in_channels), channels)
        self.out_channels: list[int] = [channels] * len(in_channels)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        return list(self.fpn(OrderedDict((str(i), x) for i, x in enumerate(maps))).values())


class PANet(nn.Module):
    """FPN, then PANet's bottom-up path augmentation (Liu et al. 2018, Figure 1b), a short path
    from ``N_0 = P_0``: ``N_{i+1} = ReLU(conv3x3(ReLU(conv3x3/2(N_i)) + P_{i+1}))``."""

    def __init__(self, in_channels: Sequence[int], sizes: Sequence[int], channels: int) -> None:
        super().__init__()
        self.fpn = FPN(in_channels, sizes, channels)
        self.down = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, 2, stride2_padding(sizes[i], sizes[i + 1])),
                nn.ReLU(inplace=True),
            )
            for i in range(len(sizes) - 1)
        )
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))
            for _ in range(len(sizes) - 1)
        )
        self.out_channels: list[int] = [channels] * len(in_channels)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        pyramid = self.fpn(maps)
        out = [pyramid[0]]
        for down, fuse, p in zip(self.down, self.fuse, pyramid[1:], strict=True):
            out.append(fuse(down(out[-1]) + p))
        return out


class WeightedFusion(nn.Module):
    """A BiFPN node (Tan et al. 2020): fast normalised fusion ``sum(w_i x_i) / (sum(w) + eps)``
    with ``w = ReLU(weights)``, then swish and a depthwise-separable 3x3 convolution with BN."""

    def __init__(self, inputs: int, channels: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.ones(inputs))
        self.eps = eps
        self.conv = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        w = F.relu(self.weights)
        fused = sum(wi * x for wi, x in zip(w / (w.sum() + self.eps), inputs, strict=True))
        return self.conv(fused)


class BiFPNLayer(nn.Module):
    """One BiFPN layer: a top-down pass, then a bottom-up pass that also takes each level's input
    (EfficientDet, Figure 2d). The finest level's top-down node is its output."""

    def __init__(self, sizes: Sequence[int], channels: int) -> None:
        super().__init__()
        levels = len(sizes)
        self.top_down = nn.ModuleList(WeightedFusion(2, channels) for _ in range(levels - 1))
        self.bottom_up = nn.ModuleList(
            WeightedFusion(3 if i < levels - 1 else 2, channels) for i in range(1, levels)
        )
        self.pool = nn.ModuleList(
            nn.MaxPool2d(3, 2, stride2_padding(sizes[i], sizes[i + 1])) for i in range(levels - 1)
        )

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        levels = len(maps)
        td = [*maps]
        for i in reversed(range(levels - 1)):
            up = F.interpolate(td[i + 1], size=maps[i].shape[-2:], mode="nearest")
            td[i] = self.top_down[i]([maps[i], up])
        out = [td[0]]
        for i in range(1, levels):
            down = self.pool[i - 1](out[-1])
            inputs = [maps[i], td[i], down] if i < levels - 1 else [maps[i], down]
            out.append(self.bottom_up[i - 1](inputs))
        return out


class BiFPN(nn.Module):
    """Bidirectional FPN with weighted fusion (EfficientDet), ``repeats`` layers deep, after a 1x1
    convolution + BN on each input map whose width is not ``channels``."""

    def __init__(
        self, in_channels: Sequence[int], sizes: Sequence[int], channels: int, repeats: int = 3
    ) -> None:
        super().__init__()
        if repeats < 1:
            raise ValueError(f"BiFPN needs at least one layer, got repeats={repeats}")
        self.inputs = nn.ModuleList(
            nn.Identity()
            if c == channels
            else nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels))
            for c in in_channels
        )
        self.layers = nn.Sequential(*(BiFPNLayer(sizes, channels) for _ in range(repeats)))
        self.out_channels: list[int] = [channels] * len(in_channels)

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        return self.layers([project(x) for project, x in zip(self.inputs, maps, strict=True)])
