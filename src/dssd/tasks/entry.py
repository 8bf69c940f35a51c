"""What every ``src/*.py`` entry point runs around its Hydra app: :func:`prepare` before it
composes the config, :func:`run_task` inside it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dssd.config import register_resolvers
from dssd.errors import UserError, quiet_lightning, user_errors


def prepare(script: str) -> None:
    """Set ``PROJECT_ROOT`` (unless set: the folder above ``src/``, holding ``conf/``, ``data/``,
    ``logs/``) and register the config resolvers, before ``script``'s Hydra app composes."""
    os.environ.setdefault("PROJECT_ROOT", str(Path(script).resolve().parents[1]))
    register_resolvers()


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task`` on ``cfg`` (a :class:`~dssd.errors.UserError` printed alone, exit status 2;
    no Lightning product tips); the scripts import ``task`` inside their Hydra app, so ``--help``
    and ``--cfg`` skip Lightning."""
    quiet_lightning()
    with user_errors():
        _require_given(cfg)
        return task(cfg)


def _require_given(cfg: DictConfig) -> None:
    """Name every top-level setting the config leaves to the command line (``???``) that was not
    given, before the task starts, rather than at its first use deep inside the task. Nothing is
    resolved: an interpolation may refer to what the task adds (eval.py's ``model``)."""
    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
    if not missing:
        return
    message = "give " + " and ".join(f"{key}=..." for key in missing) + " on the command line"
    if HydraConfig.initialized():
        message += f" (conf/{HydraConfig.get().job.config_name}.yaml says what each takes)"
    raise UserError(message)
