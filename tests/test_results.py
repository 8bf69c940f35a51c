"""dssd.results: runs, tables, CSV logs and W&B runs (offline, and online through a stand-in for
W&B's API) loaded into DataFrames that match the files they come from."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from dssd import results


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

    runs = results.load_runs([tmp_path / "a", tmp_path / "b"])
    assert list(runs.index) == ["a", "b"]
    for label, record in (("a", a), ("b", b)):
        row = runs.loc[label]
        assert row["run_name"] == record["run_name"] and row["stage"] == 1
        assert row["parameters"] == 1000 and row["trainable_parameters"] == 600
        assert row["fit_seconds"] == 12.5 and row["run_dir"] == str(tmp_path / label)
        assert row["test/voc_map"] == record["metrics"]["test/voc_map"]
        assert row["test/map"] == record["metrics"]["test/map"]
    assert "train/loss" not in runs  # the test metrics only

    labelled = results.load_runs({"first": tmp_path / "b"})
    assert list(labelled.index) == ["first"] and labelled.loc["first", "test/voc_map"] == 0.75

    ap = results.per_class_ap([tmp_path / "a", tmp_path / "b"])
    assert list(ap.columns) == ["circle", "square"] and list(ap.index) == ["a", "b"]
    assert ap.loc["a", "circle"] == 0.25 and math.isnan(ap.loc["a", "square"])
    assert ap.loc["b", "square"] == 1.0

    with pytest.raises(FileNotFoundError, match="did not finish"):
        results.load_runs([tmp_path / "missing"])


def test_load_runs_on_a_real_run(tiny_checkpoint: Path) -> None:
    run_dir = tiny_checkpoint.parents[1]
    record = json.loads((run_dir / "test_results.json").read_text())
    runs = results.load_runs([run_dir])
    test_metrics = {k: v for k, v in record["metrics"].items() if k.startswith("test/")}
    assert {"test/voc_map", "test/map", "test/map_50", "test/ap/circle"} <= set(test_metrics)
    row = runs.iloc[0]
    assert row[list(test_metrics)].to_dict() == test_metrics
    assert row["run_name"] == record["run_name"] and row["parameters"] == record["parameters"]
    assert row["fit_seconds"] == record["fit_seconds"] > 0


def test_load_table(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="make ablation"):
        results.load_table(tmp_path)
    (tmp_path / "table4.csv").write_text(
        "row,name,stage,paper_voc_map,voc_map,run_dir\n"
        "ssd_pm_a,SSD 321,0,76.4,50.5,ssd_pm_a\n"
        "dssd_prod,SSD 321 + PM(c) + DM(Eltw-prod),1,78.6,,dssd_prod\n"
    )
    for source in (tmp_path, tmp_path / "table4.csv"):
        table = results.load_table(source)
        assert list(table["row"]) == ["ssd_pm_a", "dssd_prod"]
        assert list(table["paper_voc_map"]) == [76.4, 78.6]
        assert table.loc[0, "voc_map"] == 50.5 and math.isnan(table.loc[1, "voc_map"])


def test_load_csv_metrics_joins_the_versions_of_a_resumed_run(tmp_path: Path) -> None:
    assert results.load_csv_metrics(tmp_path).empty
    for version, rows in ((0, "0,,1.5\n1,0.25,\n"), (1, "2,0.5,\n")):
        directory = tmp_path / "csv" / f"version_{version}"
        directory.mkdir(parents=True)
        (directory / "metrics.csv").write_text("step,val/map_50,train/loss\n" + rows)
    metrics = results.load_csv_metrics(tmp_path)
    assert list(metrics["step"]) == [0, 1, 2]
    assert metrics["val/map_50"].dropna().tolist() == [0.25, 0.5]


def test_load_wandb_offline_reads_a_real_offline_run(tiny_wandb_run: Path) -> None:
    record = json.loads((tiny_wandb_run / "test_results.json").read_text())
    (run_file,) = tiny_wandb_run.glob("wandb/offline-run-*/run-*.wandb")
    # a run dir, its wandb/ (with the latest-run link: one run, not two) or the file itself
    for source in (tiny_wandb_run, tiny_wandb_run / "wandb", run_file):
        runs = results.load_wandb_offline(source)
        assert len(runs) == 1, source
    run = runs.iloc[0]
    assert list(runs.columns[:7]) == results.WANDB_COLUMNS
    assert run["name"] == record["run_name"] == "dssd_r18-pm_c-prod-stage0"
    assert run["group"] == "shapes" and run["project"] == "dssd"
    assert {"model=dssd_r18", "pm=c", "fusion=prod", "stage=0"} <= set(run["tags"])
    assert run["run_id"] in run_file.name and run["source"] == str(run_file.resolve())
    assert run["config"]["model"]["net"]["image_size"] == 193  # the resolved run config
    for key in ("test/voc_map", "test/map", "test/map_50", "test/ap/circle"):
        assert run[key] == pytest.approx(record["metrics"][key], abs=1e-7), key
    # the last logged values; W&B's internal keys and media (images, tables) are left out
    assert run["trainer/global_step"] == 2 and math.isfinite(run["val/map_50"])
    assert not [c for c in runs.columns if c.startswith("_") or "examples" in c]

    assert results.load_wandb_offline(tiny_wandb_run / "nothing").empty
    assert list(results.load_wandb_offline([]).columns) == results.WANDB_COLUMNS


def test_wandb_offline_history(tiny_wandb_run: Path) -> None:
    history = results.wandb_offline_history(tiny_wandb_run, ["val/map_50", "train/loss"])
    assert list(history.columns) == ["run_id", "name", "step", "val/map_50", "train/loss"]
    train = history.dropna(subset=["train/loss"])
    val = history.dropna(subset=["val/map_50"])
    assert list(train["step"]) == [0, 1]  # 2 iterations, logged every step
    assert len(val) == 1 and val["train/loss"].isna().all()
    summary = results.load_wandb_offline(tiny_wandb_run).iloc[0]
    assert val["val/map_50"].iloc[-1] == summary["val/map_50"]
    assert train["train/loss"].iloc[-1] == summary["train/loss"]
    assert results.wandb_offline_history(tiny_wandb_run, ["no/such_metric"]).empty


class FakeRun(SimpleNamespace):
    """What the loaders use of a ``wandb.apis.public.Run``."""

    def history(self, keys: list[str], pandas: bool = True) -> pd.DataFrame:
        steps = {"_step": [3, 7], "trainer/global_step": [99, 199]}
        return pd.DataFrame({**steps, keys[0]: [0.1, 0.2]})


def test_online_loaders_give_the_offline_columns(monkeypatch: pytest.MonkeyPatch) -> None:
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
    runs = results.load_wandb_project("dssd", group="shapes_ablation", entity="me")
    assert calls == [("me/dssd", {"group": "shapes_ablation"})]
    assert list(runs.columns) == [*results.WANDB_COLUMNS, "test/voc_map"]
    assert runs.iloc[0]["name"] == "ssd_r18-pm_a-stage0" and runs.iloc[0]["test/voc_map"] == 0.5

    history = results.wandb_project_history("dssd")
    assert calls[-1] == ("dssd", None)
    assert list(history.columns) == ["run_id", "name", "step", "val/map_50"]
    assert list(history["step"]) == [99, 199] and list(history["val/map_50"]) == [0.1, 0.2]
