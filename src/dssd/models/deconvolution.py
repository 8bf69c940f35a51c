"""DSSD's deconvolution module (paper Figure 3) and the decoder built from it."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dssd.models.blocks import conv_bn

FUSIONS = ("prod", "sum")
UPSAMPLING = ("deconv", "bilinear")


def transposed_conv_shape(in_size: int, out_size: int) -> tuple[int, int, int]:
    """Kernel, stride and padding of a transposed convolution mapping ``in_size`` to
    ``out_size``: ``out = (in - 1) * stride - 2 * padding + kernel``.

    Without padding where the kernel stays small: doubling gives 2/2, and 1 -> 3 or 3 -> 5 give
    a 3x3/1 kernel (the paper's 321 and 513 decoders). Where that kernel would be larger than 3
    (an odd map just under twice the size, e.g. 21 -> 41 behind a backbone that rounds up), the
    stride goes up by one and a padding of 1 or more keeps the kernel at 2 or 3.
    """
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
    """Join a coarse decoder map with the encoder map of the next size up (Figure 3).

    decoder path: upsample (learned transposed conv, or bilinear) -> 3x3 conv -> BN;
    encoder path: 3x3 conv -> BN -> ReLU -> 3x3 conv -> BN;
    fusion: element-wise product (the paper's best) or sum, then ReLU.
    """

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
            kernel, stride, padding = transposed_conv_shape(decoder_size, encoder_size)
            self.upsample: nn.Module = nn.ConvTranspose2d(
                decoder_channels, channels, kernel, stride, padding
            )
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
    """The DSSD decoder (the ``dssd`` neck): starts at the coarsest encoder map and climbs back to
    the largest with one deconvolution module per step.

    Returns the fused maps (``channels`` each), largest first, followed by the coarsest encoder
    map: the maps that DSSD predicts from.

    Args:
        in_channels, sizes: the encoder maps' channels and sizes, largest first.
        channels, fusion, upsample: of every :class:`DeconvolutionModule` (the paper: 512,
            ``prod``, ``deconv``).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        sizes: Sequence[int],
        channels: int = 512,
        fusion: str = "prod",
        upsample: str = "deconv",
    ) -> None:
        super().__init__()
        modules = []
        decoder_channels = in_channels[-1]
        for k in reversed(range(len(in_channels) - 1)):
            module = DeconvolutionModule(
                decoder_channels,
                in_channels[k],
                sizes[k + 1],
                sizes[k],
                channels=channels,
                fusion=fusion,
                upsample=upsample,
            )
            modules.append(module)
            decoder_channels = module.out_channels
        self.modules_coarse_to_fine = nn.ModuleList(modules)
        self.out_channels: list[int] = [channels] * len(modules) + [in_channels[-1]]

    def forward(self, encoder_maps: Sequence[Tensor]) -> list[Tensor]:
        maps = [encoder_maps[-1]]  # the coarsest encoder map, then each fused map
        for module, skip in zip(
            self.modules_coarse_to_fine, reversed(encoder_maps[:-1]), strict=True
        ):
            maps.append(module(maps[-1], skip))
        return maps[::-1]
