"""The paper's Table 4 as one command: a ``src/train.py`` run per row and seed, in dependency order.

Rows (``rows`` in ``conf/table4.yaml``) are the SSD prediction-module variants at stage 0, a
control (the SSD PM(c) run continued for stage 1's iterations with the same parts frozen, but no
deconvolution module), the DSSD fusions at stage 1 from the PM(c) row, and stage 2 from the
product row. Every row runs once per seed in ``seeds``; a row starting from another one starts
from that row's run with the same seed, from its final weights (``last.ckpt``). Each run is its
own process, so it can use DDP, and its directory ``<out_dir>/<row id>/seed<seed>`` is a normal
run directory that also holds the test detections as devkit result files (``voc_results/``). A
run that is done (``last.ckpt``, ``test_results.json`` and ``voc_results/`` there) is skipped
unless forced; one that was interrupted resumes from its ``last.ckpt``.

At the end the runs become a table in Table 4's layout next to the paper's numbers (markdown and
CSV): per row the mean and standard deviation over the seeds of the VOC mAP, COCO AP and AP by
object size, and the difference from the row it ablates (``ablates``) with a 95% interval from a
paired bootstrap over the test images (``dssd.bootstrap``). Then, with ``analysis=true``, every
row is analysed against the row it ablates (``src/analyze.py``'s comparison, over the seeds):
where the AP moves by class and object size, and which error types grow or shrink.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from dssd.bootstrap import Difference, RunMatches, mean_ap, paired_bootstrap
from dssd.errors import UserError
from dssd.results.runs import read_test_results
from dssd.results.tables import percent, table4_markdown, write_table4

log = logging.getLogger(__name__)

# test metric (as logged) of each per-run column (in %)
METRICS = {
    "voc_map": "test/voc_map",
    "coco_map": "test/map",
    "coco_map_50": "test/map_50",
    "ap_small": "test/map_small",
    "ap_medium": "test/map_medium",
    "ap_large": "test/map_large",
}
RESULTS_DIR = "voc_results"


@dataclass(frozen=True)
class Row:
    """One row of Table 4: the overrides of its runs, its stage, the row it starts from and the
    row it is compared with."""

    id: str
    name: str
    net: str
    overrides: tuple[str, ...]
    stage: int
    init_from: str | None
    ablates: str | None
    paper_voc_map: float | None


@dataclass(frozen=True)
class Step:
    """What the runner does with one run of a row: ``run``, ``resume`` or ``skip``, and why."""

    row: Row
    seed: int
    action: str
    reason: str


def parse_rows(entries: Sequence[Any]) -> list[Row]:
    """Rows from the config, checked: unique ids, ``init_from`` and ``ablates`` earlier rows."""
    rows: list[Row] = []
    for entry in entries:
        entry = dict(entry)
        row = Row(
            id=str(entry["id"]),
            name=str(entry.get("name", entry["id"])),
            net=str(entry["net"]),
            overrides=tuple(entry.get("overrides") or ()),
            stage=int(entry.get("stage", 0)),
            init_from=entry.get("init_from"),
            ablates=entry.get("ablates"),
            paper_voc_map=entry.get("paper_voc_map"),
        )
        earlier = {r.id for r in rows}
        if row.id in earlier:
            raise UserError(f"ablation rows: row id {row.id!r} appears twice")
        for key in ("init_from", "ablates"):
            other = getattr(row, key)
            if other is not None and other not in earlier:
                raise UserError(
                    f"ablation rows: row {row.id!r} has {key}={other!r}, which is not a row "
                    "listed before it"
                )
        if row.stage > 0 and row.init_from is None:
            raise UserError(f"ablation rows: row {row.id!r} is stage {row.stage} without init_from")
        rows.append(row)
    return rows


def select_rows(rows: Sequence[Row], only: str | Sequence[str] | None) -> list[Row]:
    """The rows named in ``only`` (one id or a list) and every row they need (the rows they start
    from and the rows they are compared with, recursively), in table order; all rows when
    ``only`` is None."""
    if only is None:
        return list(rows)
    only = [only] if isinstance(only, str) else list(only)
    by_id = {r.id: r for r in rows}
    unknown = sorted(set(only) - set(by_id))
    if unknown:
        raise UserError(f"only: no row {unknown}; the rows are {list(by_id)}")
    needed: set[str] = set()
    pending = list(only)
    while pending:
        row = by_id[pending.pop()]
        if row.id not in needed:
            needed.add(row.id)
            pending += [r for r in (row.init_from, row.ablates) if r is not None]
    return [r for r in rows if r.id in needed]


def parse_seeds(value: Any) -> list[int]:
    """``seeds``: a non-empty list of distinct integers (``seeds=[0,1,2]``)."""
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else None
    if (
        not items
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in items)
        or len(set(items)) != len(items)
    ):
        shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        raise UserError(
            f"seeds must be a non-empty list of distinct integers, e.g. seeds=[0,1,2] "
            f"(make ablation SEEDS=3); got {shown!r}"
        )
    return items


def run_dir(out_dir: Path, row_id: str, seed: int) -> Path:
    """The run directory of a row's run with ``seed``."""
    return out_dir / row_id / f"seed{seed}"


def is_done(directory: Path) -> bool:
    """A run is done once it tested its final weights and wrote their detections."""
    return (
        (directory / "checkpoints" / "last.ckpt").is_file()
        and (directory / "test_results.json").is_file()
        and (directory / RESULTS_DIR).is_dir()
    )


def plan(
    rows: Sequence[Row], seeds: Sequence[int], out_dir: Path, force: bool | Sequence[str] = False
) -> list[Step]:
    """Decide each run's action, seed by seed. Forced rows rerun, and so does every row that
    starts from a row that reruns with the same seed (its starting weights change); done runs
    are skipped; a run with a ``last.ckpt`` but no results resumes; the others run."""
    if isinstance(force, bool):
        forced = {r.id for r in rows} if force else set()
    else:
        forced = set(force)
        unknown = forced - {r.id for r in rows}
        if unknown:
            raise UserError(f"force: no row {sorted(unknown)}; the rows are {[r.id for r in rows]}")
    steps: list[Step] = []
    for seed in seeds:
        rerun: set[str] = set()
        for row in rows:
            directory = run_dir(out_dir, row.id, seed)
            if row.id in forced:
                step = Step(row, seed, "run", "forced")
            elif row.init_from in rerun:
                step = Step(row, seed, "run", f"starts from {row.init_from}, which reruns")
            elif is_done(directory):
                step = Step(row, seed, "skip", "done")
            elif (directory / "checkpoints" / "last.ckpt").is_file():
                step = Step(row, seed, "resume", "interrupted: resumes from its last.ckpt")
            else:
                step = Step(row, seed, "run", "not run yet")
            steps.append(step)
            if step.action != "skip":
                rerun.add(row.id)
    return steps


def row_overrides(row: Row, setting: DictConfig) -> list[str]:
    """The ``src/train.py`` overrides that make a run of ``row``: the setting's for its net
    first, then the row's own (so they win) and its stage."""
    return [*setting[row.net], *row.overrides, f"stage={row.stage}"]


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
    script = Path(__file__).resolve().parents[1] / "train.py"
    command = [sys.executable, str(script), *row_overrides(row, setting)]
    command += [
        f"seed={seed}",
        f"hydra.run.dir={directory}",
        f"run_group=table4-{setting_name}-{row.id}",
        f"voc_results={directory / RESULTS_DIR}",
    ]
    if row.init_from is not None:
        parent = run_dir(out_dir, row.init_from, seed)
        command.append(f"init_from={parent / 'checkpoints' / 'last.ckpt'}")
    if step.action == "resume":
        command.append("ckpt_path=last")
    return command + shlex.split(train_args)


def run_ablation(cfg: DictConfig, setting_name: str) -> Path:
    """Run the runs that need it, then write and print the table; returns the markdown path."""
    out_dir = Path(cfg.out_dir)
    rows = select_rows(parse_rows(cfg.rows), cfg.get("only"))
    seeds = parse_seeds(cfg.seeds)
    force = cfg.force if isinstance(cfg.force, bool) else list(cfg.force)
    steps = plan(rows, seeds, out_dir, force)
    log.info("Table 4 (%s) in %s, seeds %s:\n%s", setting_name, out_dir, seeds, _plan_text(steps))
    for number, step in enumerate(steps, 1):
        if step.action == "skip":
            continue
        command = train_command(step, cfg.ablation, out_dir, setting_name, cfg.train_args)
        label = f"{step.row.id} seed {step.seed}"
        log.info(
            "[%d/%d] %s (%s): %s", number, len(steps), label, step.row.name, shlex.join(command)
        )
        directory = run_dir(out_dir, step.row.id, step.seed)
        start = time.perf_counter()
        returncode = subprocess.call(command)
        _add_wall_time(directory, time.perf_counter() - start, step.action == "resume")
        if returncode != 0:
            raise UserError(
                f"row {step.row.id} ({step.row.name}), seed {step.seed}, failed with exit status "
                f"{returncode}; its log is {directory / 'train.log'}. Runs done so far are kept: "
                "run the same command again to go on (this run resumes from its last.ckpt if it "
                f"wrote one), or force=[{step.row.id}] to start the row over."
            )
    runs = collect(rows, seeds, out_dir)
    records = summarize(
        rows, seeds, runs, out_dir, cfg.get("bootstrap_samples", 1000), cfg.get("confidence", 0.95)
    )
    markdown = table4_markdown(records, setting_name, seeds, cfg.get("confidence", 0.95))
    paths = write_table4(markdown, records, runs, out_dir)
    print(markdown)
    log.info("Table written to %s", ", ".join(map(str, paths)))
    if cfg.get("analysis", True):
        index = write_comparisons(
            rows, seeds, out_dir, cfg.get("bootstrap_samples", 1000), cfg.get("confidence", 0.95)
        )
        log.info("Each row against the row it ablates: %s", index)
    return paths[0]


def write_comparisons(
    rows: Sequence[Row],
    seeds: Sequence[int],
    out_dir: Path,
    num_samples: int = 1000,
    confidence: float = 0.95,
) -> Path:
    """``src/analyze.py`` of every row against the row it ablates, over the paired seeds, into
    ``<out_dir>/analysis/<row>_vs_<ablated row>/``; an index of them with the AP differences
    overall and by object size goes to ``<out_dir>/analysis/README.md``."""
    # deferred: the analysis needs the model and data stack, the table code does not
    from dssd.tasks.analysis import Analyser, Options, find_run, write_analysis

    # files beside the table, which is not logged to W&B either
    analyser = Analyser(
        Options(
            detections="voc_results",
            bootstrap_samples=num_samples,
            confidence=confidence,
            wandb=False,
        )
    )
    names = {row.id: row.name for row in rows}
    lines = [
        "# Table 4, each row against the row it ablates",
        "",
        f"Seeds {', '.join(map(str, seeds))}, paired. Δ: AP difference in points (VOC AP at IoU "
        f"0.5; by size with COCO's rule) with its {100 * confidence:g}% paired-bootstrap "
        "interval; * where it excludes 0. Each folder holds the row's analysis (its first seed) "
        "and the comparison: summary.md, figures and tables.",
        "",
        "| row | against | Δ all | Δ small | Δ medium | Δ large | folder |",
        "|---|---|---|---|---|---|---|",
    ]
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
        by_name = {r.name: r.difference for r in (result.overall, *result.sizes)}
        cells = [_delta_cell(by_name[name]) for name in ("all", "small", "medium", "large")]
        lines.append(
            f"| {names[row.id]} | {names[row.ablates]} | {' | '.join(cells)} | "
            f"{folder.relative_to(out_dir)} |"
        )
    index = out_dir / "analysis" / "README.md"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text("\n".join(lines) + "\n")
    return index


def _delta_cell(difference: Difference) -> str:
    if not np.isfinite(difference.delta):
        return "–"
    star = "*" if difference.excludes_zero else ""
    return (
        f"{100 * difference.delta:+.1f} [{100 * difference.low:+.1f}, "
        f"{100 * difference.high:+.1f}]{star}"
    )


def collect(rows: Sequence[Row], seeds: Sequence[int], out_dir: Path) -> list[dict[str, Any]]:
    """One record per run (row and seed) from its ``test_results.json`` (metrics in %, times in
    minutes), also holding the run's parameter count and name."""
    records = []
    for row in rows:
        for seed in seeds:
            directory = run_dir(out_dir, row.id, seed)
            try:
                result = read_test_results(directory)
            except FileNotFoundError as err:
                raise UserError(f"row {row.id}, seed {seed}: {err}") from None
            metrics = result.get("metrics", {})
            records.append(
                {
                    "row": row.id,
                    "seed": seed,
                    **{key: percent(metrics.get(name)) for key, name in METRICS.items()},
                    "fit_minutes": _minutes(result.get("fit_seconds")),
                    "wall_minutes": _minutes(_read_run_record(directory).get("wall_seconds")),
                    "run_dir": str(directory.relative_to(out_dir)),
                    "model": result.get("run_name", ""),
                    "parameters": result.get("parameters"),
                }
            )
    return records


def summarize(
    rows: Sequence[Row],
    seeds: Sequence[int],
    runs: Sequence[dict[str, Any]],
    out_dir: Path,
    num_samples: int = 1000,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One record per row: mean and standard deviation over the seeds, and the difference of
    VOC mAP from the row it ablates with its paired-bootstrap interval over the test images."""
    matches = load_matches(rows, seeds, runs, out_dir)
    records = []
    for row in rows:
        mine = [r for r in runs if r["row"] == row.id]
        difference: Difference | None = None
        if row.ablates is not None and matches is not None:
            use_07, by_run = matches
            difference = paired_bootstrap(
                [by_run[row.id, s] for s in seeds],
                [by_run[row.ablates, s] for s in seeds],
                num_samples=num_samples,
                confidence=confidence,
                use_07_metric=use_07,
            )
        record = {
            "row": row.id,
            "name": row.name,
            "model": mine[0]["model"],
            "stage": row.stage,
            "init_from": row.init_from or "",
            "ablates": row.ablates or "",
            "seeds": len(mine),
            "paper_voc_map": row.paper_voc_map,
            "parameters": mine[0]["parameters"],
        }
        for key in (*METRICS, "fit_minutes", "wall_minutes"):
            values = [r[key] for r in mine if r[key] is not None]
            record[key] = round(float(np.mean(values)), 2) if values else None
            if key in ("voc_map", "coco_map"):
                std = float(np.std(values, ddof=1)) if len(values) > 1 else None
                record[f"{key}_std"] = None if std is None else round(std, 2)
        if difference is not None:
            record["delta"] = round(100 * difference.delta, 2)
            record["delta_low"] = round(100 * difference.low, 2)
            record["delta_high"] = round(100 * difference.high, 2)
            record["delta_excludes_zero"] = difference.excludes_zero
        records.append(record)
    return records


def load_matches(
    rows: Sequence[Row], seeds: Sequence[int], runs: Sequence[dict[str, Any]], out_dir: Path
) -> tuple[bool, dict[tuple[str, int], RunMatches]] | None:
    """Every run's test detections (its ``voc_results/``) judged against the test set, which is
    rebuilt from the first run's checkpoint; with the setting's AP rule (11-point or not). Each
    run's mAP from these must be the one it logged. None (with a warning) for data without the
    VOC metric."""
    # deferred: building the test set needs the model and data stack, the table code does not
    from dssd.inference import load_checkpoint, load_test_data

    first = run_dir(out_dir, rows[0].id, seeds[0])
    _, run_cfg = load_checkpoint(first / "checkpoints" / "last.ckpt")
    datamodule = load_test_data(run_cfg)
    if datamodule.use_07_metric is None:
        log.warning("The test data has no VOC metric: no intervals for the differences.")
        return None
    dataset = datamodule.datasets["test"]
    parts = getattr(dataset, "datasets", [dataset])
    image_ids = [i for part in parts for i in part.ids]
    targets = [a for part in parts for a in part.annotations]
    by_run = {}
    for record in runs:
        directory = out_dir / record["run_dir"]
        try:
            found = RunMatches.from_results(
                directory / RESULTS_DIR, image_ids, targets, datamodule.class_names
            )
        except (OSError, ValueError) as err:
            raise UserError(f"{directory}: cannot read its test detections ({err})") from None
        logged = record["voc_map"]
        recomputed = 100 * float(mean_ap(found, use_07_metric=datamodule.use_07_metric)[0])
        if logged is not None and abs(recomputed - logged) > 0.01:
            log.warning(
                "%s: the mAP of its result files (%.3f) is not the logged one (%.3f)",
                directory,
                recomputed,
                logged,
            )
        by_run[record["row"], record["seed"]] = found
    return bool(datamodule.use_07_metric), by_run


def _plan_text(steps: Sequence[Step]) -> str:
    width = max(len(s.row.id) for s in steps)
    return "\n".join(
        f"  {s.row.id:<{width}}  seed {s.seed:<4} {s.action:<6}  {s.reason}" for s in steps
    )


def _add_wall_time(directory: Path, seconds: float, resumed: bool) -> None:
    """Keep each run's wall time (summed over a run and its resumptions) in ``ablation.json``."""
    record = _read_run_record(directory) if resumed else {}
    record["wall_seconds"] = record.get("wall_seconds", 0.0) + seconds
    record["attempts"] = record.get("attempts", 0) + 1
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ablation.json").write_text(json.dumps(record, indent=2) + "\n")


def _read_run_record(directory: Path) -> dict[str, Any]:
    path = directory / "ablation.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 2)
