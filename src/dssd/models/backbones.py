"""ResNet trunks with the DSSD paper's surgery.

DSSD (and the ResNet SSD baseline) uses a ResNet as the encoder with two changes that keep the
feature maps at the resolutions of the paper's Table 2:

* the stem's max-pool is 3x3 / stride 2 with *no padding* and ceil rounding, as in the released
  Caffe model (torchvision pads by 1, which gives 321 -> 41 instead of 40);
* conv5_x keeps stride 16: its stride-2 convolutions become stride 1 and its 3x3 convolutions are
  dilated by 2, so the receptive field still grows.

The backbone returns the two source maps the detector predicts from: the last block of conv3_x
(stride 8) and of conv5_x (stride 16); :class:`TorchvisionBackbone` gives newer torchvision
networks (MobileNetV3, ConvNeXt) the same contract. ``width`` narrows a ResNet for the CPU-sized
models on the embedded data (docs/reproducing.md, the network search). Every backbone starts from
scratch, from torchvision's ImageNet weights in the torch hub cache (``pretrained``) or from a
local state-dict file (``weights``, see :func:`load_weights_file`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.resnet import BasicBlock, Bottleneck

from dssd.errors import UserError

log = logging.getLogger(__name__)

# torchvision's ResNets: residual block and blocks per stage (conv2_x .. conv5_x)
_BLOCKS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
RESNET_DEPTHS = tuple(_BLOCKS)


class PretrainedWeightsNotFoundError(UserError, FileNotFoundError):
    """Raised when ImageNet weights or a weights file are asked for but are not on disk (no
    download here)."""


def load_imagenet_weights(
    model: nn.Module, arch: str, skip_prefixes: tuple[str, ...] = ("fc.",)
) -> None:
    """Load torchvision's ImageNet weights for ``arch`` from the local torch hub cache.

    The weights are never downloaded implicitly: a cluster node or CI box often has no internet,
    and a silent multi-hundred-MB download in the middle of a launch is worse than a clear error.
    """
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    file_name = Path(weights.url).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    if not path.is_file():
        raise PretrainedWeightsNotFoundError(
            f"ImageNet weights for {arch} not found at {path}.\n"
            f"Download {weights.url} and put it there (the directory follows $TORCH_HOME, "
            f"currently {os.environ.get('TORCH_HOME', '~/.cache/torch')}), "
            "or train from scratch with model.net.backbone.pretrained=false."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(skip_prefixes)]
    if missing or unexpected:
        raise RuntimeError(
            f"{path} does not fit {arch}: missing {missing}, unexpected {unexpected}"
        )


def load_weights_file(
    model: nn.Module,
    path: str | os.PathLike[str],
    arch: str,
    own_prefixes: Mapping[str, str],
    skip_prefixes: tuple[str, ...] = (),
) -> None:
    """Load a local state-dict file into ``model``, the torchvision ``arch`` a backbone is cut from.

    The file holds a bare state dict, or a dict with one under ``"state_dict"`` or ``"model"``.
    Its keys follow torchvision's naming for ``arch`` (``conv1.weight``, ``layer1.0.conv1.weight``,
    ...) or the backbone's own (its ``state_dict()`` keys); the naming that matches more keys wins.
    ``own_prefixes`` maps the backbone's key prefixes to torchvision's (``"stem.0." -> "conv1."``).
    Keys under ``skip_prefixes`` (torchvision's naming: the classifier, stages the backbone does
    not use) are ignored on both sides.

    Logs how many tensors were loaded and which were missing or unexpected; raises a
    :class:`UserError` naming the file when a tensor's shape does not fit or nothing matches, and
    :class:`PretrainedWeightsNotFoundError` when the file is not there.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        where = "" if file.is_absolute() else f" (absolute path: {file.absolute()})"
        raise PretrainedWeightsNotFoundError(
            f"backbone weights file {file} not found{where}.\n"
            "Put the state-dict file there, or start without it: "
            "model.net.backbone.weights=null."
        )
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors alike
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(
            f"cannot read backbone weights {file} as a state dict "
            f"({type(err).__name__}: {first_line}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from err
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping):
        raise UserError(f"backbone weights {file} hold a {type(loaded).__name__}, not a state dict")
    state = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, Tensor)}

    network = {k: v for k, v in model.state_dict().items() if not k.startswith(skip_prefixes)}

    def from_own(key: str) -> str | None:
        for own, theirs in own_prefixes.items():
            if key.startswith(own):
                return theirs + key[len(own) :]
        return None

    def to_own(key: str) -> str:
        for own, theirs in own_prefixes.items():
            if key.startswith(theirs):
                return own + key[len(theirs) :]
        return key

    own_hits = sum(from_own(k) in network for k in state)
    torchvision_hits = sum(k in network for k in state)
    if not own_hits and not torchvision_hits:
        examples = list(network)[:2]
        raise UserError(
            f"backbone weights {file} hold no tensor of the {arch} backbone: expected "
            f"torchvision's naming for {arch} (e.g. {', '.join(examples)}) or the "
            f"backbone's own (e.g. {', '.join(map(to_own, examples))}); the file has {len(state)} "
            f"tensors, e.g. {', '.join(list(state)[:3]) or 'none'}"
        )
    own_naming = own_hits > torchvision_hits
    naming = "the backbone's own" if own_naming else f"torchvision's {arch}"
    # file key -> the network's (torchvision) key, or None where the network has no such tensor
    names = {k: from_own(k) if own_naming else k for k in state}
    ignored = [k for k, n in names.items() if n is not None and n.startswith(skip_prefixes)]
    matched = {k: n for k, n in names.items() if n in network}
    unexpected = [k for k in state if k not in matched and k not in ignored]
    loaded_names = set(matched.values())
    # in the file's naming
    missing = [to_own(n) if own_naming else n for n in network if n not in loaded_names]

    misfits = [k for k, n in matched.items() if state[k].shape != network[n].shape]
    if misfits:
        listing = "\n".join(
            f"  {k}: file {list(state[k].shape)}, network {list(network[matched[k]].shape)}"
            for k in misfits[:5]
        )
        raise UserError(
            f"backbone weights {file} do not fit the {arch} backbone: {len(misfits)} of "
            f"{len(matched)} tensors ({naming} naming) have other shapes (another depth, "
            f"width or architecture?)\n{listing}"
        )
    model.load_state_dict({matched[k]: state[k] for k in matched}, strict=False)
    log.info(
        "loaded %d tensors from %s (%s naming); %d missing%s; %d unexpected%s; %d ignored",
        len(matched),
        file,
        naming,
        len(missing),
        _first_few(missing),
        len(unexpected),
        _first_few(unexpected),
        len(ignored),
    )


def _first_few(names: list[str], count: int = 5) -> str:
    if not names:
        return ""
    more = f", ... ({len(names) - count} more)" if len(names) > count else ""
    return f" ({', '.join(names[:count])}{more})"


def check_weight_choice(pretrained: bool, weights: str | os.PathLike[str] | None) -> None:
    if pretrained and weights is not None:
        raise UserError(
            f"the backbone got both pretrained=true and weights={weights}: choose one "
            "(model.net.backbone.pretrained=false to start from the file, or "
            "model.net.backbone.weights=null for torchvision's ImageNet weights)"
        )


class _ScaledResNet(torchvision.models.ResNet):
    """torchvision's ResNet with ``width`` channels after the stem instead of 64, and every
    later stage scaled alike (conv3_x: 2 x width, ..., conv5_x: 8 x width, times the block's
    expansion)."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: int) -> None:
        self.width = width
        super().__init__(block, layers)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(
        self,
        block: type[nn.Module],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        if planes == 64:  # conv2_x: its input is the stem's output
            self.inplanes = self.width
        return super()._make_layer(block, planes * self.width // 64, blocks, stride, dilate)


# ResNetBackbone's key prefixes -> torchvision's
_RESNET_OWN_PREFIXES = {
    "stem.0.": "conv1.",
    "stem.1.": "bn1.",
    "conv2.": "layer1.",
    "conv3.": "layer2.",
    "conv4.": "layer3.",
    "conv5.": "layer4.",
}


class ResNetBackbone(nn.Module):
    """ResNet-{18,34,50,101,152} encoder returning the conv3_x and conv5_x source maps.

    Args:
        depth: 18, 34, 50, 101 or 152.
        pretrained: start from torchvision's ImageNet weights (torch hub cache; width 64 only).
        width: channels after the stem (64: the paper's ResNets).
        weights: a local state-dict file to start from instead, in torchvision's naming for the
            ResNet (``fc.*`` is ignored) or this backbone's; any width (see
            :func:`load_weights_file`).
    """

    def __init__(
        self,
        depth: int = 101,
        pretrained: bool = False,
        width: int = 64,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        check_weight_choice(pretrained, weights)
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth}")
        if width <= 0 or width % 8:
            raise ValueError(f"ResNet width must be a positive multiple of 8, got {width}")
        if pretrained and width != 64:
            raise ValueError(
                f"ImageNet weights exist only for width 64, got width={width}: "
                "set model.net.backbone.pretrained=false or width=64"
            )
        arch = f"resnet{depth}"
        if width == 64:
            resnet = torchvision.models.get_model(arch, weights=None)
        else:
            resnet = _ScaledResNet(*_BLOCKS[depth], width)
        resnet.fc = nn.Identity()
        if pretrained:
            load_imagenet_weights(resnet, arch)
        elif weights is not None:
            load_weights_file(resnet, weights, arch, _RESNET_OWN_PREFIXES, skip_prefixes=("fc.",))

        resnet.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        _dilate_stage(resnet.layer4, dilation=2)

        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.conv2 = resnet.layer1
        self.conv3 = resnet.layer2
        self.conv4 = resnet.layer3
        self.conv5 = resnet.layer4
        expansion = 4 if depth >= 50 else 1
        self.out_channels: list[int] = [2 * width * expansion, 8 * width * expansion]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.conv2(self.stem(x))
        c3 = self.conv3(x)
        c5 = self.conv5(self.conv4(c3))
        return [c3, c5]


def _dilate_stage(stage: nn.Module, dilation: int) -> None:
    """Turn a stride-2 ResNet stage into a stride-1 stage with dilated 3x3 convolutions."""
    for module in stage.modules():
        if not isinstance(module, nn.Conv2d):
            continue
        module.stride = (1, 1)
        if module.kernel_size == (3, 3):
            module.dilation = (dilation, dilation)
            module.padding = (dilation, dilation)


@dataclass(frozen=True)
class _TorchvisionSpec:
    """How to cut a torchvision classifier into a stride-8 / stride-16 backbone."""

    # graph nodes (get_graph_node_names) of the stride-8 and the stride-16 source map
    nodes: tuple[str, str]
    out_channels: tuple[int, int]
    # torchvision key prefixes the backbone does not use
    unused: tuple[str, ...]
    kwargs: dict[str, object] = field(default_factory=dict)


_TORCHVISION_BACKBONES = {
    # features.6: the last stride-8 block (its residual add); features.16: the final 1x1 conv
    "mobilenet_v3_large": _TorchvisionSpec(
        nodes=("features.6.add", "features.16"),
        out_channels=(40, 960),
        unused=("classifier.",),
        kwargs={"dilated": True},
    ),
    # features.3 / features.5: the stride-8 / stride-16 stages (their last block's residual add)
    "convnext_tiny": _TorchvisionSpec(
        nodes=("features.3.2.add", "features.5.8.add"),
        out_channels=(192, 384),
        unused=("classifier.", "features.6.", "features.7."),
    ),
}
TORCHVISION_BACKBONES = tuple(_TORCHVISION_BACKBONES)


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier cut into a stride-8 and a stride-16 source map.

    * ``mobilenet_v3_large``: built with ``dilated=True`` (the last stage keeps stride 16 with
      dilated convolutions); sources: the last stride-8 block (40 channels) and the final 1x1
      conv (960 channels, stride 16).
    * ``convnext_tiny``: sources: the stride-8 stage (192 channels) and the stride-16 stage (384
      channels); the stride-32 stage (and its downsampling layer) is not used. Its stem is a 4x4
      stride-4 patchify conv without padding, so the maps are floor(S / 8) and floor(S / 16)
      (321 -> 40, 20); torchvision's stochastic depth (0.1) stays on in training.

    Args:
        name: one of :data:`TORCHVISION_BACKBONES`.
        pretrained: start from torchvision's ImageNet weights (torch hub cache, never downloaded).
        weights: a local state-dict file to start from instead, in torchvision's naming for
            ``name`` or this backbone's (``body.`` + torchvision's); see
            :func:`load_weights_file`.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool = False,
        weights: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        if name not in _TORCHVISION_BACKBONES:
            raise ValueError(
                f"unknown torchvision backbone {name!r}: choose one of "
                f"{', '.join(TORCHVISION_BACKBONES)} (or dssd.models.ResNetBackbone)"
            )
        check_weight_choice(pretrained, weights)
        spec = _TORCHVISION_BACKBONES[name]
        model = torchvision.models.get_model(name, weights=None, **spec.kwargs)
        if pretrained:
            load_imagenet_weights(model, name, skip_prefixes=("classifier.",))
        elif weights is not None:
            load_weights_file(model, weights, name, {"body.": ""}, skip_prefixes=spec.unused)
        self.name = name
        self.body = create_feature_extractor(
            model, return_nodes={spec.nodes[0]: "stride8", spec.nodes[1]: "stride16"}
        )
        self.out_channels: list[int] = list(spec.out_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.body(x)
        return [maps["stride8"], maps["stride16"]]

    def __deepcopy__(self, memo: dict[int, object]) -> TorchvisionBackbone:
        # torchvision's feature extractor comes out of a deep copy in training mode whatever
        # mode it was in (its __deepcopy__ re-runs its __init__, which calls train()): copy as
        # nn.Module does, then put back the extractor's graph and every module's mode.
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update(copy.deepcopy(self.__dict__, memo))
        copied.body.train(self.body.training)
        modes = {name: module.training for name, module in self.named_modules()}
        for name, module in copied.named_modules():
            module.training = modes[name]
        return copied
