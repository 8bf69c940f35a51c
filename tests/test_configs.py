"""Every config composes, and the objects it describes can be built."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import albumentations as A
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dssd.config import register_resolvers
from dssd.errors import UserError
from dssd.tasks.training import warn_no_validation, warn_shapes_recipe
from dssd.training.module import DetectionModule

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def compose_train(*overrides: str) -> DictConfig:
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    # ${hydra:...} resolvers need a running Hydra app; pin the run directory instead.
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/dssd-config-test"
        cfg.paths.root_dir = str(CONF.parent)
    return cfg


@contextmanager
def hydra_runtime(cfg: DictConfig) -> Iterator[None]:
    """Make ``${hydra:...}`` (hence ``${run_name}``) resolvable, as in a running app."""
    instance = HydraConfig.instance()
    previous = instance.cfg
    instance.set_config(cfg)
    try:
        yield
    finally:
        instance.cfg = previous


def resolve_with_hydra(cfg: DictConfig) -> DictConfig:
    """``cfg`` without its ``hydra`` node, resolved (``${hydra:...}`` included) as in a run."""
    with hydra_runtime(cfg):
        app = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        return OmegaConf.create(OmegaConf.to_container(app, resolve=True))


@pytest.mark.parametrize("model", MODELS)
def test_model_configs_build_and_run_at_their_size(model: str) -> None:
    cfg = compose_train(f"model={model}")
    module = instantiate(cfg.model)
    assert isinstance(module, DetectionModule)
    net = module.net
    assert net.num_classes == len(cfg.data.class_names)
    assert net.image_size == cfg.data.image_size
    per_location = net.default_boxes.boxes_per_location
    expected = sum(b * f * f for b, f in zip(per_location, net.feature_sizes, strict=True))
    assert net.priors.shape[0] == expected
    net.eval()
    with torch.no_grad():
        loc, conf = net(torch.zeros(1, 3, net.image_size, net.image_size))
    assert loc.shape == (1, expected, 4)
    assert conf.shape == (1, expected, len(cfg.data.class_names) + 1)


def test_paper_ssd321_config_is_the_paper_network() -> None:
    net = instantiate(compose_train("model=ssd321").model.net)
    assert net.feature_sizes == [40, 20, 10, 5, 3, 1]
    assert net.priors.shape[0] == 17080


def test_default_experiment_composes_trainer_callbacks_and_data() -> None:
    cfg = compose_train()
    assert cfg.model.net.backbone.depth == 18
    assert cfg.trainer.max_steps > 0
    assert cfg.callbacks.model_checkpoint.monitor == cfg.optimized_metric
    datamodule = instantiate(cfg.data)
    assert datamodule.num_classes == 6
    assert datamodule.image_size == cfg.model.net.image_size


def test_run_names_tell_a_swapped_backbone_apart() -> None:
    """Two runs that differ only by ``backbone=`` (or ``upsample=``, ``optimizer=``,
    ``reference=``, ``data=``) get different names and tags; without it the name is the model's
    and the rows' (what the sweeps' run directories use)."""
    swapped = resolve_with_hydra(compose_train("model=dssd_r18w32", "backbone=mobilenet_v3_large"))
    own = resolve_with_hydra(compose_train("model=dssd_r18w32"))
    assert swapped.run_name == "dssd_r18w32-mobilenet_v3_large-pm_c-prod-stage0"
    assert own.run_name == "dssd_r18w32-pm_c-prod-stage0"
    assert "backbone=mobilenet_v3_large" in swapped.run_tags
    assert not any(tag.startswith("backbone=") for tag in own.run_tags)
    # so do the decoder's upsampling, the optimiser and the reference, after the rows' parts
    overrides = ("upsample=bilinear", "data=shapes_context", "optimizer=adamw", "backbone=resnet18")
    several = resolve_with_hydra(compose_train("model=dssd_r18w32", *overrides))
    assert several.run_name == "dssd_r18w32-resnet18-pm_c-prod-bilinear-adamw-shapes_context-stage0"
    assert {"upsample=bilinear", "data=shapes_context", "backbone=resnet18", "stage=0"} <= set(
        several.run_tags
    )
    # the experiment's tags name no model: a DSSD run on the SSD-default experiment is not "ssd"
    for experiment in ("shapes", "shapes_r18w32", "shapes_r18_193"):
        tags = resolve_with_hydra(
            compose_train(f"experiment={experiment}", "model=dssd_r18")
        ).run_tags
        assert "model=dssd_r18" in tags and "ssd" not in tags, experiment
    # a single tag given as a word is one tag, not its letters
    tagged = resolve_with_hydra(compose_train("tags=ablation"))
    assert tagged.run_tags[0] == "ablation" and "a" not in tagged.run_tags


def test_augmentation_is_switched_on_by_its_config_and_a_bare_name_is_refused() -> None:
    """The override docs/configuration.md gives turns SSD's augmentation on in the default
    experiment; ``data.augment=ssd`` (a string) fails with the override to use instead."""
    assert instantiate(compose_train().data).augment is None
    on = compose_train("data.augment={_target_:dssd.data.augment.ssd_augmentation}")
    augment = instantiate(on.data).augment
    assert {type(a).__name__ for a in augment} >= {"PhotometricDistort", "Expand"}
    assert all(isinstance(a, A.BasicTransform) for a in augment)
    with pytest.raises(InstantiationException) as raised:  # Hydra prints the cause's message
        instantiate(compose_train("data.augment=ssd").data)
    assert isinstance(raised.value.__cause__, UserError)
    assert "'data.augment={_target_:dssd.data.augment.ssd_augmentation}'" in str(raised.value)


@pytest.mark.parametrize("data", ["voc0712", "voc07++12", "coco"])
def test_every_data_config_takes_pin_memory(data: str) -> None:
    """``data.pin_memory=true``, as the GPU commands in docs/benchmarks.md give it, composes
    for every dataset (not only the embedded one)."""
    assert compose_train(f"data={data}", "data.pin_memory=true").data.pin_memory is True


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "precision"),
    [(True, False, "bf16-mixed"), (False, True, "bf16-mixed"), (False, False, "32-true")],
)
def test_default_experiment_uses_bf16_only_where_it_is_native(
    monkeypatch: pytest.MonkeyPatch, amx: bool, avx512_bf16: bool, precision: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    cfg = resolve_with_hydra(compose_train())
    assert cfg.trainer.precision == precision
    assert cfg.model.channels_last is (precision == "bf16-mixed")


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """A resolved config as {dotted key: leaf value}, list items by index."""
    if isinstance(node, dict | list):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        return {k: v for key, value in items for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


def test_the_default_recipe_changes_only_what_the_10_minute_search_chose() -> None:
    """experiment=shapes is experiment=shapes_r18w32's recipe with the network, batch,
    augmentation, loader and schedule the recipe search chose and the learning rate the LR search
    chose (docs/reproducing.md), and the ablation keeps shapes_r18w32's loader, with which its
    figures were measured."""

    def flat(*overrides: str) -> dict[str, object]:
        cfg = compose_train("logger=csv", *overrides)
        return flatten(OmegaConf.to_container(resolve_with_hydra(cfg)))

    default, earlier = flat(), flat("experiment=shapes_r18w32")
    changed = {k for k in default.keys() | earlier.keys() if default.get(k) != earlier.get(k)}
    chosen = (
        "model.net.",
        "schedules.",
        "model.scheduler.",
        "model.optimizer.lr",
        "data.batch_size",
        "data.augment",
    )
    names = ("run_name", "run_group", "run_tags", "tags")  # follow the experiment's and model's
    others = {k for k in changed if not k.startswith((*chosen, *names))}
    assert others == {
        "data.num_workers",
        "trainer.max_steps",
        "trainer.val_check_interval",
        "callbacks.last_checkpoint.every_n_train_steps",
    }
    assert default["data.num_workers"] == 0 and default["data.augment"] is None
    ablation = flat("experiment=shapes_ablation_r18")
    assert ablation["data.num_workers"] == earlier["data.num_workers"] == 1


def test_the_default_differs_from_the_full_length_recipe_by_stage_0s_schedule() -> None:
    """experiment=shapes (make train) is experiment=shapes_full, the recipe before the learning-rate
    search, with stage 0 at LR 4e-3 for 1,200 iterations; stages 1 and 2 are the same."""

    def flat(*overrides: str) -> dict[str, object]:
        cfg = compose_train("logger=csv", *overrides)
        return flatten(OmegaConf.to_container(resolve_with_hydra(cfg)))

    default, full = flat(), flat("experiment=shapes_full")
    changed = {k for k in default.keys() | full.keys() if default.get(k) != full.get(k)}
    assert {k for k in changed if not k.startswith(("run_group", "schedules.0."))} == {
        "model.scheduler.milestones.0",
        "model.scheduler.milestones.1",
        "model.scheduler.warmup_iters",
        "model.optimizer.lr",
        "trainer.max_steps",
        "trainer.val_check_interval",
    }
    assert (default["schedules.0.lr"], full["schedules.0.lr"]) == (4.0e-3, 1.0e-3)
    assert (default["trainer.max_steps"], full["trainer.max_steps"]) == (1200, 1780)
    for stage in (1, 2):
        later = ("logger=csv", f"stage={stage}", "init_from=/x/last.ckpt")
        default, full = flat(*later), flat(*later, "experiment=shapes_full")
        changed = {k for k in default if default[k] != full[k]}
        assert {k for k in changed if not k.startswith("schedules.0.")} == {"run_group"}


def test_the_ablation_is_the_full_length_recipe_on_shorter_schedules() -> None:
    """experiment=shapes_ablation (make ablation's rows) is experiment=shapes_full with every stage
    at 45% of the iterations, the milestones and warm-up scaled alike, so that it keeps the recipe
    chosen on the validation split and changes only the length the time budget set."""

    def flat(*overrides: str) -> dict[str, object]:
        cfg = compose_train("logger=csv", *overrides)
        return flatten(OmegaConf.to_container(resolve_with_hydra(cfg)))

    for stage in range(3):
        default = flat(
            "experiment=shapes_full",
            f"stage={stage}",
            *(["init_from=/x/last.ckpt"] if stage else []),
        )
        ablation = flat(
            "experiment=shapes_ablation",
            f"stage={stage}",
            *(["init_from=/x/last.ckpt"] if stage else []),
        )
        changed = {k for k in default.keys() | ablation.keys() if default.get(k) != ablation.get(k)}
        names = ("run_name", "run_group", "run_tags", "tags")
        lengths = ("schedules.", "model.scheduler.", "trainer.max_steps")
        assert {k for k in changed if not k.startswith((*names, *lengths))} == {
            "trainer.val_check_interval",
            "callbacks.last_checkpoint.every_n_train_steps",
        }
        for key in changed:
            if key.startswith(("schedules.", "trainer.max_steps")) and not key.endswith(".lr"):
                assert abs(ablation[key] - 0.45 * default[key]) <= 1, key
        assert ablation["trainer.val_check_interval"] * 4 == ablation["trainer.max_steps"]


@pytest.mark.parametrize(("steps", "interval"), [(1200, 300), (10, 2), (3, 1), (1, 1)])
def test_the_shapes_experiments_validate_every_quarter_and_at_least_every_step(
    steps: int, interval: int
) -> None:
    """A schedule shortened below 4 iterations validated every 0 steps: an error naming a
    setting the command never gave."""
    cfg = resolve_with_hydra(compose_train(f"schedules.0.max_steps={steps}"))
    assert cfg.trainer.val_check_interval == interval


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        (["data=voc0712"], True),
        (["data=coco", "data.batch_size=32"], True),
        ([], False),
        (["experiment=ssd321_voc0712"], False),
        (["experiment=shapes_full", "data=shapes_context"], False),
    ],
)
def test_a_shapes_recipe_on_other_data_is_named(
    overrides: list[str], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The shapes experiments set the data's batch size, augmentation and workers, which replace
    those of another data config; the run says so, with the values it trains with."""
    cfg = compose_train(*overrides)
    with hydra_runtime(cfg), caplog.at_level("WARNING", logger="dssd.tasks.training"):
        warn_shapes_recipe(resolve_with_hydra(cfg))
    assert bool(caplog.records) == warned
    if warned:
        batch = 32 if "data.batch_size=32" in overrides else 8
        assert f"batch {batch}, augmentation none, 0 workers, 1200 iterations" in caplog.text
        assert "experiment=ssd321_voc0712" in caplog.text


@pytest.mark.parametrize(
    ("overrides", "warned"),
    [
        (["trainer.max_steps=200"], True),
        (["schedules.0.max_steps=200"], False),
        (["trainer.max_steps=200", "trainer.val_check_interval=50"], False),
        (["experiment=shapes_r18w32", "trainer.max_steps=100"], True),
        ([], False),
    ],
)
def test_a_fit_that_ends_before_its_first_validation_is_named(
    overrides: list[str], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = resolve_with_hydra(compose_train(*overrides))
    with caplog.at_level("WARNING", logger="dssd.tasks.training"):
        warn_no_validation(cfg)
    assert bool(caplog.records) == warned
    if warned:
        interval = cfg.trainer.val_check_interval
        assert f"ends before the first validation (trainer.val_check_interval={interval}," in (
            caplog.text
        )
        assert f"schedules.0.max_steps={cfg.trainer.max_steps}" in caplog.text


def test_the_config_resolves_in_place_as_cfg_job_resolve_does() -> None:
    """``src/train.py --cfg job --resolve`` resolves the config in place, which refuses a
    resolver's plain list (``run_tags``)."""
    cfg = compose_train("pm=c")
    with hydra_runtime(cfg):
        app = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
        OmegaConf.resolve(app)
    assert "pm=c" in app.run_tags and app.run_tags[0] == "shapes"
