"""The CPU-sized network search (benchmarks.search): its cost figures against independent counts."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from benchmarks import search
from benchmarks.common import compose_config
from benchmarks.speed import training_step
from conftest import tiny_data
from dssd.config import compose_train
from dssd.errors import UserError
from dssd.training.module import channels_last_hazards

CHOSEN = ["r18w64-193", "r18w16-321"]


def conv_gmac(net: nn.Module) -> float:
    """MACs of every convolution of one forward pass, counted from the output shapes by hooks."""
    total = 0

    def count(module: nn.Conv2d, _inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * module.in_channels // module.groups * k

    hooks = [m.register_forward_hook(count) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, net.image_size, net.image_size))
    for hook in hooks:
        hook.remove()
    return total / 1e9


@pytest.fixture(scope="module")
def rows(tiny_shapes: Path) -> tuple[list[dict], str]:
    argv = ["--candidates", *CHOSEN, "--batch", "2", "--iters", "1", "--warmup", "0"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = search.main([*argv, *tiny_data(tiny_shapes)])
    return result, printed.getvalue()


@pytest.mark.parametrize("name", CHOSEN)
def test_gmac_and_boxes_are_the_networks(name: str, rows, tiny_shapes: Path) -> None:
    cfg = compose_config("ssd_r18", None, [search.RECIPE, *search.CANDIDATES[name]])
    net = instantiate(cfg.model.net)
    row = next(r for r in rows[0] if r["candidate"] == name)
    assert row["image_size"] == net.image_size
    assert row["default_boxes"] == net.priors.shape[0]
    assert row["gmac"] == pytest.approx(conv_gmac(net), rel=1e-9)


def test_table_prints_every_candidate_with_ratios_to_the_first(rows) -> None:
    result, printed = rows
    assert [r["candidate"] for r in result] == CHOSEN
    for precision in ("float32", "bf16"):
        assert result[0][f"ratio_{precision}"] == 1.0
        for r in result:
            assert r[f"s_per_step_{precision}"] > 0
            assert r[f"ratio_{precision}"] == pytest.approx(
                r[f"s_per_step_{precision}"] / result[0][f"s_per_step_{precision}"]
            )
    for r in result:
        assert 0 < r["covered"] <= 1
        assert f"| {r['candidate']} | {r['image_size']} | {r['default_boxes']:,} |" in printed
    # the 321 input with smaller boxes reaches more of the tiny set's objects than the 193 one
    assert result[1]["covered"] > result[0]["covered"]


def test_several_batches_give_one_row_each_timed_against_the_first(tiny_shapes: Path) -> None:
    argv = ["--candidates", "r18w16-321", "--batch", "2", "1", "--iters", "1", "--warmup", "0"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = search.main([*argv, "--no-bf16", *tiny_data(tiny_shapes)])
    assert [(r["candidate"], r["batch"]) for r in result] == [("r18w16-321", 2), ("r18w16-321", 1)]
    assert result[0]["ratio_float32"] == 1.0
    assert result[1]["ratio_float32"] == pytest.approx(
        result[1]["s_per_step_float32"] / result[0]["s_per_step_float32"]
    )
    assert "s_per_step_bf16" not in result[0]
    for r in result:
        assert f"| {100 * r['covered']:.1f} | {r['batch']} |" in printed.getvalue()


def test_the_default_experiments_train_the_chosen_candidates() -> None:
    networks = {
        "r18w16-321": compose_train(),
        "r18w32-321": compose_train(["experiment=shapes_r18w32"]),
    }
    for name, cfg in networks.items():
        candidate = compose_config("ssd_r18", None, [search.RECIPE, *search.CANDIDATES[name]])
        assert OmegaConf.to_container(cfg.model.net, resolve=True) == OmegaConf.to_container(
            candidate.model.net, resolve=True
        ), name
    # the earlier defaults stay available, on the recipe the search measured them with
    earlier = compose_train(["experiment=shapes_r18_193"])
    assert earlier.model.net.image_size == 193 and earlier.model.net.backbone.width == 64
    recipe = networks["r18w32-321"]
    assert earlier.schedules == recipe.schedules
    assert {**earlier.data, "image_size": None} == {**recipe.data, "image_size": None}


def test_width_8_is_timed_in_bf16_without_the_layout_onednn_cannot_train() -> None:
    names = ("r18w16-321", "r18w8-321", "r18w8-257")
    cfgs = {
        n: compose_config("ssd_r18", None, [search.RECIPE, *search.CANDIDATES[n]]) for n in names
    }
    nets = {n: instantiate(cfg.model.net) for n, cfg in cfgs.items()}
    assert channels_last_hazards(nets["r18w16-321"]) == []
    for name in ("r18w8-321", "r18w8-257"):
        assert channels_last_hazards(nets[name]) == ["backbone.conv3.0.downsample.0"], name
    # what the search leaves out for them: channels-last training refuses the net on a CPU
    args = SimpleNamespace(device=torch.device("cpu"), bf16=True, channels_last=True, compile=False)
    with pytest.raises(UserError, match=r"backbone\.conv3\.0\.downsample\.0"):
        training_step(nets["r18w8-257"], cfgs["r18w8-257"], args)
