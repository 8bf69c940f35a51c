"""Table 4's rows, seeds and run directories, and what the runner does with each run."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dssd.errors import MAX_SEED, UserError, is_number
from dssd.results.runs import RESULTS_DIR

log = logging.getLogger(__name__)

# how a step's reason begins when it runs because the run it starts from runs
STARTS_FROM = "starts from"
# the key of a run's record holding the digest of the checkpoint it started from
INIT_FROM_DIGEST = "init_from_sha256"


@dataclass(frozen=True)
class Row:
    """One row of Table 4: its runs' overrides and stage, the rows it starts from and ablates."""

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
    for number, entry in enumerate(entries):
        try:
            row = _row(dict(entry))
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(
                f"ablation rows: rows.{number} {entry} is not a row ({err!r})"
            ) from None
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


def _row(entry: dict[str, Any]) -> Row:
    """One row entry as a :class:`Row`; KeyError, TypeError or ValueError if it is not one."""
    paper = entry.get("paper_voc_map")
    if paper is not None and not is_number(paper):
        raise ValueError(f"paper_voc_map {paper!r} is not a number")
    return Row(
        id=str(entry["id"]),
        name=str(entry.get("name", entry["id"])),
        net=str(entry["net"]),
        overrides=tuple(entry.get("overrides") or ()),
        stage=int(entry.get("stage", 0)),
        init_from=entry.get("init_from"),
        ablates=entry.get("ablates"),
        paper_voc_map=paper,
    )


def row_ids(value: Any, setting: str) -> list[str] | None:
    """``only`` or ``force`` as a list of row ids (one id alone is a list of one); None for
    null; else a :class:`UserError`."""
    if value is None or isinstance(value, str):
        return None if value is None else [value]
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else None
    if not items or not all(isinstance(i, str) for i in items):
        raise UserError(
            f"{setting}={value}: give a row id or a list of them, e.g. {setting}=[dssd_prod]"
        )
    return items


def select_rows(rows: Sequence[Row], only: str | Sequence[str] | None) -> list[Row]:
    """The rows named in ``only`` (None: all) and, recursively, those they start from and ablate."""
    only = row_ids(only, "only")
    if only is None:
        return list(rows)
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
        or not all(0 <= s <= MAX_SEED for s in items)
    ):
        shown = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        raise UserError(
            f"seeds must be a non-empty list of distinct integers from 0 to {MAX_SEED}, e.g. "
            f"seeds=[0,1,2] (make ablation SEEDS=3); got {shown!r}"
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
    """Each run's action: forced rows and rows starting from a rerun or resumed run run again
    (the runner skips them after all where that run's final weights stay as they were), the
    others as :func:`own_step` says."""
    if isinstance(force, bool):
        forced = {r.id for r in rows} if force else set()
    else:
        ids = row_ids(force, "force")
        if ids is None:
            raise UserError("force=null: choose true (every row), false, or row ids")
        forced = set(ids)
        unknown = forced - {r.id for r in rows}
        if unknown:
            raise UserError(
                f"force: no row {sorted(unknown)} among the rows this command runs "
                f"{[r.id for r in rows]} (only= selects them); force=true forces them all"
            )
    steps: list[Step] = []
    for seed in seeds:
        rerun: dict[str, str] = {}  # row id -> action, of the rows that run or resume
        for row in rows:
            if row.id in forced:
                step = Step(row, seed, "run", "forced")
            elif row.init_from in rerun:
                how = "reruns" if rerun[row.init_from] == "run" else "resumes"
                step = Step(row, seed, "run", f"{STARTS_FROM} {row.init_from}, which {how}")
            else:
                step = own_step(row, seed, out_dir)
            steps.append(step)
            if step.action != "skip":
                rerun[row.id] = step.action
    return steps


def own_step(row: Row, seed: int, out_dir: Path) -> Step:
    """A run's action by its directory and its parent row's run: a run that started from other
    weights than its parent's final ones runs again, a done run is skipped, one with a
    ``last.ckpt`` but no results resumes, the others run."""
    directory = run_dir(out_dir, row.id, seed)
    if not (directory / "checkpoints" / "last.ckpt").is_file():
        return Step(row, seed, "run", "not run yet")
    if parent_changed(row, seed, out_dir):
        return Step(row, seed, "run", f"{STARTS_FROM} {row.init_from}, retrained since")
    if is_done(directory):
        return Step(row, seed, "skip", "done")
    return Step(row, seed, "resume", "interrupted: resumes from its last.ckpt")


def parent_checkpoint(row: Row, seed: int, out_dir: Path) -> Path | None:
    """The final weights the run of ``row`` with ``seed`` starts from (None at stage 0)."""
    if row.init_from is None:
        return None
    return run_dir(out_dir, row.init_from, seed) / "checkpoints" / "last.ckpt"


def weights_digest(path: Path) -> str | None:
    """The SHA-256 of a checkpoint file, None if there is none (each version of a file is read
    once per command: a parent's is asked for by each of its rows and seeds)."""
    if not path.is_file():
        return None
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parent_changed(row: Row, seed: int, out_dir: Path) -> bool:
    """Whether the run started from other weights than its parent row's run holds now (it was
    retrained since, by ``force`` or ``only``); False where the run's record does not say."""
    recorded = read_run_record(run_dir(out_dir, row.id, seed)).get(INIT_FROM_DIGEST)
    parent = parent_checkpoint(row, seed, out_dir)
    return parent is not None and recorded is not None and recorded != weights_digest(parent)


def row_overrides(row: Row, setting: DictConfig) -> list[str]:
    """The ``src/train.py`` overrides of ``row``: the setting's for its net, then its own."""
    return [*setting[row.net], *row.overrides, f"stage={row.stage}"]


def start_run_record(row: Row, seed: int, out_dir: Path) -> None:
    """Begin a run's ``ablation.json`` afresh, with the digest of the weights it starts from."""
    parent = parent_checkpoint(row, seed, out_dir)
    digest = None if parent is None else weights_digest(parent)
    write_run_record(run_dir(out_dir, row.id, seed), {INIT_FROM_DIGEST: digest} if digest else {})


def add_wall_time(directory: Path, seconds: float) -> None:
    """Keep each run's wall time (summed over a run and its resumptions) in ``ablation.json``."""
    record = read_run_record(directory)
    record["wall_seconds"] = record.get("wall_seconds", 0.0) + seconds
    record["attempts"] = record.get("attempts", 0) + 1
    write_run_record(directory, record)


def write_run_record(directory: Path, record: dict[str, Any]) -> None:
    """Write a run's ``ablation.json`` (whole or not at all: a Ctrl-C may come at any time)."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / "ablation.json.partial"
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, directory / "ablation.json")


def read_run_record(directory: Path) -> dict[str, Any]:
    """The run's ``ablation.json`` (empty if none, or, with a warning, if damaged: it holds the
    wall time and the digest of the weights the run started from)."""
    path = directory / "ablation.json"
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        record = err
    if not isinstance(record, dict):
        log.warning(
            "%s is damaged (%s): the run's wall time and the weights it started from are not known",
            *(path, record),
        )
        return {}
    return record
