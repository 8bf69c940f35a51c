"""Finished runs: each run's ``test_results.json`` (written by training and evaluation), and runs'
files as DataFrames (metrics in % in ``table4.csv`` and ``runs.csv``, like the paper, else 0..1)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from dssd.errors import UserError

PathLike = str | Path
# a run's test detections as the VOC devkit's result files, inside its directory
RESULTS_DIR = "voc_results"
RunDirs = Mapping[str, PathLike] | Iterable[PathLike]
# the keys of test_results.json that load_runs gives a column each, before run_dir and the metrics
_RUN_KEYS = ("run_name", "stage", "parameters", "trainable_parameters", "gmac", "fit_seconds")


def clear_test_results(directory: PathLike) -> None:
    """Remove a run's test results (``test_results.json`` / ``.md``, ``voc_results/``): they
    describe final weights that a new or resumed fit replaces, and must not be read beside its
    checkpoint if it stops part way."""
    for name in ("test_results.json", "test_results.md", RESULTS_DIR):
        path = Path(directory) / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_results_json(record: Mapping, directory: str | Path) -> Path:
    """Write ``record`` (metrics, per-class AP, parameter counts, timings) to
    ``<directory>/test_results.json``, the markdown tables' machine-readable twin; NaN -> null."""
    path = Path(directory) / "test_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(record), indent=2) + "\n")
    return path


def _json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_test_results(run_dir: PathLike) -> dict[str, Any]:
    """A run's ``test_results.json``; FileNotFoundError when the run did not finish its test, a
    :class:`UserError` when the file is damaged."""
    path = Path(run_dir) / "test_results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run did not finish its test")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); test the run again") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        what = "no metrics" if isinstance(record, dict) else f"a {type(record).__name__}"
        raise UserError(f"{path}: holds {what}, not a run's test results; test the run again")
    return record


def load_table(out_dir: PathLike, name: str = "table4.csv") -> pd.DataFrame:
    """``make ablation``'s ``<out_dir>/table4.csv`` (or the CSV file itself), a line per row;
    ``name="runs.csv"``: a line per run (row and seed) with its ``run_dir``."""
    path = Path(out_dir)
    path = path if path.suffix == ".csv" else path / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run `make ablation` first")
    return pd.read_csv(path)


def run_dirs_by_label(run_dirs: RunDirs) -> dict[str, Path]:
    """Run dirs by label: a mapping's keys, or else each directory's name."""
    if isinstance(run_dirs, Mapping):
        return {str(label): Path(d) for label, d in run_dirs.items()}
    return {Path(d).name: Path(d) for d in run_dirs}


def load_runs(run_dirs: RunDirs) -> pd.DataFrame:
    """One row per run dir (index: its label) from its ``test_results.json``: ``_RUN_KEYS``,
    run_dir, then every test metric (``test/map``, ``test/voc_map``, ``test/ap/<class>``...)."""
    rows = {}
    for label, run_dir in run_dirs_by_label(run_dirs).items():
        record = read_test_results(run_dir)
        rows[label] = {
            **{key: record.get(key) for key in _RUN_KEYS},
            "run_dir": str(run_dir),
            **{k: v for k, v in record.get("metrics", {}).items() if k.startswith("test/")},
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run")


def per_class_ap(run_dirs: RunDirs) -> pd.DataFrame:
    """Test AP (0..1): runs (as in :func:`load_runs`) x classes; NaN without ground truth."""
    rows = {
        label: read_test_results(run_dir).get("per_class_ap", {})
        for label, run_dir in run_dirs_by_label(run_dirs).items()
    }
    return pd.DataFrame.from_dict(rows, orient="index").astype(float).rename_axis("run")


def load_csv_metrics(run_dir: PathLike) -> pd.DataFrame:
    """The rows of ``<run_dir>/csv/version_*/metrics.csv`` (a resumed run has several), with
    their ``step`` column (the trainer's global step), in version order; an attempt's rows from
    the step its successor resumed at on are left out (it logged steps after its last checkpoint
    that the successor trained again). Empty when there are none."""
    versions = {
        int(f.parent.name.removeprefix("version_")): f
        for f in Path(run_dir).glob("csv/version_*/metrics.csv")
        if f.parent.name.removeprefix("version_").isdigit()
    }
    frames = [pd.read_csv(versions[v]) for v in sorted(versions)]  # version_10 after version_9
    for i in range(len(frames) - 1):
        resumed_at = frames[i + 1]["step"].min()
        if not math.isnan(resumed_at):
            frames[i] = frames[i][frames[i]["step"] < resumed_at]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
