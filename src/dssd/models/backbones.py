"""Backbones returning the stride-8 and stride-16 source maps, and their weight loading."""

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
    """ImageNet weights or a weights file were asked for but are not on disk (no download)."""


def load_imagenet_weights(
    model: nn.Module, arch: str, skip_prefixes: tuple[str, ...] = ("fc.",)
) -> None:
    """Load torchvision's ImageNet weights for ``arch`` from the local torch hub cache, never
    downloaded: a node without internet should get a clear error, not a silent download."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
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
    """Load a local state-dict file (bare or under ``"state_dict"`` or ``"model"``) into ``model``,
    the torchvision ``arch`` a backbone is cut from, in torchvision's naming or the backbone's own
    (``own_prefixes`` -> torchvision's), whichever matches more; ignoring ``skip_prefixes``."""
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
        first_line = (str(err).strip().splitlines() or [""])[0]
        raise UserError(
            f"cannot read backbone weights {file} as a state dict "
            f"({type(err).__name__}: {first_line}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from err
    if isinstance(loaded, Mapping):
        inner = [loaded[k] for k in ("state_dict", "model") if isinstance(loaded.get(k), Mapping)]
        loaded = inner[0] if inner else loaded
    if not isinstance(loaded, Mapping):
        raise UserError(f"backbone weights {file} hold a {type(loaded).__name__}, not a state dict")
    state = {k: v for k, v in loaded.items() if isinstance(k, str) and isinstance(v, Tensor)}

    network = {k: v for k, v in model.state_dict().items() if not k.startswith(skip_prefixes)}
    to_theirs = {k: _renamed(k, own_prefixes) for k in state}
    back = {theirs: own for own, theirs in own_prefixes.items()}

    def to_own(key: str) -> str:
        return _renamed(key, back) or key

    own_hits = sum(n in network for n in to_theirs.values())
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
    names = to_theirs if own_naming else {k: k for k in state}
    ignored = [k for k, n in names.items() if n is not None and n.startswith(skip_prefixes)]
    matched = {k: n for k, n in names.items() if n in network}
    unexpected = [k for k in state if k not in matched and k not in ignored]
    loaded_names = set(matched.values())
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
    counts = f"{_count(missing, 'missing')}; {_count(unexpected, 'unexpected')}; {len(ignored)}"
    log.info(
        "loaded %d tensors from %s (%s naming); %s ignored", len(matched), file, naming, counts
    )


def _renamed(key: str, prefixes: Mapping[str, str]) -> str | None:
    """``key`` with the first of ``prefixes`` it starts with replaced by its value, else None."""
    return next(
        (new + key[len(old) :] for old, new in prefixes.items() if key.startswith(old)), None
    )


def _count(names: list[str], what: str, shown: int = 5) -> str:
    """``"2 missing (a, b)"``: how many names, and the first few."""
    more = f", ... ({len(names) - shown} more)" if len(names) > shown else ""
    return f"{len(names)} {what} ({', '.join(names[:shown])}{more})" if names else f"0 {what}"


def check_weight_choice(pretrained: bool, weights: str | os.PathLike[str] | None) -> None:
    if pretrained and weights is not None:
        raise UserError(
            f"the backbone got both pretrained=true and weights={weights}: choose one "
            "(model.net.backbone.pretrained=false to start from the file, or "
            "model.net.backbone.weights=null for torchvision's ImageNet weights)"
        )


class _ScaledResNet(torchvision.models.ResNet):
    """torchvision's ResNet with ``width`` channels after the stem instead of 64, every later
    stage scaled alike (conv5_x: 8 x width, times the block's expansion)."""

    def __init__(self, block: type[nn.Module], layers: list[int], width: int) -> None:
        self.width = width
        super().__init__(block, layers)
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block: type[nn.Module], planes: int, *args, **kwargs) -> nn.Sequential:
        if planes == 64:  # conv2_x: its input is the stem's output
            self.inplanes = self.width
        return super()._make_layer(block, planes * self.width // 64, *args, **kwargs)


# ResNetBackbone's key prefixes -> torchvision's
_RESNET_OWN_PREFIXES = {
    "stem.0.": "conv1.",
    "stem.1.": "bn1.",
    **{f"conv{i + 1}.": f"layer{i}." for i in range(1, 5)},
}


class ResNetBackbone(nn.Module):
    """ResNet-``depth`` encoder returning the conv3_x and conv5_x maps, with DSSD's surgery for the
    paper's Table 2: the stem's max-pool is 3x3/2 unpadded with ceil rounding as in the released
    Caffe model (torchvision's gives 321 -> 41, not 40); conv5_x keeps stride 16, its 3x3 convs
    dilated by 2. ``width``: channels after the stem (64: the paper's). ``pretrained``: ImageNet
    weights (width 64 only); ``weights``: a local file, in torchvision's naming or its own."""

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

        for conv in resnet.layer4.modules():  # conv5_x: stride 1, 3x3 convolutions dilated by 2
            if isinstance(conv, nn.Conv2d):
                conv.stride = (1, 1)
                if conv.kernel_size == (3, 3):
                    conv.dilation = conv.padding = (2, 2)
        pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, pool)
        self.conv2 = resnet.layer1
        self.conv3 = resnet.layer2
        self.conv4 = resnet.layer3
        self.conv5 = resnet.layer4
        expansion = _BLOCKS[depth][0].expansion
        self.out_channels: list[int] = [2 * width * expansion, 8 * width * expansion]

    def forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.conv3(self.conv2(self.stem(x)))
        return [c3, self.conv5(self.conv4(c3))]


@dataclass(frozen=True)
class _TorchvisionSpec:
    """How to cut a torchvision classifier into a stride-8 / stride-16 backbone."""

    nodes: tuple[str, str]  # graph nodes (get_graph_node_names) of the two source maps
    out_channels: tuple[int, int]
    unused: tuple[str, ...]  # torchvision key prefixes the backbone does not use
    kwargs: dict[str, object] = field(default_factory=dict)


_TORCHVISION_BACKBONES = {
    # the last stride-8 block (its residual add) and the final 1x1 conv
    "mobilenet_v3_large": _TorchvisionSpec(
        ("features.6.add", "features.16"), (40, 960), ("classifier.",), {"dilated": True}
    ),
    # the stride-8 and stride-16 stages (their last block's residual add)
    "convnext_tiny": _TorchvisionSpec(
        ("features.3.2.add", "features.5.8.add"),
        (192, 384),
        ("classifier.", "features.6.", "features.7."),
    ),
}
TORCHVISION_BACKBONES = tuple(_TORCHVISION_BACKBONES)


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier (:data:`TORCHVISION_BACKBONES`) cut into a stride-8 and a stride-16
    map, weights as for :class:`ResNetBackbone` (own naming: ``body.`` + torchvision's). MobileNetV3
    is built ``dilated`` (stride 16 at the end); ConvNeXt drops its stride-32 stage, its 4x4/4 stem
    gives maps of floor(S / 8), floor(S / 16) (321 -> 40, 20); its stochastic depth stays on."""

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
        self.body = create_feature_extractor(
            model, return_nodes={spec.nodes[0]: "stride8", spec.nodes[1]: "stride16"}
        )
        self.out_channels: list[int] = list(spec.out_channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.body(x)
        return [maps["stride8"], maps["stride16"]]

    def __deepcopy__(self, memo: dict[int, object]) -> TorchvisionBackbone:
        # torchvision's extractor comes out of a deep copy in training mode: put every mode back
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update(copy.deepcopy(self.__dict__, memo))
        for original, module in zip(self.modules(), copied.modules(), strict=True):
            module.training = original.training
        return copied
