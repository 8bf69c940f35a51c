"""What a run reports: W&B offline run contents (read back from the run file), TensorBoard events,
the tables in the paper's layouts, and the COCO results file of eval.py."""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import run_entry_point, run_in_process, tiny_overrides, tiny_run
from dssd.results.tables import results_tables


def wandb_records(path: Path) -> Iterator[Any]:
    """The records (``wandb_internal_pb2.Record``) of an offline W&B run file, to check what a run
    sent to W&B. The file is W&B's own format, a LevelDB-style log: a 7-byte header, then 32 KiB
    blocks of chunks, each with a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle,
    4 last); a block's tail shorter than a chunk header is padding. wandb ships no reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, block, payload = 7, 32768, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        payload += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            payload = b""
            yield record


def wandb_run_contents(run_file: Path) -> dict[str, Any]:
    """An offline W&B run file's run record, config (as JSON texts), summary and exit status."""
    contents: dict[str, Any] = {"runs": [], "config": {}, "summary": {}, "exit_code": None}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            contents["runs"].append(record.run)
        elif kind == "config":
            contents["config"].update({i.key: i.value_json for i in record.config.update})
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                contents["summary"][key] = json.loads(item.value_json)
        elif kind == "exit":
            contents["exit_code"] = record.exit.exit_code
    return contents


def test_each_job_of_a_multirun_is_its_own_wandb_run_and_a_failed_one_says_so(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    """The jobs of one process (``-m``, an Optuna search) logged into the first job's W&B run,
    overwriting its config and summary, and a run stopped by an error showed as finished."""
    proc = run_entry_point(
        "train.py",
        "-m",
        *tiny_overrides(tiny_shapes),
        "schedules.0.warmup_iters=0",
        "schedules.0.lr=1e-3,1e30",  # the second job's loss is not finite: it stops
        f"hydra.sweep.dir={tmp_path}",
        check=False,
    )
    assert "the loss is not finite" in proc.stderr, proc.stderr[-3000:]
    # the configured logger gives wandb.init no setting it deprecates (a warning at every run)
    assert "WARNING The anonymous setting" not in proc.stderr
    for job, lr, exit_code in (("0", 1e-3, 0), ("1", 1e30, 2)):
        (run_file,) = (tmp_path / job).glob("wandb/offline-run-*/run-*.wandb")
        contents = wandb_run_contents(run_file)
        assert json.loads(contents["config"]["paths"])["output_dir"] == str(tmp_path / job)
        assert json.loads(contents["config"]["schedules"])[0]["lr"] == lr
        assert contents["exit_code"] == exit_code
    ok = json.loads((tmp_path / "0" / "test_results.json").read_text())["metrics"]
    (first,) = (tmp_path / "0").glob("wandb/offline-run-*/run-*.wandb")
    summary = wandb_run_contents(first)["summary"]
    assert summary["test/voc_map"] == pytest.approx(ok["test/voc_map"])


def test_wandb_offline_run_holds_metrics_table_and_box_images(tiny_wandb_run: Path) -> None:
    (run_file,) = tiny_wandb_run.glob("wandb/offline-run-*/run-*.wandb")
    files = run_file.parent / "files"
    runs, config, history = [], {}, []
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            runs.append(record.run)
        elif kind == "config":
            config.update({item.key: item.value_json for item in record.config.update})
        elif kind == "history":
            history.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    logged = {key: value for step in history for key, value in step.items()}
    # an evaluation's images and table sit at its scalars' step, not one after
    step_of = {key: step.get("trainer/global_step") for step in history for key in step}
    for role in ("val", "test"):
        assert step_of[f"{role}/per_class_ap/path"] == step_of[f"{role}/voc_map"], role
    assert step_of["val/examples/count"] == step_of["val/voc_map"] is not None

    (run,) = runs
    assert run.display_name == "dssd_r18-pm_c-prod-stage0"
    assert run.run_group == "shapes"
    assert {"model=dssd_r18", "pm=c", "fusion=prod", "stage=0"} <= set(run.tags)
    assert json.loads(config["model"])["net"]["image_size"] == 193  # the resolved config

    for key in ("train/loss", "lr-AdamW", "val/map_50", "val/voc_map", "test/map", "test/voc_map"):
        assert isinstance(logged[key], int | float) and math.isfinite(logged[key]), key

    for role in ("val", "test"):
        table_file = files / logged[f"{role}/per_class_ap/path"]
        table = json.loads(table_file.read_text())
        assert table["columns"] == ["class", "AP"]
        classes = [row[0] for row in table["data"]]
        assert classes == ["circle", "square", "triangle", "star", "cross", "ellipse"]

    assert logged["val/examples/count"] == 8
    images = [files / name for name in logged["val/examples/filenames"]]
    assert all(path.is_file() and path.read_bytes()[:4] == b"\x89PNG" for path in images)
    boxes = logged["val/examples/all_boxes"]
    assert len(boxes) == 8 and all({"predictions", "ground_truth"} <= set(b) for b in boxes)
    truth = json.loads((files / boxes[0]["ground_truth"]["path"]).read_text())
    assert truth["box_data"], "every tiny-shapes validation image has objects"
    assert {"position", "class_id", "box_caption"} <= set(truth["box_data"][0])


@pytest.mark.slow
def test_tensorboard_logger_writes_events(tiny_shapes: Path, tmp_path: Path) -> None:
    run_in_process(
        "train.py",
        *tiny_run(tiny_shapes),
        "logger=tensorboard",
        "trainer.max_steps=1",
        "trainer.val_check_interval=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        f"hydra.run.dir={tmp_path}",
    )
    events = b"".join(p.read_bytes() for p in tmp_path.glob("tensorboard/**/events.out.tfevents.*"))
    assert b"val/map_50" in events and b"test/map_50" in events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (log_dir,) = tmp_path.glob("tensorboard/version_*")
    accumulator = EventAccumulator(str(log_dir)).Reload()
    assert "_hparams_/session_start_info" in accumulator.PluginTagToContent("hparams")
    assert "hp_metric" not in accumulator.Tags()["scalars"]  # no placeholder metric


def test_results_tables_in_the_papers_layouts() -> None:
    metrics = {"test/voc_map": 0.786, "test/map": 0.25, "test/map_50": 0.5, "test/mar_200": 0.4}
    per_class = {"aeroplane": 0.8123, "bicycle": float("nan")}
    text = results_tables(metrics, per_class, name="dssd321")
    assert "| model | mAP | aeroplane | bicycle |" in text
    assert "| dssd321 | 78.6 | 81.2 | – |" in text
    assert "| model | AP | AP50 | AR200 |" in text  # only the logged COCO columns
    assert "| dssd321 | 25.0 | 50.0 | 40.0 |" in text

    coco = results_tables({"test/map": 0.3}, {"person": 0.5}, name="ssd513")
    assert "Table 3" not in coco and "| person | 50.0 |" in coco


def test_the_wandb_run_ends_before_the_test_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B's closing lines (run history, summary, the sync hint) come before the test tables,
    which stay the run's last words: the run is ended before they are written."""
    from omegaconf import OmegaConf

    from dssd.tasks.common import report_test_results

    written = tmp_path / "test_results.md"
    ended = []

    def finish(exit_code: int) -> None:
        ended.append((exit_code, written.exists()))
        fake.run = None

    fake = SimpleNamespace(run=object(), finish=finish)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = OmegaConf.create(
        {"run_name": "r", "task_name": "train", "paths": {"output_dir": str(tmp_path)}, "data": {}}
    )
    model = SimpleNamespace(unscored_test_file=None, per_class_ap={"test": {"circle": 0.5}})
    report_test_results(cfg, model, {"test/voc_map": 0.5})
    assert ended == [(0, False)] and "| r | 50.0 | 50.0 |" in written.read_text()


def test_run_reports_the_test_tables(tiny_shapes: Path, tmp_path: Path) -> None:
    proc = run_in_process(
        "train.py",
        *tiny_run(tiny_shapes),
        "logger=csv",
        "trainer.fast_dev_run=1",
        f"hydra.run.dir={tmp_path}",
    )
    text = (tmp_path / "test_results.md").read_text()
    assert "| model | mAP | circle | square | triangle | star | cross | ellipse |" in text
    assert "Table 6 layout" in text and "Test results" in proc.stderr + proc.stdout


def coco_data(root: Path) -> list[str]:
    """The tiny shapes set read through its COCO annotation files (data=coco)."""
    return [
        "data=coco",
        f"data.root={root}",
        "data.class_names=null",
        "data.train_annotations=annotations/instances_trainval.json",
        "data.train_images=JPEGImages",
        "data.val_holdout=0",
        "data.val_annotations=annotations/instances_val.json",
        "data.val_images=JPEGImages",
        "data.test_annotations=annotations/instances_test.json",
        "data.test_images=JPEGImages",
        "data.batch_size=8",
        "data.num_workers=0",
    ]


def test_eval_writes_coco_results_that_pycocotools_scores_alike(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    results = tmp_path / "detections.json"
    run_in_process(
        "eval.py",
        f"ckpt_path={tiny_checkpoint}",
        *coco_data(tiny_shapes),
        f"coco_results={results}",
        f"hydra.run.dir={tmp_path}",
    )
    text = (tmp_path / "test_results.md").read_text()
    assert "Table 3" not in text and "| class | AP |" in text  # COCO data: Table 6 + per class

    # pycocotools on the written file, at SSD's 200-detection cap, gives the AP eval.py logged
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from test_entry_points import logged_metrics

    truth = COCO(str(tiny_shapes / "annotations" / "instances_test.json"))
    entries = json.loads(results.read_text())
    assert entries and {e["category_id"] for e in entries} <= set(truth.getCatIds())
    evaluator = COCOeval(truth, truth.loadRes(str(results)), "bbox")
    evaluator.params.maxDets = [1, 10, 200]
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 2]  # all areas, 200 detections
    reference = float(precision[precision > -1].mean())
    assert logged_metrics(tmp_path)["test/map"] == pytest.approx(reference, abs=1e-4)


def test_eval_on_an_image_info_file_writes_the_same_detections_and_scores_nothing(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """COCO's test-dev is an image-info file (no annotations): eval.py writes its detections
    for the server under its image and category ids, the same as on the annotated file, and
    prints no scores; without coco_results it refuses before testing."""
    info = json.loads((tiny_shapes / "annotations" / "instances_test.json").read_text())
    del info["annotations"]
    info_file = tmp_path / "image_info_test.json"
    info_file.write_text(json.dumps(info))
    runs = {}
    for name, test_file in (("annotated", "annotations/instances_test.json"), ("info", info_file)):
        results = tmp_path / f"{name}.json"
        runs[name] = run_in_process(
            "eval.py",
            f"ckpt_path={tiny_checkpoint}",
            *coco_data(tiny_shapes),
            f"data.test_annotations={test_file}",
            f"coco_results={results}",
            f"hydra.run.dir={tmp_path / name}",
        )

    def entries(name: str) -> set[tuple]:
        found = json.loads((tmp_path / f"{name}.json").read_text())
        return {(e["image_id"], e["category_id"], *e["bbox"], e["score"]) for e in found}

    assert entries("info") == entries("annotated") and entries("info")
    assert (tmp_path / "annotated" / "test_results.md").is_file()
    assert not (tmp_path / "info" / "test_results.md").exists()
    output = runs["info"].stdout + runs["info"].stderr
    assert f"Nothing scored: {info_file} holds no annotations" in output
    count = len(info["images"])
    assert f"test data: {count} images of an image-info file, without annotations to" in output
    # nothing logged: no table or logger holds the -1s COCO reports without ground truth
    assert "test/map" not in output
    logged = (tmp_path / "info").glob("csv/version_*/metrics.csv")
    assert not any("test/" in f.read_text() for f in logged)
    assert "test/map" in (next((tmp_path / "annotated").glob("csv/*/metrics.csv")).read_text())

    refused = run_in_process(
        "eval.py",
        f"ckpt_path={tiny_checkpoint}",
        *coco_data(tiny_shapes),
        f"data.test_annotations={info_file}",
        f"hydra.run.dir={tmp_path / 'refused'}",
        check=False,
    )
    assert refused.returncode == 2
    assert f"error: {info_file} holds no annotations" in refused.stderr
    assert "coco_results=<file.json>" in refused.stderr


def test_coco_results_need_coco_data(tiny_checkpoint: Path, tmp_path: Path) -> None:
    proc = run_in_process(
        "eval.py",
        f"ckpt_path={tiny_checkpoint}",
        f"coco_results={tmp_path / 'detections.json'}",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode == 2 and "need COCO data (data=coco)" in proc.stderr


@pytest.mark.parametrize(("data", "eleven_point"), [("voc0712", True), ("voc07++12", False)])
def test_voc_data_picks_its_devkit_ap_rule(data: str, eleven_point: bool) -> None:
    from test_configs import compose_train

    assert compose_train(f"data={data}").data.use_07_metric is eleven_point
