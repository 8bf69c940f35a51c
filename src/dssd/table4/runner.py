"""The Table 4 runner: a ``src/train.py`` process per row and seed, in dependency order, then the
table and each row's analysis against the row it ablates."""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from omegaconf import DictConfig

from dssd.analysis.analyser import Analyser, Options, find_run, write_analysis
from dssd.config import compose_train
from dssd.errors import UserError, writable_directory
from dssd.results.runs import RESULTS_DIR, clear_test_results
from dssd.results.tables import comparisons_index, table4_markdown, write_table4
from dssd.table4.rows import (
    STARTS_FROM,
    Row,
    Step,
    add_wall_time,
    own_step,
    parse_rows,
    parse_seeds,
    plan,
    row_overrides,
    run_dir,
    select_rows,
    start_run_record,
    weights_digest,
)
from dssd.table4.statistics import collect, pooled_seed_spread, summarize

log = logging.getLogger(__name__)

# the training entry point each run is a process of
TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train.py"
# what the runner sets for each run, so train_args may not; those naming a path under out_dir
# (which may have moved since) are left out when a run's settings are compared
RUNNER_KEYS = (
    "seed",
    "stage",
    "run_group",
    "ckpt_path",
    "hydra.run.dir",
    "voc_results",
    "init_from",
)
PATH_KEYS = RUNNER_KEYS[-3:]


def override_key(override: str) -> str:
    """The config key of a Hydra override (``+a.b=1`` -> ``a.b``)."""
    return override.split("=", 1)[0].lstrip("+~")


def path_value(path: Path) -> str:
    """``path`` as a Hydra override value, quoted where a comma (a multirun), a bracket, a quote
    or a space would change its meaning."""
    text = str(path)
    if not re.search(r"[\s,\[\](){}'\"=]", text):
        return text
    return "'" + text.replace("'", "\\'") + "'"


def train_overrides(train_args: Any) -> list[str]:
    """``train_args`` split as a shell would: overrides, none of what the runner sets."""
    if not isinstance(train_args, str):
        raise UserError(
            f"train_args={train_args}: give src/train.py overrides as one string, e.g. "
            "'train_args=\"logger=csv trainer.precision=32-true\"'"
        )
    try:
        overrides = shlex.split(train_args)
    except ValueError as err:
        raise UserError(f"train_args={train_args}: {err}") from None
    for override in overrides:
        key = override_key(override)
        if key in RUNNER_KEYS:
            raise UserError(
                f"train_args: {override} sets what the runner sets for each run "
                f"({', '.join(RUNNER_KEYS)}: from seeds=, out_dir= and the rows); leave it out"
            )
        if key in ("-m", "--multirun", "hparams_search", "hydra.mode") or key.startswith(
            ("hydra.sweep", "hydra/sweeper", "hydra/launcher")
        ):
            raise UserError(
                f"train_args: {override} would make each row a sweep of runs in folders of their "
                "own, which the table cannot read; run searches with src/train.py"
            )
    return overrides


def check_train_args(rows: Sequence[Row], setting: DictConfig, train_args: str) -> None:
    """Refuse, before any run, ``train_args`` with which src/train.py cannot compose a row's
    config (a token that is no override, a setting or choice it lacks): the run of that row
    would fail, after the rows before it."""
    overrides = train_overrides(train_args)
    for row in rows:
        try:
            compose_train([*row_overrides(row, setting), *overrides])
        except UserError as err:
            reason = str(err).strip().splitlines()[0]
            raise UserError(
                f"train_args={train_args}: src/train.py cannot take them for row {row.id} "
                f"({reason})"
            ) from None


def train_command(
    step: Step,
    setting: DictConfig,
    out_dir: Path,
    setting_name: str,
    train_args: str = "",
) -> list[str]:
    """The ``src/train.py`` command line of a run (the setting's overrides first, the row's own
    and ``train_args`` after them, so they win). Its W&B group is the row's."""
    row, seed = step.row, step.seed
    directory = run_dir(out_dir, row.id, seed)
    command = [sys.executable, str(TRAIN_SCRIPT), *row_overrides(row, setting)]
    command += [
        f"seed={seed}",
        f"hydra.run.dir={path_value(directory)}",
        f"run_group=table4-{setting_name}-{row.id}",
        f"voc_results={path_value(directory / RESULTS_DIR)}",
    ]
    if row.init_from is not None:
        parent = run_dir(out_dir, row.init_from, seed)
        command.append(f"init_from={path_value(parent / 'checkpoints' / 'last.ckpt')}")
    if step.action == "resume":
        command.append("ckpt_path=last")
    return command + train_overrides(train_args)


def check_same_settings(step: Step, command: Sequence[str], directory: Path) -> None:
    """Refuse to reuse (skip or resume) a run trained with other overrides than ``command`` gives
    it (its ``.hydra/overrides.yaml``): the table would mix two configurations."""
    try:
        recorded = yaml.safe_load((directory / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return  # not run by src/train.py: nothing to compare with
    there, here = (
        [o for o in overrides if override_key(o) not in (*PATH_KEYS, "ckpt_path")]
        for overrides in (recorded or [], command[2:])
    )
    if there != here:
        differ = [
            list((Counter(a) - Counter(b)).elements()) for a, b in ((there, here), (here, there))
        ]
        what = f"{differ[0]} there, {differ[1]} here" if any(differ) else "in another order"
        raise UserError(
            f"{directory} was trained with other settings than this command gives it ({what}): "
            f"choose another out_dir for a table of these settings, or force=[{step.row.id}] "
            "(force=true: every row) to train it again with them"
        )


def clear_earlier_run(directory: Path) -> None:
    """Remove an earlier run's checkpoints and results before its row runs again, so that a
    rerun stopped part way is not later taken for done (old results beside new weights) or
    resumed from the old weights."""
    if (directory / "checkpoints").is_dir():
        shutil.rmtree(directory / "checkpoints")
    clear_test_results(directory)


# how long a run stopped by Ctrl-C may take to write its last.ckpt and end before it is killed
STOP_GRACE_SECONDS = 120


def run_command(command: list[str]) -> int | str:
    """Run ``command``: its exit status, or "interrupted" by Ctrl-C once the run, which the
    terminal stops too, has ended (killed after ``STOP_GRACE_SECONDS``, or a second Ctrl-C).
    ``subprocess.call`` kills it a quarter of a second on, before it writes its last.ckpt."""
    with subprocess.Popen(command) as proc:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            try:
                proc.wait(timeout=STOP_GRACE_SECONDS)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
            return "interrupted"


def run_step(step: Step, command: list[str], out_dir: Path) -> bool:
    """Run (after clearing what an earlier run left, recording the weights it starts from) or
    resume one run, keeping its wall time; whether its final weights changed (a resumed run that
    only tests again keeps them). A failure or Ctrl-C is an error naming the row."""
    directory = run_dir(out_dir, step.row.id, step.seed)
    weights = weights_digest(directory / "checkpoints" / "last.ckpt")
    if step.action == "run":
        clear_earlier_run(directory)
        start_run_record(step.row, step.seed, out_dir)
    start = time.perf_counter()
    try:
        returncode = run_command(command)
    finally:
        add_wall_time(directory, time.perf_counter() - start)
    if returncode != 0:
        log_file = directory / "train.log"
        where = f", and its log is {log_file}" if log_file.is_file() else ""
        raise UserError(
            f"row {step.row.id} ({step.row.name}), seed {step.seed}: "
            f"{returncode if returncode == 'interrupted' else f'exit status {returncode}'} "
            f"(its output is above{where}). Runs done so far are kept: once the cause is "
            "dealt with, the same command goes on (this run resumes from its last.ckpt if it "
            f"wrote one), or force=[{step.row.id}] starts the row over."
        )
    return weights_digest(directory / "checkpoints" / "last.ckpt") != weights


@contextmanager
def table_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``<out_dir>/.lock`` while the runner plans, trains and tabulates: a second runner
    on the same table would train its runs twice at once and tabulate half-written ones."""
    lock = FileLock(writable_directory(out_dir, "out_dir") / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"another src/ablation.py is running the table in {out_dir} (it holds {lock.lock_file})"
            ": wait for it to finish, or give this one another out_dir"
        ) from None
    try:
        yield
    finally:
        lock.release()


def run_ablation(cfg: DictConfig, setting_name: str) -> Path:
    """Run the runs that need it, then write and print the table; returns the markdown path."""
    if not str(cfg.out_dir or "").strip():
        raise UserError("out_dir is empty: give the directory of the table and its runs")
    out_dir = Path(cfg.out_dir)
    all_rows = parse_rows(cfg.rows)
    rows = select_rows(all_rows, cfg.get("only"))
    undefined = sorted({r.net for r in rows} - set(cfg.ablation))
    if undefined:
        raise UserError(
            f"the rows use net {undefined}, which ablation={setting_name} does not define "
            f"(it defines {list(cfg.ablation)})"
        )
    seeds = parse_seeds(cfg.seeds)
    num_samples, confidence = cfg.get("bootstrap_samples", 1000), cfg.get("confidence", 0.95)
    Options(bootstrap_samples=num_samples, confidence=confidence)  # refused before any run
    check_train_args(rows, cfg.ablation, cfg.train_args)  # refused before any run
    with table_lock(out_dir):
        steps = plan(rows, seeds, out_dir, cfg.force)
        for step in [s for s in steps if s.action != "run"]:
            command = train_command(step, cfg.ablation, out_dir, setting_name, cfg.train_args)
            check_same_settings(step, command, run_dir(out_dir, step.row.id, step.seed))
        width = max(len(s.row.id) for s in steps)
        plan_text = "\n".join(
            f"  {s.row.id:<{width}}  seed {s.seed:<4} {s.action:<6}  {s.reason}" for s in steps
        )
        log.info("Table 4 (%s) in %s, seeds %s:\n%s", setting_name, out_dir, seeds, plan_text)
        changed: set[tuple[str, int]] = set()  # (row id, seed) of the runs whose weights changed
        for number, step in enumerate(steps, 1):
            row, seed = step.row, step.seed
            label = f"{row.id} seed {seed}"
            directory = run_dir(out_dir, row.id, seed)
            if step.reason.startswith(STARTS_FROM) and (row.init_from, seed) not in changed:
                # its parent resumed and kept its final weights: the run stands as it is
                step = own_step(row, seed, out_dir)
                if step.action == "skip":
                    log.info(
                        "[%d/%d] %s skipped: %s's final weights are as they were",
                        *(number, len(steps), label, row.init_from),
                    )
                if step.action != "run":
                    command = train_command(
                        step, cfg.ablation, out_dir, setting_name, cfg.train_args
                    )
                    check_same_settings(step, command, directory)
            if step.action == "skip":
                continue
            command = train_command(step, cfg.ablation, out_dir, setting_name, cfg.train_args)
            log.info(
                "[%d/%d] %s (%s): %s", number, len(steps), label, row.name, shlex.join(command)
            )
            if run_step(step, command, out_dir):
                changed.add((row.id, seed))
        if len(rows) < len(all_rows):
            rows = with_done_rows(all_rows, rows, seeds, out_dir, cfg, setting_name)
        runs = collect(rows, seeds, out_dir)
        records = summarize(rows, seeds, runs, out_dir, num_samples, confidence)
        pooled = pooled_seed_spread(runs, confidence)
        markdown = table4_markdown(records, setting_name, seeds, confidence, pooled)
        paths = write_table4(markdown, records, runs, out_dir)
        print(markdown)
        log.info("Table written to %s", ", ".join(map(str, paths)))
        if cfg.get("analysis", True):
            index = write_comparisons(rows, seeds, out_dir, num_samples, confidence)
            log.info("Each row against the row it ablates: %s", index)
        return paths[0]


def with_done_rows(
    all_rows: Sequence[Row],
    rows: Sequence[Row],
    seeds: Sequence[int],
    out_dir: Path,
    cfg: DictConfig,
    setting_name: str,
) -> list[Row]:
    """``rows`` and the other rows whose runs are done for every seed, from the current weights
    of the rows they start from and with this command's settings (where the rows they start from
    and are compared with are in the table too): running some rows (``only=``) keeps the others
    in the table."""
    table = {r.id for r in rows}
    for row in (r for r in all_rows if r.id not in table):
        needs = [r for r in (row.init_from, row.ablates) if r is not None and r not in table]
        why = f"{needs[0]} is not in it" if needs else None
        if row.net not in cfg.ablation:
            why = f"ablation={setting_name} defines no net {row.net}"
        for seed in seeds if why is None else ():
            step = own_step(row, seed, out_dir)
            try:
                if step.action != "skip":
                    raise UserError(step.reason)
                command = train_command(step, cfg.ablation, out_dir, setting_name, cfg.train_args)
                check_same_settings(step, command, run_dir(out_dir, row.id, seed))
            except UserError as err:
                why = f"seed {seed}: {err}"
                break
        if why is None:
            table.add(row.id)
        else:
            log.info("Row %s is left out of the table (%s)", row.id, why)
    return [r for r in all_rows if r.id in table]


def write_comparisons(
    rows: Sequence[Row],
    seeds: Sequence[int],
    out_dir: Path,
    num_samples: int = 1000,
    confidence: float = 0.95,
) -> Path:
    """``src/analyze.py`` of every row against the row it ablates, over the paired seeds, into
    ``<out_dir>/analysis/<row>_vs_<ablated>/``, indexed with the AP differences in ``README.md``."""
    # files beside the table, which is not logged to W&B either
    options = Options(
        detections=RESULTS_DIR, bootstrap_samples=num_samples, confidence=confidence, wandb=False
    )
    analyser = Analyser(options)
    names = {row.id: row.name for row in rows}
    entries = []
    for row in rows:
        if row.ablates is None:
            continue
        folder = out_dir / "analysis" / f"{row.id}_vs_{row.ablates}"
        _, result = write_analysis(
            [find_run(run_dir(out_dir, row.id, s)) for s in seeds],
            [find_run(run_dir(out_dir, row.ablates, s)) for s in seeds],
            folder,
            analyser,
            row.id,
            row.ablates,
        )
        by_size = {r.name: r.difference for r in (result.overall, *result.sizes)}
        entries.append((names[row.id], names[row.ablates], by_size, folder.relative_to(out_dir)))
    index = out_dir / "analysis" / "README.md"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(comparisons_index(entries, seeds, confidence))
    return index
