"""`make ablation`: Table 4's rows, their order and dependencies, seeds, skipping, forcing, the
table with its intervals."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf, open_dict

from conftest import ROOT, TINY_ROWS, TINY_SEEDS, run_in_process, tiny_train_args
from dssd.config import register_resolvers
from dssd.errors import UserError
from dssd.evaluation.bootstrap import holm
from dssd.results.tables import table4_markdown
from dssd.table4.rows import (
    Row,
    Step,
    add_wall_time,
    is_done,
    parse_rows,
    parse_seeds,
    plan,
    read_run_record,
    run_dir,
    select_rows,
)
from dssd.table4.runner import check_same_settings, run_ablation, train_command, train_overrides
from dssd.table4.statistics import (
    last_quarter_rise,
    pooled_seed_spread,
    seed_differences,
    validation_curve,
)
from dssd.tasks.ablation import check_overrides
from test_configs import compose_train, flatten, resolve_with_hydra

CONF = ROOT / "conf"
SETTINGS = sorted(p.stem for p in (CONF / "ablation").glob("*.yaml"))
# the paper's Table 4, top to bottom (VOC2007 test mAP, %), and the control row (no paper figure)
PAPER_TABLE4 = [76.4, 76.9, 77.1, 77.0, None, 78.4, 78.6, 77.9]
ROW_IDS = [
    "ssd_pm_a",
    "ssd_pm_b",
    "ssd_pm_c",
    "ssd_pm_d",
    "ssd_pm_c_control",
    "dssd_sum",
    "dssd_prod",
    "dssd_prod_stage2",
]


def compose_table4(*overrides: str):
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("table4", overrides=list(overrides), return_hydra_config=True)


def table4_rows() -> list[Row]:
    return parse_rows(compose_table4().rows)


def make_done(directory: Path) -> None:
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "checkpoints" / "last.ckpt").write_bytes(b"")
    (directory / "voc_results").mkdir()
    (directory / "test_results.json").write_text("{}")


def test_a_second_runner_on_the_same_table_is_refused_while_the_first_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runners on one out_dir would train the same runs at once and tabulate half-written
    ones: the second is refused, naming the directory; another out_dir runs, and the lock goes
    with the first runner."""
    refusals: list[str] = []

    def train(command: list[str]) -> int:
        directory = Path(next(c for c in command if c.startswith("hydra.run.dir=")).split("=")[1])
        if not refusals:  # a second command started while the first trains its first run
            with pytest.raises(UserError) as refused:
                run_ablation(compose_table4(f"out_dir={tmp_path}", "analysis=false"), "shapes")
            refusals.append(str(refused.value))
            # a table elsewhere is not held up
            other = tmp_path / "other"
            run_ablation(
                compose_table4(f"out_dir={other}", "analysis=false", "only=[ssd_pm_a]"), "shapes"
            )
        make_done(directory)
        return 0

    monkeypatch.setattr("dssd.table4.runner.run_command", train)
    monkeypatch.setattr("dssd.table4.runner.collect", lambda *args: [])
    monkeypatch.setattr("dssd.table4.runner.summarize", lambda *args: [])
    run_ablation(compose_table4(f"out_dir={tmp_path}", "analysis=false"), "shapes")
    assert refusals == [
        f"another src/ablation.py is running the table in {tmp_path} (it holds "
        f"{tmp_path / '.lock'}): wait for it to finish, or give this one another out_dir"
    ]
    assert (run_dir(tmp_path / "other", "ssd_pm_a", 0) / "checkpoints" / "last.ckpt").is_file()
    # released: the next command runs, and finds every run done
    monkeypatch.setattr(
        "dssd.table4.runner.run_command", lambda command: pytest.fail(shlex.join(command))
    )
    run_ablation(compose_table4(f"out_dir={tmp_path}", "analysis=false"), "shapes")


def test_a_refused_runner_leaves_the_running_tables_record_alone(tmp_path: Path) -> None:
    """Hydra writes the command's config to ``<out_dir>/.hydra/`` before the task starts: the
    runner refused by the lock replaced the running table's recorded command."""
    from filelock import FileLock

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- the running table's\n")
    with FileLock(tmp_path / ".lock"):
        proc = run_in_process("ablation.py", f"out_dir={tmp_path}", "seeds=[5]", check=False)
    assert proc.returncode == 2 and "another src/ablation.py is running the table" in proc.stderr
    assert (tmp_path / ".hydra" / "overrides.yaml").read_text() == "- the running table's\n"


def test_rows_are_table4_in_dependency_order() -> None:
    rows = table4_rows()
    assert [r.id for r in rows] == ROW_IDS
    assert [r.paper_voc_map for r in rows] == PAPER_TABLE4
    by_id = {r.id: r for r in rows}
    assert [r.stage for r in rows] == [0, 0, 0, 0, 1, 1, 1, 2]
    assert by_id["dssd_sum"].init_from == by_id["dssd_prod"].init_from == "ssd_pm_c"
    assert by_id["dssd_prod_stage2"].init_from == "dssd_prod"
    assert [r.net for r in rows] == ["ssd"] * 5 + ["dssd"] * 3
    # each row against the row it ablates; the DSSD rows against the control, which continues
    # PM(c) for the same stage-1 iterations
    ablates = {r.id: r.ablates for r in rows}
    assert ablates == {
        "ssd_pm_a": None,
        "ssd_pm_b": "ssd_pm_a",
        "ssd_pm_c": "ssd_pm_a",
        "ssd_pm_d": "ssd_pm_a",
        "ssd_pm_c_control": "ssd_pm_c",
        "dssd_sum": "ssd_pm_c_control",
        "dssd_prod": "ssd_pm_c_control",
        "dssd_prod_stage2": "dssd_prod",
    }
    assert by_id["ssd_pm_c_control"].init_from == "ssd_pm_c"


def test_control_row_is_the_dssd_rows_stage_1_without_the_deconvolution_module() -> None:
    cfg = compose_table4()
    control = {r.id: r for r in parse_rows(cfg.rows)}["ssd_pm_c_control"]
    overrides = [*cfg.ablation[control.net], *control.overrides, f"stage={control.stage}"]
    train = resolve_with_hydra(compose_train(*overrides, "init_from=/x/last.ckpt"))
    dssd = {r.id: r for r in parse_rows(cfg.rows)}["dssd_prod"]
    dssd_train = resolve_with_hydra(
        compose_train(*cfg.ablation[dssd.net], *dssd.overrides, "stage=1", "init_from=/x/last.ckpt")
    )
    assert train.model.net.neck is None
    assert train.model.freeze == dssd_train.model.freeze == ["backbone", "extras"]
    # the same parts loaded from PM(c) as the DSSD rows; prediction modules and heads start fresh
    assert train.stages[1].init_modules == dssd_train.stages[1].init_modules
    assert list(train.stages[1].init_modules) == ["backbone", "extras"]
    assert train.trainer.max_steps == dssd_train.trainer.max_steps
    assert train.schedules[1] == dssd_train.schedules[1]


# a run that, on Ctrl-C, takes a second to write its checkpoint, as train.py does
STOPPING_RUN = """
import pathlib, signal, sys, time
def stop(*_):
    time.sleep(1.0)
    pathlib.Path(sys.argv[1]).write_text("saved")
    sys.exit(1)
signal.signal(signal.SIGINT, stop)
pathlib.Path(sys.argv[2]).write_text("ready")
time.sleep(60)
"""


def test_ctrl_c_lets_the_run_write_its_checkpoint_before_it_stops(tmp_path: Path) -> None:
    """``subprocess.call`` killed the run a quarter of a second after Ctrl-C, before train.py
    wrote its last.ckpt."""
    saved, ready = tmp_path / "saved", tmp_path / "ready"
    child = [sys.executable, "-c", STOPPING_RUN, str(saved), str(ready)]
    runner = f"from dssd.table4.runner import run_command; print(run_command({child!r}))"
    # its own process group, which Ctrl-C stops as a terminal's does
    proc = subprocess.Popen(
        [sys.executable, "-c", runner], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert output.strip() == "interrupted"
    assert saved.read_text() == "saved"


def test_plan_runs_all_then_skips_done_runs_and_resumes_interrupted_ones(tmp_path: Path) -> None:
    rows = table4_rows()
    assert {s.action for s in plan(rows, [0], tmp_path)} == {"run"}
    make_done(run_dir(tmp_path, "ssd_pm_a", 0))
    make_done(run_dir(tmp_path, "ssd_pm_c", 0))
    (run_dir(tmp_path, "ssd_pm_b", 0) / "checkpoints").mkdir(parents=True)
    (run_dir(tmp_path, "ssd_pm_b", 0) / "checkpoints" / "last.ckpt").write_bytes(b"")
    actions = {(s.row.id, s.seed): s.action for s in plan(rows, [0, 1], tmp_path)}
    expected = {(row, 0): "run" for row in ROW_IDS}
    expected.update({("ssd_pm_a", 0): "skip", ("ssd_pm_b", 0): "resume", ("ssd_pm_c", 0): "skip"})
    expected.update({(row, 1): "run" for row in ROW_IDS})  # seed 1 is not run yet
    assert actions == expected
    # seed by seed: every row of seed 0 before any row of seed 1
    assert [s.seed for s in plan(rows, [0, 1], tmp_path)] == [0] * 8 + [1] * 8


def test_forcing_a_row_reruns_the_rows_that_start_from_it(tmp_path: Path) -> None:
    rows = table4_rows()
    for row in rows:
        for seed in (0, 1):
            make_done(run_dir(tmp_path, row.id, seed))
    assert {s.action for s in plan(rows, [0, 1], tmp_path)} == {"skip"}
    steps = plan(rows, [0, 1], tmp_path, ["ssd_pm_c"])
    rerun = [s.row.id for s in steps if s.action == "run" and s.seed == 1]
    assert rerun == ["ssd_pm_c", "ssd_pm_c_control", "dssd_sum", "dssd_prod", "dssd_prod_stage2"]
    assert [s.row.id for s in steps if s.action == "run" and s.seed == 0] == rerun
    rerun = [s.row.id for s in plan(rows, [0], tmp_path, ["dssd_sum"]) if s.action == "run"]
    assert rerun == ["dssd_sum"]
    assert {s.action for s in plan(rows, [0], tmp_path, True)} == {"run"}
    with pytest.raises(UserError, match="no row"):
        plan(rows, [0], tmp_path, ["ssd_pm_x"])


def test_a_row_whose_parent_was_retrained_since_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """PM(c) forced alone (``only=[ssd_pm_c]``): the rows that start from it were not in that
    command. The next command must retrain them from the new weights, not skip them as done (the
    table would mix DSSD rows trained from PM(c)'s old weights with its new run); a row whose
    parent was only tested again keeps its run."""
    rows = table4_rows()
    ran: list[str] = []

    def train(command: list[str]) -> int:
        """A stand-in for src/train.py: a done run whose weights are its command line and the
        weights it starts from (a resumed one only tests its weights again)."""
        directory = Path(next(c for c in command if c.startswith("hydra.run.dir=")).split("=")[1])
        ran.append(directory.parent.name)
        if "ckpt_path=last" in command:
            (directory / "test_results.json").write_text("{}")
            return 0
        parent = [Path(c.split("=")[1]).read_text() for c in command if "init_from=" in c]
        make_done(directory)
        (directory / "checkpoints" / "last.ckpt").write_text(" ".join(command[2:] + parent))
        return 0

    tabulated: list[list[str]] = []
    monkeypatch.setattr("dssd.table4.runner.run_command", train)
    monkeypatch.setattr(
        "dssd.table4.runner.collect",
        lambda rows, *args: tabulated.append([r.id for r in rows]) or [],
    )
    monkeypatch.setattr("dssd.table4.runner.summarize", lambda *args: [])
    common = (f"out_dir={tmp_path}", "analysis=false")
    run_ablation(compose_table4(*common), "shapes")
    assert ran == ROW_IDS
    assert {s.action for s in plan(rows, [0], tmp_path)} == {"skip"}
    ran.clear()
    # PM(c) trained again with other weights, by a command that runs it alone
    pm_c = run_dir(tmp_path, "ssd_pm_c", 0) / "checkpoints" / "last.ckpt"
    pm_c.write_text("other weights")
    steps = {s.row.id: s for s in plan(rows, [0], tmp_path)}
    children = ["ssd_pm_c_control", "dssd_sum", "dssd_prod", "dssd_prod_stage2"]
    assert [i for i, s in steps.items() if s.action == "run"] == children
    assert steps["dssd_sum"].reason == "starts from ssd_pm_c, retrained since"
    assert steps["dssd_prod_stage2"].reason == "starts from dssd_prod, which reruns"
    # PM(d) was trained with other settings than this command gives it
    overrides = run_dir(tmp_path, "ssd_pm_d", 0) / ".hydra" / "overrides.yaml"
    overrides.parent.mkdir()
    overrides.write_text("- logger=csv\n")
    with caplog.at_level(logging.INFO, logger="dssd.table4.runner"):
        run_ablation(compose_table4(*common, "only=[dssd_sum]"), "shapes")
    assert ran == ["ssd_pm_c_control", "dssd_sum"]  # (and the row it is compared with)
    # the table keeps the rows that are done and current, not only those the command ran
    assert tabulated[-1] == ["ssd_pm_a", "ssd_pm_b", "ssd_pm_c", "ssd_pm_c_control", "dssd_sum"]
    assert "Row ssd_pm_d is left out of the table (seed 0: " in caplog.text
    assert "trained with other settings than this command" in caplog.text
    assert (
        "Row dssd_prod is left out of the table (seed 0: starts from ssd_pm_c, retrained since)"
        in caplog.text
    )
    assert "Row dssd_prod_stage2 is left out of the table (dssd_prod is not in it)" in caplog.text
    overrides.unlink()
    # the run records the digest of the weights it started from
    record = read_run_record(run_dir(tmp_path, "dssd_sum", 0))
    assert record["init_from_sha256"] == hashlib.sha256(b"other weights").hexdigest()
    # PM(c) resumed (its test results gone) keeps its weights: its children are not retrained
    ran.clear()
    (run_dir(tmp_path, "ssd_pm_c", 0) / "test_results.json").unlink()
    run_ablation(compose_table4(*common), "shapes")
    assert ran == ["ssd_pm_c", "dssd_prod", "dssd_prod_stage2"]  # (the last two were stale)
    assert tabulated[-1] == ROW_IDS
    assert {s.action for s in plan(rows, [0], tmp_path)} == {"skip"}
    # records without the digest (tables begun by earlier versions) stand while PM(c) keeps its
    # weights, within one command as across commands
    for row_id in children:
        (run_dir(tmp_path, row_id, 0) / "ablation.json").write_text("{}")
    ran.clear()
    (run_dir(tmp_path, "ssd_pm_c", 0) / "test_results.json").unlink()
    run_ablation(compose_table4(*common), "shapes")
    assert ran == ["ssd_pm_c"]


def test_only_selects_rows_with_what_they_need_in_table_order() -> None:
    rows = table4_rows()
    assert [r.id for r in select_rows(rows, ["dssd_prod_stage2"])] == TINY_ROWS
    assert [r.id for r in select_rows(rows, ["ssd_pm_b"])] == ["ssd_pm_a", "ssd_pm_b"]
    assert select_rows(rows, "ssd_pm_b") == select_rows(rows, ["ssd_pm_b"])  # only=ssd_pm_b
    assert select_rows(rows, None) == rows
    with pytest.raises(UserError, match="only: no row"):
        select_rows(rows, ["ssd_pm_x"])


@pytest.mark.parametrize("seeds", [[], [0, 0], ["a"], [1.5], [True], "0,1", 3, None])
def test_seeds_must_be_a_list_of_distinct_ints(seeds) -> None:
    with pytest.raises(UserError, match="seeds must be a non-empty list of distinct integers"):
        parse_seeds(seeds)
    assert parse_seeds([0, 1, 2]) == [0, 1, 2]
    assert parse_seeds(OmegaConf.create({"s": [3, 1]}).s) == [3, 1]


@pytest.mark.parametrize("setting", ["confidence=95", "bootstrap_samples=0"])
def test_a_bad_interval_setting_is_refused_before_any_row_runs(
    tmp_path: Path, setting: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "dssd.table4.runner.run_command", lambda *a, **k: pytest.fail("a row was started")
    )
    cfg = compose_table4(f"out_dir={tmp_path}", setting)
    with pytest.raises(UserError, match=f"{setting}: choose"):
        run_ablation(cfg, "shapes")


@pytest.mark.slow  # parse_seeds is checked in process above; this is its command-line exit
def test_a_bad_seeds_value_stops_the_command_with_a_clear_error(tmp_path: Path) -> None:
    proc = run_in_process("ablation.py", f"out_dir={tmp_path}", "seeds=[0,x]", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: seeds must be a non-empty list of distinct integers" in proc.stderr


@pytest.mark.parametrize(
    "entries, message",
    [
        ([{"id": "a", "net": "ssd"}, {"id": "a", "net": "ssd"}], "twice"),
        ([{"id": "b", "net": "dssd", "stage": 1, "init_from": "a"}], "not a row listed before"),
        ([{"id": "a", "net": "ssd", "stage": 1}], "without init_from"),
        ([{"id": "a", "net": "ssd", "ablates": "b"}], "not a row listed before"),
    ],
)
def test_bad_rows_are_refused(entries: list[dict], message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_rows(entries)


def test_train_command_chains_final_weights_per_seed_and_puts_extra_overrides_last(
    tmp_path: Path,
) -> None:
    cfg = compose_table4()
    rows = {r.id: r for r in parse_rows(cfg.rows)}
    step = Step(rows["dssd_prod_stage2"], 3, "resume", "")
    command = train_command(step, cfg.ablation, tmp_path, "shapes", "logger=csv")
    assert command[1].endswith("src/train.py")
    assert "model=dssd_r18w16" in command and "fusion=prod" in command and "stage=2" in command
    assert "seed=3" in command
    assert f"init_from={tmp_path / 'dssd_prod' / 'seed3' / 'checkpoints' / 'last.ckpt'}" in command
    assert f"hydra.run.dir={tmp_path / 'dssd_prod_stage2' / 'seed3'}" in command
    assert f"voc_results={tmp_path / 'dssd_prod_stage2' / 'seed3' / 'voc_results'}" in command
    assert "run_group=table4-shapes-dssd_prod_stage2" in command  # one W&B group per row
    assert "ckpt_path=last" in command
    assert command[-1] == "logger=csv"
    first = train_command(Step(rows["ssd_pm_a"], 0, "run", ""), cfg.ablation, tmp_path, "g")
    assert not any(arg.startswith(("init_from=", "ckpt_path=")) for arg in first)


@pytest.mark.parametrize(
    "train_args, message",
    [
        (None, "give src/train.py overrides as one string"),
        (5, "give src/train.py overrides as one string"),
        ("logger='csv", "No closing quotation"),
        ("logger=csv seed=7", "seed=7 sets what the runner sets for each run"),
        ("+init_from=/x.ckpt", r"\+init_from=/x.ckpt sets what the runner sets"),
        ("hydra.run.dir=/tmp/x", "hydra.run.dir=/tmp/x sets what the runner sets"),
        # a search in each row trained elsewhere, then the row failed as "did not finish"
        ("hparams_search=optuna", "hparams_search=optuna would make each row a sweep"),
        ("-m", "-m would make each row a sweep"),
    ],
)
def test_train_args_that_cannot_be_used_are_refused(train_args, message: str) -> None:
    """(``train_args=null`` used to make shlex read the terminal; the runner's own keys, set in
    train_args, silently made every seed the same run.)"""
    with pytest.raises(UserError, match=message):
        train_overrides(train_args)
    assert train_overrides(" logger=csv 'trainer.precision=32-true' ") == [
        "logger=csv",
        "trainer.precision=32-true",
    ]


@pytest.mark.parametrize(
    "train_args, reason",
    [
        ("logger=csv trainer.max_steps", "ssd_pm_a (Error parsing override 'trainer.max_steps')"),
        ("trainer.max_stepz=3", "ssd_pm_a (Could not override 'trainer.max_stepz'.)"),
        ("logger=wand", "ssd_pm_a (In 'train': Could not find 'logger/wand')"),
    ],
)
def test_train_args_train_py_cannot_take_are_refused_before_any_run(
    train_args: str, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first row started, failed in train.py's parser, and left its directory behind."""
    monkeypatch.setattr(
        "dssd.table4.runner.run_command", lambda command: pytest.fail(shlex.join(command))
    )
    cfg = compose_table4(f"out_dir={tmp_path}", f"train_args='{train_args}'", "only=[ssd_pm_a]")
    with pytest.raises(UserError) as err:
        run_ablation(cfg, "shapes")
    assert str(err.value) == (
        f"train_args={train_args}: src/train.py cannot take them for row {reason}"
    )
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["a,b", "with space", "it's", "[x]=y", "plain-name_1.0"])
def test_paths_in_the_train_command_survive_hydras_parser(tmp_path: Path, name: str) -> None:
    """A comma in out_dir made Hydra read every run as a multirun sweep."""
    step = Step(table4_rows()[5], 0, "run", "")  # a row with init_from
    command = train_command(step, compose_table4().ablation, tmp_path / name, "shapes")
    parsed = OverridesParser.create().parse_overrides(command[2:])
    values = {o.key_or_group: o.value() for o in parsed}
    directory = tmp_path / name / step.row.id / "seed0"
    assert values["hydra.run.dir"] == str(directory)
    assert values["voc_results"] == str(directory / "voc_results")
    assert values["init_from"] == str(
        tmp_path / name / step.row.init_from / "seed0" / "checkpoints" / "last.ckpt"
    )
    assert not any(o.is_sweep_override() for o in parsed)


def test_a_run_is_reused_only_with_the_settings_it_was_trained_with(tmp_path: Path) -> None:
    """Skipping or resuming compares the run's recorded overrides with this command's, less the
    paths (a moved table) and ckpt_path (a resumed run)."""
    cfg, row = compose_table4(), table4_rows()[5]
    trained = train_command(
        Step(row, 0, "run", ""), cfg.ablation, tmp_path / "old", "shapes", "logger=csv"
    )
    directory = tmp_path / "new" / row.id / "seed0"
    (directory / ".hydra").mkdir(parents=True)
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(trained[2:]))
    for action in ("skip", "resume"):
        step = Step(row, 0, action, "")
        same = train_command(step, cfg.ablation, tmp_path / "new", "shapes", "logger=csv")
        check_same_settings(step, same, directory)
        other = train_command(step, cfg.ablation, tmp_path / "new", "shapes", "logger=wandb")
        with pytest.raises(
            UserError, match=r"\['logger=csv'\] there, \['logger=wandb'\] here.*force=\[dssd_sum\]"
        ):
            check_same_settings(step, other, directory)
    check_same_settings(step, other, tmp_path / "never_run")  # nothing recorded: nothing to compare
    twice = train_command(step, cfg.ablation, tmp_path / "new", "shapes", "logger=csv logger=csv")
    with pytest.raises(UserError, match=r"\(\[\] there, \['logger=csv'\] here\)"):
        check_same_settings(step, twice, directory)


def test_a_forced_row_stopped_part_way_is_run_again_next_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its earlier results go when it starts: old results beside new weights were taken for a
    done run, and old weights alone were resumed."""
    for row in table4_rows():
        make_done(run_dir(tmp_path, row.id, 0))
    directory = run_dir(tmp_path, "ssd_pm_a", 0)

    def interrupted(command: list[str]) -> str:
        (directory / "checkpoints").mkdir()
        (directory / "checkpoints" / "last.ckpt").write_bytes(b"new weights")
        return "interrupted"  # by Ctrl-C, once the run ended

    monkeypatch.setattr("dssd.table4.runner.run_command", interrupted)
    cfg = compose_table4(f"out_dir={tmp_path}", "only=[ssd_pm_b]", "force=ssd_pm_a")
    with pytest.raises(
        UserError, match="row ssd_pm_a .*seed 0: interrupted .*the same command goes on"
    ):
        run_ablation(cfg, "shapes")
    assert not (directory / "test_results.json").exists()
    assert read_run_record(directory)["attempts"] == 1
    steps = plan(select_rows(table4_rows(), ["ssd_pm_b"]), [0], tmp_path)
    assert [(s.row.id, s.action) for s in steps] == [("ssd_pm_a", "resume"), ("ssd_pm_b", "skip")]


@pytest.mark.parametrize(
    "override, message",
    [
        ("only=[]", "only=\\[\\]: give a row id or a list of them"),
        ("only=5", "only=5: give a row id"),
        ("force=1", "force=1: give a row id"),
        ("force=null", "force=null: choose true"),
        ("'force=[ssd_pm_c]'", "force: no row \\['ssd_pm_c'\\] among the rows this command runs"),
        ("seeds=[4294967296]", "distinct integers from 0 to 4294967295"),
        (
            "rows.0.paper_voc_map=abc",
            "rows.0 .* is not a row .*paper_voc_map 'abc' is not a number",
        ),
        ("rows.0.net=foo", "the rows use net \\['foo'\\], which ablation=shapes does not define"),
        ("out_dir=", "out_dir is empty"),
    ],
)
def test_settings_no_table_can_use_are_refused_before_any_row_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, override: str, message: str
) -> None:
    monkeypatch.setattr(
        "dssd.table4.runner.run_command", lambda *a, **k: pytest.fail("a row was started")
    )
    overrides = [f"out_dir={tmp_path}", "only=[ssd_pm_b]", override.strip("'")]
    with pytest.raises(UserError, match=message):
        run_ablation(compose_table4(*overrides), "shapes")


def test_a_damaged_run_record_is_warned_of_and_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "ablation.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert read_run_record(tmp_path) == {}
    assert "ablation.json is damaged" in caplog.text
    add_wall_time(tmp_path, 2.0)
    assert read_run_record(tmp_path) == {"wall_seconds": 2.0, "attempts": 1}


def test_new_keys_and_running_settings_with_sweeps_are_refused() -> None:
    """``+trainer.max_steps=5`` was accepted and read by nothing; sweeps=true ignored them."""
    with pytest.raises(
        UserError, match="src/ablation.py has no setting trainer.max_steps.*train_args="
    ):
        check_overrides(["+trainer.max_steps=5"], False)
    with pytest.raises(UserError, match="seeds=\\[0,1\\]: sweeps=true only writes"):
        check_overrides(["seeds=[0,1]"], True)
    check_overrides(["seeds=[0,1]", "ablation=shapes_full"], False)
    check_overrides(["sweeps_dir=/tmp/s", "ablation=shapes_full", 'train_args=""'], True)


@pytest.mark.slow  # the checks are in process above; this is the command's exit
def test_a_setting_of_the_wrong_type_stops_the_command_with_a_clear_error(tmp_path: Path) -> None:
    proc = run_in_process("ablation.py", f"out_dir={tmp_path}", "sweeps=no", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: sweeps=no: choose true or false" in proc.stderr


@pytest.mark.parametrize("seeds", ["abc", "0", "010", "1 2", "x=5"])
def test_make_ablation_refuses_a_seeds_count_it_cannot_use(seeds: str) -> None:
    """Before anything is installed or trained (``010`` would have read as octal, 8 seeds)."""
    proc = subprocess.run(
        ["make", "-n", "ablation", f"SEEDS={seeds}"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode != 0 and f"SEEDS={seeds}: give the number of seeds" in proc.stderr
    proc = subprocess.run(
        ["make", "-n", "ablation", "SEEDS=3"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "'seeds=[0,1,2]'" in proc.stdout


@pytest.mark.parametrize(
    "train_args",
    [
        "",
        "logger=csv trainer.precision=32-true",
        "logger=csv 'tags=[a b]'",  # a value with a space: quoted for the split
        'logger.wandb.name="my run" data.batch_size=8',
        "'schedules.0.milestones=[136,172]' +x='it''s'",
    ],
)
def test_make_ablation_gives_train_args_to_the_runner_as_written(train_args: str) -> None:
    """``'train_args="$(TRAIN_ARGS)"'`` broke on a quote or a space inside a quoted value: the
    shell split it, or Hydra's parser refused it."""
    proc = subprocess.run(
        ["make", "-n", "ablation", f"TRAIN_ARGS={train_args}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "src/ablation.py" in ln)
    (given,) = [a for a in shlex.split(line.rstrip("\\")) if a.startswith("train_args=")]
    (override,) = OverridesParser.create().parse_overrides([given])
    assert override.value() == train_args
    if train_args:
        assert train_overrides(override.value()) == shlex.split(train_args)


NECK_TARGETS = {
    "none": None,
    "dssd": "dssd.models.Decoder",
    "fpn": "dssd.models.FPN",
    "panet": "dssd.models.PANet",
    "bifpn": "dssd.models.BiFPN",
}


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_setting_composes_each_row_into_a_train_config(setting: str) -> None:
    """Each row's overrides, under every setting, give a train config with its stage, model and
    variants: the rows of the paper's setting can run as they are written."""
    cfg = compose_table4(f"ablation={setting}")
    for row in parse_rows(cfg.rows):
        overrides = [*cfg.ablation[row.net], *row.overrides, f"stage={row.stage}"]
        if row.init_from:
            overrides.append("init_from=/x/last.ckpt")
        train = resolve_with_hydra(compose_train(*overrides))
        assert train.stage == row.stage
        assert train.trainer.max_steps == train.schedules[row.stage].max_steps
        net = train.model.net
        chosen = dict(o.split("=", 1) for o in row.overrides)
        neck = chosen.get("neck", "dssd" if row.net == "dssd" else "none")
        assert (net.neck or {}).get("_target_") == NECK_TARGETS[neck]
        assert train.voc_results is None and train.test_ckpt == "last"
        assert net.prediction_module.variant == chosen["pm"]
        if "fusion" in chosen:
            assert net.neck.fusion == chosen["fusion"]


def setting_train_config(cfg: DictConfig, row_id: str) -> dict:
    """The resolved train config of a row of a composed ablation setting, less what is named
    after the model choice."""
    row = {r.id: r for r in parse_rows(cfg.rows)}[row_id]
    overrides = [*cfg.ablation[row.net], *row.overrides, f"stage={row.stage}"]
    if row.init_from:
        overrides.append("init_from=/x/last.ckpt")
    train = OmegaConf.to_container(resolve_with_hydra(compose_train(*overrides)))
    names = ("run_name", "run_tags", "hydra", "logger")
    return {k: v for k, v in train.items() if k not in names}


def test_the_necks_setting_shares_table_4s_network_and_runs_every_neck() -> None:
    """ABLATION=necks_shapes: PM(c), the control and DSSD's decoder compose to the same train
    configs as Table 4's rows of the same setting; then one row per later neck, compared with
    DSSD's decoder."""
    table4 = compose_table4("ablation=shapes_r18")
    necks = compose_table4("ablation=necks_shapes")
    assert list(necks.ablation.ssd) == list(table4.ablation.ssd)
    for mine, theirs in [
        ("ssd_pm_c", "ssd_pm_c"),
        ("control", "ssd_pm_c_control"),
        ("dssd", "dssd_prod"),
    ]:
        assert setting_train_config(necks, mine) == setting_train_config(table4, theirs), mine
    rows = {r.id: r for r in parse_rows(necks.rows)}
    assert [rows[n].ablates for n in ("control", "dssd", "fpn", "panet", "bifpn")] == [
        "ssd_pm_c",
        "control",
        "dssd",
        "dssd",
        "dssd",
    ]


def test_the_full_length_setting_is_table_4s_rows_on_the_full_length_schedules() -> None:
    """ABLATION=shapes_full: every row composes to the default setting's train config but for the
    length (iterations, milestones, warm-up, validation and checkpoint intervals): the rows'
    schedules are experiment=shapes_full's."""
    full, short = compose_table4("ablation=shapes_full"), compose_table4("ablation=shapes")
    full_length = compose_train("experiment=shapes_full")
    default = OmegaConf.to_container(resolve_with_hydra(full_length).schedules)
    lengths = ("schedules.", "model.scheduler.", "trainer.max_steps", "trainer.val_check_interval")
    names = ("tags", "run_group", "callbacks.last_checkpoint.")
    for row in parse_rows(full.rows):
        mine = setting_train_config(full, row.id)
        assert mine["schedules"] == default, row.id
        assert mine["trainer"]["max_steps"] == default[row.stage]["max_steps"], row.id
        mine, theirs = flatten(mine), flatten(setting_train_config(short, row.id))
        changed = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        assert {k for k in changed if not k.startswith((*lengths, *names))} == set(), row.id


def test_the_long_setting_is_the_full_length_rows_at_twice_their_schedules() -> None:
    """ABLATION=shapes_long: every row composes to the full-length setting's train config but for
    the length, and each stage's iterations, LR milestones and warm-up are twice shapes_full's."""
    long, full = compose_table4("ablation=shapes_long"), compose_table4("ablation=shapes_full")
    full_length = compose_train("experiment=shapes_full")
    default = OmegaConf.to_container(resolve_with_hydra(full_length).schedules)
    doubled = [
        {
            **stage,
            "max_steps": 2 * stage["max_steps"],
            "milestones": [2 * m for m in stage["milestones"]],
            "warmup_iters": 2 * stage["warmup_iters"],
        }
        for stage in default
    ]
    lengths = ("schedules.", "model.scheduler.", "trainer.max_steps", "trainer.val_check_interval")
    names = ("tags", "run_group")
    for row in parse_rows(long.rows):
        mine = setting_train_config(long, row.id)
        assert mine["schedules"] == doubled, row.id
        assert mine["trainer"]["max_steps"] == doubled[row.stage]["max_steps"], row.id
        assert mine["trainer"]["val_check_interval"] == doubled[row.stage]["max_steps"] // 4
        mine, theirs = flatten(mine), flatten(setting_train_config(full, row.id))
        changed = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        assert {k for k in changed if not k.startswith((*lengths, *names))} == set(), row.id


def test_the_context_probe_is_table_4s_rows_on_the_context_data() -> None:
    """ABLATION=shapes_context: Table 4's PM(c), control and DSSD rows, with the same ids and
    comparisons, composing to Table 4's train configs but for the data (the context variant)."""
    table4 = compose_table4("ablation=shapes_r18")
    probe = compose_table4("ablation=shapes_context")
    rows = parse_rows(probe.rows)
    assert [r.id for r in rows] == ["ssd_pm_c", "ssd_pm_c_control", "dssd_sum", "dssd_prod"]
    theirs = {r.id: r for r in parse_rows(table4.rows)}
    # (PM(c) is the first row here: there is no plain SSD row for it to ablate)
    assert rows[0] == dataclasses.replace(theirs["ssd_pm_c"], ablates=None)
    assert rows[1:] == [theirs[r.id] for r in rows[1:]]
    for row in rows:
        mine, plain = setting_train_config(probe, row.id), setting_train_config(table4, row.id)
        data, plain_data = mine.pop("data"), plain.pop("data")
        assert mine == plain, row.id
        assert (data.pop("root"), data.pop("variant")) == (f"{ROOT}/data/shapes_context", "context")
        assert plain_data.pop("root") == f"{ROOT}/data/shapes" and data == plain_data


def test_a_rows_rise_is_over_the_last_quarter_of_its_validations() -> None:
    history = [
        {"step": 40, "val/voc_map": 0.05},
        {"step": 80, "val/voc_map": 0.10, "val/map_50": 0.2},
        {"step": 120, "val/voc_map": 0.14},
        {"step": 160, "val/voc_map": 0.145},
        {"step": 170},  # (a point without the metric is left out)
    ]
    curve = validation_curve(history)
    assert [step for step, _ in curve] == [40, 80, 120, 160]
    assert [value for _, value in curve] == pytest.approx([5.0, 10.0, 14.0, 14.5])
    assert last_quarter_rise(curve) == 0.5  # 14.5 at 160 less 14.0 at 120 (= 3/4 of 160)
    assert last_quarter_rise(curve[:3]) == 4.0  # 14.0 at 120 less 10.0 at 80 (<= 90)
    assert last_quarter_rise([(160, 9.0)]) is None  # one validation: no earlier point
    assert last_quarter_rise([]) is None


def test_out_dir_is_named_after_the_setting() -> None:
    cfg = compose_table4("ablation=voc0712_321")
    with open_dict(cfg):
        cfg.paths.root_dir = "/repo"
    assert resolve_with_hydra(cfg).out_dir == "/repo/logs/ablation/voc0712_321"
    assert OmegaConf.to_container(cfg.hydra.run)["dir"] == "${out_dir}"


def check_chain(out_dir: Path, seeds: tuple[int, ...]) -> None:
    """The tiny chain's table, runs and checkpoints: each row run once per seed from its parent
    row's final weights of the same seed, stage 1 keeping the backbone it loaded."""
    rows = [r for r in table4_rows() if r.id in TINY_ROWS]
    with (out_dir / "table4.csv").open() as f:
        records = list(csv.DictReader(f))
    assert [r["row"] for r in records] == TINY_ROWS
    paper = [r.paper_voc_map for r in rows]
    assert [float(r["paper_voc_map"]) if r["paper_voc_map"] else None for r in records] == paper
    for record in records:
        assert 0 <= float(record["voc_map"]) <= 100 and record["seeds"] == str(len(seeds))
        if len(seeds) > 1:
            assert float(record["voc_map_std"]) >= 0
        else:
            assert record["voc_map_std"] == ""
        assert int(record["parameters"]) > 0
        assert float(record["fit_minutes"]) > 0 and float(record["wall_minutes"]) > 0
        for size in ("ap_small", "ap_medium", "ap_large"):
            assert record[size] == "" or 0 <= float(record[size]) <= 100
        # one validation per run: a curve of one point, no last quarter to rise over
        assert 0 <= float(record["val_curve"]) <= 100 and record["val_rise"] == ""
        if record["ablates"]:
            # (a percentile interval need not hold the estimate: on 8 test images, AP is far
            # from linear in the images' weights)
            low, high = float(record["delta_low"]), float(record["delta_high"])
            assert low <= high and record["delta_excludes_zero"] in ("True", "False")
            excludes_zero = record["delta_excludes_zero"] == "True"  # (bounds rounded here)
            assert (low >= 0 or high <= 0) if excludes_zero else (low <= 0 <= high)
            assert 0 <= float(record["delta_p"]) <= 1
        else:
            assert record["delta"] == "" and record["delta_holm"] == ""
            assert record["delta_seed_std"] == ""
    # the stars: Holm's correction over the table's differences, at 1 - confidence
    compared = [r for r in records if r["ablates"]]
    marks = holm([float(r["delta_p"]) for r in compared], 0.05)
    assert [r["delta_holm"] == "True" for r in compared] == marks
    params = {r["row"]: int(r["parameters"]) for r in records}
    # PM (c) adds a residual block per source; DSSD adds the deconvolution modules
    assert params["ssd_pm_a"] < params["ssd_pm_c"] == params["ssd_pm_c_control"]
    assert params["ssd_pm_c"] < params["dssd_prod"] == params["dssd_prod_stage2"]
    gmac = {r["row"]: float(r["gmac"]) for r in records}
    assert gmac["ssd_pm_a"] < gmac["ssd_pm_c"] == gmac["ssd_pm_c_control"] < gmac["dssd_prod"]
    assert gmac["dssd_prod"] == gmac["dssd_prod_stage2"]
    markdown = (out_dir / "table4.md").read_text()
    if len(seeds) > 1:
        listed = ", ".join(map(str, seeds))
        assert f"{len(seeds)} seeds ({listed})" in markdown and "± std" in markdown
    for row in rows:
        paper_map = "–" if row.paper_voc_map is None else f"{row.paper_voc_map:.1f}"
        assert f"| {row.name} | {paper_map} |" in markdown

    with (out_dir / "runs.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert [(r["row"], r["seed"]) for r in runs] == [(i, str(s)) for i in TINY_ROWS for s in seeds]
    # Δ seed std: the spread of the per-seed differences, recomputed from runs.csv
    maps = {(r["row"], r["seed"]): float(r["voc_map"]) for r in runs}
    for record in (r for r in records if r["ablates"]):
        spread = record["delta_seed_std"]
        if len(seeds) == 1:
            assert spread == ""
            continue
        per_seed = [maps[record["row"], str(s)] - maps[record["ablates"], str(s)] for s in seeds]
        assert float(spread) == pytest.approx(statistics.stdev(per_seed), abs=0.015)
    # the seed std pooled over the rows, recomputed from runs.csv: two seeds, one df a row
    if len(seeds) == 2:
        pooled = statistics.mean(
            statistics.variance([maps[i, "0"], maps[i, "1"]]) for i in TINY_ROWS
        )
        printed = re.search(r"Seed std pooled over the rows: ([\d.]+) points", markdown)
        assert float(printed.group(1)) == pytest.approx(pooled**0.5, abs=0.011)
    else:
        assert "pooled" not in markdown
    for row in rows:
        for seed in seeds:
            directory = run_dir(out_dir, row.id, seed)
            assert is_done(directory)
            config = yaml.safe_load((directory / ".hydra" / "config.yaml").read_text())
            assert config["stage"] == row.stage and config["seed"] == seed
            assert config["run_group"] == f"table4-shapes-{row.id}"
            parent = (
                run_dir(out_dir, row.init_from, seed) / "checkpoints" / "last.ckpt"
                if row.init_from
                else None
            )
            assert config["init_from"] == (str(parent) if parent else None)
            if parent:
                assert f"init_from {parent}:" in (directory / "train.log").read_text()
            result = json.loads((directory / "test_results.json").read_text())
            assert result["stage"] == row.stage
            assert result["tested_checkpoint"] == "final weights"
            # the validation curve: the one validation of a 2-iteration run, as logged
            (point,) = result["val_history"]
            assert point["step"] == 2
            assert point["val/voc_map"] == pytest.approx(result["metrics"]["val/voc_map"])

    # stage 1 froze the backbone it loaded from PM(c)'s final weights: the same tensors
    for seed in seeds:
        parent = backbone(out_dir, "ssd_pm_c", seed)
        for row_id in ("dssd_prod", "ssd_pm_c_control"):
            child = backbone(out_dir, row_id, seed)
            assert child.keys() == parent.keys()
            assert all(torch.equal(child[k], parent[k]) for k in parent)
        pm_a = backbone(out_dir, "ssd_pm_a", seed)
        assert not all(torch.equal(parent[k], v) for k, v in pm_a.items())


def backbone(out_dir: Path, row_id: str, seed: int) -> dict[str, torch.Tensor]:
    """The backbone weights of a row's final checkpoint."""
    path = run_dir(out_dir, row_id, seed) / "checkpoints" / "last.ckpt"
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.backbone.")}


def test_tiny_chain_writes_table4_with_each_row_from_its_parent(tiny_ablation: Path) -> None:
    check_chain(tiny_ablation, TINY_SEEDS)


def test_tiny_chain_compares_each_row_with_the_row_it_ablates(tiny_ablation: Path) -> None:
    """analysis/: a folder per compared row with the run's analysis and the comparison, and an
    index whose overall difference is the table's own (the same paired bootstrap)."""
    compared = [r for r in table4_rows() if r.id in TINY_ROWS and r.ablates]
    with (tiny_ablation / "table4.csv").open() as f:
        table = {r["row"]: r for r in csv.DictReader(f)}
    index = (tiny_ablation / "analysis" / "README.md").read_text()
    for row in compared:
        folder = tiny_ablation / "analysis" / f"{row.id}_vs_{row.ablates}"
        for name in ("summary.md", "sizes.csv", "errors.png", "comparison.png"):
            assert (folder / name).is_file(), folder / name
        with (folder / "comparison_classes.csv").open() as f:
            overall = next(csv.DictReader(f))
        delta = float(table[row.id]["delta"])
        assert 100 * float(overall["delta"]) == pytest.approx(delta, abs=0.01)
        assert f"{delta:+.1f} [" in index
        assert f"analysis/{row.id}_vs_{row.ablates} |" in index
    assert index.count("| analysis/") == len(compared)


@pytest.mark.slow
def test_tiny_chain_with_two_seeds_averages_them(tiny_ablation_two_seeds: Path) -> None:
    """Every row once per seed, mean and spread over the seeds, and different networks."""
    check_chain(tiny_ablation_two_seeds, (0, 1))
    first, second = (backbone(tiny_ablation_two_seeds, "ssd_pm_a", seed) for seed in (0, 1))
    assert not all(torch.equal(v, second[k]) for k, v in first.items())


def test_done_rows_are_skipped_a_failing_row_names_its_log_and_other_settings_are_refused(
    tiny_ablation: Path, tiny_shapes: Path, tmp_path: Path
) -> None:
    """A copy of the chain (moved: its runs' paths differ), the stage-2 row forced while the
    checkpoint it starts from is broken: the done rows are skipped (their checkpoints untouched),
    the forced row fails, the error names its log, and its earlier results are gone, so that the
    next command runs it again rather than skipping it. Other train_args than the runs had are
    refused before any row runs."""
    table = tmp_path / "table"
    shutil.copytree(tiny_ablation, table)
    forced, seeds = "dssd_prod_stage2", f"seeds=[{','.join(map(str, TINY_SEEDS))}]"
    parent = table / "dssd_prod" / f"seed{TINY_SEEDS[0]}" / "checkpoints" / "last.ckpt"
    parent.write_bytes(parent.read_bytes()[:1000])
    stamps = {
        p: p.stat().st_mtime_ns
        for p in table.glob("*/seed*/checkpoints/last.ckpt")
        if p.parts[-4] != forced
    }
    assert len(stamps) == len(TINY_SEEDS) * (len(TINY_ROWS) - 1)
    common = (f"out_dir={table}", seeds, f"only=[{forced}]", "bootstrap_samples=200")
    train_args = tiny_train_args(tiny_shapes)
    proc = run_in_process("ablation.py", *common, f"force={forced}", train_args, check=False)
    assert proc.returncode == 2, proc.stderr
    run = table / forced / f"seed{TINY_SEEDS[0]}"
    assert f"row {forced}" in proc.stderr and str(run / "train.log") in proc.stderr
    assert not (run / "test_results.json").exists() and not (run / "checkpoints").exists()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    other = train_args[:-1] + ' tags=[other]"'
    proc = run_in_process("ablation.py", *common, other, check=False)
    assert proc.returncode == 2
    assert "was trained with other settings than this command gives it" in proc.stderr
    assert "([] there, ['tags=[other]'] here)" in proc.stderr
    assert "[1/" not in proc.stdout + proc.stderr  # no row started


def test_rows_starting_from_a_run_that_was_only_tested_again_are_not_retrained(
    tiny_ablation: Path, tiny_shapes: Path, tmp_path: Path
) -> None:
    """PM(c)'s test results removed: it resumes, which only tests its final weights again, so
    the done rows that start from those weights keep their runs."""
    table = tmp_path / "table"
    shutil.copytree(tiny_ablation, table)
    seed = TINY_SEEDS[0]
    (run_dir(table, "ssd_pm_c", seed) / "test_results.json").unlink()
    children = ("ssd_pm_c_control", "dssd_prod", "dssd_prod_stage2")
    checkpoints = [run_dir(table, row, seed) / "checkpoints" / "last.ckpt" for row in children]
    stamps = {p: p.stat().st_mtime_ns for p in checkpoints}
    proc = run_in_process(
        "ablation.py",
        f"out_dir={table}",
        f"seeds=[{seed}]",
        "only=[dssd_prod_stage2]",
        "bootstrap_samples=200",
        "analysis=false",
        tiny_train_args(tiny_shapes),
    )
    assert (run_dir(table, "ssd_pm_c", seed) / "test_results.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == stamps, proc.stdout[-3000:]
    assert "skipped: ssd_pm_c's final weights are as they were" in proc.stdout + proc.stderr


def test_table_stars_the_differences_significant_after_the_correction() -> None:
    base = {
        "paper_voc_map": 77.1,
        "voc_map": 50.0,
        "voc_map_std": 1.2,
        "coco_map": 30.0,
        "coco_map_std": 0.5,
        "ap_small": 10.0,
        "ap_medium": 40.0,
        "ap_large": 60.0,
        "parameters": 15e6,
        "fit_minutes": 2.0,
        "wall_minutes": 2.5,
        "seeds": 3,
    }
    records = [
        {**base, "name": "base", "ablates": ""},
        {
            **base,
            "name": "up",
            "ablates": "base",
            "delta": 3.0,
            "delta_low": 1.0,
            "delta_high": 5.0,
            "delta_excludes_zero": True,
            "delta_holm": True,
            "delta_seed_std": 0.25,
        },  # fmt: skip
        {
            **base,
            "name": "flat",
            "ablates": "base",
            "delta": 0.5,
            "delta_low": 0.1,
            "delta_high": 2.0,
            "delta_excludes_zero": True,  # but not after the correction: no star
            "delta_holm": False,
            "delta_seed_std": 1.75,
        },  # fmt: skip
    ]
    text = table4_markdown(records, "shapes", [0, 1, 2])
    assert "| Δ mAP [95% CI] | Δ seed std | vs |" in text and "Δ seed std: the standard" in text
    assert "| base | 77.1 | 50.0 ± 1.2 | – | – | – |" in text
    assert "| up | 77.1 | 50.0 ± 1.2 | +3.0 [+1.0, +5.0]* | 0.2 | base |" in text
    assert "| flat | 77.1 | 50.0 ± 1.2 | +0.5 [+0.1, +2.0] | 1.8 | base |" in text
    assert "Holm's correction" in text
    assert "3 seeds (0, 1, 2)" in text and "Total wall time of the runs: 22.5 min." in text
    # one seed: no spread over seeds, so neither the column nor its note
    one = table4_markdown([{**r, "voc_map_std": None} for r in records], "shapes", [0])
    assert "seed std" not in one and "| up | 77.1 | 50.0 | +3.0 [+1.0, +5.0]* | base |" in one


def test_a_differences_seed_spread_is_over_its_paired_seeds() -> None:
    """Δ seed std reads the per-seed differences: a seed that lifts both rows alike leaves it
    small however wide the rows' own spread; a seed either row lacks is left out."""
    runs = [
        {"row": row, "seed": seed, "voc_map": value}
        for row, values in {"a": [70.0, 66.0, 74.0, None], "b": [71.0, 67.5, 74.5, 80.0]}.items()
        for seed, value in enumerate(values)
    ]
    runs.append({"row": "a", "seed": 7, "voc_map": 50.0})  # b has no seed 7
    differences = seed_differences(runs, "b", "a")
    assert differences == pytest.approx([1.0, 1.5, 0.5])
    assert statistics.stdev(differences) == pytest.approx(0.5)
    assert statistics.stdev([70.0, 66.0, 74.0]) == pytest.approx(4.0)  # the row's own spread


def test_the_seed_spread_pooled_over_the_rows_and_its_interval() -> None:
    """Each row's variance about its own mean, pooled by degrees of freedom (a row lifted as a
    whole adds nothing), an interval from the chi-square law that covers the true spread 95 times
    in 100 (checked by simulation), and the line the table prints."""
    values = {"a": [70.0, 66.0, 74.0], "b": [90.0, 91.0, 92.0, 93.0], "c": [50.0]}
    runs = [
        {"row": row, "seed": seed, "voc_map": value}
        for row, figures in values.items()
        for seed, value in enumerate(figures)
    ]
    runs.append({"row": "c", "seed": 1, "voc_map": None})  # a missing figure counts for nothing
    spread = pooled_seed_spread(runs)
    # a: 2 df, variance 16; b: 3 df, variance 5/3; c: one figure, no df
    assert spread["df"] == 5 and spread["std"] == pytest.approx(((2 * 16 + 3 * 5 / 3) / 5) ** 0.5)
    assert spread["low"] < spread["std"] < spread["high"]
    assert 0 < spread["bartlett_p"] < 0.2  # 16 against 1.7: unequal, weakly with 2 and 3 df
    assert pooled_seed_spread([r for r in runs if r["seed"] == 0]) is None  # one seed

    rng = np.random.default_rng(0)
    trials, covered = 2000, 0
    for _ in range(trials):
        sample = [
            {"row": row, "seed": seed, "voc_map": 60.0 + 10 * row + rng.normal(0.0, 1.3)}
            for row in range(8)
            for seed in range(3)
        ]
        found = pooled_seed_spread(sample)
        covered += found["low"] <= 1.3 <= found["high"]
    assert abs(covered / trials - 0.95) < 0.015

    record = {
        "name": "a", "paper_voc_map": None, "voc_map": 70.0, "voc_map_std": 4.0,
        "coco_map": None, "ap_small": None, "ap_medium": None, "ap_large": None,
        "parameters": None, "fit_minutes": None, "wall_minutes": 1.0, "seeds": 3, "ablates": "",
    }  # fmt: skip
    text = table4_markdown([record], "shapes", [0, 1, 2], pooled=spread)
    assert f"Seed std pooled over the rows: {spread['std']:.2f} points" in text
    assert "(95% interval, 5 degrees of freedom)" in text and "Bartlett's test at p = 0." in text
