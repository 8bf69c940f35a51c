"""VGG16 trunk and extra layers of the original SSD300/SSD512 (Liu et al. 2016), the baseline of
the DSSD paper's Table 3.

Changes to VGG16: pool3 rounds up (75 -> 38 at 300), pool5 is 3x3/1 with padding 1, fc6/fc7
become convolutions (fc6 3x3 atrous with dilation 6, 1024 channels; fc7 1x1, 1024), and conv4_3 is
L2-normalised with a learned per-channel scale (initialised to 20) before predictions are made
from it. Sources: conv4_3 (stride 8) and fc7 (stride 16).
"""

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
    """VGG16 with SSD's atrous fc6/fc7, returning conv4_3 (L2-normalised) and fc7.

    With ``pretrained``, torchvision's ImageNet VGG16 convolution weights are loaded (fc6/fc7
    start from scratch: SSD's subsampled fully-connected weights are not in torchvision);
    ``weights`` loads a local file in torchvision's VGG16 naming instead
    (:func:`~dssd.models.backbones.load_weights_file`).
    """

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
        fc7 = self.fc7(self.conv5(c4))
        return [self.l2norm(c4), fc7]


class VGGExtraLayers(BlockChain):
    """SSD's extra layers on VGG: pairs ``1x1 mid -> k x k/s out`` (no BN), each pair a source.

    Args:
        in_channels: channels of fc7.
        layers: ``(mid, out, kernel, stride, padding)`` per pair; SSD300 uses
            (256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0).
    """

    def __init__(self, in_channels: int, layers: Sequence[Sequence[int]]) -> None:
        super().__init__()
        blocks = []
        for mid, out, kernel, stride, padding in layers:
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, mid, 1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(mid, out, kernel, stride, padding),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = out
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = [layer[1] for layer in layers]
