"""The notebooks run end to end, in a kernel of this interpreter (the venv's), on tiny runs, and
produce their tables and figures."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from conftest import ROOT, TINY_ROWS, TINY_SEEDS, objects_in_size_rows
from ties import analysed_ap_ranges, map_range, within

NOTEBOOKS = ROOT / "notebooks"
CLASSES = ["circle", "square", "triangle", "star", "cross", "ellipse"]
# Table 4's rows: id, name, the paper's VOC2007 test mAP (conf/table4.yaml; the control row
# has none), and the seeds of the tiny_ablation fixture
TABLE4_ROWS = [
    ("ssd_pm_a", "SSD 321", 76.4),
    ("ssd_pm_b", "SSD 321 + PM(b)", 76.9),
    ("ssd_pm_c", "SSD 321 + PM(c)", 77.1),
    ("ssd_pm_d", "SSD 321 + PM(d)", 77.0),
    ("ssd_pm_c_control", "SSD 321 + PM(c), stage 1 without DM (control)", None),
    ("dssd_sum", "SSD 321 + PM(c) + DM(Eltw-sum)", 78.4),
    ("dssd_prod", "SSD 321 + PM(c) + DM(Eltw-prod)", 78.6),
    ("dssd_prod_stage2", "SSD 321 + PM(c) + DM(Eltw-prod) + Stage 2", 77.9),
]
RUNS = [f"{row}/seed{seed}" for row in TINY_ROWS for seed in TINY_SEEDS]


def execute(name: str) -> nbformat.NotebookNode:
    """Run ``notebooks/<name>.ipynb`` in notebooks/ with the ``python3`` kernel of this very
    interpreter (only the native kernel spec: no user-installed one can stand in); a cell that
    raises fails the test (nbclient's CellExecutionError)."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    specs = KernelSpecManager(kernel_dirs=[])
    assert specs.get_kernel_spec("python3").argv[0] == sys.executable
    kernel = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
    client = NotebookClient(
        notebook, km=kernel, timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return notebook


def cell_text(notebook: nbformat.NotebookNode, marker: str) -> str:
    """The printed and displayed text of the code cell whose source contains ``marker``."""
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and marker in c.source]
    texts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            texts.append(output.text)
        elif "text/plain" in output.get("data", {}):
            texts.append(output.data["text/plain"])
    return "\n".join(texts)


def assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, path


def test_notebooks_are_stored_without_outputs() -> None:
    for path in NOTEBOOKS.glob("*.ipynb"):
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path


def test_ablation_notebook(tiny_ablation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSSD_ABLATION_DIR", str(tiny_ablation))
    monkeypatch.delenv("DSSD_WANDB_PROJECT", raising=False)
    notebook = execute("ablation")

    table = cell_text(notebook, "load_table(OUT_DIR)")
    for row, _name, paper in TABLE4_ROWS:
        if row in TINY_ROWS:
            assert row in table and (paper is None or f"{paper:.1f}" in table), row
    assert "delta_low" in table and "ap_small" in table
    for figure in ("voc_map", "per_class_ap", "val_map_50"):
        assert_png(tiny_ablation / "figures" / f"{figure}.png")

    # W&B section: each run's offline run (the fixture logs to W&B, offline) with its test results
    offline = {run: list((tiny_ablation / run).glob("wandb/offline-run-*")) for run in RUNS}
    assert all(len(folders) == 1 for folders in offline.values())
    found = cell_text(notebook, "wandb_offline_runs(done)")
    assert "test/voc_map" in found
    for run, (folder,) in offline.items():
        assert run in found and folder.name.rsplit("-", 1)[-1] in found, run
    # one curve per run, from the CSV log that the W&B logger writes next to its own
    expected = dict.fromkeys(RUNS, "CSV")
    sources = {}
    for line in cell_text(notebook, "run_curve").splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] in expected:
            sources[words[0]] = " ".join(words[1:-1])
            assert int(words[-1]) >= 1, line
    assert sources == expected


def table_rows(text: str, index: str) -> tuple[list[str], list[list[str]]]:
    """A displayed DataFrame (its text form) whose index is named ``index``: the words of its
    first header line and those of each row (the lines below the index's name)."""
    lines = text.strip().splitlines()
    start = [line.strip() for line in lines].index(index)
    return lines[0].split(), [line.split() for line in lines[start + 1 :]]


def test_detections_notebook(
    tiny_checkpoint: Path, tiny_shapes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dssd.analysis.breakdown import COCO_SIZES, fine_size_bounds
    from dssd.analysis.errors import ERROR_TYPES
    from dssd.data.voc import VOCDataset

    # last.ckpt: the weights the run's test scored, which the analysis is checked against
    run_dir = tiny_checkpoint.parent.parent
    monkeypatch.setenv("DSSD_CHECKPOINT", str(run_dir / "checkpoints" / "last.ckpt"))
    monkeypatch.setenv("DSSD_NUM_IMAGES", "3")
    monkeypatch.setenv("DSSD_MIN_SCORE", "0")
    monkeypatch.setenv("DSSD_FIGURE_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("DSSD_ANALYSIS_DIR", str(tmp_path / "analysis"))
    notebook = execute("detections")

    assert_png(tmp_path / "figures" / "detections.png")
    header, *rows = cell_text(notebook, "match_detections(found").strip().splitlines()
    columns = ["image", "objects", "difficult", "detections", "TP", "FP", "ignored", "missed"]
    assert header.split() == columns
    assert len(rows) == 3
    test_set = VOCDataset(tiny_shapes, "test", CLASSES)
    for line, image_id, truth in zip(rows, test_set.ids, test_set.annotations, strict=False):
        image, objects, difficult, detections, tp, fp, ignored, missed = line.split()
        assert image == image_id and int(objects) == len(truth["labels"])
        assert int(difficult) == int(truth["difficult"].sum())
        # at MIN_SCORE=0 every detection counts: TP or FP, or neither on a difficult object
        assert int(detections) > 0 and int(tp) + int(fp) + int(ignored) == int(detections)
        assert int(tp) + int(missed) == int(objects) - int(difficult)

    # the run's analysis, written to DSSD_ANALYSIS_DIR (not into the run directory)
    analysis = tmp_path / "analysis"
    assert (analysis / "summary.md").is_file() and not (run_dir / "analysis").exists()
    figures = ["pr_curves", "errors", "sizes", "confusion_matrix"]
    figures += ["worst_false_positives", "missed_objects"]
    for figure in figures:
        assert_png(analysis / f"{figure}.png")
    (shown,) = [c for c in notebook.cells if c.cell_type == "code" and "display(Image" in c.source]
    pictures = [o for o in shown.outputs if "image/png" in o.get("data", {})]
    assert len(pictures) == len(shown.outputs) == len(figures)
    columns, sizes = table_rows(cell_text(notebook, "sizes.csv"), "bin")
    assert [row[0] for row in sizes] == [*COCO_SIZES, *fine_size_bounds()]
    coco = [dict(zip(["bin", *columns], row, strict=True)) for row in sizes[: len(COCO_SIZES)]]
    objects = sum(int((~truth["difficult"]).sum()) for truth in test_set.annotations)
    in_rows = objects_in_size_rows(tiny_shapes, "test", COCO_SIZES)
    assert sum(int(row["objects"]) for row in coco) == in_rows >= objects
    # the error types as rows; count and dAP of all objects, then of each COCO size
    columns, errors = table_rows(cell_text(notebook, "errors.csv"), "type")
    assert columns == ["count", "dap"] and [row[0] for row in errors] == list(ERROR_TYPES)
    sizes_shown = cell_text(notebook, "errors.csv").splitlines()[1].split()
    assert sizes_shown == ["size", *(["all", *COCO_SIZES] * 2)]
    # the analysed APs are those the run's test logged (its metric, not the analysis's code).
    # The analysis runs the checkpoint again, as the test ran it but through another code path
    # (dssd.Detector), whose scores may differ in their last bits and rank near-ties otherwise:
    # each AP must lie in the range those rankings allow (tests/ties.py)
    metrics = json.loads((run_dir / "test_results.json").read_text())["metrics"]
    logged = 100 * metrics["test/voc_map"]
    assert f"its test logged {logged:.1f}" in cell_text(notebook, "find_run(CKPT)")
    with (analysis / "per_class.csv").open(newline="") as file:
        per_class = {row["class"]: float(row["ap"] or "nan") for row in csv.DictReader(file)}
    ranges = analysed_ap_ranges(run_dir)
    assert list(per_class) == list(ranges) == list(CLASSES)
    for name, bounds in ranges.items():
        assert within(per_class[name], bounds), (name, per_class[name], bounds)
        assert within(metrics[f"test/ap/{name}"], bounds), (name, metrics[f"test/ap/{name}"])
    low, high = map_range(ranges)
    assert within(metrics["test/voc_map"], (low, high))
    summary_map = float(re.search(r"\*\*([\d.]+)\*\*", (analysis / "summary.md").read_text())[1])
    assert 100 * low - 0.05 - 1e-9 <= summary_map <= 100 * high + 0.05 + 1e-9  # printed to 0.1


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DSSD_CHECKPOINT", "nowhere.ckpt", "DSSD_CHECKPOINT=.*nowhere.ckpt: no such checkpoint"),
        ("DSSD_NUM_IMAGES", "0", "DSSD_NUM_IMAGES=0: give the number of images to draw"),
    ],
)
def test_the_detections_notebook_names_a_bad_variable(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """Not a loader's "ckpt_path=..." the reader never set, nor matplotlib's "rows must be
    positive"."""
    monkeypatch.setenv("DSSD_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv(variable, value)
    with pytest.raises(CellExecutionError, match=message):
        execute("detections")


def test_the_ablation_notebook_writes_nothing_where_there_is_no_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped DSSD_ABLATION_DIR got a figures/ folder before the missing table was named."""
    typo = tmp_path / "ablation_typo"
    monkeypatch.setenv("DSSD_ABLATION_DIR", str(typo))
    with pytest.raises(CellExecutionError, match="table4.csv does not exist"):
        execute("ablation")
    assert not typo.exists()
