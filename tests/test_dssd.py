"""Prediction modules (Figure 2), deconvolution module (Figure 3) and the DSSD network."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from hydra.utils import instantiate

from dssd.models import (
    SSD,
    Decoder,
    DeconvolutionModule,
    ExtraLayers,
    PredictionModule,
    ResNetBackbone,
)
from dssd.models.deconvolution import transposed_conv_shape
from test_configs import compose_train

TINY_SCALES = [0.1, 0.3, 0.5, 0.7, 0.9]  # 129 input: maps 16, 8, 4, 2


def tiny_net(pm: str = "a", fusion: str | None = None, upsample: str = "deconv") -> SSD:
    torch.manual_seed(0)
    extras = partial(ExtraLayers, layers=[(2, 2), (2, 2)], mid_channels=16, out_channels=32)
    module = partial(PredictionModule, variant=pm, mid_channels=8, out_channels=24)
    neck = None
    if fusion is not None:
        neck = partial(Decoder, fusion=fusion, upsample=upsample)
    return SSD(
        ResNetBackbone(18),
        extras,
        3,
        129,
        TINY_SCALES,
        prediction_module=module,
        neck=neck,
        neck_channels=16,
    )


@pytest.mark.parametrize(
    "in_size,out_size,shape",
    [
        (1, 3, (3, 1, 0)),
        (3, 5, (3, 1, 0)),
        (5, 10, (2, 2, 0)),
        (1, 2, (2, 1, 0)),
        (20, 40, (2, 2, 0)),
        (3, 6, (2, 2, 0)),
        (21, 41, (3, 2, 1)),  # MobileNetV3's maps round up: not a 21x21 kernel
        (33, 65, (3, 2, 1)),
        (10, 21, (3, 2, 0)),
    ],
)
def test_transposed_conv_shape_needs_no_cropping(in_size, out_size, shape) -> None:
    assert transposed_conv_shape(in_size, out_size) == shape
    kernel, stride, padding = shape
    assert kernel <= 3 or in_size == 1
    conv = torch.nn.ConvTranspose2d(1, 1, kernel, stride, padding)
    assert conv(torch.zeros(1, 1, in_size, in_size)).shape[-1] == out_size


@pytest.mark.parametrize("upsample", ["deconv", "bilinear"])
@pytest.mark.parametrize("sizes", [(1, 3), (3, 5), (5, 10), (1, 2), (8, 16)])
def test_deconvolution_module_output_matches_the_encoder_map(sizes, upsample) -> None:
    small, large = sizes
    module = DeconvolutionModule(32, 24, small, large, channels=16, upsample=upsample).eval()
    out = module(torch.randn(2, 32, small, small), torch.randn(2, 24, large, large))
    assert out.shape == (2, 16, large, large)
    assert (out >= 0).all()  # ReLU after the fusion


def test_fusion_is_product_or_sum() -> None:
    prod = DeconvolutionModule(8, 8, 2, 4, channels=8, fusion="prod").eval()
    add = DeconvolutionModule(8, 8, 2, 4, channels=8, fusion="sum").eval()
    add.load_state_dict(prod.state_dict())
    x, skip = torch.randn(1, 8, 2, 2), torch.randn(1, 8, 4, 4)
    up, lateral = prod.decoder(prod.upsample(x)), prod.lateral(skip)
    torch.testing.assert_close(prod(x, skip), torch.relu(up * lateral))
    torch.testing.assert_close(add(x, skip), torch.relu(up + lateral))


def test_prediction_module_variants_differ() -> None:
    counts = {}
    for variant in "abcd":
        module = PredictionModule(32, variant, mid_channels=8, out_channels=24)
        counts[variant] = sum(p.numel() for p in module.parameters())
        x = torch.randn(2, 32, 5, 5)
        assert module(x).shape == (2, module.out_channels, 5, 5)
    assert counts["a"] == 0
    assert len(set(counts.values())) == 4
    assert PredictionModule(32, "b", 8, 24).out_channels == 32  # identity skip keeps channels
    assert PredictionModule(32, "d", 8, 24).out_channels == 24


def test_dssd_predicts_from_fused_maps_plus_the_coarsest_encoder_map() -> None:
    net = tiny_net("c", "prod").eval()
    assert net.feature_sizes == [16, 8, 4, 2]
    images = torch.randn(1, 3, 129, 129)
    encoder, sources = net.encoder(images), net.sources(images)
    assert [m.shape[-1] for m in sources] == net.feature_sizes
    assert [m.shape[1] for m in sources] == [16, 16, 16, 32]
    assert torch.equal(sources[-1], encoder[-1])
    loc, conf = net(images)
    assert loc.shape == (1, net.priors.shape[0], 4) and conf.shape[-1] == 4


@pytest.mark.parametrize(
    "pm,fusion",
    [("b", None), ("c", None), ("d", None), ("c", "sum"), ("c", "prod"), ("c", "bilinear")],
)
def test_gradients_reach_every_new_layer(pm: str, fusion: str | None) -> None:
    if fusion == "bilinear":
        net = tiny_net(pm, "prod", upsample="bilinear")
    else:
        net = tiny_net(pm, fusion)
    loc, conf = net(torch.randn(2, 3, 129, 129))
    (loc.square().mean() + conf.square().mean()).backward()
    new_layers = [net.prediction_modules] + ([net.decoder] if net.decoder is not None else [])
    for part in new_layers:
        for name, param in part.named_parameters():
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_variants_give_different_graphs_and_outputs() -> None:
    images = torch.randn(1, 3, 129, 129)
    outputs = {}
    for key, net in {
        "b": tiny_net("b"),
        "c": tiny_net("c"),
        "d": tiny_net("d"),
        "sum": tiny_net("c", "sum"),
        "prod": tiny_net("c", "prod"),
    }.items():
        net.eval()
        with torch.no_grad():
            outputs[key] = net(images)[1]
    keys = list(outputs)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not torch.allclose(outputs[a], outputs[b]), (a, b)


@pytest.mark.parametrize(
    "model,sizes,boxes",
    [
        ("dssd321", [40, 20, 10, 5, 3, 1], 17080),
        pytest.param("dssd513", [64, 32, 16, 8, 4, 2, 1], 43688, marks=pytest.mark.slow),
        pytest.param("ssd513", [64, 32, 16, 8, 4, 2, 1], 43688, marks=pytest.mark.slow),
    ],
)
def test_paper_models_match_tables_2_and_7(model: str, sizes: list[int], boxes: int) -> None:
    cfg = compose_train(f"model={model}")
    net = instantiate(cfg.model.net).eval()
    assert net.feature_sizes == sizes
    assert net.priors.shape == (boxes, 4)
    with torch.no_grad():
        loc, conf = net(torch.zeros(1, 3, net.image_size, net.image_size))
    assert loc.shape == (1, boxes, 4) and conf.shape == (1, boxes, 7)


def test_dssd321_uses_the_paper_defaults() -> None:
    net = instantiate(compose_train("model=dssd321").model.net)
    assert all(m.variant == "c" for m in net.prediction_modules)
    assert all(m.fusion == "prod" for m in net.decoder.modules_coarse_to_fine)
    assert net.decoder.out_channels == [512] * 5 + [1024]
    sum_net = instantiate(compose_train("model=dssd321", "fusion=sum", "pm=d").model.net)
    assert all(m.fusion == "sum" for m in sum_net.decoder.modules_coarse_to_fine)
    assert all(m.variant == "d" for m in sum_net.prediction_modules)


@pytest.mark.parametrize("neck", ["none", "fpn"])
def test_fusion_without_dssds_neck_is_a_clear_error(neck: str) -> None:
    with pytest.raises(Exception, match="neck=dssd only"):
        instantiate(compose_train("model=ssd_r18", f"neck={neck}", "fusion=sum").model.net)


@pytest.mark.parametrize(
    "model,sizes,boxes",
    [
        ("ssd300_vgg", [38, 19, 10, 5, 3, 1], 8732),
        pytest.param("ssd512_vgg", [64, 32, 16, 8, 4, 2, 1], 24564, marks=pytest.mark.slow),
    ],
)
def test_vgg_ssd_matches_the_ssd_paper(model: str, sizes: list[int], boxes: int) -> None:
    net = instantiate(compose_train(f"model={model}").model.net).eval()
    assert net.feature_sizes == sizes
    assert net.priors.shape == (boxes, 4)
    with torch.no_grad():
        loc, _ = net(torch.zeros(1, 3, net.image_size, net.image_size))
    assert loc.shape == (1, boxes, 4)


def test_l2norm_scales_unit_vectors() -> None:
    from dssd.models import L2Norm

    x = torch.randn(2, 512, 3, 3)
    out = L2Norm(512)(x)
    torch.testing.assert_close(out.norm(dim=1), torch.full((2, 3, 3), 20.0))


def test_vgg_pretrained_weights_load_from_torch_home(tmp_path, monkeypatch) -> None:
    import torchvision

    from dssd.models import VGGBackbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = torchvision.models.vgg16()
    url = torchvision.models.VGG16_Weights.DEFAULT.url
    target = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    torch.save(source.state_dict(), target)
    backbone = VGGBackbone(pretrained=True)
    assert torch.equal(backbone.conv4_3[21].weight, source.features[21].weight)  # conv4_3
    assert torch.equal(backbone.conv5[1].weight, source.features[24].weight)  # conv5_1


def test_prediction_modules_and_deconvolution_add_parameters_in_table_4_order() -> None:
    """Table 4's parameter column: each prediction module variant (a) to (d) is larger than the
    one before, and the deconvolution modules add to PM(c) (on the CPU-sized trunk)."""

    def parameters(*overrides: str) -> int:
        net = instantiate(compose_train(*overrides).model.net)
        return sum(p.numel() for p in net.parameters())

    pm = [parameters("model=ssd_r18", f"pm={v}") for v in "abcd"]
    assert pm == sorted(pm) and len(set(pm)) == 4
    assert parameters("model=dssd_r18", "pm=c") > pm[2]
