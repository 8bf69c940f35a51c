"""ResNet trunks with the DSSD paper's surgery.

DSSD (and the ResNet SSD baseline) uses a ResNet as the encoder with two changes that keep the
feature maps at the resolutions of the paper's Table 2:

* the stem's max-pool is 3x3 / stride 2 with *no padding* and ceil rounding, as in the released
  Caffe model (torchvision pads by 1, which gives 321 -> 41 instead of 40);
* conv5_x keeps stride 16: its stride-2 convolutions become stride 1 and its 3x3 convolutions are
  dilated by 2, so the receptive field still grows.

The backbone returns the two source maps the detector predicts from: the last block of conv3_x
(stride 8) and of conv5_x (stride 16).

``width`` scales every stage's channels (64 = the paper's ResNets): the CPU-sized models on the
embedded data use a narrower ResNet-18 with the same surgery (docs/reproducing.md, the network
search); only the standard width can load ImageNet weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from dssd.errors import UserError

# torchvision's ResNets: residual block and blocks per stage (conv2_x .. conv5_x)
_BLOCKS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
RESNET_DEPTHS = tuple(_BLOCKS)


class PretrainedWeightsNotFoundError(UserError, FileNotFoundError):
    """Raised when ImageNet weights are asked for but are not on disk (no download here)."""


def load_imagenet_weights(
    model: nn.Module, arch: str, skip_prefixes: tuple[str, ...] = ("fc.",)
) -> None:
    """Load torchvision's ImageNet weights for ``arch`` from the local torch hub cache.

    The weights are never downloaded implicitly: a cluster node or CI box often has no internet,
    and a silent multi-hundred-MB download in the middle of a launch is worse than a clear error.
    """
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    file_name = Path(weights.url).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not path.is_file():
        raise PretrainedWeightsNotFoundError(
            f"ImageNet weights for {arch} not found at {path}.\n"
            f"Download {weights.url} and put it there (the directory follows $TORCH_HOME, "
            f"currently {os.environ.get('TORCH_HOME', '~/.cache/torch')}), "
            "or train from scratch with model.net.backbone.pretrained=false."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(skip_prefixes)]
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not fit {arch}: missing {missing}, unexpected {unexpected}"
        )


class _ScaledResNet(torchvision.models.ResNet):
    """torchvision's ResNet with ``width`` channels after the stem instead of 64, and every
    later stage scaled alike (conv3_x: 2 x width, ..., conv5_x: 8 x width, times the block's
    expansion)."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: int) -> None:
        self.width = width
        super().__init__(block, layers)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self,
        block: type[nn.Module],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        if planes == 64:  # conv2_x: its input is the stem's output
            self.inplanes = self.width
        return super()._make_layer(block, planes * self.width // 64, blocks, stride, dilate)


class ResNetBackbone(nn.Module):
    """ResNet-{18,34,50,101,152} encoder returning the conv3_x and conv5_x source maps."""

    def __init__(self, depth: int = 101, pretrained: bool = False, width: int = 64) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth}")
        if width <= 0 or width % 8:
            raise ValueError(f"ResNet width must be a positive multiple of 8, got {width}")
        if pretrained and width != 64:
            raise ValueError(
                f"ImageNet weights exist only for width 64, got width={width}: "
                "set model.net.backbone.pretrained=false or width=64"
            )
        arch = f"resnet{depth}"
        if width == 64:
            resnet = torchvision.models.get_model(arch, weights=None)
        else:
            resnet = _ScaledResNet(*_BLOCKS[depth], width)
        resnet.fc = nn.Identity()
        if pretrained:
            load_imagenet_weights(resnet, arch)

        resnet.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        _dilate_stage(resnet.layer4, dilation=2)

        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.conv2 = resnet.layer1
        self.conv3 = resnet.layer2
        self.conv4 = resnet.layer3
        self.conv5 = resnet.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels: list[int] = [2 * width * expansion, 8 * width * expansion]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.conv2(self.stem(x))
        c3 = self.conv3(x)
        c5 = self.conv5(self.conv4(c3))
        return [c3, c5]


def _dilate_stage(stage: nn.Module, dilation: int) -> None:
    """Turn a stride-2 ResNet stage into a stride-1 stage with dilated 3x3 convolutions."""
    for module in stage.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        module.stride = (1, 1)
        if module.kernel_size == (3, 3):
            module.dilation = (dilation, dilation)
            module.padding = (dilation, dilation)
