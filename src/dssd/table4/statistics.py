"""Table 4's figures: per run, per row over the seeds, and each row's difference from the row it
ablates with a paired-bootstrap interval (:mod:`dssd.evaluation.bootstrap`)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from dssd.analysis.analyser import load_test_split
from dssd.deployment.inference import load_checkpoint
from dssd.errors import UserError
from dssd.evaluation.bootstrap import holm, paired_bootstrap
from dssd.evaluation.matched_run import MatchedRun, results_per_image
from dssd.results.runs import RESULTS_DIR, read_test_results
from dssd.results.tables import percent
from dssd.table4.rows import Row, read_run_record, run_dir

log = logging.getLogger(__name__)

# the validation metric of each run's curve (val_history in its test_results.json)
VAL_METRIC = "val/voc_map"
# test metric (as logged) of each per-run column (in %)
METRICS = {
    "voc_map": "test/voc_map",
    "coco_map": "test/map",
    "coco_map_50": "test/map_50",
    "ap_small": "test/map_small",
    "ap_medium": "test/map_medium",
    "ap_large": "test/map_large",
}


def collect(rows: Sequence[Row], seeds: Sequence[int], out_dir: Path) -> list[dict[str, Any]]:
    """One record per run from its ``test_results.json`` (metrics in %, times in minutes)."""
    records = []
    for row in rows:
        for seed in seeds:
            directory = run_dir(out_dir, row.id, seed)
            try:
                result = read_test_results(directory)
            except FileNotFoundError as err:
                raise UserError(f"row {row.id}, seed {seed}: {err}") from None
            metrics = result.get("metrics", {})
            curve = validation_curve(result.get("val_history", []))
            records.append(
                {
                    "row": row.id,
                    "seed": seed,
                    **{key: percent(metrics.get(name)) for key, name in METRICS.items()},
                    "fit_minutes": _minutes(result.get("fit_seconds")),
                    "wall_minutes": _minutes(read_run_record(directory).get("wall_seconds")),
                    "run_dir": str(directory.relative_to(out_dir)),
                    "model": result.get("run_name", ""),
                    "parameters": result.get("parameters"),
                    "gmac": result.get("gmac"),
                    "val_curve": ";".join(f"{v:.1f}" for _, v in curve) or None,
                    "val_rise": last_quarter_rise(curve),
                }
            )
    return records


def validation_curve(history: Sequence[dict[str, float]]) -> list[tuple[int, float]]:
    """``(step, val VOC mAP in %)`` after each validation of a run (its ``val_history``)."""
    return [(int(p["step"]), 100 * p[VAL_METRIC]) for p in history if VAL_METRIC in p]


def last_quarter_rise(curve: Sequence[tuple[int, float]]) -> float | None:
    """The curve's rise over the last quarter of the steps: its last value less its last one at
    no later than 3/4 of the last step; None without one."""
    if not curve:
        return None
    last_step, last_value = curve[-1]
    before = [v for step, v in curve if step <= 0.75 * last_step]
    return round(last_value - before[-1], 2) if before else None


def summarize(
    rows: Sequence[Row],
    seeds: Sequence[int],
    runs: Sequence[dict[str, Any]],
    out_dir: Path,
    num_samples: int = 1000,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One record per row: mean and standard deviation over the seeds, and the VOC mAP difference
    from the row it ablates with its paired-bootstrap interval and p-value, significant or not by
    Holm's correction over the table (family-wise error rate ``1 - confidence``)."""
    matches = load_matches(rows, seeds, runs, out_dir)
    records = []
    for row in rows:
        mine = [r for r in runs if r["row"] == row.id]
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
            "gmac": mine[0]["gmac"],
        }
        curves = [r["val_curve"].split(";") for r in mine if r["val_curve"]]
        if curves and len(curves) == len(mine) and len({len(c) for c in curves}) == 1:
            means = np.mean(np.array(curves, dtype=float), axis=0)
            record["val_curve"] = ";".join(f"{v:.1f}" for v in means)
        for key in (*METRICS, "val_rise", "fit_minutes", "wall_minutes"):
            values = [r[key] for r in mine if r[key] is not None]
            record[key] = round(float(np.mean(values)), 2) if values else None
            if key in ("voc_map", "coco_map"):
                record[f"{key}_std"] = _std(values)
        if row.ablates is not None:
            record["delta_seed_std"] = _std(seed_differences(runs, row.id, row.ablates))
        if row.ablates is not None and matches is not None:
            use_07, by_run = matches
            difference = paired_bootstrap(
                [by_run[row.id, s] for s in seeds],
                [by_run[row.ablates, s] for s in seeds],
                num_samples=num_samples,
                confidence=confidence,
                use_07_metric=use_07,
            )
            record["delta"] = round(100 * difference.delta, 2)
            record["delta_low"] = round(100 * difference.low, 2)
            record["delta_high"] = round(100 * difference.high, 2)
            record["delta_excludes_zero"] = difference.excludes_zero
            record["delta_p"] = round(difference.p_value, 4)
        records.append(record)
    compared = [r for r in records if "delta" in r]
    marks = holm([r["delta_p"] for r in compared], 1.0 - confidence)
    for record, significant in zip(compared, marks, strict=True):
        record["delta_holm"] = significant
    return records


def pooled_seed_spread(
    runs: Sequence[dict[str, Any]], confidence: float = 0.95
) -> dict[str, float] | None:
    """The seeds' standard deviation of VOC mAP pooled over the rows (each row's variance about
    its own mean, weighted by its degrees of freedom), its chi-square interval, and Bartlett's p
    for the rows' spreads being equal. A row's own std over three seeds is a rough figure (a true
    1 point is measured above 1 about one time in three); the pooled one is the table's answer to
    how far a seed moves a row. None with fewer than two seeds a row."""
    by_row: dict[str, list[float]] = {}
    for run in runs:
        if run["voc_map"] is not None:
            by_row.setdefault(run["row"], []).append(run["voc_map"])
    samples = [values for values in by_row.values() if len(values) > 1]
    if not samples:
        return None
    df = sum(len(values) - 1 for values in samples)
    variance = sum((len(v) - 1) * np.var(v, ddof=1) for v in samples) / df
    tail = (1 - confidence) / 2
    low, high = (np.sqrt(df * variance / stats.chi2.ppf(q, df)) for q in (1 - tail, tail))
    spreads = len(samples) > 1 and all(np.ptp(v) > 0 for v in samples)  # Bartlett takes logs
    equal = stats.bartlett(*samples).pvalue if spreads else float("nan")
    return {
        "std": float(np.sqrt(variance)),
        "low": float(low),
        "high": float(high),
        "df": df,
        "bartlett_p": float(equal),
    }


def seed_differences(runs: Sequence[dict[str, Any]], row_id: str, ablated_id: str) -> list[float]:
    """Per seed, the row's VOC mAP less the ablated row's: whether the table's Δ holds from seed to
    seed, which the bootstrap (over test images) does not say and the rows' own spread overstates
    when a seed lifts every row alike."""
    figures = {(r["row"], r["seed"]): r["voc_map"] for r in runs if r["voc_map"] is not None}
    seeds = [r["seed"] for r in runs if r["row"] == row_id]
    return [
        figures[row_id, s] - figures[ablated_id, s]
        for s in seeds
        if (row_id, s) in figures and (ablated_id, s) in figures
    ]


def load_matches(
    rows: Sequence[Row], seeds: Sequence[int], runs: Sequence[dict[str, Any]], out_dir: Path
) -> tuple[bool, dict[tuple[str, int], MatchedRun]] | None:
    """The AP rule and every run's test detections (``voc_results/``) matched to the test set
    rebuilt from the first run's checkpoint, warning when a run's mAP is not the logged one;
    None (with a warning) for data without the VOC metric."""
    first = run_dir(out_dir, rows[0].id, seeds[0])
    split = load_test_split(load_checkpoint(first / "checkpoints" / "last.ckpt")[1])
    if split.use_07_metric is None:
        log.warning("The test data has no VOC metric: no intervals for the differences.")
        return None
    by_run = {}
    for record in runs:
        directory = out_dir / record["run_dir"]
        try:
            detections = results_per_image(
                directory / RESULTS_DIR, split.image_ids, split.class_names
            )
            found = MatchedRun.build(detections, split.targets, len(split.class_names))
        except (OSError, ValueError) as err:
            raise UserError(f"{directory}: cannot read its test detections ({err})") from None
        logged = record["voc_map"]
        recomputed = 100 * float(found.mean_ap(use_07_metric=split.use_07_metric)[0])
        if logged is not None and abs(recomputed - logged) > 0.01:
            log.warning(
                "%s: the mAP of its result files (%.3f) is not the logged one (%.3f)",
                directory,
                recomputed,
                logged,
            )
        by_run[record["row"], record["seed"]] = found
    return split.use_07_metric, by_run


def _std(values: Sequence[float]) -> float | None:
    """The sample standard deviation (rounded to 0.01); None with fewer than two values."""
    return round(float(np.std(values, ddof=1)), 2) if len(values) > 1 else None


def _minutes(seconds: float | None) -> float | None:
    """Seconds as minutes (rounded to 0.01)."""
    return None if seconds is None else round(seconds / 60, 2)
