"""VGG16 trunk and extra layers of SSD300/SSD512 (Liu et al. 2016), DSSD's Table 3 baseline."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from dssd.models.backbones import check_weight_choice, load_imagenet_weights, load_weights_file
from dssd.models.extra_layers import BlockChain


class L2Norm(nn.Module):
    """Channel-wise L2 normalisation with a learned per-channel scale (SSD's conv4_3_norm)."""

    def __init__(self, channels: int, scale: float = 20.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), scale))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1, eps=1e-10) * self.weight.view(1, -1, 1, 1)


class VGGBackbone(nn.Module):
    """VGG16 as in SSD, returning conv4_3 (stride 8, L2-normalised) and fc7 (stride 16): pool3
    rounds up (75 -> 38 at 300), pool5 is 3x3/1 padded, fc6/fc7 become convolutions (3x3 with
    dilation 6, then 1x1; 1024 channels). ``pretrained``: torchvision's ImageNet conv weights (not
    SSD's subsampled fc6/fc7); ``weights``: a local file (torchvision's naming) instead."""

    def __init__(self, pretrained: bool = False, weights: str | os.PathLike[str] | None = None):
        super().__init__()
        check_weight_choice(pretrained, weights)
        vgg = torchvision.models.vgg16(weights=None)
        if pretrained:
            load_imagenet_weights(vgg, "vgg16", skip_prefixes=("classifier.",))
        elif weights is not None:
            load_weights_file(vgg, weights, "vgg16", {}, skip_prefixes=("classifier.",))
        layers = list(vgg.features)
        for i, layer in enumerate(layers):
            if isinstance(layer, nn.MaxPool2d):
                layers[i] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        conv4_3_end = 23  # index after conv4_3's ReLU in torchvision's vgg16.features
        self.conv4_3 = nn.Sequential(*layers[:conv4_3_end])
        self.l2norm = L2Norm(512)
        self.conv5 = nn.Sequential(
            *layers[conv4_3_end:-1], nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        )
        self.fc7 = nn.Sequential(
            nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
            nn.ReLU(inplace=True),
            nn.Conv2d(1024, 1024, 1),
            nn.ReLU(inplace=True),
        )
        self.out_channels: list[int] = [512, 1024]

    def forward(self, x: Tensor) -> list[Tensor]:
        c4 = self.conv4_3(x)
        return [self.l2norm(c4), self.fc7(self.conv5(c4))]


class VGGExtraLayers(BlockChain):
    """SSD's extra layers on VGG's fc7 (``in_channels``): pairs ``1x1 mid -> k x k/s out`` (no
    BN), each a source; ``layers``: ``(mid, out, kernel, stride, padding)`` per pair, SSD300's
    (256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0)."""

    def __init__(self, in_channels: int, layers: Sequence[Sequence[int]]) -> None:
        super().__init__()
        self.out_channels = [layer[1] for layer in layers]
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(layers[i - 1][1] if i else in_channels, mid, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, out, kernel, stride, padding),
                nn.ReLU(inplace=True),
            )
            for i, (mid, out, kernel, stride, padding) in enumerate(layers)
        )
