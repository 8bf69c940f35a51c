"""Prediction heads: the loc/conf convolutions on each source map (prediction module (a))."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class PredictionHeads(nn.Module):
    """A loc and a conf conv (bias, no BN) per source map, outputs flattened by source, row,
    column, box as :class:`~dssd.models.default_boxes.DefaultBoxes`. ``kernel_sizes``: one, or
    per map from the largest, the last repeated (``[5, 5, 3]``: the released DSSD code's)."""

    def __init__(
        self,
        in_channels: Sequence[int],
        boxes_per_location: Sequence[int],
        num_classes: int,
        kernel_sizes: Sequence[int] | int = 3,
    ) -> None:
        super().__init__()
        sources = len(in_channels)
        kernel_sizes = [kernel_sizes] if isinstance(kernel_sizes, int) else list(kernel_sizes)
        if not 1 <= len(kernel_sizes) <= sources:
            raise ValueError(f"got {len(kernel_sizes)} head kernel sizes for {sources} source maps")
        kernel_sizes += kernel_sizes[-1:] * (sources - len(kernel_sizes))
        if len(boxes_per_location) != sources:
            raise ValueError(f"got {len(boxes_per_location)} box counts for {sources} source maps")
        self.num_outputs = num_classes + 1  # + background
        self.loc = nn.ModuleList()
        self.conf = nn.ModuleList()
        for channels, boxes, k in zip(in_channels, boxes_per_location, kernel_sizes, strict=True):
            self.loc.append(nn.Conv2d(channels, boxes * 4, k, padding=k // 2))
            self.conf.append(nn.Conv2d(channels, boxes * self.num_outputs, k, padding=k // 2))
        for conv in [*self.loc, *self.conf]:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        batch = features[0].shape[0]
        locs, confs = [], []
        for x, loc, conf in zip(features, self.loc, self.conf, strict=True):
            locs.append(loc(x).permute(0, 2, 3, 1).reshape(batch, -1, 4))
            confs.append(conf(x).permute(0, 2, 3, 1).reshape(batch, -1, self.num_outputs))
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)
