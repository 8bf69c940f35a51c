"""src/predict.py: detections of a checkpoint on a folder, a glob pattern or a video, drawn and
written as one COCO results JSON, with unreadable files skipped and reported."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from conftest import ROOT, run_entry_point
from dssd import Detector
from dssd.data.voc import read_image
from dssd.errors import UserError, user_errors
from dssd.ops import Tolerance, compare_detections
from dssd.tasks.prediction import predict

IMAGES = ["000001.jpg", "000002.jpg", "000003.jpg"]
UNREADABLE = ["broken.jpg", "notes.txt"]


def config(*overrides: str) -> DictConfig:
    """predict.yaml composed with ``overrides``, as src/predict.py composes it."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("predict", overrides=["device=cpu", *overrides])


@pytest.fixture(scope="module")
def folder(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three images of the shapes data, a JPEG cut short after its first bytes and a text file."""
    folder = tmp_path_factory.mktemp("inputs")
    for name in IMAGES:
        shutil.copy(tiny_shapes / "JPEGImages" / name, folder / name)
    (folder / "broken.jpg").write_bytes(
        (tiny_shapes / "JPEGImages" / "000004.jpg").read_bytes()[:200]
    )
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def detector(tiny_checkpoint: Path) -> Detector:
    """The checkpoint as predict.py loads it by default (batch norms folded)."""
    return Detector.from_checkpoint(tiny_checkpoint)


def by_file(entries: list[dict]) -> dict[tuple[str, int | None], list[dict]]:
    found: dict[tuple[str, int | None], list[dict]] = {}
    for entry in entries:
        found.setdefault((entry["file_name"], entry.get("frame")), []).append(entry)
    return found


def as_detections(entries: list[dict]) -> dict[str, torch.Tensor]:
    """COCO results entries of one image as detections (xyxy boxes, scores, labels)."""
    boxes = torch.tensor([e["bbox"] for e in entries]).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
    return {
        "boxes": boxes,
        "scores": torch.tensor([e["score"] for e in entries]),
        "labels": torch.tensor([e["category_id"] for e in entries], dtype=torch.long),
    }


def assert_entries_are(entries: list[dict], detections: dict) -> None:
    """COCO results entries of one image against the Detector's detections of it, as sets (the
    two may come from batches of other images, which can reorder near-tied scores)."""
    assert len({e["image_id"] for e in entries}) == 1
    agreement = compare_detections(
        [detections], [as_detections(entries)], Tolerance(box_px=1e-3, score=1e-6)
    )
    assert agreement.agrees, agreement
    assert agreement.matched == len(entries) == len(detections["scores"]) > 0


def test_a_folder_with_unreadable_files(
    folder: Path,
    any_precision_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The readable images' detections are the Detector's, in the run's precision (also bf16)."""
    detector = Detector.from_checkpoint(any_precision_checkpoint)
    record = predict(
        config(f"ckpt_path={any_precision_checkpoint}", f"input={folder}", f"output_dir={tmp_path}")
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == record
    assert summary["images"] == 3 and summary["outputs"] == {name: name for name in IMAGES}
    assert [s["file"] for s in summary["skipped"]] == UNREADABLE
    for skipped in summary["skipped"]:  # with the decoder's reason
        assert skipped["reason"] == (
            f"not a readable image (cannot decode image {folder / skipped['file']}: not an image "
            "file, or its end is missing)"
        )
    assert summary["score_threshold"] == detector.module.postprocess.score_threshold
    assert [c["name"] for c in summary["categories"]] == list(detector.class_names)
    stdout = capsys.readouterr().out
    assert "Predicted 3 images" in stdout and "skipped 2 files" in stdout
    entries = json.loads((tmp_path / "detections.json").read_text())
    drawn = sum(e["score"] >= summary["draw_threshold"] for e in entries)
    assert summary["drawn_detections"] == drawn
    assert f", {drawn} of them drawn (scoring at least {summary['draw_threshold']:g})" in stdout
    assert f"Outputs in {tmp_path}: 3 drawn files, detections.json" in stdout
    assert all(f"skipped {name}: not a readable image" in stdout for name in UNREADABLE)
    assert all(f"skipping {name}" in caplog.text for name in UNREADABLE)

    entries = json.loads((tmp_path / "detections.json").read_text())
    assert summary["detections"] == len(entries)
    found = by_file(entries)
    assert sorted(found) == [(name, None) for name in IMAGES]
    for name in IMAGES:
        assert_entries_are(found[name, None], detector.predict(folder / name))
        drawn = read_image(tmp_path / name)
        assert drawn.shape == read_image(folder / name).shape


def test_a_stopped_run_keeps_the_detections_of_the_images_done(
    folder: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    predict_batch = Detector.predict

    def stopped_at_the_second_batch(self: Detector, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict_batch(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "predict", stopped_at_the_second_batch)
    with pytest.raises(KeyboardInterrupt):
        predict(
            config(
                f"ckpt_path={tiny_checkpoint}",
                f"input={folder}",
                f"output_dir={tmp_path}",
                "batch_size=1",
                "score_threshold=0.0",
            )
        )
    summary = json.loads((tmp_path / "summary.json").read_text())
    entries = json.loads((tmp_path / "detections.json").read_text())
    assert summary["complete"] is False and summary["images"] == 1
    assert summary["detections"] == len(entries) > 0
    assert {e["file_name"] for e in entries} == {IMAGES[0]}


def test_thresholds(folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    common = [f"ckpt_path={tiny_checkpoint}", f"input={folder}/000001.jpg"]
    predict(config(*common, f"output_dir={tmp_path / 'all'}", "draw_threshold=0"))
    every = json.loads((tmp_path / "all" / "detections.json").read_text())
    # a threshold between two of the scores, so that it keeps some detections and drops others
    # however far the briefly trained checkpoint's scores are from 0.5
    scores = sorted({e["score"] for e in every})
    assert len(scores) >= 2
    threshold = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    predict(
        config(
            *common,
            f"output_dir={tmp_path / 'none'}",
            f"score_threshold={threshold!r}",
            "draw_threshold=2",
        )
    )
    kept = json.loads((tmp_path / "none" / "detections.json").read_text())
    assert 0 < len(kept) < len(every)
    above = as_detections([e for e in every if e["score"] > threshold])
    agreement = compare_detections([above], [as_detections(kept)], Tolerance(box_px=1e-4))
    assert agreement.agrees and agreement.matched == len(kept), agreement
    # boxes change the drawn image; none drawn, it is the input, saved again as a JPEG
    image = read_image(folder / "000001.jpg").astype(float)
    drawn = np.abs(read_image(tmp_path / "all" / "000001.jpg") - image).mean()
    undrawn = np.abs(read_image(tmp_path / "none" / "000001.jpg") - image).mean()
    assert undrawn < 1.5 < drawn


def test_two_inputs_of_one_output_name_keep_both_drawings(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """scan.bmp is drawn as scan.bmp.png, which a scan.bmp.png beside it also takes: the later
    one gets -2 instead of overwriting the first."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = read_image(tiny_shapes / "JPEGImages" / IMAGES[0])
    cv2.imwrite(str(inputs / "scan.bmp"), image)
    cv2.imwrite(str(inputs / "scan.bmp.png"), np.ascontiguousarray(image[::-1]))
    (inputs / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a broken link: reported
    out = tmp_path / "out"
    summary = predict(
        config(f"ckpt_path={tiny_checkpoint}", f"input={inputs}", f"output_dir={out}")
    )
    # each input's drawn file, so that the renamed one can be told
    assert summary["outputs"] == {"scan.bmp": "scan.bmp.png", "scan.bmp.png": "scan.bmp-2.png"}
    assert [s["file"] for s in summary["skipped"]] == ["gone.jpg"]
    assert sorted(p.name for p in out.glob("*.png")) == ["scan.bmp-2.png", "scan.bmp.png"]
    entries = json.loads((out / "detections.json").read_text())
    assert {e["file_name"] for e in entries} == {"scan.bmp", "scan.bmp.png"}


def test_a_glob_pattern_keeps_the_folders_apart(
    folder: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    for sub in ("a", "b"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        shutil.copy(folder / IMAGES[0], tmp_path / "in" / sub / IMAGES[0])
    out = tmp_path / "out"
    record = predict(
        config(f"ckpt_path={tiny_checkpoint}", f"input={tmp_path}/in/*/*.jpg", f"output_dir={out}")
    )
    assert record["outputs"] == {f"{d}/{IMAGES[0]}": f"{d}/{IMAGES[0]}" for d in "ab"}
    assert not record["skipped"]
    assert (out / "a" / IMAGES[0]).is_file() and (out / "b" / IMAGES[0]).is_file()
    entries = by_file(json.loads((out / "detections.json").read_text()))
    assert sorted(entries) == [(f"a/{IMAGES[0]}", None), (f"b/{IMAGES[0]}", None)]


def test_a_video(
    tiny_shapes: Path, tiny_checkpoint: Path, detector: Detector, tmp_path: Path
) -> None:
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (224, 160))
    for name in [*IMAGES, "000004.jpg", "000005.jpg"]:
        writer.write(cv2.resize(cv2.imread(str(tiny_shapes / "JPEGImages" / name)), (224, 160)))
    writer.release()
    capture = cv2.VideoCapture(str(video))
    frames = []
    while (read := capture.read())[0]:
        frames.append(cv2.cvtColor(read[1], cv2.COLOR_BGR2RGB))
    assert len(frames) == 5

    out = tmp_path / "out"
    record = predict(config(f"ckpt_path={tiny_checkpoint}", f"input={video}", f"output_dir={out}"))
    assert record["images"] == 5 and record["outputs"] == {"clip.avi": "clip.avi.mp4"}
    drawn = cv2.VideoCapture(str(out / "clip.avi.mp4"))
    assert drawn.get(cv2.CAP_PROP_FPS) == 5.0
    assert (drawn.get(cv2.CAP_PROP_FRAME_WIDTH), drawn.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (224, 160)
    count = 0
    while drawn.read()[0]:
        count += 1
    assert count == 5
    found = by_file(json.loads((out / "detections.json").read_text()))
    assert sorted(found) == [("clip.avi", index) for index in range(5)]
    for index, detections in enumerate(detector.predict(frames)):
        assert_entries_are(found["clip.avi", index], detections)


def test_a_video_whose_drawn_copy_cannot_be_written(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenCV's MPEG-4 writer refuses frames one pixel wide: the frames are still detected on,
    and the drawn copy, which was listed in the summary without being written, is said to be
    missing instead."""
    video = tmp_path / "thin.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (1, 40))
    for value in (0, 255):
        writer.write(np.full((40, 1, 3), value, np.uint8))
    writer.release()
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        record = predict(
            config(f"ckpt_path={tiny_checkpoint}", f"input={video}", f"output_dir={out}")
        )
    assert record["images"] == 2 and record["outputs"] == {} and record["skipped"] == []
    assert "cannot write the drawn video" in caplog.text and "refuses 1x40 frames" in caplog.text
    assert not list(out.glob("thin*"))
    assert json.loads((out / "summary.json").read_text())["outputs"] == {}


def test_an_input_folder_that_cannot_be_listed_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for a folder of mode 000 (which root lists anyway): it was a PermissionError traceback."""
    from dssd.tasks.prediction import input_files

    def refused(self: Path) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refused)
    with pytest.raises(UserError, match=f"input={tmp_path}: cannot list the folder \\(Permission"):
        input_files(str(tmp_path))


def test_bad_inputs(
    folder: Path, tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing, out = tmp_path / "missing", f"output_dir={tmp_path / 'out'}"
    with pytest.raises(SystemExit) as exit_info, user_errors():
        predict(config(f"ckpt_path={tiny_checkpoint}", f"input={missing}"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: input={missing}: no such file or directory\n"
    (tmp_path / "empty").mkdir()
    for spec in (tmp_path / "empty", f"{tmp_path}/*.png"):
        with pytest.raises(UserError, match=re.escape(f"input={spec}: no files there")):
            predict(config(f"ckpt_path={tiny_checkpoint}", f"input={spec}"))
    with pytest.raises(UserError, match=f"output_dir={folder} holds input files"):
        predict(config(f"ckpt_path={tiny_checkpoint}", f"input={folder}", f"output_dir={folder}"))
    # a folder inside the input's that holds inputs: its a.jpg was drawn over by the top a.jpg
    nest = tmp_path / "nest"
    (nest / "sub").mkdir(parents=True)
    for where in (nest, nest / "sub"):
        shutil.copy(folder / IMAGES[0], where / "a.jpg")
    before = (nest / "sub" / "a.jpg").read_bytes()
    with pytest.raises(UserError, match=r"output_dir=.*sub holds input files \(e.g. .*sub/a.jpg"):
        predict(
            config(
                f"ckpt_path={tiny_checkpoint}", f"input={nest}/**/*.jpg", f"output_dir={nest}/sub"
            )
        )
    assert (nest / "sub" / "a.jpg").read_bytes() == before
    with pytest.raises(UserError, match="no such checkpoint file"):
        predict(config(f"ckpt_path={tmp_path / 'none.ckpt'}", f"input={folder}", out))
    assert not (tmp_path / "out").exists()  # no empty output folder left behind
    for setting, problem in (
        ("batch_size=0", "batch_size=0: choose a whole number >= 1"),
        ("batch_size=2.5", "batch_size=2.5: choose a whole number >= 1"),
        ("score_threshold=2", "score_threshold=2: choose null or a score in [0, 1]"),
        ("score_threshold=high", "score_threshold=high: choose null or a score"),
        ("draw_threshold=null", "draw_threshold=None: choose a score"),
        ("max_logged_images=-1", "max_logged_images=-1: choose a whole number >= 0"),
        ("fold_bn=no", "fold_bn=no: choose true or false"),  # "no" would count as true
    ):
        with pytest.raises(UserError, match=re.escape(problem)):
            predict(config(f"ckpt_path={tiny_checkpoint}", f"input={folder}", out, setting))
    for spec in ("", f"[{folder},{folder}]", "null"):  # a list was read as a glob
        with pytest.raises(UserError, match=r"give one image, video, folder or glob pattern"):
            predict(config(f"ckpt_path={tiny_checkpoint}", f"input={spec}", out))
    (tmp_path / "a_file").write_text("")
    for where, problem in (  # neither can be a directory
        (tmp_path / "a_file", "is a file, not a directory"),
        (tmp_path / "a_file" / "out", ": cannot write there"),
    ):
        with pytest.raises(UserError, match=f"output_dir={where} ?{problem}"):
            predict(
                config(f"ckpt_path={tiny_checkpoint}", f"input={folder}", f"output_dir={where}")
            )
    taken = tmp_path / "taken"
    (taken / "detections.json").mkdir(parents=True)  # a traceback after every image was drawn
    with pytest.raises(UserError, match=f"output_dir={taken} holds a folder detections.json"):
        predict(config(f"ckpt_path={tiny_checkpoint}", f"input={folder}", f"output_dir={taken}"))
    assert list(taken.iterdir()) == [taken / "detections.json"]
    with pytest.raises(UserError, match="device=nowhere: not a device name; choose auto, cpu"):
        predict(config(f"ckpt_path={tiny_checkpoint}", f"input={folder}", out, "device=nowhere"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device=cuda: this machine has no cuda device"):
            predict(config(f"ckpt_path={tiny_checkpoint}", f"input={folder}", out, "device=cuda"))
    # nothing readable: the summary says why, and the command fails (exit status 2)
    unreadable = f"{folder}/*o*"  # broken.jpg and notes.txt
    with pytest.raises(UserError, match=r"could not read any of its 2 files"):
        predict(config(f"ckpt_path={tiny_checkpoint}", f"input={unreadable}", out))
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["images"] == 0


def test_predict_py_logs_a_wandb_table(
    folder: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry point, with its default output_dir and logger=wandb (offline): the table of
    images with their boxes, in the offline run and in the artifact W&B stages for it."""
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    run_dir = tmp_path / "run"
    proc = run_entry_point(
        "predict.py",
        f"ckpt_path={tiny_checkpoint}",
        f"input={folder}",
        "logger=wandb",
        f"hydra.run.dir={run_dir}",
    )
    assert "Predicted 3 images" in proc.stdout and "skipped 2 files" in proc.stdout
    summary = json.loads((run_dir / "predictions" / "summary.json").read_text())
    assert summary["outputs"] == {name: name for name in IMAGES} and len(summary["skipped"]) == 2

    (table_file,) = run_dir.glob("wandb/offline-run-*/files/media/table/predictions_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["file_name", "frame", "image", "detections"]
    assert [row[0] for row in table["data"]] == IMAGES
    # the table with its images, as W&B uploads it on `wandb sync`
    staged = [p for p in (tmp_path / "wandb_data").rglob("*") if p.is_file()]
    texts = [p.read_text() for p in staged if p.read_bytes()[:1] == b"{"]
    tables = [t for t in map(json.loads, texts) if t.get("_type") == "table"]
    assert tables  # W&B may stage a file more than once
    entries = by_file(json.loads((run_dir / "predictions" / "detections.json").read_text()))
    drawn_counts = [sum(e["score"] >= 0.3 for e in entries[name, None]) for name in IMAGES]
    for full in tables:
        images = [row[2] for row in full["data"]]
        assert [image["_type"] for image in images] == ["image-file"] * 3
        boxes = [image.get("boxes", {}).get("predictions", []) for image in images]
        assert [len(b) for b in boxes] == drawn_counts
    assert (run_dir / "csv").is_dir()


def test_boxes_are_drawn_thick_enough_to_see_on_a_large_photo() -> None:
    from dssd.tasks.prediction import draw

    box = {
        "boxes": torch.tensor([[100.0, 100.0, 500.0, 400.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
        "names": ["cat"],
    }
    for height, width, line in ((300, 600, 2), (4000, 6000, 12)):
        drawn = draw(np.zeros((height, width, 3), np.uint8), box, threshold=0.5)
        column = drawn[:, 300].any(axis=1)  # the box's top edge crosses it at rows 100...
        assert column[100 : 100 + line].all() and not column[100 + line + 1 : 200].any()


def test_an_output_dir_used_before_is_said(
    folder: Path, tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its files of other names stay beside a summary.json that does not list them."""
    settings = (
        f"ckpt_path={tiny_checkpoint}",
        f"input={folder}/{IMAGES[0]}",
        f"output_dir={tmp_path}",
    )
    predict(config(*settings))
    assert "holds an earlier prediction's outputs" not in caplog.text
    with caplog.at_level(logging.WARNING):
        predict(config(*settings))
    assert f"output_dir={tmp_path} holds an earlier prediction's outputs" in caplog.text
