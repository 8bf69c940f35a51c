"""OmegaConf resolvers the configs use; registered by the entry points before composing."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def stage_entry(table: str, key: str, _root_: DictConfig) -> Any:
    """``${stage:schedules,lr}``: ``key`` of the current stage's entry in the list ``table``.

    The training stage (``stage=0|1|2``) indexes the per-stage lists ``stages`` (what is trained)
    and ``schedules`` (for how long, at which LR), so one command-line choice switches them all.
    """
    entries = _root_[table]
    stage = _root_.stage
    if not isinstance(stage, int) or not 0 <= stage < len(entries):
        raise ValueError(f"stage must be one of 0..{len(entries) - 1}, got {stage!r}")
    return entries[stage][key]


def concat(*lists: ListConfig | list) -> list:
    """``${concat:${tags},[a,b]}``: the lists joined into one."""
    return [item for items in lists for item in items]


def register_resolvers() -> None:
    """Register ``len`` (``${len:${data.class_names}}``), ``stage`` and ``concat``."""
    resolvers = {"len": lambda x: len(x), "stage": stage_entry, "concat": concat}
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)
