"""What the entry points do with their Hydra config: train, evaluate, export, predict, analyse
and the Table 4 ablation; shared parts in ``common``, the scripts' wrapper in ``entry``.
``dssd.tasks.<task>`` imports the task's module on first use only (like ``dssd.Detector``)."""

from __future__ import annotations

import importlib
from typing import Any

# each task and the module that defines it
_TASKS = {
    "ablation": "dssd.tasks.ablation",
    "analyze": "dssd.tasks.analysis",
    "evaluate": "dssd.tasks.evaluation",
    "export_checkpoint": "dssd.tasks.exporting",
    "predict": "dssd.tasks.prediction",
    "train": "dssd.tasks.training",
}

__all__ = list(_TASKS)


def __getattr__(name: str) -> Any:
    if name in _TASKS:
        return getattr(importlib.import_module(_TASKS[name]), name)
    raise AttributeError(f"module 'dssd.tasks' has no attribute {name!r}")
