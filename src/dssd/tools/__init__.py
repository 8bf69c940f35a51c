"""Command-line tools that are not experiments: anchor_coverage, anchor_kmeans (Table 1),
context_reach, network_table (Table 2) and show_augmentation; and :class:`HelpFormatter`, which
they, the benchmarks and the shapes generator share."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default after its text, unless it has none (None, a flag's
    False) or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
