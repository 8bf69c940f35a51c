"""Backbones beyond the paper's ResNets, and starting a backbone from a local weights file."""

from __future__ import annotations

import copy
import functools
import logging
from pathlib import Path

import hydra
import pytest
import torch
import torchvision
from hydra import compose, initialize_config_dir
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf
from torch import nn

from dssd.errors import UserError, user_errors
from dssd.models import (
    PretrainedWeightsNotFoundError,
    ResNetBackbone,
    TorchvisionBackbone,
    VGGBackbone,
)
from test_configs import compose_train

ROOT = Path(__file__).resolve().parents[1]
BACKBONE_CONF = ROOT / "conf" / "backbone"

# torchvision model, the feature layers that end at the stride-8 and stride-16 maps, the prefixes
# the backbone leaves out, and the map size at stride 8 and 16 for an S x S input
TORCHVISION = {
    "mobilenet_v3_large": {
        "kwargs": {"dilated": True},
        "ends": (7, 17),
        "unused": ("classifier.",),
        "sizes": lambda s: (-(-s // 8), -(-s // 16)),  # padded stride-2 convs round up
    },
    "convnext_tiny": {
        "kwargs": {},
        "ends": (4, 6),
        "unused": ("classifier.", "features.6.", "features.7."),
        "sizes": lambda s: (s // 8, s // 16),  # the 4x4/4 patchify stem rounds down
    },
}

# ResNetBackbone's modules -> torchvision's ResNet's
RESNET_PARTS = {
    "stem.0": "conv1",
    "stem.1": "bn1",
    "conv2": "layer1",
    "conv3": "layer2",
    "conv4": "layer3",
    "conv5": "layer4",
}


@functools.cache
def torchvision_model(name: str, seed: int = 0) -> nn.Module:
    """torchvision's ``name`` at a seeded random init, BN statistics and affines scrambled so
    that every tensor differs from a fresh model's (shared between tests: do not modify)."""
    torch.manual_seed(seed)
    kwargs = TORCHVISION[name]["kwargs"] if name in TORCHVISION else {}
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def resnet_name(own: str) -> str:
    """ResNetBackbone's key -> torchvision's."""
    prefix = next(k for k in RESNET_PARTS if own.startswith(k + "."))
    return RESNET_PARTS[prefix] + own[len(prefix) :]


def expected_state(backbone: nn.Module, source: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict as it should be after loading ``source`` (torchvision's)."""
    theirs = source.state_dict()
    if isinstance(backbone, ResNetBackbone):
        return {k: theirs[resnet_name(k)] for k in backbone.state_dict()}
    return {k: theirs[k.removeprefix("body.")] for k in backbone.state_dict()}


def assert_same_state(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    unequal = [k for k in got if not torch.equal(got[k], want[k])]
    assert not unequal, f"{len(unequal)} tensors differ, e.g. {unequal[:3]}"


def build(name: str, **kwargs) -> nn.Module:
    if name.startswith("resnet"):
        return ResNetBackbone(int(name.removeprefix("resnet")), **kwargs)
    return TorchvisionBackbone(name, **kwargs)


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_backbone_maps_are_the_plain_models_stride_8_and_16_features(name):
    spec = TORCHVISION[name]
    source = torchvision_model(name)
    backbone = TorchvisionBackbone(name).eval()
    # its state dict is torchvision's under body., less the classifier and unused stages
    kept = {"body." + k for k in source.state_dict() if not k.startswith(spec["unused"])}
    assert set(backbone.state_dict()) == kept
    backbone.load_state_dict(expected_state(backbone, source))
    for size in (65, 97):  # 65 // 8 = 8 and 97 // 8 = 12, rounded up 9 and 13
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            maps = backbone(x)
            reference = [source.features[:end](x) for end in spec["ends"]]
        assert isinstance(maps, list) and len(maps) == 2
        assert [m.shape[1] for m in maps] == backbone.out_channels
        assert [tuple(m.shape[-2:]) for m in maps] == [(s, s) for s in spec["sizes"](size)]
        for got, want in zip(maps, reference, strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)


def test_mobilenet_keeps_stride_16_by_dilation():
    backbone = TorchvisionBackbone("mobilenet_v3_large")
    dilated = [m for m in backbone.modules() if isinstance(m, nn.Conv2d) and m.dilation != (1, 1)]
    assert dilated and all(m.stride == (1, 1) for m in dilated)


def test_deep_copy_keeps_the_modes():
    """torchvision's feature extractor alone comes out of a deep copy in training mode."""
    backbone = TorchvisionBackbone("mobilenet_v3_large").eval()
    backbone.body.get_submodule("features.3").train()  # e.g. a stage left to train
    copied = copy.deepcopy(backbone)
    assert [m.training for m in copied.modules()] == [m.training for m in backbone.modules()]
    backbone.eval()
    x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = backbone(x)
        got = copy.deepcopy(backbone)(x)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_unknown_torchvision_backbone_lists_the_supported_ones():
    with pytest.raises(ValueError, match="mobilenet_v3_large, convnext_tiny"):
        TorchvisionBackbone("efficientnet_b0")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large", "convnext_tiny"])
def test_weights_file_in_torchvision_naming_loads(tmp_path, caplog, name):
    source = torchvision_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)  # with its classifier, which is ignored
    torch.manual_seed(2)
    with caplog.at_level(logging.INFO, logger="dssd.models.backbones"):
        backbone = build(name, weights=str(path))
    want = expected_state(backbone, source)
    assert_same_state(backbone.state_dict(), want)
    assert f"loaded {len(want)} tensors from {path}" in caplog.text
    assert "0 missing; 0 unexpected" in caplog.text


@pytest.mark.parametrize(
    "name,wrapper",
    [
        *((name, None) for name in ["resnet18", "mobilenet_v3_large", "convnext_tiny"]),
        # the unwrapping is the loader's, not the network's: one network is enough
        ("resnet18", "state_dict"),
        ("mobilenet_v3_large", "model"),
    ],
)
def test_weights_file_in_the_backbones_own_naming_loads(tmp_path, name, wrapper):
    torch.manual_seed(3)
    saved = build(name).state_dict()
    path = tmp_path / "own.pt"
    torch.save(saved if wrapper is None else {wrapper: saved, "epoch": 3}, path)
    torch.manual_seed(4)
    assert_same_state(build(name, weights=path).state_dict(), saved)


def test_narrow_resnet_loads_a_file_of_its_width(tmp_path):
    torch.manual_seed(5)
    saved = ResNetBackbone(18, width=32).state_dict()
    torch.save(saved, tmp_path / "narrow.pt")
    torch.manual_seed(6)
    loaded = ResNetBackbone(18, width=32, weights=tmp_path / "narrow.pt")
    assert_same_state(loaded.state_dict(), saved)


def test_resnet_with_weights_computes_what_torchvisions_resnet_loaded_module_by_module(tmp_path):
    source = torchvision_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(8)
    reference = ResNetBackbone(18)
    for own, theirs in RESNET_PARTS.items():
        reference.get_submodule(own).load_state_dict(source.get_submodule(theirs).state_dict())
    loaded = ResNetBackbone(18, weights=path).eval()
    x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got, want = loaded(x), reference.eval()(x)
        fresh = ResNetBackbone(18).eval()(x)
    # the stem's surgery is kept: 65 -> 33 -> 16 (torchvision's padded max-pool gives 17)
    assert [tuple(m.shape[-2:]) for m in got] == [(8, 8), (4, 4)]
    for g, w, f in zip(got, want, fresh, strict=True):
        assert torch.equal(g, w)
        assert not torch.allclose(g, f)


def test_weights_of_another_depth_name_the_file_and_the_tensor(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError) as err:
        ResNetBackbone(50, weights=path)
    message = str(err.value)
    assert str(path) in message
    assert "layer1.0.conv1.weight: file [64, 64, 3, 3], network [64, 64, 1, 1]" in message


def test_weights_of_another_width_name_the_file_and_the_tensor(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserError) as err:
        ResNetBackbone(18, width=32, weights=path)
    message = str(err.value)
    assert str(path) in message
    assert "conv1.weight: file [64, 3, 7, 7], network [32, 3, 7, 7]" in message
    assert message.count("network [") == 5  # the first five of many


def test_a_missing_weights_file_in_a_config_is_reported_as_its_message(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``instantiate`` wraps the constructor's error in its own; the entry points print the
    constructor's message alone and exit with status 2, as for any user error."""
    path = tmp_path / "nowhere" / "resnet18.pth"
    cfg = {"_target_": "dssd.models.ResNetBackbone", "depth": 18, "weights": str(path)}
    with pytest.raises(SystemExit) as exit_info, user_errors():
        hydra.utils.instantiate(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: backbone weights file") and str(path) in err
    assert "Error in call to target" not in err
    with pytest.raises(hydra.errors.InstantiationException) as bug, user_errors():
        hydra.utils.instantiate({"_target_": "operator.truediv", "_args_": [1, 0]})
    assert isinstance(bug.value.__cause__, ZeroDivisionError)  # a bug keeps its traceback


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (
            {"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu", "devices": 0},
            "Trainer settings: `Trainer(devices=0)` value is not a valid",
        ),
        (  # a ValueError (exit status 1, Hydra's "Error in call to target" before)
            {"_target_": "pytorch_lightning.Trainer", "strategy": "nonsense"},
            "Trainer settings: You selected an invalid strategy name",
        ),
        (
            {"_target_": "dssd.models.ResNetBackbone", "depth": 19},
            "ResNetBackbone settings: ResNet depth must be one of",
        ),
    ],
)
def test_a_constructors_verdict_on_its_config_is_reported_as_its_message(
    cfg: dict, message: str, capsys: pytest.CaptureFixture
) -> None:
    """A ``MisconfigurationException`` or ``ValueError`` from a constructor ``instantiate``
    called (the trainer group's arguments) is the config's fault: its message, exit status 2;
    raised elsewhere (e.g. in a training step) it may be a bug and keeps its traceback."""
    with pytest.raises(SystemExit) as exit_info, user_errors():
        hydra.utils.instantiate(cfg)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    for error in (MisconfigurationException, ValueError):
        with pytest.raises(error), user_errors():
            raise error("outside a constructor")


def test_missing_weights_file_names_the_path_and_the_fix(tmp_path):
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(PretrainedWeightsNotFoundError) as err:
        ResNetBackbone(18, weights=str(path))
    assert str(path) in str(err.value)
    assert "model.net.backbone.weights=null" in str(err.value)
    with pytest.raises(PretrainedWeightsNotFoundError, match="weights=null"):
        TorchvisionBackbone("mobilenet_v3_large", weights=path)


@pytest.mark.parametrize(
    "content,expected",
    [
        ({"head.weight": torch.zeros(3), "head.bias": torch.zeros(3)}, "no tensor"),
        (torch.zeros(3), "not a state dict"),
    ],
)
def test_unrelated_file_is_refused_with_the_expected_naming(tmp_path, content, expected):
    path = tmp_path / "unrelated.pt"
    torch.save(content, path)
    with pytest.raises(UserError, match=expected) as err:
        ResNetBackbone(18, weights=path)
    assert str(path) in str(err.value)
    if isinstance(content, dict):
        assert "conv1.weight" in str(err.value) and "stem.0.weight" in str(err.value)


def test_partial_file_loads_and_reports_missing_and_unexpected(tmp_path, caplog):
    source = torchvision_model("resnet18")
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4.")}
    state["extra.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "partial.pt")
    with caplog.at_level(logging.INFO, logger="dssd.models.backbones"):
        backbone = ResNetBackbone(18, weights=tmp_path / "partial.pt")
    assert torch.equal(backbone.conv4[1].conv2.weight, source.layer3[1].conv2.weight)
    assert not torch.equal(backbone.conv5[1].conv2.weight, source.layer4[1].conv2.weight)
    missing = sum(1 for k in source.state_dict() if k.startswith("layer4."))
    assert f"{missing} missing (layer4.0.conv1.weight" in caplog.text
    assert "1 unexpected (extra.weight)" in caplog.text
    # a file in the backbone's own naming is reported in that naming
    own = {k: v for k, v in backbone.state_dict().items() if not k.startswith("conv5.")}
    torch.save(own, tmp_path / "own.pt")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dssd.models.backbones"):
        ResNetBackbone(18, weights=tmp_path / "own.pt")
    assert f"{missing} missing (conv5.0.conv1.weight" in caplog.text
    assert "0 unexpected" in caplog.text


def test_pretrained_and_weights_together_are_refused(tmp_path):
    with pytest.raises(UserError, match="choose one"):
        ResNetBackbone(18, pretrained=True, weights=tmp_path / "x.pth")
    with pytest.raises(UserError, match="choose one"):
        TorchvisionBackbone("convnext_tiny", pretrained=True, weights=tmp_path / "x.pth")


def test_torchvision_backbone_imagenet_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsNotFoundError, match="pretrained=false"):
        TorchvisionBackbone("mobilenet_v3_large", pretrained=True)
    source = torchvision_model("mobilenet_v3_large")
    weights = torchvision.models.get_model_weights("mobilenet_v3_large").DEFAULT
    target = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(source.state_dict(), target)
    backbone = TorchvisionBackbone("mobilenet_v3_large", pretrained=True)
    assert_same_state(backbone.state_dict(), expected_state(backbone, source))


# class and source-map channels of each conf/backbone option
CONFIGS = {
    "resnet18": (ResNetBackbone, [128, 512]),
    "resnet18_w32": (ResNetBackbone, [64, 256]),
    "resnet18_w16": (ResNetBackbone, [32, 128]),
    "resnet50": (ResNetBackbone, [512, 2048]),
    "resnet101": (ResNetBackbone, [512, 2048]),
    "mobilenet_v3_large": (TorchvisionBackbone, [40, 960]),
    "convnext_tiny": (TorchvisionBackbone, [192, 384]),
    "vgg16": (VGGBackbone, [512, 1024]),
}


def test_every_backbone_config_is_tested():
    assert sorted(p.stem for p in BACKBONE_CONF.glob("*.yaml")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_backbone_config_instantiates(name):
    path = BACKBONE_CONF / f"{name}.yaml"
    assert path.read_text().splitlines()[0] == "# @package model.net"
    with initialize_config_dir(config_dir=str(BACKBONE_CONF.parent), version_base="1.3"):
        composed = compose(overrides=[f"+backbone={name}"]).model.net.backbone
    raw = OmegaConf.load(path)
    if "defaults" not in raw:
        assert composed == raw.backbone
    cls, channels = CONFIGS[name]
    backbone = hydra.utils.instantiate(composed)
    assert type(backbone) is cls
    assert backbone.out_channels == channels


@pytest.mark.parametrize(
    ("model", "backbone"),
    [
        ("ssd300_vgg", "vgg16"),
        ("ssd321", "resnet101"),
        ("dssd513", "resnet101"),
        ("ssd_r18", "resnet18"),
        ("dssd_r18w32", "resnet18_w32"),
        ("ssd_r18w16", "resnet18_w16"),
        ("dssd_r18w16", "resnet18_w16"),
    ],
)
def test_each_model_takes_its_backbone_from_the_group(model: str, backbone: str) -> None:
    assert compose_train(f"model={model}").hydra.runtime.choices.backbone == backbone
    choices = compose_train(f"model={model}", "backbone=convnext_tiny").model.net.backbone
    assert choices._target_ == "dssd.models.TorchvisionBackbone" and "depth" not in choices


@pytest.mark.parametrize("backbone", ["resnet50", "mobilenet_v3_large", "convnext_tiny"])
@pytest.mark.parametrize("model", ["ssd321", "dssd513"])
def test_new_backbones_build_ssd321_and_dssd513(model: str, backbone: str) -> None:
    """backbone=... on the paper's models: the extra layers, neck, heads and default boxes
    follow the backbone's maps, whose sizes the network reads off a dummy input."""
    cfg = compose_train(f"model={model}", f"backbone={backbone}")
    net = hydra.utils.instantiate(cfg.model.net)
    size = cfg.model.net.image_size
    assert net.feature_sizes[0] in (size // 8, -(-size // 8))
    assert net.feature_sizes[1] in (size // 16, -(-size // 16))
    assert net.feature_sizes[-1] == 1
    per_location = net.default_boxes.boxes_per_location
    boxes = sum(s * s * b for s, b in zip(net.feature_sizes, per_location, strict=True))
    assert len(net.priors) == boxes
    assert (net.decoder is not None) == model.startswith("dssd")


def test_vgg_loads_torchvisions_features_from_a_file(tmp_path) -> None:
    """VGGBackbone(weights=f): torchvision's VGG16 convolutions (the classifier is not SSD's);
    fc6/fc7 and the L2 norm start from scratch as with ImageNet weights."""
    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.vgg16().state_dict().items() if "features" in k}
    path = tmp_path / "vgg16_features.pth"
    torch.save(state, path)
    vgg = VGGBackbone(weights=str(path))
    assert torch.equal(vgg.conv4_3[0].weight, state["features.0.weight"])
    assert torch.equal(vgg.conv5[1].weight, state["features.24.weight"])  # after pool4
    with pytest.raises(UserError, match="choose one"):
        VGGBackbone(pretrained=True, weights=str(path))
