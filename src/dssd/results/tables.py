"""Results in the paper's table layouts, as markdown (one decimal, like the paper) and CSV (two):
a run's ``test_results.md`` (Tables 3 and 6) and ``make ablation``'s Table 4 files."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dssd.evaluation.bootstrap import Difference, holm

# What a star in a table of differences means (``alpha``: the family-wise error rate)
SIGNIFICANCE = (
    "where the difference stays significant after Holm's correction over every difference in "
    "this table (family-wise error rate {alpha}, from the bootstrap p-values; the intervals are "
    "uncorrected). Intervals and stars measure the sampling of the test images for the seeds "
    "run, not the spread over training seeds."
)
SEED_SPREAD = (
    "Δ seed std: the standard deviation over the seeds of the per-seed differences, which says "
    "whether a difference holds from seed to seed (a seed that lifts every row alike widens the "
    "rows' ± std, not this). "
)
# Table 6's columns: header -> the logged metric (torchmetrics' MeanAveragePrecision names).
COCO_COLUMNS = {
    "AP": "map",
    "AP50": "map_50",
    "AP75": "map_75",
    "AP_S": "map_small",
    "AP_M": "map_medium",
    "AP_L": "map_large",
    "AR1": "mar_1",
    "AR10": "mar_10",
    "AR100": "mar_100",
    "AR200": "mar_200",
    "AR_S": "mar_small",
    "AR_M": "mar_medium",
    "AR_L": "mar_large",
}
# table4.csv: one line per row (metrics in %, mean and standard deviation over the seeds)
TABLE4_COLUMNS = (
    "row name model stage init_from ablates seeds paper_voc_map voc_map voc_map_std delta "
    "delta_low delta_high delta_excludes_zero delta_p delta_holm delta_seed_std coco_map "
    "coco_map_std coco_map_50 ap_small ap_medium ap_large parameters gmac val_curve val_rise "
    "fit_minutes wall_minutes"
).split()
# runs.csv: one line per run (row and seed)
RUN_COLUMNS = (
    "row seed voc_map coco_map coco_map_50 ap_small ap_medium ap_large val_curve val_rise "
    "fit_minutes wall_minutes run_dir"
).split()


def _missing(value: float | None) -> bool:
    """No figure: not logged, NaN (a class without ground truth) or COCO's -1 (no objects)."""
    return value is None or math.isnan(value) or value < 0


def percent(value: float | None) -> float | None:
    """A logged metric (0..1) in %, rounded to 2 decimals, as the CSV files hold it."""
    return None if _missing(value) else round(100 * value, 2)


def cell(value: float | None, digits: int = 1) -> str:
    """A markdown cell: the number with ``digits`` decimals, ``–`` for none."""
    return "–" if value is None else f"{value:.{digits}f}"


def percent_cell(value: float | None) -> str:
    """A logged metric (0..1) as a markdown cell in %."""
    return cell(None if _missing(value) else 100 * value)


def mean_std_cell(mean: float | None, std: float | None) -> str:
    """``mean ± std``, or the mean alone without a spread (one seed)."""
    return cell(mean) if std is None else f"{cell(mean)} ± {std:.1f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; each cell as ``str()`` gives it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    """A CSV file of ``header`` and ``rows`` (None as an empty field); returns ``path``."""
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def write_csv(records: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """``records`` as CSV lines with ``columns`` (other keys left out, missing ones empty)."""
    write_rows(path, columns, [[r.get(c) for c in columns] for r in records])


def results_tables(
    metrics: Mapping[str, float], per_class_ap: Mapping[str, float], name: str
) -> str:
    """Markdown tables of the logged test metrics for the run ``name``; ``per_class_ap`` (NaN: no
    ground truth) forms Table 3's row with a VOC mAP logged, a class / AP list otherwise."""
    sections = []
    voc_map = metrics.get("test/voc_map")
    if voc_map is not None:
        header = ["model", "mAP", *per_class_ap]
        row = [name, percent_cell(voc_map), *map(percent_cell, per_class_ap.values())]
        sections.append("VOC mAP @ IoU 0.5 (Table 3 layout)\n\n" + markdown_table(header, [row]))
    columns = {h: k for h, k in COCO_COLUMNS.items() if f"test/{k}" in metrics}
    coco_row = [name, *(percent_cell(metrics[f"test/{key}"]) for key in columns.values())]
    coco_table = markdown_table(["model", *columns], [coco_row])
    sections.append("COCO metrics (Table 6 layout)\n\n" + coco_table)
    if voc_map is None and per_class_ap:
        rows = [[cls, percent_cell(ap)] for cls, ap in per_class_ap.items()]
        sections.append("COCO AP per class\n\n" + markdown_table(["class", "AP"], rows))
    return "\n\n".join(sections) + "\n"


def write_results(text: str, directory: str | Path) -> Path:
    """Write the tables to ``<directory>/test_results.md`` and return the path."""
    path = Path(directory) / "test_results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def delta_cell(delta: float | None, low: float, high: float, significant: bool) -> str:
    """``Δ [low, high]`` in points, starred where ``significant``; ``–`` for none."""
    if delta is None or not math.isfinite(delta):
        return "–"
    return f"{delta:+.1f} [{low:+.1f}, {high:+.1f}]{'*' if significant else ''}"


def table4_markdown(
    records: Sequence[Mapping[str, Any]],
    setting_name: str,
    seeds: Sequence[int],
    confidence: float = 0.95,
    pooled: Mapping[str, float] | None = None,
) -> str:
    """Table 4's markdown from the rows' records (``TABLE4_COLUMNS``), with the seed spread
    pooled over the rows (:func:`dssd.table4.statistics.pooled_seed_spread`) when given."""
    many = len(seeds) > 1
    spread = " ± std" if many else ""
    columns: dict[str, Callable[[Mapping[str, Any]], Any]] = {
        "Table 4 row": lambda r: r["name"],
        "paper mAP": lambda r: cell(r["paper_voc_map"]),
        f"mAP{spread}": lambda r: mean_std_cell(r["voc_map"], r.get("voc_map_std")),
        f"Δ mAP [{100 * confidence:.0f}% CI]": lambda r: delta_cell(
            r.get("delta"), r.get("delta_low"), r.get("delta_high"), r.get("delta_holm")
        ),
        **({"Δ seed std": lambda r: cell(r.get("delta_seed_std"))} if many else {}),
        "vs": lambda r: r["ablates"] or "–",
        "AP_S": lambda r: cell(r["ap_small"]),
        "AP_M": lambda r: cell(r["ap_medium"]),
        "AP_L": lambda r: cell(r["ap_large"]),
        f"COCO AP{spread}": lambda r: mean_std_cell(r["coco_map"], r.get("coco_map_std")),
        "params (M)": lambda r: cell(r["parameters"] / 1e6 if r["parameters"] else None, 2),
        "GMAC": lambda r: cell(r.get("gmac"), 2),
        "val mAP by validation": lambda r: (r.get("val_curve") or "–").replace(";", " → "),
        "val rise, last ¼": lambda r: cell(r.get("val_rise")),
        "train (min)": lambda r: cell(r["fit_minutes"]),
        "wall (min)": lambda r: cell(r["wall_minutes"]),
    }
    rows = [[value(r) for value in columns.values()] for r in records]
    seeds_text = (
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))})" if many else f"seed {seeds[0]}"
    )
    caption = (
        f"Table 4 ablation, setting `{setting_name}`, {seeds_text}: VOC mAP @ 0.5 on the test "
        "split (%), the paper's on VOC2007 test. Δ: mean difference from the row in `vs` over "
        f"paired seeds, with its {100 * confidence:.0f}% interval from a paired bootstrap over "
        f"the test images; * {SIGNIFICANCE.format(alpha=f'{100 * (1 - confidence):g}%')} "
        f"{SEED_SPREAD if many else ''}AP_S/M/L: COCO AP by object size. GMAC: "
        "multiply-accumulates per image. Val mAP: the VOC mAP on the validation split after "
        "each validation of the run's stage (mean over the seeds); its rise over the last "
        "quarter of the schedule says whether the row converged (under 1 point). Train and "
        "wall times are per run."
    )
    walls = [r["wall_minutes"] * r["seeds"] for r in records if r["wall_minutes"] is not None]
    notes = [f"Total wall time of the runs: {sum(walls):.1f} min."]
    if pooled is not None:
        equal = pooled["bartlett_p"]
        notes.append(
            f"Seed std pooled over the rows: {pooled['std']:.2f} points "
            f"[{pooled['low']:.2f}, {pooled['high']:.2f}] ({100 * confidence:g}% interval, "
            f"{pooled['df']:.0f} degrees of freedom); the rows' spreads differ by Bartlett's "
            + (f"test at p = {equal:.2f}." if math.isfinite(equal) else "test: not computable.")
        )
    return f"{caption}\n\n{markdown_table(list(columns), rows)}\n\n{' '.join(notes)}\n"


def write_table4(
    markdown: str,
    records: Sequence[Mapping[str, Any]],
    runs: Sequence[Mapping[str, Any]],
    out_dir: Path,
) -> list[Path]:
    """Write ``table4.md``, ``table4.csv`` (``records``), ``runs.csv`` (``runs``) in ``out_dir``."""
    paths = [out_dir / "table4.md", out_dir / "table4.csv", out_dir / "runs.csv"]
    paths[0].write_text(markdown)
    write_csv(records, paths[1], TABLE4_COLUMNS)
    write_csv(runs, paths[2], RUN_COLUMNS)
    return paths


def comparisons_index(
    entries: Sequence[tuple[str, str, Mapping[str, Difference], Path]],
    seeds: Sequence[int],
    confidence: float = 0.95,
) -> str:
    """``make ablation``'s index of its ``(row, ablated row, differences by size, folder)``
    analyses, starred by Holm's correction over every cell of the index."""
    sizes = ("all", "small", "medium", "large")
    cells = [by_size[size] for _, _, by_size, _ in entries for size in sizes]
    marks = iter(holm([d.p_value for d in cells], 1.0 - confidence))

    def points(d: Difference) -> str:  # a difference of APs (0..1) in points, starred in order
        return delta_cell(100 * d.delta, 100 * d.low, 100 * d.high, next(marks))

    rows = [
        [row, against, *(points(by_size[size]) for size in sizes), str(folder)]
        for row, against, by_size, folder in entries
    ]
    header = ["row", "against", "Δ all", "Δ small", "Δ medium", "Δ large", "folder"]
    return (
        "# Table 4, each row against the row it ablates\n\n"
        f"Seeds {', '.join(map(str, seeds))}, paired. Δ: AP difference in points (VOC AP at IoU "
        f"0.5; by size with COCO's rule) with its {100 * confidence:g}% paired-bootstrap "
        f"interval; * {SIGNIFICANCE.format(alpha=f'{100 * (1 - confidence):g}%')} "
        "Each folder holds the row's analysis (its first seed) "
        "and the comparison: summary.md, figures and tables.\n\n"
        f"{markdown_table(header, rows)}\n"
    )
