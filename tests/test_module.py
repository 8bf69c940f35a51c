"""LightningModule helpers: LR schedule, metric targets, evaluators, memory format."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.utilities.model_summary import ModelSummary

from conftest import tiny_data
from dssd.errors import UserError
from dssd.evaluation.module import pixel_targets
from dssd.models import SSD, ExtraLayers, PredictionModule, ResNetBackbone
from dssd.models.cost import gmac
from dssd.ops import MultiBoxLoss, PostProcessor
from dssd.training.module import DetectionModule
from dssd.training.schedules import warmup_multistep
from test_configs import compose_train


def test_warmup_multistep_factors() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = warmup_multistep(optimizer, [6, 8], gamma=0.1, warmup_iters=4, warmup_factor=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    assert lrs == pytest.approx(expected)


def test_pixel_targets_scale_boxes_and_mark_difficult_as_crowd() -> None:
    target = {
        "boxes": torch.tensor([[0.0, 0.5, 0.5, 1.0], [0.25, 0.25, 0.75, 0.75]]),
        "labels": torch.tensor([1, 2]),
        "difficult": torch.tensor([False, True]),
        "orig_size": torch.tensor([100, 200]),  # height, width
    }
    (out,) = pixel_targets([target])
    assert torch.equal(out["boxes"], torch.tensor([[0.0, 50, 100, 100], [50, 25, 150, 75]]))
    assert out["iscrowd"].tolist() == [0, 1]
    assert out["labels"].tolist() == [1, 2]


def tiny_module(channels_last: bool = False, width: int = 64, **options: Any) -> DetectionModule:
    torch.manual_seed(0)
    extras = partial(ExtraLayers, layers=[(2, 2), (2, 2)], mid_channels=16, out_channels=32)
    net = SSD(ResNetBackbone(18, width=width), extras, 3, 129, [0.1, 0.3, 0.5, 0.7, 0.9])
    return DetectionModule(
        net,
        MultiBoxLoss(),
        PostProcessor(),
        optimizer=torch.optim.SGD,
        channels_last=channels_last,
        **{"class_names": ["a", "b", "c"], **options},
    ).eval()


@pytest.mark.parametrize(("use_07_metric", "metrics"), [(None, {"coco"}), (False, {"coco", "voc"})])
def test_evaluators_follow_the_data_given(use_07_metric: bool | None, metrics: set[str]) -> None:
    module = tiny_module(use_07_metric=use_07_metric, coco_max_detections=[1, 10, 100])
    for role in ("val", "test"):
        assert set(module.evaluators[role]) == metrics
        assert module.evaluators[role]["coco"].max_detection_thresholds == [1, 10, 100]
    if use_07_metric is not None:
        assert module.evaluators["test"]["voc"].use_07_metric is use_07_metric
    assert module.class_names == ("a", "b", "c")


def test_class_names_must_match_the_network() -> None:
    with pytest.raises(UserError, match="the data has 2 classes, the network 3"):
        tiny_module(class_names=["a", "b"])


def test_the_run_config_is_the_only_hyperparameter() -> None:
    module = tiny_module(run_config={"stage": 1})
    assert dict(module.hparams) == {"run_config": {"stage": 1}}


def test_the_model_summary_counts_the_networks_flops_and_shows_its_maps() -> None:
    """Lightning's summary (printed at the start of every fit) reads ``example_input_array``:
    without it every FLOPs figure is 0 and no map size is shown; the prediction modules are
    called as one module, so their FLOPs show too."""
    torch.manual_seed(0)
    extras = partial(ExtraLayers, layers=[(2, 2), (2, 2)], mid_channels=16, out_channels=32)
    pm = partial(PredictionModule, variant="c", mid_channels=8, out_channels=16)
    scales = [0.1, 0.3, 0.5, 0.7, 0.9]
    net = SSD(ResNetBackbone(18, width=16), extras, 3, 129, scales, prediction_module=pm)
    module = DetectionModule(net, MultiBoxLoss(), PostProcessor(), torch.optim.SGD, ["a", "b", "c"])
    summary = ModelSummary(module, max_depth=2)
    assert summary.total_flops == pytest.approx(2e9 * gmac(module.net), rel=1e-9)
    # the net's parts, prediction modules included, account for every FLOP of the net
    flops = {name: sum(ops.values()) for name, ops in summary.flop_counts.items()}
    assert flops["net.prediction_modules"] > 0
    parts = [flops[name] for name in flops if name.startswith("net.")]
    assert sum(parts) == flops["net"]
    rows = dict(zip(summary.layer_names, summary.out_sizes, strict=True))
    num_priors = module.net.priors.shape[0]
    assert rows["net"] == [[1, num_priors, 4], [1, num_priors, 4]]  # 3 classes + background
    with torch.no_grad():
        maps = module.net.encoder(module.example_input_array)
    assert rows["net.backbone"] == [list(m.shape) for m in maps[:2]]  # its two source maps


def test_channels_last_changes_layout_not_results() -> None:
    images = torch.randn(2, 3, 129, 129)
    plain, fast = tiny_module(False), tiny_module(True)
    layouts = []
    fast.net.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    with torch.no_grad():
        for a, b in zip(plain(images), fast(images), strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert layouts == [True]  # the module converts the contiguous batch itself


def test_channels_last_refuses_the_convolutions_onednn_corrupts_on_a_cpu() -> None:
    # width 8: conv3_x's downsampling is a 1x1 stride-2 convolution of 8 input channels
    with pytest.raises(UserError, match=r"in backbone\.conv3\.0\.downsample\.0 \(.* of 8 input"):
        tiny_module(True, width=8).on_fit_start()
    tiny_module(False, width=8).on_fit_start()  # contiguous: oneDNN's other kernels are sound
    tiny_module(True, width=16).on_fit_start()


def test_the_sanity_check_reports_the_validation_losses_of_a_validation_run(
    tiny_shapes: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In the sanity check Lightning computes the logged loss means after
    ``on_validation_epoch_end``: they must still hold the batches' losses then (not NaN). An
    evaluation logs its metrics, not the COCO API's own summary lines."""
    cfg = compose_train(*tiny_data(tiny_shapes), "model.channels_last=false")
    datamodule, model = instantiate(cfg.data), instantiate(cfg.model)
    options = {"accelerator": "cpu", "logger": False, "enable_progress_bar": False}
    options |= {"enable_model_summary": False, "enable_checkpointing": False}

    def losses(trainer: pl.Trainer) -> dict[str, float]:
        metrics = trainer.callback_metrics
        return {k: float(v) for k, v in metrics.items() if k.startswith("val/loss")}

    validation = pl.Trainer(limit_val_batches=1, **options)
    with caplog.at_level(logging.INFO):
        validation.validate(model, datamodule=datamodule, verbose=False)
    assert not [r for r in caplog.records if r.name.startswith("faster_coco_eval")]
    assert "val/map_50" in validation.callback_metrics
    expected = losses(validation)
    assert set(expected) == {"val/loss", "val/loss_loc", "val/loss_conf"}

    sanity: dict[str, float] = {}

    class Record(pl.Callback):
        def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            sanity.update(losses(trainer))

    fit = pl.Trainer(max_steps=1, limit_val_batches=1, callbacks=[Record()], **options)
    fit.fit(model, datamodule=datamodule)
    assert sanity == pytest.approx(expected, rel=1e-6)
