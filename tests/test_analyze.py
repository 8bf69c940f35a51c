"""src/analyze.py: a tiny run's analysis (every figure and table, the W&B run), a comparison with
another run on the same test images, and clear errors for run directories that lack what it
needs."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from conftest import ROOT, objects_in_size_rows, run_in_process
from dssd.analysis import analyser
from dssd.analysis.analyser import Analyser, Options, config_of_test, find_run, load_test_split
from dssd.analysis.breakdown import COCO_SIZES, fine_size_bounds
from dssd.data.voc import write_voc_results
from dssd.deployment.inference import load_checkpoint
from dssd.errors import UserError
from dssd.tasks.analysis import analyze
from test_reporting import wandb_run_contents
from ties import analysed_ap_ranges, map_range, within

RUN_FILES = [
    "summary.md",
    "per_class.csv",
    "sizes.csv",
    "errors.csv",
    "confusion_matrix.csv",
    "worst_false_positives.csv",
    "missed_objects.csv",
    "pr_curves.png",
    "confusion_matrix.png",
    "errors.png",
    "sizes.png",
    "worst_false_positives.png",
    "missed_objects.png",
]
COMPARISON_FILES = [
    "comparison_classes.csv",
    "comparison_sizes.csv",
    "comparison_errors.csv",
    "comparison_images.csv",
    "comparison.png",
    "found_by_one_side.png",
]
CLASSES = ["circle", "square", "triangle", "star", "cross", "ellipse"]


def config(*overrides: str) -> DictConfig:
    """analyze.yaml composed with ``overrides``, as src/analyze.py composes it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("analyze", overrides=["device=cpu", "bootstrap_samples=50", *overrides])


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def analysed(tiny_wandb_run: Path, tiny_checkpoint: Path, tmp_path_factory) -> Path:
    """The tiny DSSD run (W&B, offline) analysed against the tiny SSD run, gallery of 4."""
    out = tmp_path_factory.mktemp("analysis")
    analyze(
        config(
            f"run={tiny_wandb_run}",
            f"baseline={tiny_checkpoint.parent.parent}",
            f"out_dir={out}",
            "gallery_size=4",
        )
    )
    return out


def test_every_figure_and_table_is_written(
    analysed: Path, tiny_wandb_run: Path, tiny_shapes: Path
) -> None:
    for name in [*RUN_FILES, *COMPARISON_FILES]:
        assert (analysed / name).is_file(), name
        if name.endswith(".png"):
            with Image.open(analysed / name) as picture:
                assert picture.width > 100 and picture.height > 100
    per_class = read_csv(analysed / "per_class.csv")
    assert [row["class"] for row in per_class] == CLASSES
    objects = sum(int(row["objects"]) for row in per_class)
    sizes = read_csv(analysed / "sizes.csv")
    for kind, bounds in (("coco", COCO_SIZES), ("fine", fine_size_bounds())):
        in_rows = objects_in_size_rows(tiny_shapes, "test", bounds)
        assert sum(int(r["objects"]) for r in sizes if r["kind"] == kind) == in_rows >= objects
    # the analysed mAP is the one the run's test logged, to the rankings of near-tied scores
    # that the analysis's run of the checkpoint, another code path, may give (tests/ties.py)
    logged = json.loads((tiny_wandb_run / "test_results.json").read_text())["metrics"]
    low, high = map_range(analysed_ap_ranges(tiny_wandb_run))
    assert within(logged["test/voc_map"], (low, high))
    summary = (analysed / "summary.md").read_text()
    summary_map = float(re.search(r"\*\*([\d.]+)\*\*", summary)[1])
    assert 100 * low - 0.05 - 1e-9 <= summary_map <= 100 * high + 0.05 + 1e-9  # printed to 0.1
    assert "## " in summary and "against" in summary
    with (analysed / "confusion_matrix.csv").open() as file:
        matrix = list(csv.reader(file))
    assert matrix[0][1:] == [*CLASSES, "background"] and len(matrix) == len(CLASSES) + 2
    assert len(read_csv(analysed / "worst_false_positives.csv")) == 4
    comparison = read_csv(analysed / "comparison_classes.csv")
    assert [row["name"] for row in comparison] == ["all", *CLASSES]


def test_a_wandb_run_gets_the_analysis_logged(analysed: Path) -> None:
    """The analysed run logged to W&B, so the analysis is logged to an offline W&B run in the
    analysis folder: its figures as images, its tables as tables."""
    (run,) = analysed.glob("wandb/offline-run-*")
    images = {p.name.split("_")[0] for p in run.glob("files/media/images/analysis/*.png")}
    assert {"pr", "confusion", "errors", "sizes", "comparison"} <= images
    tables = list(run.glob("files/media/table/analysis/*.table.json"))
    assert any(p.name.startswith("per_class") for p in tables)
    # a figure and its table (errors.png, errors.csv) under two keys: the table was replaced
    (run_file,) = run.glob("run-*.wandb")
    summary = wandb_run_contents(run_file)["summary"]
    for stem in ("errors", "sizes", "confusion_matrix"):
        assert (analysed / f"{stem}.png").is_file() and (analysed / f"{stem}.csv").is_file()
        assert summary[f"analysis/{stem}/_type"] == "images/separated"
        assert f"analysis/{stem}/nrows" not in summary
        assert summary[f"analysis/{stem}_table/_type"] == "table-file"


def test_a_checkpoint_alone_is_analysed(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A checkpoint file (best.ckpt, which the run's test did not use): analysed by running it,
    without a W&B run (the tiny run logged to CSV)."""
    summary = analyze(config(f"run={tiny_checkpoint}", f"out_dir={tmp_path}", "gallery_size=2"))
    assert summary == tmp_path / "summary.md"
    assert all((tmp_path / name).is_file() for name in RUN_FILES)
    assert not (tmp_path / "wandb").exists()


def test_voc_results_are_read_only_for_the_weights_the_test_used(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's voc_results/ hold its tested weights' detections (last.ckpt here): the run and
    that checkpoint read them, best.ckpt is run again, and reading them for best.ckpt is refused.
    The files name an image outside the test set, so reading them is an error."""
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    (run / "voc_results").mkdir()
    (run / "voc_results" / "comp4_det_test_circle.txt").write_text("elsewhere 0.9 1 2 3 4\n")
    for tested in (run, run / "checkpoints" / "last.ckpt"):
        with pytest.raises(UserError, match="cannot read its test detections"):
            analyze(config(f"run={tested}", f"out_dir={tmp_path / 'out'}"))
    other = run / "checkpoints" / tiny_checkpoint.name
    summary = analyze(config(f"run={other}", f"out_dir={tmp_path / 'best'}", "gallery_size=0"))
    assert summary.is_file()
    monkeypatch.setattr(analyser, "load_test_split", None)  # said before the test data is read
    with pytest.raises(UserError, match="not of .*best.ckpt; use detections=checkpoint"):
        analyze(config(f"run={other}", "detections=voc_results", f"out_dir={tmp_path / 'x'}"))


def test_a_score_unlike_the_logged_one_says_why_it_may_differ(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The analysed mAP is checked against the mAP the run's test logged; the warning names a
    test on part of the split when the run's config says so, else other boxes."""
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    results = json.loads((run / "test_results.json").read_text())
    results["metrics"]["test/voc_map"] += 0.25
    (run / "test_results.json").write_text(json.dumps(results))

    def warning(out: str) -> str:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dssd.analysis.analyser"):
            analyze(config(f"run={run}", f"out_dir={tmp_path / out}", "gallery_size=1"))
        (record,) = [r for r in caplog.records if "its test logged" in r.getMessage()]
        return record.getMessage()

    assert "the checkpoint detects other boxes" in warning("whole")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    for limit in (2, 1):  # batches; Lightning's 1.0, a float, is the whole split
        checkpoint["hyper_parameters"]["run_config"]["trainer"]["limit_test_batches"] = limit
        torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
        assert f"trainer.limit_test_batches={limit}" in warning(f"part{limit}")


def test_missing_pieces_are_named(tiny_checkpoint: Path, tmp_path: Path) -> None:
    run = tiny_checkpoint.parent.parent
    no_results = tmp_path / "no_results"
    shutil.copytree(run / "checkpoints", no_results / "checkpoints")
    with pytest.raises(UserError, match="has no test_results.json"):
        analyze(config(f"run={no_results}"))
    no_checkpoint = tmp_path / "no_checkpoint"
    no_checkpoint.mkdir()
    shutil.copy(run / "test_results.json", no_checkpoint)
    with pytest.raises(UserError, match=r"checkpoint its test used .* is missing"):
        analyze(config(f"run={no_checkpoint}"))
    with pytest.raises(UserError, match="no such run directory"):
        analyze(config(f"run={tmp_path / 'nowhere'}"))
    with pytest.raises(UserError, match="one baseline per run"):
        analyze(config(f"run=[{run},{run}]", f"baseline={run}"))
    with pytest.raises(UserError, match="wandb=sometimes"):
        analyze(config(f"run={run}", "wandb=sometimes"))
    with pytest.raises(UserError, match=f"baseline={tmp_path / 'nowhere'}: no such run"):
        analyze(config(f"run={run}", f"baseline={tmp_path / 'nowhere'}"))
    with pytest.raises(UserError, match="are the same run"):
        analyze(config(f"run={run}", f"baseline={run}", f"out_dir={tmp_path / 'out'}"))


def test_a_baseline_tested_on_other_classes_is_refused_before_detecting(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tiny_checkpoint.parent.parent
    other = tmp_path / "other"
    shutil.copytree(run / "checkpoints", other / "checkpoints")
    results = json.loads((run / "test_results.json").read_text())
    results["test_data"]["class_names"] = results["test_data"]["class_names"][::-1]
    (other / "test_results.json").write_text(json.dumps(results))
    monkeypatch.setattr(Analyser, "__call__", lambda *_: pytest.fail("detected first"))
    with pytest.raises(UserError, match="a comparison needs the same test data"):
        analyze(config(f"run={run}", f"baseline={other}", f"out_dir={tmp_path / 'out'}"))


def test_damaged_results_and_an_out_dir_that_is_a_file_are_named(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=f"out_dir={tmp_path / 'a_file'} is a file, not a dir"):
        analyze(config(f"run={run}", f"out_dir={tmp_path / 'a_file'}"))
    # a run's record given for the run: was torch.load's failure, "not a checkpoint"
    record = run / "test_results.json"
    with pytest.raises(UserError, match=re.escape(f"give the run directory (run={run})")):
        analyze(config(f"run={record}"))
    # ("{}" counted as a finished run, with "–" for every figure in Table 4)
    damaged = (
        ('{"metrics": {', "not valid JSON"),
        ("[]", "holds a list"),
        ("{}", "holds no metrics"),
    )
    for text, problem in damaged:
        (run / "test_results.json").write_text(text)
        with pytest.raises(UserError, match=f"test_results.json: {problem}"):
            analyze(config(f"run={run}"))


def test_a_moved_run_reads_its_own_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """test_results.json names the tested checkpoint by its path when tested: after a move (or
    a copy), the run's own copy of it is the one analysed."""
    run = tmp_path / "moved"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    results = json.loads((run / "test_results.json").read_text())
    results["tested_checkpoint"] = str(tmp_path / "before" / "checkpoints" / "best.ckpt")
    (run / "test_results.json").write_text(json.dumps(results))
    found = find_run(run)
    assert found.checkpoint == run / "checkpoints" / "best.ckpt" and found.test_results


def test_runs_that_share_a_checkpoint_keep_their_own_detections(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two eval.py runs of one checkpoint (say, folded and not): each directory's voc_results
    are its own; the mAP warning says that the files, not the checkpoint, differ from the test.
    The analysis rebuilds the data the test recorded."""
    results = json.loads((tiny_checkpoint.parent.parent / "test_results.json").read_text())
    assert Path(results["test_data"]["root"]) == Path(load_checkpoint(tiny_checkpoint)[1].data.root)
    results["tested_checkpoint"] = str(tiny_checkpoint)
    runs = []
    for name in ("none_found", "all_found"):
        run = tmp_path / name
        run.mkdir()
        (run / "test_results.json").write_text(json.dumps(results))
        runs.append(find_run(run))
    split = load_test_split(config_of_test(runs[0]))
    nothing = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    truth = [{**t, "scores": np.ones(len(t["labels"]))} for t in split.targets]
    for run, found in zip(runs, ([nothing] * len(truth), truth), strict=True):
        write_voc_results(run.directory / "voc_results", split.image_ids, found, split.class_names)
    analyser = Analyser(Options(device="cpu"))
    with caplog.at_level(logging.WARNING, logger="dssd.analysis.analyser"):
        maps = [analyser(run)[1].map for run in runs]
    assert maps == [0.0, pytest.approx(1.0)]
    assert "its voc_results/ files are not those its test wrote" in caplog.text


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("score_threshold=2", "score_threshold=2: choose a score in [0, 1]"),
        ("gallery_size=-1", "gallery_size=-1: choose a whole number >= 0"),
        (
            "bootstrap_samples=0",
            "bootstrap_samples=0: choose a whole number >= 2 / (1 - confidence) = 40",
        ),
        # one draw would put the interval beside the difference: "significant" by construction
        (
            "bootstrap_samples=1",
            "bootstrap_samples=1: choose a whole number >= 2 / (1 - confidence) = 40",
        ),
        ("confidence=95", "confidence=95: choose a level in (0, 1)"),
        ("batch_size=0", "batch_size=0: choose null or >= 1"),
        ("detections=files", "detections=files: choose auto, voc_results or checkpoint"),
        ("device=nowhere", "device=nowhere: not a device name; choose auto, cpu, cuda,"),
        # it named nothing, without a word
        ("baseline_name=ssd", "baseline_name=ssd names the baseline, but no baseline=<run>"),
    ],
)
def test_settings_no_analysis_can_use_are_refused_before_detecting(
    tiny_checkpoint: Path, tmp_path: Path, setting: str, problem: str
) -> None:
    out_dir = tmp_path / "analysis"
    with pytest.raises(UserError) as err:
        analyze(config(f"run={tiny_checkpoint}", setting, f"out_dir={out_dir}"))
    assert str(err.value).startswith(problem) and not out_dir.exists()


def test_a_refused_baseline_leaves_no_out_dir_behind(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The folder was made before the runs were read: by default inside the run, empty."""
    foreign, out_dir = tmp_path / "foreign.ckpt", tmp_path / "analysis"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(UserError, match="is not a checkpoint written by src/train.py"):
        analyze(config(f"run={tiny_checkpoint}", f"baseline={foreign}", f"out_dir={out_dir}"))
    assert not out_dir.exists()


@pytest.mark.slow
def test_analyze_py_prints_an_error(tmp_path: Path) -> None:
    """The command line (the in-process test above checks the messages)."""
    proc = run_in_process("analyze.py", f"run={tmp_path}", check=False)
    assert proc.returncode == 2
    assert f"error: run={tmp_path}: the run directory has no test_results.json" in proc.stderr


def test_a_wandb_refusal_is_a_warning_after_the_files(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An online run's project on a machine without a W&B login: the analysis is written, and
    W&B's refusal is one warning, not a traceback."""
    import wandb.errors

    def refuse(*args, **kwargs):
        raise wandb.errors.UsageError("No API key configured")

    monkeypatch.setattr("dssd.analysis.analyser.log_files", refuse)
    with caplog.at_level(logging.WARNING, logger="dssd.analysis.analyser"):
        summary = analyze(
            config(f"run={tiny_checkpoint}", f"out_dir={tmp_path}", "wandb=true", "gallery_size=0")
        )
    assert summary.is_file()
    assert "Did not log the analysis to W&B (No API key configured)" in caplog.text


def test_test_data_that_moved_is_found_with_data_root(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The run's test data is no longer where its test read it: named, with the setting that
    gives its new place (nothing is built there), and analysed from there with data_root."""
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    results = json.loads((run / "test_results.json").read_text())
    moved_from = tmp_path / "gone"
    data_root = results["test_data"]["root"]
    results["test_data"]["root"] = str(moved_from)
    (run / "test_results.json").write_text(json.dumps(results))
    with pytest.raises(UserError, match=f"no complete shapes dataset in {moved_from}.*data_root="):
        analyze(config(f"run={run}", f"out_dir={tmp_path / 'a'}", "gallery_size=0"))
    assert not moved_from.exists()
    analyze(
        config(
            f"run={run}", f"out_dir={tmp_path / 'b'}", "gallery_size=0", f"data_root={data_root}"
        )
    )
    assert (tmp_path / "b" / "summary.md").is_file()
