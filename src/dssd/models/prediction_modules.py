"""Prediction modules of DSSD (paper Figure 2), placed between a source map and its heads."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dssd.models.blocks import ResidualBottleneck

VARIANTS = ("a", "b", "c", "d")


class PredictionModule(nn.Module):
    """A prediction module of the paper (Figure 2, Table 4): ``a`` none (plain SSD), ``b`` a
    residual bottleneck with an identity skip, ``c`` one ``mid -> mid -> out`` with a 1x1 projection
    skip (DSSD's), ``d`` two; ``mid_kernel_size``: 1 as in the figure, 3 in the released code."""

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
        self.out_channels = out_channels if variant in ("c", "d") else in_channels
        inputs = {"a": [], "b": [in_channels], "c": [in_channels], "d": [in_channels, out_channels]}
        self.body = nn.Sequential(
            *(
                ResidualBottleneck(
                    c,
                    mid_channels,
                    self.out_channels,
                    mid_kernel_size=mid_kernel_size,
                    projection=variant != "b",
                )
                for c in inputs[variant]
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class PredictionModules(nn.ModuleList):
    """One prediction module per source map, applied map by map (a module, so that the model
    summary counts what the prediction modules compute)."""

    def forward(self, maps: Sequence[Tensor]) -> list[Tensor]:
        return [module(x) for module, x in zip(self, maps, strict=True)]
