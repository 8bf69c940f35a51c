"""Every experiment recipe composes and resolves; the paper's recipes hold the paper's numbers."""

from __future__ import annotations

import pytest

from conftest import ROOT
from test_configs import compose_train, resolve_with_hydra

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_its_stage_picks_its_schedule(experiment: str) -> None:
    cfg = resolve_with_hydra(compose_train(f"experiment={experiment}", "init_from=/x/best.ckpt"))
    schedule = cfg.schedules[cfg.stage]
    assert cfg.trainer.max_steps == schedule.max_steps
    assert cfg.model.optimizer.lr == schedule.lr
    assert list(cfg.model.scheduler.milestones) == list(schedule.milestones)
    assert len(cfg.schedules) == len(cfg.stages) == 3
    for entry in cfg.schedules:
        assert all(0 < m < entry.max_steps for m in entry.milestones)
    # every stage ends on a validation, so best.ckpt sees the end of the schedule
    if isinstance(cfg.trainer.val_check_interval, int):
        assert all(s.max_steps % cfg.trainer.val_check_interval == 0 for s in cfg.schedules)
    assert cfg.run_group == experiment


# (experiment, model, data target, stage, batch, [(max_steps, lr, milestones) per stage])
PAPER = [
    (
        "ssd321_voc0712",
        "ssd321",
        "VOCDataModule",
        0,
        32,
        [(70000, 1e-3, [40000, 60000]), (30000, 1e-3, [20000]), (40000, 1e-3, [20000])],
    ),
    (
        "ssd513_coco",
        "ssd513",
        "COCODataModule",
        0,
        20,
        [(240000, 1e-3, [160000, 220000]), (130000, 1e-3, [80000]), (40000, 1e-3, [20000])],
    ),
]


@pytest.mark.parametrize("experiment, model, data, stage, batch, schedules", PAPER)
def test_paper_recipes_hold_the_papers_batch_and_schedules(
    experiment: str, model: str, data: str, stage: int, batch: int, schedules: list
) -> None:
    for name, net, first_stage in ((experiment, model, stage), (f"d{experiment}", f"d{model}", 1)):
        cfg = resolve_with_hydra(compose_train(f"experiment={name}", "init_from=/x/best.ckpt"))
        assert cfg.stage == first_stage
        assert cfg.data._target_.endswith(data)
        assert cfg.data.batch_size == batch
        assert cfg.trainer.accelerator == "gpu"
        assert cfg.model.optimizer._target_ == "torch.optim.SGD"
        assert cfg.model.optimizer.momentum == 0.9 and cfg.model.optimizer.weight_decay == 5e-4
        assert [(s.max_steps, s.lr, list(s.milestones)) for s in cfg.schedules] == schedules
        assert cfg.run_name.startswith(net)
        # SSD starts from ImageNet weights; DSSD from the SSD checkpoint (init_from)
        assert cfg.model.net.backbone.pretrained == (first_stage == 0)
        assert ("deconv" in cfg.model.net and cfg.model.net.deconv is not None) == (net[0] == "d")
