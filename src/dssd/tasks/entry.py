"""What every ``src/*.py`` entry point runs around its Hydra app: :func:`prepare` before it
composes the config, :func:`run_task` inside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

import dssd.tasks
from dssd.config import register_resolvers
from dssd.errors import user_errors


def prepare(script: str) -> None:
    """``PROJECT_ROOT`` (the folder above ``src/``, where ``conf/``, ``data/`` and ``logs/`` live,
    unless set) and the config resolvers, before the Hydra app of ``script`` composes."""
    os.environ.setdefault("PROJECT_ROOT", str(Path(script).resolve().parents[1]))
    register_resolvers()


def run_task(name: str, cfg: DictConfig) -> Any:
    """Run the task ``dssd.tasks.<name>`` on the composed config and return what it returns; a
    :class:`~dssd.errors.UserError` is printed as its message alone (exit status 2). The task's
    module is imported only now, so that ``--help`` and ``--cfg`` print without loading
    Lightning."""
    with user_errors():
        return getattr(dssd.tasks, name)(cfg)
