"""src/export.py and dssd.export: the exported ONNX and TorchScript files detect what the
checkpoint detects, carry their metadata, and score what the checkpoint scores in src/eval.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, run_entry_point
from dssd.data.voc import read_image
from dssd.detector import Detector
from dssd.errors import UserError
from dssd.export import ExportedModel
from dssd.inference import load_test_data
from dssd.tasks import export_checkpoint

pytest.importorskip("onnxruntime")

EXPORT_DEFAULTS = OmegaConf.load(ROOT / "conf" / "export.yaml")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny checkpoint exported once per format by src/export.py's task, which checks each
    file against the checkpoint after writing it."""
    out = tmp_path_factory.mktemp("exported")
    files = {"onnx": out / "tiny.onnx", "torchscript": out / "tiny.pt"}
    for fmt, path in files.items():
        cfg = OmegaConf.create(
            {"ckpt_path": str(tiny_checkpoint), "format": fmt, "output": str(path)}
        )
        assert export_checkpoint(OmegaConf.merge(EXPORT_DEFAULTS, cfg)) == path
    return files


@pytest.fixture(scope="module")
def test_images(tiny_checkpoint: Path) -> list:
    """The tiny test split's first three images, as RGB arrays of their own sizes."""
    detector = Detector.from_checkpoint(tiny_checkpoint)
    dataset = load_test_data(detector.run_config, batch_size=1).datasets["test"]
    return [read_image(path) for path in dataset.image_paths[:3]]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_exported_detections_equal_pytorch(
    exported: dict[str, Path],
    tiny_checkpoint: Path,
    test_images: list,
    fmt: str,
    batch_size: int,
) -> None:
    """On the same preprocessed test images, the file's boxes after NMS are the PyTorch
    detector's within 1e-3 px (original pixels), with the same labels and scores."""
    detector = Detector.from_checkpoint(tiny_checkpoint)
    model = ExportedModel(exported[fmt])
    images, orig_sizes = detector.preprocess(test_images[:batch_size])

    theirs = model.detect(images, orig_sizes)
    with torch.no_grad():
        ours = detector.module.predict(images, orig_sizes)

    assert len(theirs) == batch_size
    assert sum(len(d["scores"]) for d in ours) > 0
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a["labels"], b["labels"])
        assert (a["boxes"] - b["boxes"]).abs().max() <= 1e-3
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_file_carries_its_metadata(
    exported: dict[str, Path], tiny_checkpoint: Path, fmt: str
) -> None:
    detector = Detector.from_checkpoint(tiny_checkpoint)
    model = ExportedModel(exported[fmt])
    sidecar = json.loads(Path(f"{exported[fmt]}.json").read_text())

    assert model.metadata == sidecar
    assert model.metadata["format"] == fmt
    assert model.class_names == list(detector.class_names)
    assert model.image_size == detector.image_size
    assert model.metadata["input"]["mean"] == list(detector.mean)
    assert model.metadata["input"]["std"] == list(detector.std)
    assert Path(model.metadata["checkpoint"]) == tiny_checkpoint.resolve()
    post = detector.module.postprocess
    assert model.metadata["postprocess"]["max_detections"] == post.max_detections
    # the padded outputs are K = max_detections wide, whatever the batch size
    counts, boxes, scores, labels = model(torch.zeros(2, 3, model.image_size, model.image_size))
    assert counts.shape == (2,) and boxes.shape == (2, post.max_detections, 4)
    assert scores.shape == labels.shape == (2, post.max_detections)


def test_exported_model_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        ExportedModel(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("not a model")
    with pytest.raises(UserError, match="not a readable ONNX model"):
        ExportedModel(text)
    with pytest.raises(UserError, match=r"\.onnx or \.pt"):
        ExportedModel(text.rename(tmp_path / "notes.txt"))
    archive = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(archive))
    with pytest.raises(UserError, match="metadata"):
        ExportedModel(archive)


def test_export_rejects_an_unknown_format(tiny_checkpoint: Path) -> None:
    cfg = OmegaConf.create({"ckpt_path": str(tiny_checkpoint), "format": "tflite"})
    with pytest.raises(UserError, match="format=tflite: choose one of onnx, torchscript"):
        export_checkpoint(cfg)


def test_eval_scores_the_onnx_file_like_its_checkpoint(
    exported: dict[str, Path], tiny_checkpoint: Path, tiny_shapes: Path, tmp_path: Path
) -> None:
    """src/eval.py model_file=...: the same evaluator on the checkpoint's test split, then the
    checkpoint itself beside it; the figures agree to 0.001."""
    run_entry_point(
        "eval.py",
        f"model_file={exported['onnx']}",
        f"+data.root={tiny_shapes}",
        "+data.batch_size=3",
        "+data.num_workers=0",
        f"hydra.run.dir={tmp_path}",
    )
    record = json.loads((tmp_path / "test_results.json").read_text())

    assert record["tested_model_file"] == str(exported["onnx"])
    assert record["format"] == "onnx"
    parity = record["parity"]
    assert Path(parity["checkpoint"]) == tiny_checkpoint.resolve()
    assert set(parity["metrics"]) >= {"voc_map", "map", "map_50"}
    assert parity["max_abs_difference"] <= 0.001
    assert record["metrics"]["test/voc_map"] == parity["metrics"]["voc_map"]["exported"]
