"""Finished runs as pandas DataFrames, for the notebooks and for comparing runs by hand.

Sources: ``make ablation``'s ``table4.csv`` (a line per row) and ``runs.csv`` (a line per run:
row and seed); each run directory's ``test_results.json`` (written by ``src/train.py`` and
``src/eval.py``) and CSV logger files; W&B runs, offline (the run files under ``<run dir>/wandb/``)
or online (through the W&B API). Metrics stay as logged (0..1), except in ``table4.csv`` and
``runs.csv``, which hold percentages like the paper.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dssd.wandb_offline import find_run_files, read_offline_run

PathLike = str | Path
RunDirs = Mapping[str, PathLike] | Iterable[PathLike]

# Columns of the W&B loaders, before one column per summary metric.
WANDB_COLUMNS = ["run_id", "name", "group", "tags", "project", "config", "source"]


def load_table(out_dir: PathLike, name: str = "table4.csv") -> pd.DataFrame:
    """``<out_dir>/table4.csv`` (or the CSV file itself) as written by ``make ablation``: a
    line per row; ``name="runs.csv"``: a line per run (row and seed) with its ``run_dir``,
    relative to ``out_dir``."""
    path = Path(out_dir)
    path = path if path.suffix == ".csv" else path / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make ablation` first")
    return pd.read_csv(path)


def _labelled(run_dirs: RunDirs) -> dict[str, Path]:
    """Run dirs by label: a mapping's keys, or else each directory's name."""
    if isinstance(run_dirs, Mapping):
        return {str(label): Path(d) for label, d in run_dirs.items()}
    return {Path(d).name: Path(d) for d in run_dirs}


def _test_results(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "test_results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run did not finish its test")
    return json.loads(path.read_text())


def load_runs(run_dirs: RunDirs) -> pd.DataFrame:
    """One row per run dir (index: the mapping's labels or the dirs' names) from its
    ``test_results.json``: run_name, stage, parameters, trainable_parameters, fit_seconds,
    run_dir, then every test metric (``test/map``, ``test/voc_map``, ``test/ap/<class>``...)."""
    rows = {}
    for label, run_dir in _labelled(run_dirs).items():
        record = _test_results(run_dir)
        rows[label] = {
            "run_name": record.get("run_name"),
            "stage": record.get("stage"),
            "parameters": record.get("parameters"),
            "trainable_parameters": record.get("trainable_parameters"),
            "fit_seconds": record.get("fit_seconds"),
            "run_dir": str(run_dir),
            **{k: v for k, v in record.get("metrics", {}).items() if k.startswith("test/")},
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def per_class_ap(run_dirs: RunDirs) -> pd.DataFrame:
    """Test AP (0..1) of each class: runs (as in :func:`load_runs`) x classes; NaN where a
    class had no ground truth."""
    rows = {
        label: _test_results(run_dir).get("per_class_ap", {})
        for label, run_dir in _labelled(run_dirs).items()
    }
    return pd.DataFrame.from_dict(rows, orient="index").astype(float).rename_axis("run")


def load_csv_metrics(run_dir: PathLike) -> pd.DataFrame:
    """Every row a CSV logger wrote in ``<run_dir>/csv/version_*/metrics.csv`` (a resumed run
    has several versions), with its ``step`` column; empty when there are none."""
    files = sorted(Path(run_dir).glob("csv/version_*/metrics.csv"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


def _wandb_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=None if rows else WANDB_COLUMNS)


def load_wandb_offline(paths: PathLike | Iterable[PathLike]) -> pd.DataFrame:
    """One row per W&B offline run found at ``paths`` (run files, run dirs or ``wandb/`` dirs):
    run_id, name, group, tags, project, config (dict), source (the file), then the last value
    of each logged scalar (W&B's summary: ``test/voc_map``, ``val/map_50``, ...)."""
    rows = []
    for path in find_run_files(paths):
        run = read_offline_run(path)
        info = [run.run_id, run.name, run.group, run.tags, run.project, run.config, str(path)]
        summary = {k: v for k, v in run.summary.items() if not k.startswith("_")}
        rows.append({**dict(zip(WANDB_COLUMNS, info, strict=True)), **summary})
    return _wandb_frame(rows)


def _step_column(history: pd.DataFrame) -> pd.Series:
    """Lightning's global step (logged as ``trainer/global_step``), else W&B's own ``_step``."""
    return history["trainer/global_step" if "trainer/global_step" in history else "_step"]


def wandb_offline_history(
    paths: PathLike | Iterable[PathLike], keys: Sequence[str] = ("val/map_50",)
) -> pd.DataFrame:
    """The logged values of ``keys`` in the offline runs at ``paths``: columns run_id, name,
    step (the trainer's global step) and ``keys``; only the rows that log one of them."""
    frames = []
    for path in find_run_files(paths):
        run = read_offline_run(path)
        history = pd.DataFrame(run.history)
        if history.empty or not set(keys) & set(history):
            continue
        history = history[history[[k for k in keys if k in history]].notna().any(axis=1)]
        frames.append(_curve(history, keys, run.run_id, run.name))
    return _concat_curves(frames, keys)


def _curve(history: pd.DataFrame, keys: Sequence[str], run_id: str, name: str) -> pd.DataFrame:
    """``keys`` of a run's history with the run's id and name and the trainer's step."""
    frame = history.reindex(columns=list(keys))
    frame.insert(0, "step", _step_column(history).astype(int))
    frame.insert(0, "name", name)
    frame.insert(0, "run_id", run_id)
    return frame


def _concat_curves(frames: list[pd.DataFrame], keys: Sequence[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=["run_id", "name", "step", *keys])
    return pd.concat(frames, ignore_index=True)


def _wandb_runs(project: str, group: str | None, entity: str | None) -> list[Any]:
    import wandb  # slow to import; only the online loaders need it

    path = f"{entity}/{project}" if entity else project
    return list(wandb.Api().runs(path, filters={"group": group} if group else None))


def load_wandb_project(
    project: str, group: str | None = None, entity: str | None = None
) -> pd.DataFrame:
    """Like :func:`load_wandb_offline`, for the online runs of a W&B project (optionally one
    group, e.g. the experiment name); needs ``wandb login`` and network access."""
    rows = []
    for run in _wandb_runs(project, group, entity):
        summary = {
            k: float(v)
            for k, v in run.summary.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("_")
        }
        info = [run.id, run.name, run.group, list(run.tags), run.project, dict(run.config)]
        rows.append({**dict(zip(WANDB_COLUMNS, [*info, run.url], strict=True)), **summary})
    return _wandb_frame(rows)


def wandb_project_history(
    project: str,
    keys: Sequence[str] = ("val/map_50",),
    group: str | None = None,
    entity: str | None = None,
) -> pd.DataFrame:
    """Like :func:`wandb_offline_history`, for the online runs of a W&B project (there, only
    the rows that log every one of ``keys``)."""
    frames = []
    for run in _wandb_runs(project, group, entity):
        history = run.history(keys=[*keys, "trainer/global_step"], pandas=True)
        if not history.empty:
            frames.append(_curve(history, keys, run.id, run.name))
    return _concat_curves(frames, keys)
