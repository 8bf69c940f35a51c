"""Errors that describe a problem with the user's data or configuration, not a bug, and the
checks of settings and output paths that raise them; and the libraries' log lines a command
should not show (:func:`quiet_loggers`, :func:`quiet_lightning`)."""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf.errors import InterpolationResolutionError


class UserError(Exception):
    """Base class: a mistake the user can fix, with a message that says how."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset directory or split file is missing."""


def is_number(value: Any) -> bool:
    """Whether a setting's ``value`` is a number (``true`` is not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(low: float = -math.inf, high: float = math.inf) -> Callable[[Any], bool]:
    """A check of a setting: a number in [``low``, ``high``]."""
    return lambda value: is_number(value) and low <= value <= high


def whole(least: int) -> Callable[[Any], bool]:
    """A check of a setting: a whole number of at least ``least``."""
    return lambda value: is_number(value) and isinstance(value, int) and value >= least


# a check of a setting that is a switch: any other value (``no``, ``maybe``) would count as true
BOOLEAN = (lambda value: isinstance(value, bool), "true or false")

# the seeds Lightning's seed_everything accepts
MAX_SEED = 2**32 - 1


def is_seed(value: Any) -> bool:
    """Whether a ``seed`` setting is one Lightning's ``seed_everything`` accepts, or None."""
    return value is None or (whole(0)(value) and value <= MAX_SEED)


def check_settings(settings: Any, *checks: tuple[str, Callable[[Any], bool], str]) -> None:
    """Refuse the first setting no run can use, as ``<name>=<value>: choose <what>``, before any
    work; ``checks`` are (name, check of the value, what to choose), the values ``settings``'s
    attributes (a config or a dataclass)."""
    for name, valid, what in checks:
        value = getattr(settings, name)
        if not valid(value):
            raise UserError(f"{name}={value}: choose {what}")


def writable_directory(directory: str | Path, option: str, file: Path | None = None) -> Path:
    """``directory``, created if needed and checked writable (else a :class:`UserError` naming
    ``option`` and the ``file`` to be written there, if given, raised before any work)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        given = f"{file}: {directory}" if file is not None else f"{directory}"
        raise UserError(f"{option}={given} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as err:
        where = f"{directory}: cannot write there"
        if file is not None:
            where = f"{file}: cannot write in {directory}"
        raise UserError(
            f"{option}={where} ({err.strerror or err}); choose a directory you can write to"
        ) from None
    return directory


def creatable_directory(directory: str | Path, option: str) -> None:
    """Refuse, before any work, a ``directory`` to be made later that cannot be: a file on its
    path, or an existing parent one cannot write in (nothing is created here)."""
    path = Path(directory).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == path else f": {existing}"
        raise UserError(f"{option}={directory}{where} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{option}={directory}: cannot write in {existing}; choose a directory you can write to"
        )


def writable_file(path: str | Path, option: str) -> Path:
    """``path``, a file to be written: not a directory, in a directory :func:`writable_directory`
    accepts (else a :class:`UserError` naming ``option``, raised before any work)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option}={path} is a directory: give the path of a file to write")
    writable_directory(path.parent, option, path)
    return path


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a :class:`UserError`, also one raised in a constructor that ``instantiate`` called
    or in a config resolver, and a constructor's verdict on a config's arguments (a
    ``MisconfigurationException`` or ``ValueError`` from it, e.g. ``trainer.devices=0``) as
    its message alone (no traceback burying it) and exit with status 2; ``HYDRA_FULL_ERROR=1``
    re-raises it with the traceback."""
    try:
        yield
    except Exception as err:
        # imported here: Lightning set up before Hydra's logging would print past its log file
        from lightning_fabric.utilities.exceptions import MisconfigurationException

        cause, target = err, None
        while isinstance(cause, InstantiationException | InterpolationResolutionError):
            if isinstance(cause, InstantiationException):  # ``from`` the constructor's error
                target = target or re.search(r"target '([\w.]+)'", str(cause))
                cause = cause.__cause__
            else:  # raised while handling the resolver's error
                cause = cause.__context__
        # a constructor's verdict on its arguments (Trainer(strategy=...), a ResNet's depth)
        configured = target is not None and isinstance(
            cause, MisconfigurationException | ValueError
        )
        if not (isinstance(cause, UserError) or configured):
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        where = f"{target.group(1).rsplit('.', 1)[-1]} settings: " if configured else ""
        print(f"error: {where}{_message(cause)}", file=sys.stderr)
        raise SystemExit(2) from None


def _message(err: Exception) -> str:
    """An error's message; one raised in a DataLoader worker comes back holding the worker's
    traceback too, of which only the message is kept."""
    text = str(err)
    marker = f"\n{type(err).__module__}.{type(err).__qualname__}: "
    if text.startswith(f"Caught {type(err).__name__} in DataLoader worker") and marker in text:
        return text.rsplit(marker, 1)[1].rstrip()
    return text


@contextmanager
def quiet_loggers(*names: str, level: int) -> Iterator[None]:
    """The named loggers at ``level`` meanwhile (their lines below it hidden), then as they were."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in names]
    for logger, _ in saved:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in saved:
            logger.setLevel(old)


class _NoTips(logging.Filter):
    """Drops Lightning's "💡 Tip: ... try installing <product>" lines and its note that the
    configured ``ModelSummary`` callback replaces its default one: neither is about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("💡 Tip", "Trainer already configured with model summary"))


def quiet_lightning() -> None:
    """Keep out of the commands' output what asks nothing of the user: Lightning's product tips
    and its note on the configured model summary, the FutureWarning its batch handling draws from
    torch (``LeafSpec``), its model summary's caveat on bf16-mixed (whose weights are float32,
    as the summary counts them) and its note on modules in eval mode when a fit starts: they are
    the batch norms that stages 1 and 2 freeze, which the stage logs. Lightning's other lines
    stay."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NO_TIPS)
    warnings.filterwarnings("ignore", r"Found \d+ module\(s\) in eval mode at the start of train")
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)`", FutureWarning)
    warnings.filterwarnings("ignore", "Precision bf16-mixed is not supported by the model summary")


_NO_TIPS = _NoTips()
