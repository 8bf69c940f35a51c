"""Building blocks shared by the extra layers and the prediction modules."""

from __future__ import annotations

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
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
    activation = [nn.ReLU(inplace=True)] if relu else []
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), *activation)


class ResidualBottleneck(nn.Module):
    """``k x k/s -> m x m -> 1x1`` bottleneck, BN after each conv, plus a skip, then ReLU: the first
    conv and the projection skip (conv + BN; identity with ``projection=False``) are ``k x k/s``
    unpadded (how SSD's extra layers shrink maps), the middle one "same"-padded."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        mid_kernel_size: int = 3,
        projection: bool = True,
    ) -> None:
        super().__init__()
        if not projection and (in_channels != out_channels or kernel_size != 1 or stride != 1):
            raise ValueError("an identity skip needs in_channels == out_channels and a 1x1/1 block")
        self.body = nn.Sequential(
            conv_bn(in_channels, mid_channels, kernel_size, stride),
            conv_bn(mid_channels, mid_channels, mid_kernel_size, padding=mid_kernel_size // 2),
            conv_bn(mid_channels, out_channels, 1, relu=False),
        )
        self.skip: nn.Module = nn.Identity()
        if projection:
            self.skip = conv_bn(in_channels, out_channels, kernel_size, stride, relu=False)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.skip(x))
