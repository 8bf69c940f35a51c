"""Errors that describe a problem with the user's data or configuration, not a bug.

The entry points print their message alone (no traceback) and exit with status 2; set
``HYDRA_FULL_ERROR=1`` to see the traceback anyway.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class: a mistake the user can fix, with a message that says how."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset directory or split file is missing."""
