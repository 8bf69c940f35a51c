"""``src/analyze.py``: analyse a run (directory or checkpoint), compared with a baseline if given
(:mod:`dssd.analysis.analyser`), into ``<run>/analysis/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig

from dssd.analysis.analyser import Analyser, Options, find_run, write_analysis
from dssd.errors import UserError


def _paths(value: Any) -> list[str]:
    """``run=`` / ``baseline=``: one path or a list of them (seeds, paired in order)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    return [str(value)]


def analyze(cfg: DictConfig) -> Path:
    """Analyse ``cfg.run`` (and compare it with ``cfg.baseline``); print and return the summary."""
    run_paths, baseline_paths = _paths(cfg.run), _paths(cfg.get("baseline"))
    if not run_paths:
        raise UserError("run=<run directory or checkpoint> is required")
    if baseline_paths and len(baseline_paths) != len(run_paths):
        raise UserError(
            f"run= has {len(run_paths)} path(s) and baseline= {len(baseline_paths)}: give one "
            "baseline per run (seeds are paired in order)"
        )
    if cfg.get("baseline_name") and not baseline_paths:
        raise UserError(
            f"baseline_name={cfg.baseline_name} names the baseline, but no baseline=<run> is given"
        )
    runs = [find_run(p) for p in run_paths]
    baselines = [find_run(p, "baseline") for p in baseline_paths]
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else runs[0].directory / "analysis"
    options = Options(**{key: cfg[key] for key in Options.__dataclass_fields__})
    summary, _ = write_analysis(
        runs, baselines, out_dir, Analyser(options), cfg.get("run_name"), cfg.get("baseline_name")
    )
    print(summary.read_text())
    print(f"Analysis written to {out_dir}")
    return summary
