"""`make ablation`: Table 4's rows, their order and dependencies, skipping, forcing, the table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from conftest import ROOT, run_entry_point
from dssd.ablation import Row, Step, is_done, parse_rows, plan, train_command
from dssd.config import register_resolvers
from dssd.errors import UserError
from test_configs import compose_train, resolve_with_hydra

CONF = ROOT / "conf"
SETTINGS = sorted(p.stem for p in (CONF / "ablation").glob("*.yaml"))
# the paper's Table 4, top to bottom (VOC2007 test mAP, %)
PAPER_TABLE4 = [76.4, 76.9, 77.1, 77.0, 78.4, 78.6, 77.9]


def compose_table4(*overrides: str):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("table4", overrides=list(overrides), return_hydra_config=True)


def table4_rows() -> list[Row]:
    return parse_rows(compose_table4().rows)


def make_done(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"")
    (run_dir / "test_results.json").write_text("{}")


def test_rows_are_table4_in_dependency_order() -> None:
    rows = table4_rows()
    assert [r.paper_voc_map for r in rows] == PAPER_TABLE4
    by_id = {r.id: r for r in rows}
    assert [r.stage for r in rows] == [0, 0, 0, 0, 1, 1, 2]
    assert by_id["dssd_sum"].init_from == by_id["dssd_prod"].init_from == "ssd_pm_c"
    assert by_id["dssd_prod_stage2"].init_from == "dssd_prod"
    assert [r.net for r in rows] == ["ssd"] * 4 + ["dssd"] * 3


def test_plan_runs_all_then_skips_done_rows_and_resumes_interrupted_ones(tmp_path: Path) -> None:
    rows = table4_rows()
    assert {s.action for s in plan(rows, tmp_path)} == {"run"}
    make_done(tmp_path / "ssd_pm_a")
    make_done(tmp_path / "ssd_pm_c")
    (tmp_path / "ssd_pm_b" / "checkpoints").mkdir(parents=True)
    (tmp_path / "ssd_pm_b" / "checkpoints" / "last.ckpt").write_bytes(b"")
    actions = {s.row.id: s.action for s in plan(rows, tmp_path)}
    assert actions == {
        "ssd_pm_a": "skip",
        "ssd_pm_b": "resume",
        "ssd_pm_c": "skip",
        "ssd_pm_d": "run",
        "dssd_sum": "run",
        "dssd_prod": "run",
        "dssd_prod_stage2": "run",
    }


def test_forcing_a_row_reruns_the_rows_that_start_from_it(tmp_path: Path) -> None:
    rows = table4_rows()
    for row in rows:
        make_done(tmp_path / row.id)
    assert {s.action for s in plan(rows, tmp_path)} == {"skip"}
    rerun = [s.row.id for s in plan(rows, tmp_path, ["ssd_pm_c"]) if s.action == "run"]
    assert rerun == ["ssd_pm_c", "dssd_sum", "dssd_prod", "dssd_prod_stage2"]
    rerun = [s.row.id for s in plan(rows, tmp_path, ["dssd_sum"]) if s.action == "run"]
    assert rerun == ["dssd_sum"]
    assert {s.action for s in plan(rows, tmp_path, True)} == {"run"}
    with pytest.raises(UserError, match="no row"):
        plan(rows, tmp_path, ["ssd_pm_x"])


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"id": "a", "net": "ssd"}, {"id": "a", "net": "ssd"}], "twice"),
        ([{"id": "b", "net": "dssd", "stage": 1, "init_from": "a"}], "not a row listed before"),
        ([{"id": "a", "net": "ssd", "stage": 1}], "without init_from"),
    ],
)
def test_bad_rows_are_refused(entries: list[dict], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_rows(entries)


def test_train_command_chains_checkpoints_and_puts_extra_overrides_last(tmp_path: Path) -> None:
    cfg = compose_table4()
    rows = {r.id: r for r in parse_rows(cfg.rows)}
    command = train_command(
        Step(rows["dssd_prod_stage2"], "resume", ""), cfg.ablation, tmp_path, "g", "logger=csv"
    )
    assert command[1].endswith("src/train.py")
    assert "model=dssd_r18" in command and "fusion=prod" in command and "stage=2" in command
    assert f"init_from={tmp_path / 'dssd_prod' / 'checkpoints' / 'best.ckpt'}" in command
    assert f"hydra.run.dir={tmp_path / 'dssd_prod_stage2'}" in command
    assert "ckpt_path=last" in command
    assert command[-1] == "logger=csv"
    first = train_command(Step(rows["ssd_pm_a"], "run", ""), cfg.ablation, tmp_path, "g")
    assert not any(arg.startswith(("init_from=", "ckpt_path=")) for arg in first)


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_composes_each_row_into_a_train_config(setting: str) -> None:
    """Each row's overrides, under every setting, give a train config with its stage, model and
    variants: the rows of the paper's setting can run as they are written."""
    cfg = compose_table4(f"ablation={setting}")
    for row in parse_rows(cfg.rows):
        overrides = [*cfg.ablation[row.net], *row.overrides, f"stage={row.stage}"]
        if row.init_from:
            overrides.append("init_from=/x/best.ckpt")
        train = resolve_with_hydra(compose_train(*overrides))
        assert train.stage == row.stage
        assert train.trainer.max_steps == train.schedules[row.stage].max_steps
        net = train.model.net
        assert ("deconv" in net and net.deconv is not None) == (row.net == "dssd")
        pm = next(o.split("=")[1] for o in row.overrides if o.startswith("pm="))
        assert net.prediction_module.variant == pm
        if row.net == "dssd":
            fusion = next(o.split("=")[1] for o in row.overrides if o.startswith("fusion="))
            assert net.deconv.fusion == fusion


def test_out_dir_is_named_after_the_setting() -> None:
    cfg = compose_table4("ablation=voc0712_321")
    with open_dict(cfg):
        cfg.paths.root_dir = "/repo"
    assert resolve_with_hydra(cfg).out_dir == "/repo/logs/ablation/voc0712_321"
    assert OmegaConf.to_container(cfg.hydra.run)["dir"] == "${out_dir}"


def test_tiny_chain_writes_table4_with_each_row_from_its_parent(tiny_ablation: Path) -> None:
    with (tiny_ablation / "table4.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [r["row"] for r in records] == [r.id for r in table4_rows()]
    assert [float(r["paper_voc_map"]) for r in records] == PAPER_TABLE4
    for record in records:
        assert 0 <= float(record["voc_map"]) <= 100
        assert int(record["parameters"]) > 0
        assert float(record["fit_minutes"]) > 0 and float(record["wall_minutes"]) > 0
    params = {r["row"]: int(r["parameters"]) for r in records}
    # PM (d) stacks two (c) blocks; DSSD adds the deconvolution modules
    assert params["ssd_pm_a"] < params["ssd_pm_b"] < params["ssd_pm_c"] < params["ssd_pm_d"]
    assert params["dssd_prod"] > params["ssd_pm_c"]
    markdown = (tiny_ablation / "table4.md").read_text()
    for row in table4_rows():
        assert f"| {row.name} | {row.paper_voc_map:.1f} |" in markdown

    for row in table4_rows():
        run_dir = tiny_ablation / row.id
        assert is_done(run_dir)
        config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
        assert config["stage"] == row.stage
        parent = (
            tiny_ablation / row.init_from / "checkpoints" / "best.ckpt" if row.init_from else None
        )
        assert config["init_from"] == (str(parent) if parent else None)
        if parent:
            assert f"init_from {parent}:" in (run_dir / "train.log").read_text()
        result = json.loads((run_dir / "test_results.json").read_text())
        assert result["stage"] == row.stage

    # stage 1 froze the backbone it loaded from PM(c): the same tensors, bit for bit
    def backbone(row_id: str) -> dict[str, torch.Tensor]:
        path = tiny_ablation / row_id / "checkpoints" / "best.ckpt"
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        return {k: v for k, v in state.items() if k.startswith("net.backbone.")}

    parent = backbone("ssd_pm_c")
    for row_id in ("dssd_sum", "dssd_prod"):
        child = backbone(row_id)
        assert child.keys() == parent.keys()
        assert all(torch.equal(child[k], parent[k]) for k in parent)
    assert not all(torch.equal(parent[k], v) for k, v in backbone("ssd_pm_a").items())


def test_done_rows_are_skipped_and_a_failing_row_names_its_log(
    tiny_ablation: Path, tiny_shapes: Path
) -> None:
    stamps = {p: p.stat().st_mtime_ns for p in tiny_ablation.glob("*/checkpoints/best.ckpt")}
    assert len(stamps) == 7
    proc = run_entry_point("ablation.py", f"out_dir={tiny_ablation}")
    assert "Table 4 ablation" in proc.stdout and "SSD 321 + PM(d)" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    proc = run_entry_point(
        "ablation.py",
        f"out_dir={tiny_ablation}",
        "force=[dssd_prod_stage2]",
        f'train_args="data.root={tiny_shapes} trainer.max_steps=not_a_number"',
        check=False,
    )
    assert proc.returncode == 2
    assert "row dssd_prod_stage2" in proc.stderr
    assert str(tiny_ablation / "dssd_prod_stage2" / "train.log") in proc.stderr
