"""DSSD's training stages: what each stage freezes, how init_from loads, the 3-command chain."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import run_in_process, tiny_run
from dssd.errors import UserError
from dssd.tasks.training import check_stage
from dssd.training.module import DetectionModule
from dssd.training.stages import load_initial_weights
from test_configs import compose_train


def build(*overrides: str) -> DetectionModule:
    torch.manual_seed(0)
    return instantiate(compose_train(*overrides).model)


def one_step(module: DetectionModule) -> None:
    """One SGD step of the MultiBox loss on random images with one box each."""
    module.train()
    size = module.net.image_size
    images = torch.randn(2, 3, size, size)
    targets = [
        {"boxes": torch.tensor([[0.1, 0.2, 0.5, 0.6]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[0.3, 0.3, 0.9, 0.8]]), "labels": torch.tensor([2])},
    ]
    optimizer = module.configure_optimizers()["optimizer"]
    loc, conf = module(images)
    module.criterion(loc, conf, module.net.priors, targets)["loss"].backward()
    optimizer.step()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def batchnorms(module: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm)]


def test_stage0_trains_everything() -> None:
    module = build("model=dssd_r18w16")
    module.train()
    assert all(p.requires_grad for p in module.parameters())
    assert all(m.training for m in batchnorms(module))


def test_stage1_freezes_backbone_and_extras_with_their_batchnorm(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="dssd.training.stages"):
        module = build("model=dssd_r18w16", "stage=1", "init_from=unused.ckpt")
    frozen = len(batchnorms(module.net.backbone)) + len(batchnorms(module.net.extras))
    assert f"Frozen: backbone, extras; {frozen} batch norms kept in eval mode" in caplog.text
    net = module.net
    before = snapshot(module)
    one_step(module)
    after = snapshot(module)

    for name in ("backbone", "extras"):
        part = getattr(net, name)
        assert not any(p.requires_grad for p in part.parameters())
        assert not any(m.training for m in batchnorms(part)), f"{name} BN left in training mode"
    for name in ("decoder", "prediction_modules", "heads"):
        part = getattr(net, name)
        assert all(p.requires_grad for p in part.parameters())
        assert all(m.training for m in batchnorms(part))

    # weights and running statistics of the frozen part did not move; the rest did
    for key in before:
        moved = not torch.equal(before[key], after[key])
        if key.startswith(("net.backbone.", "net.extras.")):
            assert not moved, key
    assert not torch.equal(before["net.heads.conf.0.weight"], after["net.heads.conf.0.weight"])
    decoder_bn = next(k for k in before if k.startswith("net.decoder") and "running_mean" in k)
    assert not torch.equal(before[decoder_bn], after[decoder_bn])

    optimizer = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in module.parameters() if p.requires_grad}


def test_stage2_freezes_every_batchnorm_at_a_lower_lr() -> None:
    cfg = compose_train("model=dssd_r18w16", "stage=2", "init_from=unused.ckpt")
    # a tenth of stage 1's, which trains the decoder from the same stage-0 weights
    assert cfg.model.optimizer.lr == pytest.approx(cfg.schedules[1].lr / 10)
    module = build("model=dssd_r18w16", "stage=2", "init_from=unused.ckpt")
    before = snapshot(module)
    one_step(module)
    after = snapshot(module)
    assert not any(m.training for m in batchnorms(module))
    norms = [n for n, m in module.named_modules() if isinstance(m, _BatchNorm)]
    frozen = [f"{n}.{t}" for n in norms for t in ("weight", "bias", "running_mean", "running_var")]
    assert len(frozen) > 100
    for key in frozen:
        assert torch.equal(before[key], after[key]), key
    assert not torch.equal(
        before["net.backbone.stem.0.weight"], after["net.backbone.stem.0.weight"]
    )


def test_stage_schedules_follow_the_stage() -> None:
    lengths = [compose_train(f"stage={s}", "init_from=x").trainer.max_steps for s in (0, 1, 2)]
    assert lengths[0] > lengths[1] > lengths[2]
    assert compose_train("stage=1", "init_from=x", "trainer.max_steps=7").trainer.max_steps == 7


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["stage=1"], "init_from="), (["stage=3", "init_from=x"], "stage must be one of 0..2")],
)
def test_check_stage_refuses(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        check_stage(compose_train(*overrides))


def test_a_resumed_stage_needs_no_init_from() -> None:
    """Its checkpoint holds every weight: the stage-0 run it started from may have moved."""
    check_stage(compose_train("stage=1", "ckpt_path=last"))
    with pytest.raises(UserError, match="init_from="):
        check_stage(compose_train("stage=1", "ckpt_path=last", "train=false"))


@pytest.mark.parametrize("neck", ["dssd", "fpn", "panet", "bifpn"])
def test_init_from_loads_the_stage0_encoder_and_reports(neck: str, tmp_path: Path) -> None:
    """Stage 1 starts any neck alike: the stage-0 encoder is loaded, the neck is new."""
    ssd = build("pm=c")
    path = tmp_path / "stage0.ckpt"
    torch.save({"state_dict": ssd.state_dict()}, path)
    dssd = build("model=dssd_r18w16", f"neck={neck}", "stage=1", "init_from=x")

    report = load_initial_weights(dssd, path, ["backbone", "extras"])
    loaded = dssd.state_dict()
    encoder = [k for k in loaded if k.startswith(("net.backbone.", "net.extras."))]
    assert sorted(report.loaded) == sorted(encoder)
    for key in encoder:
        assert torch.equal(loaded[key], ssd.state_dict()[key]), key
    assert any(k.startswith("net.decoder.") for k in report.new)
    assert any(k.startswith("net.prediction_modules.") for k in report.dropped)
    assert "net.backbone" in report.summary() and "net.decoder" in report.summary()


def test_stage1_can_start_the_coarsest_prediction_module_from_the_ssd_run(tmp_path: Path) -> None:
    """The released code loads by layer name, so DSSD's module on the 1x1 map (fed by the extra
    layers, not the decoder) starts from the SSD run: docs/paper_vs_code.md's override."""
    ssd = build("pm=c")
    path = tmp_path / "stage0.ckpt"
    torch.save({"state_dict": ssd.state_dict()}, path)
    dssd = build("model=dssd_r18w16", "stage=1", "init_from=x")
    last = len(dssd.net.prediction_modules) - 1
    report = load_initial_weights(dssd, path, ["backbone", "extras", f"prediction_modules.{last}"])
    module = f"net.prediction_modules.{last}."
    carried = [k for k in report.loaded if k.startswith(module)]
    assert carried and len(carried) == sum(k.startswith(module) for k in ssd.state_dict())
    for key in carried:
        assert torch.equal(dssd.state_dict()[key], ssd.state_dict()[key]), key
    assert not any(k.startswith("net.prediction_modules.0.") for k in report.loaded)


def test_init_from_refuses_mismatched_shapes(tmp_path: Path) -> None:
    ssd = build("pm=c")
    path = tmp_path / "stage0.ckpt"
    torch.save({"state_dict": ssd.state_dict()}, path)
    dssd = build("model=dssd_r18w16")
    # loading everything: the prediction modules see 64-channel decoder maps in DSSD
    with pytest.raises(UserError, match=r"net\.prediction_modules\.\d+\.\S+: checkpoint"):
        load_initial_weights(dssd, path)


def test_init_from_another_class_list_reinitialises_only_the_classification_heads(
    tmp_path: Path,
) -> None:
    """Fine-tuning on data with another class count: all but the conf heads is loaded."""
    trained = build("pm=c")
    path = tmp_path / "six_classes.ckpt"
    torch.save({"state_dict": trained.state_dict()}, path)
    fresh = build("pm=c", "data.class_names=[a,b,c]")
    initial = {k: v.clone() for k, v in fresh.state_dict().items()}

    report = load_initial_weights(fresh, path)
    after = fresh.state_dict()
    conf_heads = [k for k in after if k.startswith("net.heads.conf.")]
    assert conf_heads and sorted(report.reinitialised) == sorted(conf_heads)
    assert sorted(report.loaded) == sorted(set(after) - set(conf_heads))
    for key in conf_heads:  # as initialised, for 3 classes + background
        assert torch.equal(after[key], initial[key])
        assert after[key].shape[0] % 4 == 0 and after[key].shape != trained.state_dict()[key].shape
    for key in report.loaded:
        assert torch.equal(after[key], trained.state_dict()[key]), key
    assert not report.new and not report.dropped
    assert "re-initialised (classification heads of another class count)" in report.summary()


def test_init_from_refuses_missing_modules_and_files(tmp_path: Path) -> None:
    ssd = build()
    path = tmp_path / "partial.ckpt"
    state = {k: v for k, v in ssd.state_dict().items() if not k.startswith("net.extras.")}
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserError, match="lacks .* tensors of"):
        load_initial_weights(build(), path, ["backbone", "extras"])
    with pytest.raises(UserError, match="does not have"):
        load_initial_weights(build(), path, ["trunk"])
    with pytest.raises(UserError, match="no such checkpoint file"):
        load_initial_weights(build(), tmp_path / "missing.ckpt")
    # a run directory names the checkpoint it holds; a directory without one says so
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="is a directory: .*none lies in it"):
        load_initial_weights(build(), run_dir)
    shutil.copy(path, run_dir / "checkpoints" / "best.ckpt")
    path.rename(run_dir / "checkpoints" / "last.ckpt")
    hint = f"e.g. {run_dir / 'checkpoints' / 'last.ckpt'}"
    with pytest.raises(UserError, match=re.escape(f"init_from={run_dir} is a directory")) as err:
        load_initial_weights(build(), run_dir)
    assert hint in str(err.value)


@pytest.mark.slow
def test_three_stage_chain_from_the_command_line(tiny_shapes: Path, tmp_path: Path) -> None:
    common = [*tiny_run(tiny_shapes), "logger=csv", "trainer.val_check_interval=2"]
    dirs = [tmp_path / f"stage{s}" for s in range(3)]
    stage0 = ["model=ssd_r18", "pm=c", "trainer.max_steps=2", f"hydra.run.dir={dirs[0]}"]
    run_in_process("train.py", *common, *stage0)
    for stage in (1, 2):
        proc = run_in_process(
            "train.py",
            *common,
            "model=dssd_r18",
            f"stage={stage}",
            f"init_from={dirs[stage - 1] / 'checkpoints' / 'last.ckpt'}",
            "trainer.max_steps=2",
            f"hydra.run.dir={dirs[stage]}",
        )
        log = (dirs[stage] / "train.log").read_text()
        assert "init_from" in log and "loaded" in log, proc.stderr[-2000:]

    weights = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in dirs
    ]
    # stage 1 kept stage 0's encoder (frozen) and trained its new decoder; stage 2 moved it all
    backbone = [k for k in weights[0] if k.startswith("net.backbone.")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in backbone)
    decoder = [k for k in weights[1] if k.startswith("net.decoder.") and k.endswith("weight")]
    assert any(not torch.equal(weights[1][k], weights[2][k]) for k in decoder)
    assert any(not torch.equal(weights[1][k], weights[2][k]) for k in backbone)
    running = [k for k in weights[1] if k.endswith("running_mean")]
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in running)


def test_frozen_batchnorms_stay_frozen_after_sync_batchnorm_conversion() -> None:
    # DDP with sync BN swaps every BatchNorm module for a SyncBatchNorm one
    module = build("model=dssd_r18w16", "stage=1", "init_from=unused.ckpt")
    module.net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module.net)
    module.train()
    backbone = [m for m in module.net.backbone.modules() if isinstance(m, _BatchNorm)]
    assert backbone and all(isinstance(m, torch.nn.SyncBatchNorm) for m in backbone)
    assert not any(m.training for m in backbone)
    assert all(m.training for m in batchnorms(module.net.decoder))
