"""SSD extra layers for the ResNet detectors: residual blocks that shrink the map after conv5."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dssd.models.blocks import ResidualBottleneck


class BlockChain(nn.Module):
    """Blocks applied one after the other; every block's output is a source map."""

    blocks: nn.ModuleList
    out_channels: list[int]

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


class ExtraLayers(BlockChain):
    """Residual bottlenecks ``k x k/s -> 3x3 -> 1x1`` with ``k x k/s`` projection skips, one per
    ``(kernel, stride)`` of ``layers``, each mapping ``n x n`` to ``floor((n - k) / s) + 1`` (the
    paper's 20 -> 10 -> 5 -> 3 -> 1 at 321, with 256 mid and 1024 out channels) as a source map."""

    def __init__(
        self,
        in_channels: int,
        layers: Sequence[Sequence[int]],
        mid_channels: int = 256,
        out_channels: int = 1024,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResidualBottleneck(out_channels if i else in_channels, mid_channels, out_channels, k, s)
            for i, (k, s) in enumerate(layers)
        )
        self.out_channels = [out_channels] * len(layers)
