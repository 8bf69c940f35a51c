"""The SSD network: backbone source maps + extra layers + prediction heads + default boxes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dssd.models.default_boxes import DefaultBoxes
from dssd.models.extra_layers import ExtraLayers
from dssd.models.heads import PredictionHeads


class SSD(nn.Module):
    """Single Shot Detector on a backbone that returns its source maps.

    ``net(images) -> (loc [B, P, 4], conf [B, P, C + 1])``; ``net.priors`` holds the ``[P, 4]``
    default boxes (cx, cy, w, h) normalised to the input, in the same order as the predictions.

    Args:
        backbone: a module returning a list of source maps and exposing ``out_channels``.
        num_classes: number of object classes C (background is added).
        image_size: the square input size S; fixes the map sizes and so the default boxes.
        scales: default-box scales, one per source map plus one.
        extra_layers: ``(kernel, stride)`` of each extra residual block after the last
            backbone map.
        extra_mid_channels, extra_out_channels: widths of the extra blocks (256, 1024 in the
            paper).
        aspect_ratios: default-box aspect ratios besides 1 (flips are added).
        head_kernel_sizes: loc/conf conv kernel, one int for all sources or one per source.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        image_size: int,
        scales: Sequence[float],
        extra_layers: Sequence[Sequence[int]],
        extra_mid_channels: int = 256,
        extra_out_channels: int = 1024,
        aspect_ratios: Sequence[float] = (1.6, 2.0, 3.0),
        head_kernel_sizes: Sequence[int] | int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.image_size = image_size
        self.backbone = backbone
        self.extras = ExtraLayers(
            backbone.out_channels[-1], extra_layers, extra_mid_channels, extra_out_channels
        )
        source_channels = [*backbone.out_channels, *self.extras.out_channels]
        self.default_boxes = DefaultBoxes(scales, aspect_ratios)
        self.heads = PredictionHeads(
            source_channels, self.default_boxes.boxes_per_location, num_classes, head_kernel_sizes
        )
        self.feature_sizes = self._source_sizes()
        self.register_buffer("priors", self.default_boxes(self.feature_sizes), persistent=False)

    def sources(self, images: Tensor) -> list[Tensor]:
        """The maps predictions are made from, largest first."""
        features = self.backbone(images)
        return [*features, *self.extras(features[-1])]

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.sources(images))

    @torch.no_grad()
    def _source_sizes(self) -> list[int]:
        """Run a dummy input to read off the source-map sizes (eval mode: 1x1 maps break BN)."""
        was_training = self.training
        self.eval()
        dummy = torch.zeros(1, 3, self.image_size, self.image_size)
        sizes = []
        for x in self.sources(dummy):
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"source maps must be square, got {tuple(x.shape[-2:])}")
            sizes.append(int(x.shape[-1]))
        self.train(was_training)
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"extra layers give source-map sizes {sizes}: check extra_layers")
        return sizes
