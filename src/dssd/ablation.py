"""The paper's Table 4 as one command: each row a ``src/train.py`` run, in dependency order.

Rows (``rows`` in ``conf/table4.yaml``) are the SSD prediction-module variants at stage 0, the
DSSD fusions at stage 1 from the PM(c) row, and stage 2 from the product row. Each row is its own
process, so a row can use DDP, and its directory ``<out_dir>/<row id>`` is a normal run
directory. A row that is done (``best.ckpt`` and ``test_results.json`` there) is skipped unless
forced; a row that was interrupted resumes from its ``last.ckpt``. At the end the rows' test
results become a table in Table 4's layout next to the paper's numbers (markdown and CSV).
"""

from __future__ import annotations

import csv
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

from omegaconf import DictConfig

from dssd.errors import UserError

log = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "row",
    "name",
    "model",
    "stage",
    "init_from",
    "paper_voc_map",
    "voc_map",
    "coco_map",
    "coco_map_50",
    "parameters",
    "fit_minutes",
    "wall_minutes",
    "run_dir",
]


@dataclass(frozen=True)
class Row:
    """One row of Table 4: the overrides of its run, its stage and the row it starts from."""

    id: str
    name: str
    net: str
    overrides: tuple[str, ...]
    stage: int
    init_from: str | None
    paper_voc_map: float | None


@dataclass(frozen=True)
class Step:
    """What the runner does with a row: ``run``, ``resume`` or ``skip``, and why."""

    row: Row
    action: str
    reason: str


def parse_rows(entries: Sequence[Any]) -> list[Row]:
    """Rows from the config, checked: unique ids, each ``init_from`` an earlier row."""
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
            paper_voc_map=entry.get("paper_voc_map"),
        )
        earlier = {r.id for r in rows}
        if row.id in earlier:
            raise UserError(f"ablation rows: row id {row.id!r} appears twice")
        if row.init_from is not None and row.init_from not in earlier:
            raise UserError(
                f"ablation rows: row {row.id!r} starts from {row.init_from!r}, which is not a "
                "row listed before it"
            )
        if row.stage > 0 and row.init_from is None:
            raise UserError(f"ablation rows: row {row.id!r} is stage {row.stage} without init_from")
        rows.append(row)
    return rows


def is_done(run_dir: Path) -> bool:
    """A row is done once its run tested its best checkpoint."""
    return (run_dir / "checkpoints" / "best.ckpt").is_file() and (
        run_dir / "test_results.json"
    ).is_file()


def plan(rows: Sequence[Row], out_dir: Path, force: bool | Sequence[str] = False) -> list[Step]:
    """Decide each row's action. Forced rows rerun, and so does every row that starts from a
    row that reruns (its starting weights change); done rows are skipped; a row with a
    ``last.ckpt`` but no results resumes; the others run from the start."""
    if isinstance(force, bool):
        forced = {r.id for r in rows} if force else set()
    else:
        forced = set(force)
        unknown = forced - {r.id for r in rows}
        if unknown:
            raise UserError(f"force: no row {sorted(unknown)}; the rows are {[r.id for r in rows]}")
    steps: list[Step] = []
    rerun: set[str] = set()
    for row in rows:
        run_dir = out_dir / row.id
        if row.id in forced:
            steps.append(Step(row, "run", "forced"))
        elif row.init_from in rerun:
            steps.append(Step(row, "run", f"starts from {row.init_from}, which reruns"))
        elif is_done(run_dir):
            steps.append(Step(row, "skip", "done"))
        elif (run_dir / "checkpoints" / "last.ckpt").is_file():
            steps.append(Step(row, "resume", "interrupted: resumes from its last.ckpt"))
        else:
            steps.append(Step(row, "run", "not run yet"))
        if steps[-1].action != "skip":
            rerun.add(row.id)
    return steps


def train_command(
    step: Step,
    setting: DictConfig,
    out_dir: Path,
    run_group: str,
    train_args: str = "",
) -> list[str]:
    """The ``src/train.py`` command line of a row (the setting's overrides first, the row's own
    and ``train_args`` after them, so they win)."""
    row = step.row
    script = Path(__file__).resolve().parents[1] / "train.py"
    command = [sys.executable, str(script), *setting[row.net], *row.overrides]
    command += [f"stage={row.stage}", f"hydra.run.dir={out_dir / row.id}", f"run_group={run_group}"]
    if row.init_from is not None:
        command.append(f"init_from={out_dir / row.init_from / 'checkpoints' / 'best.ckpt'}")
    if step.action == "resume":
        command.append("ckpt_path=last")
    return command + shlex.split(train_args)


def run_ablation(cfg: DictConfig, setting_name: str) -> Path:
    """Run the rows that need it, then write and print the table; returns the markdown path."""
    out_dir = Path(cfg.out_dir)
    rows = parse_rows(cfg.rows)
    force = cfg.force if isinstance(cfg.force, bool) else list(cfg.force)
    steps = plan(rows, out_dir, force)
    log.info("Table 4 (%s) in %s:\n%s", setting_name, out_dir, _plan_text(steps))
    for number, step in enumerate(steps, 1):
        if step.action == "skip":
            continue
        command = train_command(
            step, cfg.ablation, out_dir, f"table4-{setting_name}", cfg.train_args
        )
        log.info(
            "[%d/%d] %s (%s): %s",
            number,
            len(steps),
            step.row.id,
            step.row.name,
            shlex.join(command),
        )
        start = time.perf_counter()
        returncode = subprocess.call(command)
        _add_wall_time(out_dir / step.row.id, time.perf_counter() - start, step.action == "resume")
        if returncode != 0:
            raise UserError(
                f"row {step.row.id} ({step.row.name}) failed with exit status {returncode}; "
                f"its log is {out_dir / step.row.id / 'train.log'}. Rows done so far are kept: "
                "run the same command again to go on (this row resumes from its last.ckpt "
                f"if it wrote one), or force=[{step.row.id}] to start it over."
            )
    records = collect(rows, out_dir)
    markdown = table_markdown(records, setting_name)
    md_path = out_dir / "table4.md"
    md_path.write_text(markdown)
    write_csv(records, out_dir / "table4.csv")
    print(markdown)
    log.info("Table written to %s and %s", md_path, out_dir / "table4.csv")
    return md_path


def collect(rows: Sequence[Row], out_dir: Path) -> list[dict[str, Any]]:
    """One record per row from its ``test_results.json`` (maps in %, times in minutes)."""
    records = []
    for row in rows:
        run_dir = out_dir / row.id
        path = run_dir / "test_results.json"
        if not path.is_file():
            raise UserError(f"row {row.id}: {path} is missing; the row did not finish")
        result = json.loads(path.read_text())
        metrics = result.get("metrics", {})
        wall = _read_row_record(run_dir).get("wall_seconds")
        records.append(
            {
                "row": row.id,
                "name": row.name,
                "model": result.get("run_name", ""),
                "stage": row.stage,
                "init_from": row.init_from or "",
                "paper_voc_map": row.paper_voc_map,
                "voc_map": _percent(metrics.get("test/voc_map")),
                "coco_map": _percent(metrics.get("test/map")),
                "coco_map_50": _percent(metrics.get("test/map_50")),
                "parameters": result.get("parameters"),
                "fit_minutes": _minutes(result.get("fit_seconds")),
                "wall_minutes": _minutes(wall),
                "run_dir": row.id,
            }
        )
    return records


def table_markdown(records: Sequence[dict[str, Any]], setting_name: str) -> str:
    """Table 4's layout: the paper's row and mAP, then this run's figures."""
    header = [
        "Table 4 row",
        "paper mAP",
        "mAP",
        "COCO AP",
        "AP50",
        "params (M)",
        "train (min)",
        "wall (min)",
        "run",
    ]
    lines = [
        f"Table 4 ablation, setting `{setting_name}`: VOC mAP @ 0.5 on the test split (%), "
        "the paper's on VOC2007 test",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in records:
        cells = [
            r["name"],
            _fmt(r["paper_voc_map"]),
            _fmt(r["voc_map"]),
            _fmt(r["coco_map"]),
            _fmt(r["coco_map_50"]),
            _fmt(r["parameters"] / 1e6 if r["parameters"] else None, 2),
            _fmt(r["fit_minutes"]),
            _fmt(r["wall_minutes"]),
            f"{r['model']}" + (f" (from {r['init_from']})" if r["init_from"] else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    walls = [r["wall_minutes"] for r in records if r["wall_minutes"] is not None]
    lines += ["", f"Total wall time of the rows: {sum(walls):.1f} min."]
    return "\n".join(lines) + "\n"


def write_csv(records: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(records)


def _plan_text(steps: Sequence[Step]) -> str:
    width = max(len(s.row.id) for s in steps)
    return "\n".join(f"  {s.row.id:<{width}}  {s.action:<6}  {s.reason}" for s in steps)


def _add_wall_time(run_dir: Path, seconds: float, resumed: bool) -> None:
    """Keep each row's wall time (summed over a run and its resumptions) in ``ablation.json``."""
    record = _read_row_record(run_dir) if resumed else {}
    record["wall_seconds"] = record.get("wall_seconds", 0.0) + seconds
    record["attempts"] = record.get("attempts", 0) + 1
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "ablation.json").write_text(json.dumps(record, indent=2) + "\n")


def _read_row_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "ablation.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _percent(value: float | None) -> float | None:
    return None if value is None or value < 0 else round(100 * value, 2)


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60, 2)


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
