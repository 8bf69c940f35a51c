"""The SSD and DSSD networks: encoder source maps, optional decoder, prediction modules, heads."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dssd.models.default_boxes import DefaultBoxes
from dssd.models.heads import PredictionHeads
from dssd.models.prediction_modules import PredictionModule


class SSD(nn.Module):
    """Single Shot Detector; with DSSD's decoder as its ``neck`` it is DSSD (paper Figure 1).

    ``net(images) -> (loc [B, P, 4], conf [B, P, C + 1])``; ``net.priors`` holds the ``[P, 4]``
    default boxes (cx, cy, w, h) normalised to the input, in the same order as the predictions.

    The encoder is ``backbone`` followed by ``extras``; SSD predicts from its maps. A neck
    (``self.decoder``) turns them into as many maps of the same sizes: DSSD's decoder climbs back
    from the coarsest map with one deconvolution module per step and predicts from every fused map
    plus the coarsest encoder map; FPN, PANet and BiFPN (:mod:`dssd.models.necks`) are the
    alternatives. A prediction module sits before each pair of loc/conf heads.

    Args:
        backbone: returns a list of source maps and exposes ``out_channels``.
        extras: builds the extra layers from the last backbone map's channels (a Hydra partial);
            the module returns a list of maps and exposes ``out_channels``.
        num_classes: number of object classes C (background is added).
        image_size: the square input size S; fixes the map sizes and so the default boxes.
        scales: default-box scales, one per source map plus one.
        aspect_ratios: default-box aspect ratios besides 1 (flips are added), shared or per source.
        head_kernel_sizes: loc/conf conv kernel, one int for all sources, or a list from the
            largest source on whose last value repeats (see :class:`PredictionHeads`).
        prediction_module: builds a prediction module from a map's channels; default (a).
        neck: builds the neck as ``neck(in_channels, sizes, channels=neck_channels)``
            (a Hydra partial of :class:`~dssd.models.Decoder`, :class:`~dssd.models.FPN`, ...);
            ``None`` for plain SSD.
        neck_channels: the width of the neck's maps (DSSD's deconvolution modules: 512).
    """

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
        _check_neck(neck)
        self.num_classes = num_classes
        self.image_size = image_size
        self.backbone = backbone
        self.extras = extras(backbone.out_channels[-1])
        encoder_channels = [*backbone.out_channels, *self.extras.out_channels]
        self.feature_sizes = self._encoder_sizes()
        self.decoder = (
            neck(encoder_channels, self.feature_sizes, channels=neck_channels)
            if neck is not None
            else None
        )
        source_channels = self.decoder.out_channels if self.decoder else encoder_channels
        if prediction_module is None:  # (a): the heads sit directly on the maps
            prediction_module = functools.partial(PredictionModule, variant="a")
        self.prediction_modules = nn.ModuleList(prediction_module(c) for c in source_channels)
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
        maps = self.sources(images)
        return self.heads(
            [module(x) for module, x in zip(self.prediction_modules, maps, strict=True)]
        )

    @torch.no_grad()
    def _encoder_sizes(self) -> list[int]:
        """Run a dummy input to read off the map sizes (eval mode: 1x1 maps break BN)."""
        was_training = self.training
        self.eval()
        dummy = torch.zeros(1, 3, self.image_size, self.image_size)
        sizes = []
        for x in self.encoder(dummy):
            if x.shape[-1] != x.shape[-2]:
                raise ValueError(f"source maps must be square, got {tuple(x.shape[-2:])}")
            sizes.append(int(x.shape[-1]))
        self.train(was_training)
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"extra layers give source-map sizes {sizes}: check extra_layers")
        return sizes


def _check_neck(neck: Callable[..., nn.Module] | None) -> None:
    """A clear error for options given to a neck that does not take them (``fusion=`` and
    ``upsample=`` with a neck other than DSSD's, or with none)."""
    hint = "fusion=... and upsample=... apply to neck=dssd only (e.g. model=dssd321)"
    if neck is not None and not callable(neck):
        raise ValueError(f"neck must build a neck, got {neck!r}: {hint}")
    if isinstance(neck, functools.partial):
        accepted = inspect.signature(neck.func).parameters
        unknown = sorted(set(neck.keywords) - set(accepted))
        if unknown:
            raise ValueError(f"neck {neck.func.__name__} takes no {unknown}: {hint}")
