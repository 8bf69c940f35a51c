"""SSD extra layers for the ResNet detectors: residual blocks that shrink the map after conv5."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    relu: bool = True,
) -> nn.Sequential:
    """Convolution (no bias) followed by batch norm and, optionally, ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ExtraBlock(nn.Module):
    """Bottleneck block k x k/s -> 3x3 -> 1x1 with a k x k/s projection skip (no padding).

    The first convolution and the skip carry the block's kernel and stride, so a block maps an
    ``n x n`` map to ``floor((n - k) / s) + 1`` (the paper's 20 -> 10 -> 5 -> 3 -> 1 at 321).
    """

    def __init__(
        self, in_channels: int, mid_channels: int, out_channels: int, kernel_size: int, stride: int
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(in_channels, mid_channels, kernel_size, stride),
            conv_bn(mid_channels, mid_channels, 3, padding=1),
            conv_bn(mid_channels, out_channels, 1, relu=False),
        )
        self.skip = conv_bn(in_channels, out_channels, kernel_size, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.skip(x))


class ExtraLayers(nn.Module):
    """A chain of :class:`ExtraBlock`; every block's output is a source map."""

    def __init__(
        self,
        in_channels: int,
        layers: Sequence[Sequence[int]],
        mid_channels: int = 256,
        out_channels: int = 1024,
    ) -> None:
        super().__init__()
        blocks = []
        for kernel_size, stride in layers:
            blocks.append(ExtraBlock(in_channels, mid_channels, out_channels, kernel_size, stride))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.out_channels: list[int] = [out_channels] * len(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs
