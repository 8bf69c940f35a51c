"""The configs' OmegaConf resolvers, the training stage check, and ``conf/train.yaml`` composed
outside a Hydra app (for the tools and benchmarks)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf

from dssd.errors import UserError


def training_stage(cfg: DictConfig, table: str = "stages") -> int:
    """DSSD's training stage ``cfg.stage`` (default 0), checked to index the list ``table``."""
    entries = cfg.get(table) or [{}]
    stage = cfg.get("stage", 0)
    if not isinstance(stage, int) or not 0 <= stage < len(entries):
        raise UserError(f"stage must be one of 0..{len(entries) - 1}, got {stage!r}")
    return stage


def stage_entry(table: str, key: str, _root_: DictConfig) -> Any:
    """``${stage:schedules,lr}``: ``key`` of the current stage's entry in the list ``table``."""
    return _root_[table][training_stage(_root_, table)][key]


# config groups whose choice on the command line joins a run's name and tags; the rest of what
# tells Table 4's rows apart (PM, neck or fusion, stage) is read from the config itself
NAMED_OVERRIDES = ("backbone", "upsample", "optimizer", "reference", "data")


def num_classes(class_names: Sequence[str] | None) -> int:
    """``${num_classes:${data.class_names}}``: how many classes the network predicts, built
    before any annotation file is read, so the data config must list them."""
    if not class_names:
        raise UserError(
            f"data.class_names is {'null' if class_names is None else 'empty'}: the network is "
            "built from the dataset's class names before any file is read, so the data config "
            "lists them (COCO: in category-id order; a wrong list prints the one that fits)"
        )
    return len(class_names)


def _run_parts(model: str, overrides: Sequence[str], root: DictConfig) -> dict[str, str]:
    """What tells runs apart, in name order: model, backbone (if chosen in ``overrides``, the
    command line's), PM, neck (DSSD's by its fusion), the other NAMED_OVERRIDES chosen, stage."""
    chosen = {}
    for override in overrides:  # the last choice wins, as in Hydra
        key, _, value = override.partition("=")
        if key.lstrip("+~") in NAMED_OVERRIDES and value:
            chosen[key.lstrip("+~")] = value
    net = root.model.net
    parts = {"model": model}
    if "backbone" in chosen:
        parts["backbone"] = chosen["backbone"]
    parts["pm"] = OmegaConf.select(net, "prediction_module.variant", default="a")
    neck = OmegaConf.select(net, "neck._target_", default=None)
    if neck == "dssd.models.Decoder":
        parts["fusion"] = OmegaConf.select(net, "neck.fusion", default="prod")
    elif neck:
        parts["neck"] = neck.rsplit(".", 1)[-1].lower()
    parts.update({k: chosen[k] for k in NAMED_OVERRIDES[1:] if k in chosen})
    parts["stage"] = str(root.stage)
    return parts


def run_name(model: str, overrides: Sequence[str], _root_: DictConfig) -> str:
    """``${run_name:<model>,<overrides>}``, e.g. ``dssd321-pm_c-prod-stage1``,
    ``ssd_r18-pm_c-fpn-stage1``, ``dssd321-mobilenet_v3_large-pm_c-prod-bilinear-stage0``."""
    words = {"pm": "pm_{}", "stage": "stage{}"}
    parts = _run_parts(model, overrides, _root_)
    return "-".join(words.get(key, "{}").format(value) for key, value in parts.items())


def run_tags(model: str, overrides: Sequence[str], _root_: DictConfig) -> ListConfig:
    """``${run_tags:<model>,<overrides>}``: ``tags`` plus e.g. ``pm=c``, ``stage=1`` (a
    ListConfig: ``OmegaConf.resolve``, as in ``--cfg job --resolve``, refuses a plain list)."""
    parts = _run_parts(model, overrides, _root_)
    given = _root_.get("tags") or []
    given = [given] if isinstance(given, str) else list(given)  # tags=ablation: one tag
    return ListConfig([*given, *(f"{key}={value}" for key, value in parts.items())])


def native_bf16() -> bool:
    """Whether bf16 runs natively here (a CUDA GPU supporting it, a CPU with AMX or AVX-512 BF16);
    emulated, autocast is about 10x slower than float32 (AVX2 CPU) instead of 2-3x faster."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def fast_precision() -> str:
    """``${fast_precision:}``: the faster here, ``bf16-mixed`` if native, else ``32-true``."""
    return "bf16-mixed" if native_bf16() else "32-true"


def register_resolvers() -> None:
    """Register the resolvers above and ``every`` (``${every:<steps>,<n>}``: the interval that
    validates ``n`` times in ``steps`` iterations, at least 1, so that a schedule shortened below
    ``n`` iterations still validates)."""
    resolvers = {
        "num_classes": num_classes,
        "every": lambda steps, n: max(1, int(steps) // int(n)),
        "stage": stage_entry,
        "run_name": run_name,
        "run_tags": run_tags,
        "fast_precision": fast_precision,
        "native_bf16": native_bf16,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def conf_dir() -> Path:
    """The project's ``conf/``: ``PROJECT_ROOT``'s, which is set to this checkout when unset."""
    root = os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[2]))
    return Path(root) / "conf"


def compose_train(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides``, unresolved: ``model.net`` and ``data``
    instantiate from it, not what reads ``paths.output_dir`` (needs a running Hydra app). An
    override Hydra cannot apply (an unknown config, a bad value) is a :class:`UserError` with
    Hydra's message, as the Hydra apps report it."""
    conf = str(conf_dir())
    register_resolvers()
    # inside a Hydra app (src/ablation.py), its own search path holds conf/ already
    running = GlobalHydra.instance().is_initialized()
    with nullcontext() if running else initialize_config_dir(conf, version_base="1.3"):
        try:
            return compose("train", overrides=list(overrides))
        except HydraException as err:
            raise UserError(str(err)) from None
