"""The Table 4 runner: a ``src/train.py`` process per row and seed, in dependency order, then the
table and each row's analysis against the row it ablates."""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from dssd.analysis.analyser import Analyser, Options, find_run, write_analysis
from dssd.errors import UserError
from dssd.results.runs import RESULTS_DIR
from dssd.results.tables import comparisons_index, table4_markdown, write_table4
from dssd.table4.rows import (
    Row,
    Step,
    add_wall_time,
    parse_rows,
    parse_seeds,
    plan,
    row_overrides,
    run_dir,
    select_rows,
)
from dssd.table4.statistics import collect, pooled_seed_spread, summarize

log = logging.getLogger(__name__)

# the training entry point each run is a process of
TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train.py"


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
    num_samples, confidence = cfg.get("bootstrap_samples", 1000), cfg.get("confidence", 0.95)
    Options(bootstrap_samples=num_samples, confidence=confidence)  # refused before any run
    force = cfg.force if isinstance(cfg.force, bool) else list(cfg.force)
    steps = plan(rows, seeds, out_dir, force)
    width = max(len(s.row.id) for s in steps)
    plan_text = "\n".join(
        f"  {s.row.id:<{width}}  seed {s.seed:<4} {s.action:<6}  {s.reason}" for s in steps
    )
    log.info("Table 4 (%s) in %s, seeds %s:\n%s", setting_name, out_dir, seeds, plan_text)
    for number, step in enumerate(steps, 1):
        if step.action == "skip":
            continue
        command = train_command(step, cfg.ablation, out_dir, setting_name, cfg.train_args)
        row, seed = step.row, step.seed
        label = f"{row.id} seed {seed}"
        log.info("[%d/%d] %s (%s): %s", number, len(steps), label, row.name, shlex.join(command))
        directory = run_dir(out_dir, row.id, seed)
        start = time.perf_counter()
        returncode = subprocess.call(command)
        add_wall_time(directory, time.perf_counter() - start, step.action == "resume")
        if returncode != 0:
            raise UserError(
                f"row {row.id} ({row.name}), seed {seed}, failed with exit status "
                f"{returncode}; its log is {directory / 'train.log'}. Runs done so far are kept: "
                "run the same command again to go on (this run resumes from its last.ckpt if it "
                f"wrote one), or force=[{row.id}] to start the row over."
            )
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
