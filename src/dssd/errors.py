"""Errors that describe a problem with the user's data or configuration, not a bug; and the
libraries' log lines a command should not show (:func:`quiet_loggers`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Base class: a mistake the user can fix, with a message that says how."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset directory or split file is missing."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a :class:`UserError` as its message alone (no traceback burying it) and exit with
    status 2; ``HYDRA_FULL_ERROR=1`` re-raises it with the traceback."""
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


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
