"""Errors that describe a problem with the user's data or configuration, not a bug; and the
libraries' log lines a command should not show (:func:`quiet_loggers`)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hydra.errors import InstantiationException


class UserError(Exception):
    """Base class: a mistake the user can fix, with a message that says how."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset directory or split file is missing."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Report a :class:`UserError`, also one raised in a constructor that ``instantiate`` called,
    as its message alone (no traceback burying it) and exit with status 2;
    ``HYDRA_FULL_ERROR=1`` re-raises it with the traceback."""
    try:
        yield
    except Exception as err:
        cause = err
        while isinstance(cause, InstantiationException):  # raised ``from`` the constructor's error
            cause = cause.__cause__
        if not isinstance(cause, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {cause}", file=sys.stderr)
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
