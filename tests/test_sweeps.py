"""Sweeps: the W&B sweep files (sweeps/), the Optuna search (conf/hparams_search/optuna.yaml) and
the SLURM launcher (conf/hydra/launcher/slurm.yaml).

Nothing here reaches W&B or SLURM: the agent's command lines are built with wandb's own helpers
and composed with Hydra, and the sbatch script is built by submitit with its submission stopped.
"""

from __future__ import annotations

import csv
import itertools
import math
import random
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode
from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import CategoricalDistribution, LogUniformDistribution
from submitit.slurm.slurm import SlurmExecutor
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from conftest import run_in_process
from dssd.config import register_resolvers
from dssd.table4.rows import Row, parse_rows, row_overrides
from dssd.table4.sweeps import RUNS_DIR, plan_sweeps, sweep_files
from test_configs import CONF, compose_train, hydra_runtime, resolve_with_hydra

ROOT = CONF.parent
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
TRAIN_YAML = yaml.safe_load((CONF / "train.yaml").read_text())
OPTIMIZED_METRIC = TRAIN_YAML["optimized_metric"]
# `hparams_search=optuna` once conf/train.yaml lists the group in its defaults, else appended
HPARAMS_SEARCH = (
    "hparams_search=optuna"
    if any("hparams_search" in entry for entry in TRAIN_YAML["defaults"] if isinstance(entry, dict))
    else "+hparams_search=optuna"
)


def load_sweep(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "sweeps" / name).read_text())


def agent_command(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The command line that ``wandb agent`` runs for a run of ``sweep`` with ``params``.

    As ``wandb.wandb_agent.Agent._command_run`` does: environment macros filled in by
    ``create_sweep_command``, then each ``${...}`` element replaced by its list from
    ``create_sweep_command_args`` (plus env, interpreter and program); others are kept as they are.
    """
    command = {"args": {k: {"value": v} for k, v in params.items()}, "program": sweep["program"]}
    sweep_vars = create_sweep_command_args(command)
    sweep_vars["interpreter"] = ["python"]
    sweep_vars["program"] = [command["program"]]
    sweep_vars["env"] = ["/usr/bin/env"]
    command_list: list[str] = []
    for chunk in create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        if chunk.startswith("${") and chunk.endswith("}"):
            command_list += sweep_vars.get(chunk[2:-1]) or []
        else:
            command_list.append(chunk)
    return command_list


def hydra_overrides(sweep: dict[str, Any], command: list[str]) -> list[str]:
    """What the agent's command hands to src/train.py: everything after the program."""
    assert command[:3] == ["/usr/bin/env", "python", sweep["program"]]
    return command[3:]


def sweep_points(sweep: dict[str, Any], samples: int = 1) -> list[dict[str, Any]]:
    """Every grid point; for random/bayes sweeps the bounds of each range plus random draws."""
    rng = random.Random(0)
    choices = {}
    for name, spec in sweep["parameters"].items():
        if "values" in spec:
            choices[name] = list(spec["values"])
        elif "value" in spec:
            choices[name] = [spec["value"]]
        else:
            low, high = spec["min"], spec["max"]
            if spec.get("distribution") == "log_uniform_values":
                draws = [
                    math.exp(rng.uniform(math.log(low), math.log(high))) for _ in range(samples)
                ]
            else:
                assert spec.get("distribution", "uniform") == "uniform", spec
                draws = [rng.uniform(low, high) for _ in range(samples)]
            choices[name] = [low, high, *draws]
    names = list(choices)
    return [
        dict(zip(names, values, strict=True)) for values in itertools.product(*choices.values())
    ]


def compose_run(overrides: list[str]) -> tuple[DictConfig, dict[str, Any]]:
    """The train config the agent's command composes, and its resolved non-Hydra part with the
    resolved run directory (``run_dir``)."""
    cfg = compose_train(*overrides)
    resolved = OmegaConf.to_container(resolve_with_hydra(cfg))
    with hydra_runtime(cfg):
        run_dir = str(cfg.hydra.run.dir)
    return cfg, {**resolved, "run_dir": run_dir}


# --- W&B sweeps ----------------------------------------------------------------------------------


def test_the_sweep_files_are_there() -> None:
    names = {p.name for p in SWEEP_FILES}
    assert {"table4_stage0.yaml", "table4_stage1.yaml", "lr_search.yaml"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_sweep_file_drives_train_online_on_the_optimized_metric(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#") and "wandb sweep sweeps/" in text and "wandb agent" in text
    sweep = yaml.safe_load(text)
    assert {"program", "method", "metric", "parameters", "command"} <= set(sweep)
    assert sweep["program"] == "src/train.py" and (ROOT / sweep["program"]).is_file()
    assert sweep["method"] in {"grid", "random", "bayes"}
    assert sweep["metric"] == {"name": OPTIMIZED_METRIC, "goal": "maximize"}
    assert sweep["command"][:4] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
    assert "logger.wandb.offline=false" in sweep["command"]
    if sweep["method"] == "grid":  # a grid needs finite lists
        assert all("values" in spec or "value" in spec for spec in sweep["parameters"].values())
    else:
        assert sweep.get("run_cap", 0) > 0


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.name)
def test_every_run_of_the_sweep_composes_with_its_parameters(path: Path) -> None:
    sweep = yaml.safe_load(path.read_text())
    run_dirs = set()
    points = sweep_points(sweep)
    for params in points:
        command = agent_command(sweep, params)
        cfg, resolved = compose_run(hydra_overrides(sweep, command))
        assert resolved["logger"]["wandb"]["offline"] is False
        optimizer = resolved["model"]["optimizer"]
        for name, value in params.items():
            if name == "pm":
                assert resolved["model"]["net"]["prediction_module"]["variant"] == value
                assert f"pm_{value}" in resolved["run_name"]
            elif name == "fusion":
                assert resolved["model"]["net"]["neck"]["fusion"] == value
            elif name == "optimizer":
                assert cfg.hydra.runtime.choices.optimizer == value
                assert (
                    optimizer["_target_"]
                    == {"sgd": "torch.optim.SGD", "adamw": "torch.optim.AdamW"}[value]
                )
            elif name == "schedules.0.lr":
                assert resolved["stage"] == 0
                assert resolved["schedules"][0]["lr"] == value
                assert optimizer["lr"] == value  # what the optimiser of the run gets
            else:
                raise AssertionError(f"{path.name}: no check for parameter {name}")
        run_dirs.add(resolved["run_dir"])
    if any("hydra.run.dir=" in str(c) for c in sweep["command"]):  # pinned: one dir per run
        assert len(run_dirs) == len(points)


def test_table4_stage0_runs_land_in_their_own_named_dirs() -> None:
    sweep = load_sweep("table4_stage0.yaml")
    assert sweep["method"] == "grid" and sweep["parameters"]["pm"]["values"] == ["a", "b", "c", "d"]
    for pm in "abcd":
        _, run = compose_run(hydra_overrides(sweep, agent_command(sweep, {"pm": pm})))
        assert run["stage"] == 0 and run["init_from"] is None
        assert run["run_name"] == f"ssd_r18w16-pm_{pm}-stage0"
        assert run["run_dir"] == f"logs/sweeps/table4/{run['run_name']}"


def test_table4_stage1_starts_from_the_stage0_pm_c_checkpoint() -> None:
    stage0, stage1 = load_sweep("table4_stage0.yaml"), load_sweep("table4_stage1.yaml")
    _, pm_c = compose_run(hydra_overrides(stage0, agent_command(stage0, {"pm": "c"})))
    expected = f"{pm_c['run_dir']}/checkpoints/last.ckpt"
    assert stage1["parameters"]["fusion"]["values"] == ["sum", "prod"]
    for fusion in ("sum", "prod"):
        _, run = compose_run(hydra_overrides(stage1, agent_command(stage1, {"fusion": fusion})))
        assert run["init_from"] == expected
        assert run["stage"] == 1
        # stage 1 freezes what it loads, and DSSD builds on prediction module (c)
        assert run["stages"][1]["freeze"] == ["backbone", "extras"]
        assert run["model"]["net"]["prediction_module"]["variant"] == "c"
        assert run["run_name"] == f"dssd_r18w16-pm_c-{fusion}-stage1"
        assert run["run_dir"] == f"logs/sweeps/table4/{run['run_name']}"


TABLE4_SWEEPS = {p.name: p.read_text() for p in SWEEP_FILES if p.name.startswith("table4_")}


def generated_table4_sweeps(setting: str = "shapes") -> tuple[DictConfig, dict[str, str]]:
    """conf/table4.yaml with ``setting``, and the sweep files `src/ablation.py sweeps=true`
    writes from it."""
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("table4", overrides=[f"ablation={setting}"], return_hydra_config=True)
        return cfg, sweep_files(cfg, setting)


def test_table4_sweep_files_are_the_ones_generated_from_conf_table4() -> None:
    """The committed files are what `python src/ablation.py sweeps=true` writes for the default
    setting: the rows, their settings and paper figures have one source, conf/table4.yaml."""
    _, files = generated_table4_sweeps()
    assert set(files) == set(TABLE4_SWEEPS) == {"table4_stage0.yaml", "table4_stage1.yaml"}
    for name, text in files.items():
        assert TABLE4_SWEEPS[name] == text, f"sweeps/{name}: run python src/ablation.py sweeps=true"


@pytest.mark.slow
def test_ablation_entry_point_writes_the_sweep_files(tmp_path: Path) -> None:
    proc = run_in_process(
        "ablation.py", "sweeps=true", f"sweeps_dir={tmp_path}", f"out_dir={tmp_path / 'out'}"
    )
    written = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    assert written == TABLE4_SWEEPS
    assert f"wrote {tmp_path / 'table4_stage0.yaml'}" in proc.stdout
    assert not list((tmp_path / "out").glob("*/seed*"))  # no row ran


def test_a_sweeps_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    """It was FileExistsError's traceback from making the folder."""
    file = tmp_path / "sweeps"
    file.write_text("")
    proc = run_in_process("ablation.py", "sweeps=true", f"sweeps_dir={file}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"error: sweeps_dir={file} is a file, not a directory" in proc.stderr


def header_commands(text: str) -> list[str]:
    """The ``python src/train.py ...`` commands in a sweep file's header, continuation lines
    joined."""
    commands, current = [], None
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("# ")
        if current is None and body.startswith("python src/train.py"):
            current = ""
        if current is not None:
            current += body.removesuffix("\\")
            if not body.endswith("\\"):
                commands.append(current)
                current = None
    return commands


def override_value(row: Row, key: str) -> str:
    return dict(o.split("=", 1) for o in row.overrides)[key]


@pytest.mark.parametrize("setting", ["shapes", "voc0712_321", "necks_shapes"])
def test_table4_sweeps_run_every_row_as_make_ablation_composes_it(setting: str) -> None:
    """Every row of conf/table4.yaml runs once: a grid point of its stage's sweep, or a command in
    a sweep file's header; each run composes to the config of `make ablation`'s run of the row
    (the setting's overrides, the row's, its stage), started from the final weights of its
    parent row's run."""
    cfg, files = generated_table4_sweeps(setting)
    rows = parse_rows(cfg.rows)
    sweeps = plan_sweeps(rows)
    listed = [r.id for s in sweeps for r in (*s.before, *s.rows, *s.singles)]
    assert sorted(listed) == sorted(r.id for r in rows)
    run_dirs: dict[str, str] = {}

    def check(row: Row, overrides: list[str]) -> None:
        _, run = compose_run(overrides)
        expected = [*row_overrides(row, cfg.ablation), "logger.wandb.offline=false"]
        if row.init_from:
            parent = f"{run_dirs[row.init_from]}/checkpoints/last.ckpt"
            expected.append(f"init_from={parent}")
        assert run.pop("run_dir") == f"{RUNS_DIR}/{run['run_name']}"
        assert run == OmegaConf.to_container(resolve_with_hydra(compose_train(*expected)))
        run_dirs[row.id] = f"{RUNS_DIR}/{run['run_name']}"

    for sweep in sweeps:
        config = yaml.safe_load(files[sweep.file_name])
        commands = header_commands(files[sweep.file_name])
        assert len(commands) == len(sweep.before) + len(sweep.singles)
        # the header's commands before the grid (rows it starts from), then after it
        for row, command in zip(sweep.before, commands, strict=False):
            words = shlex.split(command)
            assert words[:2] == ["python", "src/train.py"]
            check(row, words[2:])
        values = [override_value(row, sweep.key) for row in sweep.rows]
        assert config["parameters"] == {sweep.key: {"values": values}}
        for row, value in zip(sweep.rows, values, strict=True):
            check(row, hydra_overrides(config, agent_command(config, {sweep.key: value})))
        for row, command in zip(sweep.singles, commands[len(sweep.before) :], strict=True):
            words = shlex.split(command)
            assert words[:2] == ["python", "src/train.py"]
            check(row, words[2:])
    assert len(run_dirs) == len(set(run_dirs.values())) == len(rows)  # a directory per row


def test_lr_search_is_a_bounded_bayes_search_with_hyperband() -> None:
    sweep = load_sweep("lr_search.yaml")
    assert sweep["method"] == "bayes"
    lr = sweep["parameters"]["schedules.0.lr"]
    assert lr["distribution"] == "log_uniform_values" and 0 < lr["min"] < lr["max"]
    assert sweep["early_terminate"]["type"] == "hyperband"
    assert sweep["early_terminate"]["min_iter"] >= 1
    # more draws than the general test: each must reach the optimiser unchanged
    for params in sweep_points(sweep, samples=3):
        _, run = compose_run(hydra_overrides(sweep, agent_command(sweep, params)))
        assert lr["min"] <= run["model"]["optimizer"]["lr"] <= lr["max"]
        assert run["model"]["optimizer"]["lr"] == params["schedules.0.lr"]


# --- Optuna --------------------------------------------------------------------------------------


def optuna_search_space(cfg: DictConfig) -> dict[str, Any]:
    """The sweeper's params as Optuna distributions, parsed by the plugin's own code."""
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    distributions, fixed = create_params_from_overrides(params)
    assert not fixed, f"fixed values in the search space: {fixed}"
    return distributions


def test_optuna_search_composes_and_searches_existing_keys() -> None:
    cfg = compose_train(HPARAMS_SEARCH)
    assert cfg.hydra.mode == RunMode.MULTIRUN
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.n_trials > 0 and sweeper.n_jobs == 1
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.sampler.seed is not None
    assert cfg.optimized_metric == OPTIMIZED_METRIC

    space = optuna_search_space(cfg)
    assert set(space) == {"model.optimizer.lr", "data.batch_size", "model.optimizer.weight_decay"}
    assert isinstance(space["model.optimizer.lr"], LogUniformDistribution)
    assert isinstance(space["model.optimizer.weight_decay"], LogUniformDistribution)
    assert isinstance(space["data.batch_size"], CategoricalDistribution)
    for optimizer in ("sgd", "adamw"):
        # a trial's overrides, at the low end of each range: Hydra refuses keys that do not exist
        trial = {
            key: dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low
            for key, dist in space.items()
        }
        overrides = [f"{key}={value}" for key, value in trial.items()]
        run = compose_train(HPARAMS_SEARCH, f"optimizer={optimizer}", *overrides)
        for key, value in trial.items():
            assert OmegaConf.select(run, key) == value
        assert run.model.optimizer.weight_decay == trial["model.optimizer.weight_decay"]


def test_a_search_whose_study_would_mean_nothing_is_refused() -> None:
    """Minimising a metric that is better higher picks the worst trial; searching another
    stage's schedule varies a value no trial uses (the shipped space searched schedules.0.lr)."""
    from dssd.errors import UserError
    from dssd.tasks.training import check_search

    for stage in (["stage=0"], ["stage=1", "init_from=x.ckpt"]):
        cfg = compose_train(HPARAMS_SEARCH, *stage)
        with hydra_runtime(cfg):
            check_search(cfg)  # the shipped search, at any stage
    cfg = compose_train(HPARAMS_SEARCH, "hydra.sweeper.direction=minimize")
    with hydra_runtime(cfg), pytest.raises(UserError, match="direction=.*must maximize"):
        check_search(cfg)
    cfg = compose_train(HPARAMS_SEARCH, "stage=1", "init_from=x.ckpt")
    with open_dict(cfg):
        cfg.hydra.sweeper.params["schedules.0.lr"] = "tag(log, interval(1e-4, 1e-2))"
    message = "the search varies schedules.0.lr, but stage 1 trains with schedules.1"
    with hydra_runtime(cfg), pytest.raises(UserError, match=message):
        check_search(cfg)
    for never, why in (
        ("trainer.limit_val_batches=0", "limit_val_batches=0"),
        ("train=false", "train=false"),
        ("trainer.max_steps=2", "max_steps=2 < trainer.val_check_interval"),
    ):
        cfg = compose_train(HPARAMS_SEARCH, never)
        with hydra_runtime(cfg), pytest.raises(UserError, match=f"would validate .*{why}"):
            check_search(cfg)
    # 2 steps of 200 accumulated batches reach the validation after batch 300
    cfg = compose_train(
        HPARAMS_SEARCH, "trainer.max_steps=2", "+trainer.accumulate_grad_batches=200"
    )
    with hydra_runtime(cfg):
        check_search(cfg)
    # no metric to return: every trial would fail, then the study's end with a traceback
    cfg = compose_train(HPARAMS_SEARCH, "optimized_metric=null")
    with hydra_runtime(cfg), pytest.raises(UserError, match="optimized_metric=null: each trial"):
        check_search(cfg)
    cfg = compose_train("stage=1", "init_from=x.ckpt", "trainer.limit_val_batches=0")
    with hydra_runtime(cfg):
        check_search(cfg)  # not a sweep


@pytest.mark.slow
def test_optuna_search_runs_trials_and_reports_the_best(tiny_shapes: Path, tmp_path: Path) -> None:
    """Two 2-iteration trials on the tiny data (batch size searched among sizes that fit it),
    the study kept in the database the docs suggest (Optuna 2 reads it only with SQLAlchemy 1)."""
    import optuna

    sweep_dir = tmp_path / "optuna"
    run_in_process(
        "train.py",
        HPARAMS_SEARCH,
        "hydra.sweeper.n_trials=2",
        f"hydra.sweep.dir={sweep_dir}",
        f"paths.log_dir={tmp_path}",
        "hydra.sweeper.storage=sqlite:///${paths.log_dir}/optuna.db",
        "data.batch_size=choice(2,4)",
        f"data.root={tiny_shapes}",
        "data.num_workers=0",
        "logger=csv",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "test=false",
    )
    trials = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    values = []
    for trial in trials:
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        keys = {o.split("=", 1)[0] for o in overrides}
        assert {"model.optimizer.lr", "model.optimizer.weight_decay"} <= keys
        assert {"data.batch_size=2", "data.batch_size=4"} & set(overrides)
        with open(next(trial.glob("csv/version_*/metrics.csv"))) as f:
            logged = [row[OPTIMIZED_METRIC] for row in csv.DictReader(f) if row[OPTIMIZED_METRIC]]
        values.append(float(logged[-1]))
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert results["name"] == "optuna"
    assert set(results["best_params"]) == {
        "model.optimizer.lr",
        "data.batch_size",
        "model.optimizer.weight_decay",
    }
    assert results["best_value"] == pytest.approx(max(values))
    study = optuna.load_study(study_name="dssd", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert sorted(t.value for t in study.trials) == pytest.approx(sorted(values))


def test_a_search_of_no_trials_is_refused_before_it_starts(tmp_path: Path) -> None:
    """Optuna ended it with the traceback of "No trials are completed yet" (and exit status 1)."""
    for trials in (0, -1):
        proc = run_in_process(
            "train.py",
            HPARAMS_SEARCH,
            f"hydra.sweeper.n_trials={trials}",
            f"hydra.sweep.dir={tmp_path / 'search'}",
            check=False,
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        message = f"error: hydra.sweeper.n_trials={trials}: give the number of trials"
        assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_trial_too_short_to_validate_says_why_it_failed(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    """A trial that ends before its first validation returns nothing; its log says why, beside
    the sweeper's "Return value must be float-castable". (A whole number of steps between
    validations beyond max_steps is refused before the trial trains; an epoch's fraction is
    not: the epoch's length is known only once the data is read.)"""
    proc = run_in_process(
        "train.py",
        HPARAMS_SEARCH,
        "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={tmp_path}",
        "data.batch_size=2",
        f"data.root={tiny_shapes}",
        "data.num_workers=0",
        "logger=csv",
        "trainer.max_steps=2",
        "trainer.val_check_interval=1.0",
        "trainer.check_val_every_n_epoch=1",
        "test=false",
        check=False,
    )
    assert "(optimized_metric, what a sweep's trial returns) was never logged" in proc.stdout
    assert "no validation ran" in proc.stdout


def test_a_trial_without_validation_batches_is_told_so(caplog: pytest.LogCaptureFixture) -> None:
    from dssd.tasks.training import _warn_objective_missing

    for limit, cause in ((0, "trainer.limit_val_batches=0 switches it off"), (None, "below")):
        caplog.clear()
        _warn_objective_missing("val/map_50", limit)
        assert cause in caplog.text and ("limit_val_batches" in caplog.text) == (limit == 0)


# --- SLURM launcher ------------------------------------------------------------------------------


class SbatchCalledError(Exception):
    """Raised instead of calling sbatch."""


@contextmanager
def multirun_hydra(*overrides: str) -> Iterator[tuple[DictConfig, HydraContext]]:
    """The multirun config of ``src/train.py -m <overrides>`` and a Hydra context for plugins."""
    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        cfg = loader.load_configuration("train", list(overrides), run_mode=RunMode.MULTIRUN)
        yield cfg, HydraContext(config_loader=loader, callbacks=Callbacks(cfg))


def submitted_sbatch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *overrides: str
) -> tuple[str, DictConfig, list[DictConfig]]:
    """The sbatch script the SLURM launcher submits for ``-m <overrides>``, its config and the
    jobs' configs. The launcher runs for real up to submitit's call of sbatch."""
    scripts: list[str] = []

    def submit(self: SlurmExecutor, command: str) -> None:
        scripts.append(self._make_submission_file_text(command, "test"))
        raise SbatchCalledError

    monkeypatch.setattr(SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # no srun here
    monkeypatch.setattr(SlurmExecutor, "_submit_command", submit)
    args = ["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", *overrides]
    with multirun_hydra(*args) as (cfg, context):
        task = cfg.hydra.overrides.task
        (jobs,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(task), None)
        job_cfgs = [context.config_loader.load_sweep_config(cfg, job) for job in jobs]
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=context, task_function=print, config=cfg
        )
        with pytest.raises(SbatchCalledError):
            launcher.launch(jobs, initial_job_idx=0)
    assert len(scripts) == 1
    return scripts[0], cfg, job_cfgs


def test_slurm_launcher_config_is_one_task_per_gpu() -> None:
    with multirun_hydra("hydra/launcher=slurm", "trainer=ddp", "model=ssd321,dssd321") as (cfg, _):
        launcher = cfg.hydra.launcher
        assert launcher._target_ == (
            "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
        )
        assert launcher.tasks_per_node == launcher.gpus_per_node > 0
        assert launcher.nodes == cfg.trainer.num_nodes == 1
        assert launcher.partition is None and launcher.timeout_min >= 24 * 60
        assert cfg.trainer.devices == -1 and cfg.trainer.strategy == "ddp"
    # one knob each: tasks follow the GPUs, nodes follow the trainer
    overrides = ("hydra/launcher=slurm", "trainer=ddp", "hydra.launcher.gpus_per_node=8")
    with multirun_hydra(*overrides, "trainer.num_nodes=3") as (cfg, _):
        assert cfg.hydra.launcher.tasks_per_node == 8
        assert cfg.hydra.launcher.nodes == 3


def test_slurm_sbatch_script_runs_one_srun_task_per_gpu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    script, cfg, jobs = submitted_sbatch(
        monkeypatch, tmp_path, "trainer=ddp", "model=ssd321,dssd321", "trainer.num_nodes=2"
    )
    lines = script.splitlines()
    gpus = cfg.hydra.launcher.gpus_per_node
    assert f"#SBATCH --ntasks-per-node={gpus}" in lines
    assert f"#SBATCH --gpus-per-node={gpus}" in lines
    assert "#SBATCH --nodes=2" in lines
    assert "#SBATCH --array=0-1%2" in lines  # the two models, one job each
    assert f"#SBATCH --time={cfg.hydra.launcher.timeout_min}" in lines
    assert f"#SBATCH --cpus-per-task={cfg.hydra.launcher.cpus_per_task}" in lines
    assert not any(line.startswith("#SBATCH --partition") for line in lines)
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)
    # each job: DDP over every GPU its task sees, on the job's nodes
    assert [job.hydra.runtime.choices.model for job in jobs] == ["ssd321", "dssd321"]
    for job in jobs:
        assert job.trainer.strategy == "ddp" and job.trainer.devices == -1
        assert job.trainer.num_nodes == 2
