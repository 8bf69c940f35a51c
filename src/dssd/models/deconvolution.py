"""DSSD's deconvolution module (paper Figure 3) and the decoder built from it."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from dssd.models.blocks import conv_bn

FUSIONS = ("prod", "sum")
UPSAMPLING = ("deconv", "bilinear")


def transposed_conv_shape(in_size: int, out_size: int) -> tuple[int, int]:
    """Kernel and stride of a transposed convolution mapping ``in_size`` to ``out_size``.

    ``out = (in - 1) * stride + kernel`` with no padding or cropping: doubling gives 2/2, and
    1 -> 3 or 3 -> 5 give a 3x3 kernel (the paper's 321 and 513 decoders).
    """
    if out_size <= in_size:
        raise ValueError(f"the decoder must grow the map, got {in_size} -> {out_size}")
    stride = max(1, out_size // in_size) if in_size > 1 else 1
    kernel = out_size - (in_size - 1) * stride
    return kernel, stride


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
            kernel, stride = transposed_conv_shape(decoder_size, encoder_size)
            self.upsample: nn.Module = nn.ConvTranspose2d(
                decoder_channels, channels, kernel, stride
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
        x = encoder_maps[-1]
        fused = []
        for module, skip in zip(
            self.modules_coarse_to_fine, reversed(encoder_maps[:-1]), strict=True
        ):
            x = module(x, skip)
            fused.append(x)
        return [*reversed(fused), encoder_maps[-1]]
