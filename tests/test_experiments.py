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
    for stage in range(3):
        staged = resolve_with_hydra(
            compose_train(f"experiment={experiment}", f"stage={stage}", "init_from=/x/last.ckpt")
        )
        interval = staged.trainer.val_check_interval
        if isinstance(interval, int):
            assert staged.trainer.max_steps % interval == 0, (stage, interval)
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
        assert (cfg.model.net.neck is not None) == (net[0] == "d")
        # COCO is scored by its official protocol, at most 100 detections an image (the
        # evaluation server's); VOC's devkit has no cap, so SSD's 200 stay
        caps = [1, 10, 100] if data == "COCODataModule" else [1, 10, 200]
        assert list(cfg.model.coco_max_detections) == caps
        assert cfg.model.postprocess.max_detections == caps[-1]


def test_authors_code_recipe_switches_every_config_level_difference() -> None:
    """experiment=ssd321_voc0712_authors: the released scripts' schedules and settings
    (docs/paper_vs_code.md); reference=authors_code alone leaves the schedules alone."""
    paper = resolve_with_hydra(compose_train("experiment=ssd321_voc0712"))
    code = resolve_with_hydra(compose_train("experiment=ssd321_voc0712_authors"))
    assert [(s.max_steps, s.lr, s.warmup_iters) for s in code.schedules] == [
        (80000, 1e-3, 0),
        (30000, 1e-3, 0),
        (40000, 1e-4, 0),
    ]
    assert [(s.max_steps, s.lr) for s in paper.schedules] == [
        (70000, 1e-3),
        (30000, 1e-3),
        (40000, 1e-3),
    ]
    for cfg, mid, heads, hue, crop in (
        (paper, 1, 3, None, None),
        (code, 3, [5, 5, 3], 36, "pooled"),
    ):
        assert cfg.model.net.prediction_module.mid_kernel_size == mid
        assert cfg.model.net.head_kernel_sizes == heads
        assert cfg.data.augment.get("hue") == hue
        assert cfg.data.augment.get("crop_selection") == crop
    dssd = resolve_with_hydra(
        compose_train("experiment=dssd321_voc0712_authors", "init_from=/x/last.ckpt")
    )
    assert dssd.stage == 1 and dssd.schedules == code.schedules
    assert dssd.model.net.head_kernel_sizes == [5, 5, 3]


def test_reference_authors_code_builds_on_any_model_and_data() -> None:
    from hydra.utils import instantiate

    from dssd.data.augment import MinIoURandomCrop, PhotometricDistort

    for model in ("ssd_r18", "dssd_r18"):
        # on the recipe with SSD augmentation (the default trains without it)
        cfg = compose_train(
            f"model={model}", "pm=c", "reference=authors_code", "experiment=shapes_r18w32"
        )
        net = instantiate(cfg.model.net)
        assert [c.kernel_size[0] for c in net.heads.loc] == [5, 5, 3, 3, 3]
        for module in net.prediction_modules:  # 1x1 -> 3x3 -> 1x1 bottlenecks
            kernels = [m.kernel_size for m in module.body.modules() if hasattr(m, "kernel_size")]
            assert (3, 3) in kernels
        augment = instantiate(cfg.data.augment)
        distort = next(t for t in augment if isinstance(t, PhotometricDistort))
        crop = next(t for t in augment if isinstance(t, MinIoURandomCrop))
        assert distort.hue == 36 and crop.selection == "pooled"
    # an experiment's own settings win: shapes_ablation trains without augmentation
    ablation = compose_train("reference=authors_code", "experiment=shapes_ablation")
    assert ablation.data.augment is None and ablation.model.net.head_kernel_sizes == [5, 5, 3]
