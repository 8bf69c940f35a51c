"""Command-line tools that are not experiments: anchor_coverage, anchor_kmeans (Table 1),
context_reach, network_table (Table 2) and show_augmentation; and :class:`HelpFormatter`, which
they, the benchmarks and the shapes generator share."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default after its text, unless it has none (None, a flag's
    False) or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def at_least(least: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``least`` (a count of passes, images or
    threads); anything else is a usage error naming the option."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least {least}")
        return value

    return whole


def number(check: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse ``type``: a number for which ``check`` holds (false for NaN, as comparisons
    are); anything else is a usage error naming the option and asking for ``what``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text!r}: give {what}")
        return value

    return parse


def check_outputs(
    parser: argparse.ArgumentParser,
    files: Mapping[str, Path | None],
    directories: Mapping[str, Path | None] | None = None,
) -> None:
    """Refuse, as a usage error before any work, an output option (``files``: option -> path,
    ``directories`` likewise) whose path cannot be written, or that another one names too."""
    from dssd.errors import UserError, writable_directory, writable_file

    given = {o: p.resolve() for o, p in {**files, **(directories or {})}.items() if p is not None}
    for option, path in given.items():
        if same := [o for o, p in given.items() if p == path and o != option]:
            parser.error(
                f"{option} and {same[0]} name one file, {path}: the second would replace it"
            )
    try:
        for option, path in files.items():
            if path is not None:
                writable_file(path, option)
        for option, path in (directories or {}).items():
            if path is not None:
                writable_directory(path, option)
    except UserError as err:
        parser.error(str(err))
