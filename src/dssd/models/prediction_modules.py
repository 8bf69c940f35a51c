"""Prediction modules of DSSD (paper Figure 2), placed between a source map and its heads."""

from __future__ import annotations

from torch import Tensor, nn

from dssd.models.blocks import ResidualBottleneck

VARIANTS = ("a", "b", "c", "d")


class PredictionModule(nn.Module):
    """One of the paper's prediction modules (Figure 2, Table 4).

    * ``a``: none — the loc/conf convolutions sit on the source map (plain SSD);
    * ``b``: one residual bottleneck with an identity skip (keeps the channel count);
    * ``c``: one residual bottleneck ``mid -> mid -> out`` with a 1x1 projection skip (DSSD's);
    * ``d``: two stacked ``c`` blocks.

    The figure draws 1x1 convolutions; the released code's middle convolution is 3x3, so
    ``mid_kernel_size`` is configurable.
    """

    def __init__(
        self,
        in_channels: int,
        variant: str = "c",
        mid_channels: int = 256,
        out_channels: int = 1024,
        mid_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"prediction module must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        blocks: list[nn.Module] = []
        if variant == "b":
            blocks.append(
                ResidualBottleneck(
                    in_channels,
                    mid_channels,
                    in_channels,
                    mid_kernel_size=mid_kernel_size,
                    projection=False,
                )
            )
        for i in range({"c": 1, "d": 2}.get(variant, 0)):
            channels = in_channels if i == 0 else out_channels
            blocks.append(
                ResidualBottleneck(
                    channels, mid_channels, out_channels, mid_kernel_size=mid_kernel_size
                )
            )
        self.body = nn.Sequential(*blocks)
        self.out_channels = out_channels if variant in ("c", "d") else in_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)
