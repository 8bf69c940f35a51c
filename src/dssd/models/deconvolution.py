"""DSSD's deconvolution module (paper Figure 3) and the decoder built from it."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dssd.models.blocks import conv_bn

FUSIONS = ("prod", "sum")
UPSAMPLING = ("deconv", "bilinear")


def transposed_conv_shape(in_size: int, out_size: int) -> tuple[int, int, int]:
    """Kernel, stride, padding of a transposed conv mapping ``in_size`` to ``out_size``: unpadded
    while the kernel stays <= 3 (2/2 doubles; 1 -> 3, 3 -> 5: 3x3/1 as in the paper), else (e.g.
    21 -> 41) one more stride and the padding that keeps the kernel at 2-3."""
    if out_size <= in_size:
        raise ValueError(f"the decoder must grow the map, got {in_size} -> {out_size}")
    stride = max(1, out_size // in_size) if in_size > 1 else 1
    kernel = out_size - (in_size - 1) * stride
    if kernel <= 3 or in_size == 1:
        return kernel, stride, 0
    stride += 1
    rest = out_size - (in_size - 1) * stride  # kernel - 2 * padding
    padding = max(0, (3 - rest) // 2)
    return rest + 2 * padding, stride, padding


class DeconvolutionModule(nn.Module):
    """Join a coarse decoder map with the encoder map of the next size up (Figure 3): upsample
    (transposed conv, or bilinear) -> 3x3 conv -> BN, times (the paper's best) or plus the encoder
    map's 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN, then ReLU."""

    def __init__(
        self,
        decoder_channels: int,
        encoder_channels: int,
        decoder_size: int,
        encoder_size: int,
        channels: int = 512,
        fusion: str = "prod",
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if upsample not in UPSAMPLING:
            raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
        self.fusion = fusion
        if upsample == "deconv":
            shape = transposed_conv_shape(decoder_size, encoder_size)  # kernel, stride, padding
            self.upsample: nn.Module = nn.ConvTranspose2d(decoder_channels, channels, *shape)
            up_channels = channels
        else:
            self.upsample = nn.Upsample(size=encoder_size, mode="bilinear", align_corners=False)
            up_channels = decoder_channels
        self.decoder = conv_bn(up_channels, channels, 3, padding=1, relu=False)
        self.lateral = nn.Sequential(
            conv_bn(encoder_channels, channels, 3, padding=1),
            conv_bn(channels, channels, 3, padding=1, relu=False),
        )
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = channels

    def forward(self, decoder_map: Tensor, encoder_map: Tensor) -> Tensor:
        up = self.decoder(self.upsample(decoder_map))
        lateral = self.lateral(encoder_map)
        return self.relu(up * lateral if self.fusion == "prod" else up + lateral)


class Decoder(nn.Module):
    """The DSSD decoder (``dssd`` neck): from the coarsest encoder map (channels and sizes largest
    first) back to the largest, one :class:`DeconvolutionModule` per step, it returns the fused
    maps, largest first, then the coarsest encoder map: DSSD's sources."""

    def __init__(
        self,
        in_channels: Sequence[int],
        sizes: Sequence[int],
        channels: int = 512,
        fusion: str = "prod",
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        steps = len(in_channels) - 1
        self.modules_coarse_to_fine = nn.ModuleList(
            DeconvolutionModule(
                in_channels[-1] if k == steps - 1 else channels,  # the coarsest map, or fused
                in_channels[k],
                sizes[k + 1],
                sizes[k],
                channels,
                fusion,
                upsample,
            )
            for k in reversed(range(steps))
        )
        self.out_channels: list[int] = [channels] * steps + [in_channels[-1]]

    def forward(self, encoder_maps: Sequence[Tensor]) -> list[Tensor]:
        maps = [encoder_maps[-1]]  # the coarsest encoder map, then each fused map
        for module, skip in zip(
            self.modules_coarse_to_fine, reversed(encoder_maps[:-1]), strict=True
        ):
            maps.append(module(maps[-1], skip))
        return maps[::-1]
