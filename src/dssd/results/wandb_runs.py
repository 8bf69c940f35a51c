"""W&B runs as pandas DataFrames: a project's online runs through W&B's public API, and the
offline runs that finished runs hold (``<run dir>/wandb/offline-run-<time>-<id>/``, for
``wandb sync``). What an offline run logged is read from the CSV log written next to it
(:func:`dssd.results.runs.load_csv_metrics`), not from W&B's run file, whose binary format is
W&B's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from dssd.results.runs import RunDirs, run_dirs_by_label

# Columns of load_wandb_project, before one column per summary metric.
WANDB_COLUMNS = ["run_id", "name", "group", "tags", "project", "config", "source"]


def wandb_offline_runs(run_dirs: RunDirs) -> pd.DataFrame:
    """The W&B offline runs in ``run_dirs`` (labelled as in
    :func:`dssd.results.runs.load_runs`): one line each with the run's label, its W&B run id
    and its folder (what ``wandb sync`` uploads); a resumed run has several."""
    rows = []
    for label, run_dir in run_dirs_by_label(run_dirs).items():
        for folder in sorted(run_dir.glob("wandb/offline-run-*")):
            if folder.is_dir() and not folder.is_symlink():
                run_id = folder.name.rsplit("-", 1)[-1]
                rows.append({"run": label, "run_id": run_id, "folder": str(folder)})
    return pd.DataFrame(rows, columns=["run", "run_id", "folder"])


def _wandb_runs(project: str, group: str | None, entity: str | None) -> list[Any]:
    import wandb  # slow to import; only the online loaders need it

    path = f"{entity}/{project}" if entity else project
    return list(wandb.Api().runs(path, filters={"group": group} if group else None))


def load_wandb_project(
    project: str, group: str | None = None, entity: str | None = None
) -> pd.DataFrame:
    """One line per online run of a W&B project (optionally one group, e.g. the experiment
    name): run_id, name, group, tags, project, config (dict), source (the run's URL), then the
    last value of each logged scalar (W&B's summary: ``test/voc_map``, ``val/map_50``, ...).
    Needs ``wandb login`` and network access."""
    rows = []
    for run in _wandb_runs(project, group, entity):
        summary = {
            k: float(v)
            for k, v in run.summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("_")
        }
        info = [run.id, run.name, run.group, list(run.tags), run.project, dict(run.config)]
        rows.append({**dict(zip(WANDB_COLUMNS, [*info, run.url], strict=True)), **summary})
    return pd.DataFrame(rows, columns=None if rows else WANDB_COLUMNS)


def wandb_project_history(
    project: str,
    keys: Sequence[str] = ("val/map_50",),
    group: str | None = None,
    entity: str | None = None,
) -> pd.DataFrame:
    """The logged values of ``keys`` in the online runs of a W&B project: columns run_id, name,
    step (the trainer's global step) and ``keys``; only the rows that log every one of them."""
    frames = []
    for run in _wandb_runs(project, group, entity):
        history = run.history(keys=[*keys, "trainer/global_step"], pandas=True)
        if history.empty:
            continue
        # Lightning's global step (logged as trainer/global_step), else W&B's own _step
        step = "trainer/global_step" if "trainer/global_step" in history else "_step"
        frame = history.reindex(columns=list(keys))
        frame.insert(0, "step", history[step].astype(int))
        frame.insert(0, "name", run.name)
        frame.insert(0, "run_id", run.id)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=["run_id", "name", "step", *keys])
    return pd.concat(frames, ignore_index=True)
