"""The ablation's W&B sweep files (``sweeps/<rows>_stage<k>.yaml``), written by ``python
src/ablation.py sweeps=true``: per stage a grid over the one override telling its rows apart
(Table 4's stage 0: ``pm``; stage 1: ``fusion``), the other rows as single runs in the header.
Every run lands in ``logs/sweeps/table4/<run name>``, where the rows starting from it look."""

from __future__ import annotations

import shlex
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from hydra import compose
from omegaconf import DictConfig

from dssd.config import run_name
from dssd.errors import UserError, writable_directory
from dssd.table4.rows import Row, parse_rows, row_overrides

RUNS_DIR = "logs/sweeps/table4"
# the agent's command line before the fixed overrides: W&B fills in the grid point's `key=value`
AGENT_PREFIX = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]


@dataclass(frozen=True)
class Sweep:
    """One sweep file: a grid over ``key`` of ``rows`` (one run each), and the single runs
    before it (``before``: rows its runs start from that no earlier sweep lists) and after it."""

    stage: int
    key: str
    rows: tuple[Row, ...]
    singles: tuple[Row, ...] = ()
    before: tuple[Row, ...] = ()
    # the rows' config (conf/rows/<rows>.yaml), which names the file
    rows_name: str = "table4"

    @property
    def file_name(self) -> str:
        return f"{self.rows_name}_stage{self.stage}.yaml"


def _override_map(row: Row) -> dict[str, str]:
    return dict(o.split("=", 1) for o in row.overrides)


def grid_key(rows: Sequence[Row]) -> str:
    """The one override whose value tells ``rows`` apart."""
    maps = [_override_map(r) for r in rows]
    keys = set(maps[0])
    differing = sorted(k for k in keys if len({m.get(k) for m in maps}) > 1)
    if any(set(m) != keys for m in maps) or len(differing) != 1:
        raise UserError(
            f"rows {[r.id for r in rows]} share stage, network and starting row but do not differ "
            "in exactly one override (same keys, one value apart): no W&B grid runs them"
        )
    return differing[0]


def plan_sweeps(rows: Sequence[Row], rows_name: str = "table4") -> list[Sweep]:
    """A sweep per stage whose rows (sharing network and starting row) form a grid; every other
    row goes after the sweep of its stage or the last one before it, else before the first."""
    groups: dict[tuple[int, str, str | None], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.stage, row.net, row.init_from), []).append(row)
    grids: dict[int, Sweep] = {}
    for (stage, _, _), group in groups.items():
        if len(group) > 1:
            if stage in grids:
                raise UserError(f"stage {stage} has two groups of rows to sweep: one file each")
            grids[stage] = Sweep(stage, grid_key(group), tuple(group), rows_name=rows_name)
    if not grids:
        raise UserError("no stage has rows that form a grid: there is no sweep to write")
    singles: dict[int, list[Row]] = {stage: [] for stage in grids}
    before: dict[int, list[Row]] = {stage: [] for stage in grids}
    for row in rows:
        if not any(row in sweep.rows for sweep in grids.values()):
            hosts = [stage for stage in grids if stage <= row.stage]
            if hosts:
                singles[max(hosts)].append(row)
            else:
                before[min(grids)].append(row)
    return [
        Sweep(s.stage, s.key, s.rows, tuple(singles[s.stage]), tuple(before[s.stage]), rows_name)
        for s in sorted(grids.values(), key=lambda s: s.stage)
    ]


def compose_row(row: Row, setting: DictConfig) -> DictConfig:
    """The train config (with its Hydra node) of a run of ``row``."""
    return compose("train", overrides=row_overrides(row, setting), return_hydra_config=True)


def fixed_overrides(
    rows: Sequence[Row], key: str | None, setting: DictConfig, run_names: Mapping[str, str]
) -> list[str]:
    """What every run of ``rows`` gets besides ``key=<value>``: the row overrides, the starting
    row's checkpoint, the pinned directory, W&B online."""
    row = rows[0]
    overrides = [o for o in row_overrides(row, setting) if o.split("=", 1)[0] != key]
    if row.init_from is not None:
        overrides.append(f"init_from={RUNS_DIR}/{run_names[row.init_from]}/checkpoints/last.ckpt")
    return [*overrides, f"hydra.run.dir={RUNS_DIR}/${{run_name}}", "logger.wandb.offline=false"]


def _comment(text: str) -> list[str]:
    lines = textwrap.wrap(text, 97, break_long_words=False, break_on_hyphens=False)
    return [f"# {line}" for line in lines]


def _shell_command(overrides: Sequence[str]) -> list[str]:
    """``python src/train.py <overrides>`` as comment lines, continued with backslashes."""
    command = shlex.join(["python", "src/train.py", *overrides])
    parts = textwrap.wrap(command, 88, break_long_words=False, break_on_hyphens=False)
    return ("#   " + " \\\n#       ".join(parts)).splitlines()


def _header(
    sweep: Sweep,
    sweeps: Sequence[Sweep],
    setting: DictConfig,
    setting_name: str,
    run_names: Mapping[str, str],
) -> list[str]:
    """What a sweep file runs, how, where, and the single runs after it, as comment lines."""
    lines = _comment(
        f"W&B sweep: the stage-{sweep.stage} rows of conf/rows/{sweep.rows_name}.yaml in the "
        f"setting `{setting_name}` (conf/ablation/{setting_name}.yaml), one run each, a grid over "
        f"`{sweep.key}`. Generated by `python src/ablation.py sweeps=true` from "
        f"conf/rows/{sweep.rows_name}.yaml: edit that and run it again, not this file."
    )
    points = [f"{sweep.key}={_override_map(r)[sweep.key]}" for r in sweep.rows]
    width = max(map(len, points))
    table = [f"#   {p:<{width}}  {r.name}" for p, r in zip(points, sweep.rows, strict=True)]
    lines += ["#", *table, "#"]
    lines += _comment("Run from the repository root (`wandb login` first: sweeps log online):")
    lines += [
        "#",
        f"#   wandb sweep sweeps/{sweep.file_name}   # prints the sweep id: <entity>/dssd/<id>",
        "#   wandb agent <entity>/dssd/<id>          # runs the grid's runs one after the other",
        "#",
    ]
    first = sweep.rows[0]
    where = (
        f"Each run writes to {RUNS_DIR}/<run name>, e.g. {RUNS_DIR}/{run_names[first.id]}: the "
        f"agent passes `hydra.run.dir={RUNS_DIR}/${{run_name}}` to Hydra verbatim (no shell), "
        "and Hydra resolves ${run_name} from the composed config."
    )
    if first.init_from is not None:
        parent = next(
            s for s in sweeps if first.init_from in {r.id for r in (*s.before, *s.rows, *s.singles)}
        )
        start = f"{RUNS_DIR}/{run_names[first.init_from]}/checkpoints/last.ckpt"
        if parent is sweep:
            where += f" Its runs start from {start}, which the run below writes."
        else:
            where += f" Run it after sweeps/{parent.file_name}: its runs start from {start}."
    lines += _comment(where)
    for rows, first_words in (
        (sweep.before, "First the rows its runs start from"),
        (sweep.singles, "Then the other rows"),
    ):
        if not rows:
            continue
        lines += ["#"]
        lines += _comment(
            f"{first_words}, one run each, in this order (shell commands: the quotes keep "
            "${run_name} for Hydra):"
        )
        for row in rows:
            lines += ["#", f"#   # {row.name}"]
            lines += _shell_command(fixed_overrides([row], None, setting, run_names))
    lines += ["#"]
    lines += _comment(
        "Another setting, e.g. the paper's (conf/ablation/voc0712_321.yaml): `python "
        "src/ablation.py sweeps=true ablation=voc0712_321` rewrites the sweep files for it. "
        "`make ablation` runs every row, with seeds, without W&B sweeps."
    )
    return lines


def sweep_text(
    sweep: Sweep,
    sweeps: Sequence[Sweep],
    setting: DictConfig,
    setting_name: str,
    run_names: Mapping[str, str],
    train_cfg: DictConfig,
) -> str:
    """A sweep file: the header, then the W&B sweep configuration."""
    config = {
        "program": "src/train.py",
        "project": train_cfg.logger.wandb.project,
        "name": f"{sweep.rows_name}-{setting_name}-stage{sweep.stage}",
        "method": "grid",
        "metric": {"name": train_cfg.optimized_metric, "goal": "maximize"},
        "parameters": {sweep.key: {"values": [_override_map(r)[sweep.key] for r in sweep.rows]}},
        "command": [*AGENT_PREFIX, *fixed_overrides(sweep.rows, sweep.key, setting, run_names)],
    }
    header = _header(sweep, sweeps, setting, setting_name, run_names)
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, width=1000)


def sweep_files(cfg: DictConfig, setting_name: str, rows_name: str = "table4") -> dict[str, str]:
    """The text of each sweep file by name, for ``cfg`` (the composed ``conf/table4.yaml``)."""
    rows = parse_rows(cfg.rows)
    sweeps = plan_sweeps(rows, rows_name)
    configs = {row.id: compose_row(row, cfg.ablation) for row in rows}
    # the run names, e.g. ``ssd_r18-pm_c-stage0``: the names of the runs' directories
    run_names = {
        i: run_name(c.hydra.runtime.choices.model, c.hydra.overrides.task, c)
        for i, c in configs.items()
    }
    train_cfg = configs[rows[0].id]
    return {
        sweep.file_name: sweep_text(sweep, sweeps, cfg.ablation, setting_name, run_names, train_cfg)
        for sweep in sweeps
    }


def write_sweeps(cfg: DictConfig, setting_name: str, rows_name: str = "table4") -> list[Path]:
    """Write the sweep files into ``cfg.sweeps_dir`` and return their paths."""
    directory = writable_directory(cfg.sweeps_dir, "sweeps_dir")
    files = sweep_files(cfg, setting_name, rows_name)
    for name, text in files.items():
        (directory / name).write_text(text)
    return [directory / name for name in files]
