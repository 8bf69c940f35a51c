"""Network shapes and default boxes against the paper's Table 2 / Table 7 and torchvision."""

from __future__ import annotations

import itertools
import math
from functools import partial

import pytest
import torch
import torchvision

from dssd.models import (
    SSD,
    DefaultBoxes,
    ExtraLayers,
    PretrainedWeightsNotFoundError,
    ResNetBackbone,
)

SCALES_321 = [0.1, 0.2, 0.38, 0.56, 0.74, 0.92, 1.1]
SCALES_513 = [0.04, 0.1, 0.27, 0.44, 0.61, 0.78, 0.95, 1.12]


def ssd(
    depth: int, size: int, layers, scales, num_classes: int = 20, mid=256, out=1024, **kwargs
) -> SSD:
    extras = partial(ExtraLayers, layers=layers, mid_channels=mid, out_channels=out)
    return SSD(ResNetBackbone(depth), extras, num_classes, size, scales, **kwargs)


def test_ssd321_resnet101_matches_table2_and_table7():
    net = ssd(101, 321, [(2, 2), (2, 2), (3, 1), (3, 1)], SCALES_321)
    assert net.feature_sizes == [40, 20, 10, 5, 3, 1]
    assert net.priors.shape == (17080, 4)
    net.eval()
    with torch.no_grad():
        loc, conf = net(torch.randn(1, 3, 321, 321))
    assert loc.shape == (1, 17080, 4)
    assert conf.shape == (1, 17080, 21)


def test_513_source_maps_and_box_count():
    # the backbone's map sizes do not depend on its depth: ResNet-18 keeps the test fast
    net = ssd(18, 513, [(2, 2)] * 5, SCALES_513, mid=16, out=32)
    assert net.feature_sizes == [64, 32, 16, 8, 4, 2, 1]
    assert net.priors.shape[0] == 43688


def test_stem_surgery_fixes_torchvision_rounding():
    x = torch.zeros(1, 3, 321, 321)
    plain = torchvision.models.resnet18()
    stock = plain.layer2(plain.layer1(plain.maxpool(plain.relu(plain.bn1(plain.conv1(x))))))
    assert stock.shape[-1] == 41  # what the paper's surgery avoids
    c3, c5 = ResNetBackbone(18).eval()(x)
    assert c3.shape[-1] == 40 and c5.shape[-1] == 20  # conv5 keeps stride 16


@pytest.mark.parametrize("depth,channels", [(18, [128, 512]), (50, [512, 2048])])
def test_backbone_channels_and_dilation(depth, channels):
    backbone = ResNetBackbone(depth)
    assert backbone.out_channels == channels
    convs3x3 = [m for m in backbone.conv5.modules() if getattr(m, "kernel_size", None) == (3, 3)]
    assert convs3x3 and all(m.dilation == (2, 2) and m.stride == (1, 1) for m in convs3x3)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("width", [64, 32, 16])
def test_narrow_backbone_scales_every_layer_of_torchvision_resnet(depth, width):
    """Each parameter has torchvision's shape with every channel count (but the image's 3)
    scaled by width/64, and the source maps keep their sizes."""
    reference = torchvision.models.get_model(f"resnet{depth}")

    def scaled(name: str, shape: torch.Size) -> tuple[int, ...]:
        dims = [n * width // 64 for n in shape[:2]] + list(shape[2:])
        if name == "conv1.weight":
            dims[1] = 3  # the image's channels
        return tuple(dims)

    expected = {
        name: scaled(name, p.shape)
        for name, p in reference.named_parameters()
        if not name.startswith("fc.")
    }
    backbone = ResNetBackbone(depth, width=width)
    parts = {
        "stem.0": "conv1",
        "stem.1": "bn1",
        "conv2": "layer1",
        "conv3": "layer2",
        "conv4": "layer3",
        "conv5": "layer4",
    }
    got = {}
    for name, p in backbone.named_parameters():
        prefix = next(k for k in parts if name.startswith(k + "."))
        got[parts[prefix] + name[len(prefix) :]] = tuple(p.shape)
    assert got == expected
    c3, c5 = backbone.eval()(torch.zeros(1, 3, 129, 129))
    assert [c3.shape[1], c5.shape[1]] == backbone.out_channels
    assert c3.shape[-1] == 16 and c5.shape[-1] == 8


def test_narrow_backbone_refuses_imagenet_weights_and_odd_widths():
    with pytest.raises(ValueError, match="pretrained=false"):
        ResNetBackbone(18, pretrained=True, width=32)
    with pytest.raises(ValueError, match="multiple of 8"):
        ResNetBackbone(18, width=20)


def test_resnet101_trunk_has_all_imagenet_parameters_but_fc():
    reference = torchvision.models.resnet101()
    expected = sum(p.numel() for p in reference.parameters()) - sum(
        p.numel() for p in reference.fc.parameters()
    )
    assert sum(p.numel() for p in ResNetBackbone(101).parameters()) == expected


def test_missing_pretrained_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsNotFoundError) as err:
        ResNetBackbone(18, pretrained=True)
    message = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "pretrained=false" in message


def test_pretrained_weights_load_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = torchvision.models.resnet18()
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    target = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(source.state_dict(), target)
    backbone = ResNetBackbone(18, pretrained=True)
    assert torch.equal(backbone.stem[0].weight, source.conv1.weight)
    assert torch.equal(backbone.conv5[1].conv2.weight, source.layer4[1].conv2.weight)


def reference_priors(sizes, scales, ratios):
    """Straightforward loops over maps, rows, columns and shapes, as in the SSD paper."""
    boxes = []
    for k, f in enumerate(sizes):
        s, s_next = scales[k], scales[k + 1]
        for i, j in itertools.product(range(f), repeat=2):
            cx, cy = (j + 0.5) / f, (i + 0.5) / f
            boxes.append([cx, cy, s, s])
            boxes.append([cx, cy, math.sqrt(s * s_next), math.sqrt(s * s_next)])
            for a in ratios:
                boxes.append([cx, cy, s * math.sqrt(a), s / math.sqrt(a)])
                boxes.append([cx, cy, s / math.sqrt(a), s * math.sqrt(a)])
    return torch.tensor(boxes)


def test_default_boxes_match_reference_loops():
    sizes, ratios = [5, 3, 1], [1.6, 2.0, 3.0]
    scales = [0.2, 0.5, 0.8, 1.05]
    priors = DefaultBoxes(scales, ratios)(sizes)
    assert torch.allclose(priors, reference_priors(sizes, scales, ratios), atol=1e-6)


def test_default_boxes_reject_wrong_scale_count():
    with pytest.raises(ValueError, match="scales"):
        DefaultBoxes([0.1, 0.2])([10, 5])


def test_predictions_follow_prior_order():
    """A head output at map k, row i, column j, box a must land at the prior with that centre."""
    net = ssd(18, 193, [(2, 2), (2, 2), (3, 1)], [0.1, 0.2, 0.38, 0.56, 0.74, 0.92], 3)
    net.eval()
    k, i, j, a = 1, 4, 7, 5
    features = [
        torch.zeros(1, conv.in_channels, f, f)
        for conv, f in zip(net.heads.loc, net.feature_sizes, strict=True)
    ]
    for conv in net.heads.loc:
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    net.heads.loc[k].bias.data[a * 4] = 1.0  # box a's cx offset, constant over the map
    loc, _ = net.heads(features)
    hits = loc[0, :, 0].nonzero().flatten()
    f = net.feature_sizes[k]
    assert len(hits) == f * f
    first = sum(s * s for s in net.feature_sizes[:k]) * 8
    expected_index = first + (i * f + j) * 8 + a
    assert expected_index in hits
    centre = torch.tensor([(j + 0.5) / f, (i + 0.5) / f])
    assert torch.allclose(net.priors[expected_index, :2], centre)


def test_head_kernel_list_repeats_its_last_size_for_the_smaller_maps():
    from dssd.models.heads import PredictionHeads

    heads = PredictionHeads([8] * 6, [4] * 6, num_classes=2, kernel_sizes=[5, 5, 3])
    assert [conv.kernel_size for conv in heads.loc] == [(5, 5)] * 2 + [(3, 3)] * 4
    assert [conv.padding for conv in heads.conf] == [(2, 2)] * 2 + [(1, 1)] * 4
    assert [c.kernel_size for c in PredictionHeads([8] * 3, [4] * 3, 2, 3).loc] == [(3, 3)] * 3
    with pytest.raises(ValueError, match="7 head kernel sizes for 6 source maps"):
        PredictionHeads([8] * 6, [4] * 6, 2, [3] * 7)
