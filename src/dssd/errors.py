"""Errors that describe a problem with the user's data or configuration, not a bug.

The entry points print their message alone (no traceback) and exit with status 2; set
``HYDRA_FULL_ERROR=1`` to see the traceback anyway.
"""

from __future__ import annotations

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
    """Report a :class:`UserError` as its message alone and exit with status 2.

    These errors name the file or option at fault and the fix; a traceback through Lightning
    would only bury that. ``HYDRA_FULL_ERROR=1`` re-raises them with the traceback.
    """
    try:
        yield
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
