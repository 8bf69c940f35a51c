"""Test results in the layout of the paper's tables, as markdown, next to the run's logs.

VOC data gets Table 3's row (VOC mAP and the AP of each class); every dataset gets Table 6's COCO
row (AP at IoU 0.5:0.95, 0.5, 0.75, by object size, and AR by detection cap and size; the caps
are 1/10/200 by default, SSD's, 1/10/100 in COCO's protocol). Values are percentages with one
decimal, as in the paper.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

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


def _percent(value: float | None) -> str:
    if value is None or math.isnan(value) or value < 0:
        return "–"
    return f"{100 * value:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_tables(
    metrics: Mapping[str, float],
    per_class_ap: Mapping[str, float],
    name: str,
    role: str = "test",
) -> str:
    """Markdown tables of ``role``'s metrics (as logged, e.g. ``test/map``) for the run ``name``.

    ``per_class_ap`` maps class names to AP (NaN: no ground truth); with a VOC mAP logged
    (``<role>/voc_map``) they form Table 3's row, otherwise (COCO) a class / AP list.
    """
    sections = []
    voc_map = metrics.get(f"{role}/voc_map")
    if voc_map is not None:
        header = ["model", "mAP", *per_class_ap]
        row = [name, _percent(voc_map), *(_percent(ap) for ap in per_class_ap.values())]
        sections.append("VOC mAP @ IoU 0.5 (Table 3 layout)\n\n" + _table(header, [row]))
    columns = {h: k for h, k in COCO_COLUMNS.items() if f"{role}/{k}" in metrics}
    coco_row = [name, *(_percent(metrics[f"{role}/{key}"]) for key in columns.values())]
    coco_table = _table(["model", *columns], [coco_row])
    sections.append("COCO metrics (Table 6 layout)\n\n" + coco_table)
    if voc_map is None and per_class_ap:
        rows = [[cls, _percent(ap)] for cls, ap in per_class_ap.items()]
        sections.append("COCO AP per class\n\n" + _table(["class", "AP"], rows))
    return "\n\n".join(sections) + "\n"


def write_results(text: str, directory: str | Path, role: str = "test") -> Path:
    """Write the tables to ``<directory>/<role>_results.md`` and return the path."""
    path = Path(directory) / f"{role}_results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_results_json(record: Mapping, directory: str | Path, role: str = "test") -> Path:
    """Write ``record`` (metrics, per-class AP, parameter counts, timings) to
    ``<directory>/<role>_results.json``, the machine-readable twin of the markdown tables that
    ``make ablation`` and the notebooks read. NaN (a class without ground truth) becomes null."""
    path = Path(directory) / f"{role}_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(record), indent=2) + "\n")
    return path


def _json_safe(value):
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
