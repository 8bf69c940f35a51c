"""dssd.results.runs and dssd.results.wandb: runs, tables, CSV logs and W&B runs (offline,
and online through a stand-in for W&B's API) loaded into DataFrames that match the files they
come from."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from dssd.errors import UserError
from dssd.results import wandb as wandb_runs
from dssd.results.runs import (
    load_csv_metrics,
    load_runs,
    load_table,
    per_class_ap,
    read_test_results,
    write_results_json,
)


def write_run(run_dir: Path, name: str, voc_map: float, per_class: dict) -> dict:
    record = {
        "run_name": name,
        "stage": 1,
        "metrics": {"test/voc_map": voc_map, "test/map": voc_map / 2, "train/loss": 3.0},
        "per_class_ap": per_class,
        "parameters": 1000,
        "trainable_parameters": 600,
        "fit_seconds": 12.5,
    }
    run_dir.mkdir(parents=True)
    (run_dir / "test_results.json").write_text(json.dumps(record))
    return record


def test_load_runs_and_per_class_ap_match_the_json_files(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", "ssd-pm_a", 0.5, {"circle": 0.25, "square": None})
    b = write_run(tmp_path / "b", "ssd-pm_b", 0.75, {"circle": 0.5, "square": 1.0})

    runs = load_runs([tmp_path / "a", tmp_path / "b"])
    assert list(runs.index) == ["a", "b"]
    for label, record in (("a", a), ("b", b)):
        row = runs.loc[label]
        assert row["run_name"] == record["run_name"] and row["stage"] == 1
        assert row["parameters"] == 1000 and row["trainable_parameters"] == 600
        assert row["fit_seconds"] == 12.5 and row["run_dir"] == str(tmp_path / label)
        assert row["test/voc_map"] == record["metrics"]["test/voc_map"]
        assert row["test/map"] == record["metrics"]["test/map"]
    assert "train/loss" not in runs  # the test metrics only

    labelled = load_runs({"first": tmp_path / "b"})
    assert list(labelled.index) == ["first"] and labelled.loc["first", "test/voc_map"] == 0.75

    ap = per_class_ap([tmp_path / "a", tmp_path / "b"])
    assert list(ap.columns) == ["circle", "square"] and list(ap.index) == ["a", "b"]
    assert ap.loc["a", "circle"] == 0.25 and math.isnan(ap.loc["a", "square"])
    assert ap.loc["b", "square"] == 1.0

    with pytest.raises(FileNotFoundError, match="did not finish"):
        load_runs([tmp_path / "missing"])


def test_results_json_round_trips_with_nan_as_null(tmp_path: Path) -> None:
    record = {
        "metrics": {"test/voc_map": 0.5, "test/ap/star": float("nan")},
        "per_class_ap": {"circle": 0.25, "star": float("nan")},
        "stages": (0, float("inf")),
    }
    path = write_results_json(record, tmp_path / "run")
    assert path == tmp_path / "run" / "test_results.json"
    assert json.loads(path.read_text()) == {
        "metrics": {"test/voc_map": 0.5, "test/ap/star": None},
        "per_class_ap": {"circle": 0.25, "star": None},
        "stages": [0, None],
    }
    assert read_test_results(tmp_path / "run")["per_class_ap"]["star"] is None
    assert math.isnan(per_class_ap([tmp_path / "run"]).loc["run", "star"])


def test_test_results_that_cannot_be_read_are_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a file of mode 000 (which root reads anyway): it was a PermissionError traceback."""
    path = write_results_json({"metrics": {}}, tmp_path / "run")

    def refused(self: Path, *_: object, **__: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refused)
    with pytest.raises(UserError, match=re.escape(f"{path}: cannot read it (Permission denied)")):
        read_test_results(tmp_path / "run")


def test_load_runs_on_a_real_run(tiny_checkpoint: Path) -> None:
    run_dir = tiny_checkpoint.parents[1]
    record = json.loads((run_dir / "test_results.json").read_text())
    runs = load_runs([run_dir])
    test_metrics = {k: v for k, v in record["metrics"].items() if k.startswith("test/")}
    assert {"test/voc_map", "test/map", "test/map_50", "test/ap/circle"} <= set(test_metrics)
    row = runs.iloc[0]
    assert row[list(test_metrics)].to_dict() == test_metrics
    assert row["run_name"] == record["run_name"] and row["parameters"] == record["parameters"]
    assert row["fit_seconds"] == record["fit_seconds"] > 0


def test_load_table(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make ablation"):
        load_table(tmp_path)
    (tmp_path / "table4.csv").write_text(
        "row,name,stage,paper_voc_map,voc_map,run_dir\n"
        "ssd_pm_a,SSD 321,0,76.4,50.5,ssd_pm_a\n"
        "dssd_prod,SSD 321 + PM(c) + DM(Eltw-prod),1,78.6,,dssd_prod\n"
    )
    for source in (tmp_path, tmp_path / "table4.csv"):
        table = load_table(source)
        assert list(table["row"]) == ["ssd_pm_a", "dssd_prod"]
        assert list(table["paper_voc_map"]) == [76.4, 78.6]
        assert table.loc[0, "voc_map"] == 50.5 and math.isnan(table.loc[1, "voc_map"])


def test_load_csv_metrics_joins_the_versions_of_a_resumed_run(tmp_path: Path) -> None:
    assert load_csv_metrics(tmp_path).empty
    # version 0 logged steps 2 and 3 after its last checkpoint (step 2), which version 1 trained
    # again; version 10 comes after version 2, not after version 1
    attempts = {
        0: "0,,1.5\n1,0.25,\n2,,9.0\n3,,9.0\n",
        1: "2,0.5,\n3,,2.0\n",
        2: "4,,1.0\n",
        10: "5,0.75,\n",
    }
    for version, rows in attempts.items():
        directory = tmp_path / "csv" / f"version_{version}"
        directory.mkdir(parents=True)
        (directory / "metrics.csv").write_text("step,val/map_50,train/loss\n" + rows)
    metrics = load_csv_metrics(tmp_path)
    assert list(metrics["step"]) == [0, 1, 2, 3, 4, 5]
    assert metrics["val/map_50"].dropna().tolist() == [0.25, 0.5, 0.75]
    assert metrics["train/loss"].dropna().tolist() == [1.5, 2.0, 1.0]


def test_a_wandb_run_writes_the_csv_log_the_loaders_read(tiny_wandb_run: Path) -> None:
    """The default logger (W&B, offline) writes the CSV log too: every scalar it logged, by the
    trainer's step, the test metrics as test_results.json holds them."""
    record = json.loads((tiny_wandb_run / "test_results.json").read_text())
    metrics = load_csv_metrics(tiny_wandb_run)
    for key in ("test/voc_map", "test/map", "test/map_50", "test/ap/circle"):
        assert metrics[key].dropna().tolist() == [pytest.approx(record["metrics"][key])], key
    train = metrics.dropna(subset=["train/loss"])
    val = metrics.dropna(subset=["val/map_50"])
    assert list(train["step"]) == [0, 1]  # 2 iterations, logged every step
    assert len(val) == 1 and math.isfinite(val["val/map_50"].iloc[0])
    assert not [c for c in metrics.columns if "examples" in c]  # media go to W&B only


def test_wandb_offline_runs_lists_the_runs_to_sync(tiny_wandb_run: Path, tmp_path: Path) -> None:
    (folder,) = tiny_wandb_run.glob("wandb/offline-run-*")
    (run_file,) = folder.glob("run-*.wandb")
    found = wandb_runs.wandb_offline_runs({"dssd": tiny_wandb_run, "none": tmp_path})
    assert list(found.columns) == ["run", "run_id", "folder"]
    assert found.to_dict("records") == [
        {"run": "dssd", "run_id": run_file.stem.removeprefix("run-"), "folder": str(folder)}
    ]  # one run: the wandb/latest-run link is not a second one
    assert wandb_runs.wandb_offline_runs([tmp_path]).empty


class FakeRun(SimpleNamespace):
    """What the loaders use of a ``wandb.apis.public.Run``."""

    def history(self, keys: list[str], pandas: bool = True) -> pd.DataFrame:
        steps = {"_step": [3, 7], "trainer/global_step": [99, 199]}
        return pd.DataFrame({**steps, keys[0]: [0.1, 0.2]})


def test_online_loaders_read_runs_and_curves_from_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    run = FakeRun(
        id="abc123",
        name="ssd_r18-pm_a-stage0",
        group="shapes_ablation",
        tags=["pm=a"],
        project="dssd",
        config={"stage": 0},
        url="https://wandb.ai/me/dssd/runs/abc123",
        summary={"test/voc_map": 0.5, "_step": 7, "val/examples": {"_type": "images"}},
    )
    calls = []

    class FakeApi:
        def runs(self, path: str, filters: dict | None = None) -> list[FakeRun]:
            calls.append((path, filters))
            return [run]

    monkeypatch.setattr(wandb, "Api", FakeApi)
    runs = wandb_runs.load_wandb_project("dssd", group="shapes_ablation", entity="me")
    assert calls == [("me/dssd", {"group": "shapes_ablation"})]
    assert list(runs.columns) == [*wandb_runs.WANDB_COLUMNS, "test/voc_map"]
    assert runs.iloc[0]["name"] == "ssd_r18-pm_a-stage0" and runs.iloc[0]["test/voc_map"] == 0.5

    history = wandb_runs.wandb_project_history("dssd")
    assert calls[-1] == ("dssd", None)
    assert list(history.columns) == ["run_id", "name", "step", "val/map_50"]
    assert list(history["step"]) == [99, 199] and list(history["val/map_50"]) == [0.1, 0.2]
