"""An analysis on disk: a markdown summary readable in a terminal, CSV tables and PNG figures
(:mod:`dssd.analysis.figures`), in one directory."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from dssd.analysis import figures
from dssd.analysis.breakdown import (
    RunAnalysis,
    RunDetections,
    largest_missed,
    object_sizes,
    worst_false_positives,
)
from dssd.analysis.comparison import Comparison, DeltaRow, most_different
from dssd.analysis.errors import ERROR_TYPES
from dssd.evaluation.bootstrap import holm
from dssd.results.tables import SIGNIFICANCE, markdown_table, percent_cell, write_rows


def _signed(value: float) -> str:
    return "–" if not np.isfinite(value) else f"{100 * value:+.1f}"


def _save(figure: plt.Figure | np.ndarray, path: Path) -> Path:
    """Save a matplotlib figure (then closed) or an RGB array as a PNG file."""
    if isinstance(figure, np.ndarray):
        Image.fromarray(figure).save(path)
    else:
        figure.savefig(path, dpi=100)
        plt.close(figure)
    return path


def _number(value: float) -> float | str:
    return "" if value is None or not np.isfinite(value) else round(float(value), 6)


def write_run_analysis(
    out_dir: Path, test: RunDetections, analysis: RunAnalysis, name: str, gallery_size: int = 16
) -> tuple[str, list[Path]]:
    """Write one run's tables and figures into ``out_dir``; return its markdown section and the
    files written."""
    names = test.class_names
    errors = analysis.errors
    labels = [*names, "background"]
    worst = worst_false_positives(test, errors, gallery_size)
    missed = largest_missed(test, errors, gallery_size)
    error_columns = [f"{e}_{figure}" for figure in ("errors", "dap") for e in ERROR_TYPES]
    files = [
        write_rows(
            out_dir / "per_class.csv",
            ["class", "objects", "ap", *error_columns],
            [
                [
                    names[c],
                    int(analysis.positives[c]),
                    _number(analysis.ap_per_class[c]),
                    *(int(errors.counts_per_class[e][c]) for e in ERROR_TYPES),
                    *(_number(float(errors.delta_ap_per_class[e][c])) for e in ERROR_TYPES),
                ]
                for c in range(test.num_classes)
            ],
        ),
        write_rows(
            out_dir / "sizes.csv",
            ["kind", "bin", "low_px", "high_px", "objects", "ap", "found"],
            [
                [kind, b.name, b.low, b.high, b.objects, _number(b.ap), b.found]
                for kind, bins in (("coco", analysis.coco_sizes), ("fine", analysis.fine_sizes))
                for b in bins
            ],
        ),
        write_rows(
            out_dir / "errors.csv",
            ["size", "type", "count", "dap"],
            [
                [size, e, found.counts[e], _number(found.delta_map[e])]
                for size, found in {"all": errors, **analysis.size_errors}.items()
                for e in ERROR_TYPES
            ],
        ),
        write_rows(
            out_dir / "confusion_matrix.csv",
            ["true \\ predicted", *labels],
            [[label, *row.tolist()] for label, row in zip(labels, analysis.confusion, strict=True)],
        ),
        write_rows(
            out_dir / "worst_false_positives.csv",
            ["image_id", "type", "class", "score", "x1", "y1", "x2", "y2"],
            [
                [
                    test.image_ids[i],
                    kind,
                    names[int(test.preds[i]["labels"][k]) - 1],
                    _number(test.preds[i]["scores"][k]),
                    *np.round(np.asarray(test.preds[i]["boxes"], float)[k], 2).tolist(),
                ]
                for i, k, kind in worst
            ],
        ),
        write_rows(
            out_dir / "missed_objects.csv",
            ["image_id", "class", "size_px", "x1", "y1", "x2", "y2"],
            [
                [
                    test.image_ids[i],
                    names[int(test.targets[i]["labels"][j]) - 1],
                    round(float(object_sizes(test.targets[i])[j]), 2),
                    *np.round(np.asarray(test.targets[i]["boxes"], float).reshape(-1, 4)[j], 2),
                ]
                for i, j in missed
            ],
        ),
        _save(figures.pr_curves(analysis, names), out_dir / "pr_curves.png"),
        _save(figures.confusion(analysis, names), out_dir / "confusion_matrix.png"),
        _save(figures.errors(analysis), out_dir / "errors.png"),
        _save(figures.sizes(analysis), out_dir / "sizes.png"),
        _save(figures.false_positive_gallery(test, worst), out_dir / "worst_false_positives.png"),
        _save(figures.missed_gallery(test, missed), out_dir / "missed_objects.png"),
    ]
    return run_markdown(test, analysis, name), files


def run_markdown(test: RunDetections, analysis: RunAnalysis, name: str) -> str:
    """One run's summary: mAP, AP by size, the error breakdown and per-class figures."""
    errors = analysis.errors
    objects = int(analysis.positives.sum())
    sections = [
        f"## {name}",
        f"{len(test.image_ids)} test images, {objects} objects (difficult ones not counted). "
        f"VOC mAP at IoU 0.5 ({'11-point' if test.use_07_metric else 'all-point'}): "
        f"**{percent_cell(analysis.map)}**.",
        "### AP by object size (COCO's rule at IoU 0.5; sqrt(area) in original-image pixels)",
        markdown_table(
            ["size", "px", "objects", "AP", f"found at score >= {analysis.score_threshold:g}"],
            [
                [
                    b.name,
                    f"{b.low:g}–{b.high:g}" if np.isfinite(b.high) else f"{b.low:g}+",
                    b.objects,
                    percent_cell(b.ap),
                    f"{100 * b.found / b.objects:.0f}%" if b.objects else "–",
                ]
                for b in (*analysis.coco_sizes, *analysis.fine_sizes)
            ],
        ),
        "### Errors (TIDE's types: count, and in brackets the dAP, the mAP points gained if that "
        "type alone were fixed; per size by COCO's rule)",
        markdown_table(
            ["objects", *ERROR_TYPES],
            [
                [size, *(f"{found.counts[e]} ({_signed(found.delta_map[e])})" for e in ERROR_TYPES)]
                for size, found in {"all": errors, **analysis.size_errors}.items()
            ],
        ),
        "### Per class (errors in the class of the detection; fixing a cls error also raises "
        "the AP of the object's class, which may have none of its own)",
        markdown_table(
            ["class", "objects", "AP", *(f"{e} (dAP)" for e in ERROR_TYPES)],
            [
                [
                    test.class_names[c],
                    int(analysis.positives[c]),
                    percent_cell(analysis.ap_per_class[c]),
                    *(
                        f"{int(errors.counts_per_class[e][c])} "
                        f"({_signed(float(errors.delta_ap_per_class[e][c]))})"
                        for e in ERROR_TYPES
                    ),
                ]
                for c in range(test.num_classes)
            ],
        ),
        "Figures: pr_curves.png, confusion_matrix.png, errors.png, sizes.png; "
        "worst_false_positives.png (the highest-scored false positives in red, with error "
        "type, class, score and image above; the objects in green) and missed_objects.png (the "
        "largest missed objects). Tables: per_class.csv, sizes.csv, errors.csv, "
        "confusion_matrix.csv, worst_false_positives.csv, missed_objects.csv.",
    ]
    return "\n\n".join(sections)


def _delta_table(
    path: Path, rows: Sequence[DeltaRow], alpha: float
) -> tuple[Path, list[list[Any]]]:
    """Write ``rows`` as CSV to ``path``; return it and the rows of their markdown table, both
    marking the differences significant after Holm's correction over the table."""
    marks = holm([r.difference.p_value for r in rows], alpha)
    csv_rows, markdown_rows = [], []
    for r, significant in zip(rows, marks, strict=True):
        d = r.difference
        values = [_number(v) for v in (r.run, r.baseline, d.delta, d.low, d.high)]
        csv_rows.append([r.name, *values, d.excludes_zero, _number(d.p_value), significant])
        interval = f"[{_signed(d.low)}, {_signed(d.high)}]"
        cells = [percent_cell(r.run), percent_cell(r.baseline), _signed(d.delta), interval]
        markdown_rows.append([r.name, *cells, "*" if significant else ""])
    header = ["name", "run_ap", "baseline_ap", "delta", "low", "high", "excludes_zero", "p", "holm"]
    return write_rows(path, header, csv_rows), markdown_rows


def write_comparison(
    out_dir: Path,
    test: RunDetections,
    pair: tuple[RunAnalysis, RunAnalysis],
    result: Comparison,
    run_name: str,
    baseline_name: str,
    gallery_size: int = 8,
) -> tuple[str, list[Path]]:
    """Write the comparison's tables and figures into ``out_dir`` (the gallery of the
    ``gallery_size`` images where the two differ most, drawn from ``pair``, the first seed's run
    and baseline analyses); return its markdown section and the files written."""
    alpha = 1.0 - result.confidence
    classes = [result.overall, *result.classes]
    classes_csv, class_rows = _delta_table(out_dir / "comparison_classes.csv", classes, alpha)
    sizes_csv, size_rows = _delta_table(out_dir / "comparison_sizes.csv", result.sizes, alpha)
    files = [
        classes_csv,
        sizes_csv,
        write_rows(
            out_dir / "comparison_errors.csv",
            ["size", "type", "run_count", "baseline_count", "run_dap", "baseline_dap"],
            [
                [
                    e.size,
                    e.name,
                    e.run_count,
                    e.baseline_count,
                    _number(e.run_cost),
                    _number(e.baseline_cost),
                ]
                for e in result.errors
            ],
        ),
        write_rows(
            out_dir / "comparison_images.csv",
            ["image_id", "found_by_run_only", "found_by_baseline_only"],
            [[r.image_id, r.run_only, r.baseline_only] for r in result.images],
        ),
        _save(figures.comparison(result, run_name, baseline_name), out_dir / "comparison.png"),
    ]
    picks = most_different(test, result.images, pair, gallery_size)
    files.append(_save(figures.found_gallery(test, picks), out_dir / "found_by_one_side.png"))
    run_only = sum(r.run_only for r in result.images)
    baseline_only = sum(r.baseline_only for r in result.images)
    level = f"{100 * result.confidence:g}%"
    sizes = list(dict.fromkeys(e.size for e in result.errors))
    cost = {(e.name, e.size): (e.run_cost, e.baseline_cost) for e in result.errors}
    sections = [
        f"## {run_name} against {baseline_name}",
        f"{result.seeds} paired seed(s). Differences are run minus baseline, in AP points, with "
        f"the {level} interval of a paired bootstrap over the test images; * "
        + SIGNIFICANCE.format(alpha=f"{100 * alpha:g}%"),
        "### AP per class",
        markdown_table(["class", run_name, baseline_name, "Δ", "interval", ""], class_rows),
        "### AP per object size (sqrt(area), original-image pixels)",
        markdown_table(["size", run_name, baseline_name, "Δ", "interval", ""], size_rows),
        f"### Errors: dAP of {run_name} / {baseline_name} (mAP points gained if that type "
        "alone were fixed; mean over the seeds; counts in comparison_errors.csv)",
        markdown_table(
            ["type", *sizes],
            [
                [name, *(" / ".join(map(_signed, cost[name, size])) for size in sizes)]
                for name in ERROR_TYPES
            ],
        ),
        f"Objects found by {run_name} only: {run_only}; by {baseline_name} only: "
        f"{baseline_only} (summed over the seed pairs, at score >= {pair[0].score_threshold:g}; "
        f"{len(result.images)} images differ, listed in comparison_images.csv).",
        f"Figures: comparison.png; found_by_one_side.png (up to {gallery_size} images where they "
        f"differ most, drawn for the first seed pair: objects found by {run_name} only in red, "
        f"by {baseline_name} only in "
        "blue, the others in green). Tables: comparison_classes.csv, "
        "comparison_sizes.csv, comparison_errors.csv, comparison_images.csv.",
    ]
    return "\n\n".join(sections), files
