"""The SSD and DSSD networks: encoder source maps, optional decoder, prediction modules, heads."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dssd.errors import UserError
from dssd.models.default_boxes import DefaultBoxes
from dssd.models.heads import PredictionHeads
from dssd.models.prediction_modules import PredictionModule, PredictionModules


class SSD(nn.Module):
    """Single Shot Detector; with DSSD's decoder as its ``neck`` it is DSSD (paper Figure 1).

    ``net(images) -> (loc [B, P, 4], conf [B, P, C + 1])``; ``net.priors``: the ``[P, 4]`` default
    boxes (cx, cy, w, h, normalised) in the predictions' order. The encoder (``backbone``, then
    ``extras(channels of its last map)``) gives the maps (sized by the square ``image_size``) that
    ``neck(in_channels, sizes, channels=neck_channels)`` (a Hydra partial of ``Decoder``, ...;
    ``None``: plain SSD) turns into as many of the same sizes, each then fed to a
    ``prediction_module(channels)`` (default (a)) and the heads."""

    def __init__(
        self,
        backbone: nn.Module,
        extras: Callable[[int], nn.Module],
        num_classes: int,
        image_size: int,
        scales: Sequence[float],
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]] = (1.6, 2.0, 3.0),
        head_kernel_sizes: Sequence[int] | int = 3,
        prediction_module: Callable[[int], PredictionModule] | None = None,
        neck: Callable[..., nn.Module] | None = None,
        neck_channels: int = 512,
    ) -> None:
        super().__init__()
        # a clear error for fusion= or upsample= given to a neck other than DSSD's, or none
        hint = "fusion=... and upsample=... apply to neck=dssd only (e.g. model=dssd321)"
        if neck is not None and not callable(neck):
            raise ValueError(f"neck must build a neck, got {neck!r}: {hint}")
        if isinstance(neck, functools.partial):
            accepted = inspect.signature(neck.func).parameters
            if unknown := sorted(set(neck.keywords) - set(accepted)):
                raise ValueError(f"neck {neck.func.__name__} takes no {unknown}: {hint}")
        if isinstance(image_size, bool) or not isinstance(image_size, int):
            raise UserError(f"model.net.image_size={image_size!r}: give the input side in pixels")
        self.num_classes = num_classes
        self.image_size = image_size
        self.backbone = backbone
        self.extras = extras(backbone.out_channels[-1])
        encoder_channels = [*backbone.out_channels, *self.extras.out_channels]
        self.feature_sizes = self._encoder_sizes()
        self.decoder = None
        source_channels = encoder_channels
        if neck is not None:
            self.decoder = neck(encoder_channels, self.feature_sizes, channels=neck_channels)
            source_channels = self.decoder.out_channels
        if prediction_module is None:  # (a): the heads sit directly on the maps
            prediction_module = functools.partial(PredictionModule, variant="a")
        self.prediction_modules = PredictionModules(prediction_module(c) for c in source_channels)
        self.default_boxes = DefaultBoxes(scales, aspect_ratios)
        self.heads = PredictionHeads(
            [m.out_channels for m in self.prediction_modules],
            self.default_boxes.boxes_per_location,
            num_classes,
            head_kernel_sizes,
        )
        self.register_buffer("priors", self.default_boxes(self.feature_sizes), persistent=False)

    def encoder(self, images: Tensor) -> list[Tensor]:
        """The backbone's source maps followed by the extra layers' maps, largest first."""
        features = self.backbone(images)
        return [*features, *self.extras(features[-1])]

    def sources(self, images: Tensor) -> list[Tensor]:
        """The maps predictions are made from, largest first."""
        maps = self.encoder(images)
        return self.decoder(maps) if self.decoder is not None else maps

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.heads(self.prediction_modules(self.sources(images)))

    @torch.no_grad()
    def _encoder_sizes(self) -> list[int]:
        """Run a dummy input to read off the map sizes (eval mode: 1x1 maps break BN)."""
        self.eval()
        sizes = []
        try:
            maps = self.encoder(torch.zeros(1, 3, self.image_size, self.image_size))
        except RuntimeError as err:
            if not re.search(
                r"size can't be greater|size is too small|must be non-negative", str(err)
            ):
                raise
            # an input the layers shrink to nothing
            raise UserError(
                f"model.net.image_size={self.image_size} is too small for this network ({err}); "
                "the paper's inputs are 300/321 and 512/513 pixels"
            ) from None
        for x in maps:
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"source maps must be square, got {tuple(x.shape[-2:])}")
            sizes.append(int(x.shape[-1]))
        self.train()  # as nn.Module.__init__ left it (__init__ is the only caller)
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"extra layers give source-map sizes {sizes}: check extra_layers")
        return sizes
