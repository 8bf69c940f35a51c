"""src/export.py and dssd.deployment.export: the exported ONNX and TorchScript files detect what the
checkpoint detects, carry their metadata, and score what the checkpoint scores in src/eval.py."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, run_in_process
from dssd.data.voc import read_image
from dssd.deployment.detector import Detector
from dssd.deployment.export import ExportedModel
from dssd.deployment.inference import load_test_data
from dssd.errors import UserError
from dssd.ops import Tolerance, compare_with_network
from dssd.tasks.exporting import check_exported, export_checkpoint
from ties import analysed_ap_ranges, map_range, within

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
numpy_helper = onnx.numpy_helper

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
    """On the same preprocessed test images, the file's detections after NMS are the PyTorch
    detector's, compared as sets: boxes within 1e-3 px (original pixels), scores within 1e-4,
    the same labels; near-tied scores may list them in another order."""
    detector = Detector.from_checkpoint(tiny_checkpoint, precision="32-true")
    model = ExportedModel(exported[fmt])
    images, orig_sizes = detector.preprocess(test_images[:batch_size])

    theirs = model.detect(images, orig_sizes)
    module = detector.module
    agreement = compare_with_network(module.net, module.postprocess, images, orig_sizes, theirs)

    assert len(theirs) == batch_size
    assert agreement.agrees, agreement
    assert agreement.matched > 0


def broken_copy(path: Path, out: Path, edit: Callable[[onnx.ModelProto], None]) -> Path:
    """A copy of the ONNX file ``path`` at ``out``, its graph changed by ``edit``."""
    model = onnx.load(str(path))
    edit(model)
    onnx.save(model, str(out))
    return out


def set_initializer(model: onnx.ModelProto, name: str, change: Callable) -> None:
    (tensor,) = [t for t in model.graph.initializer if t.name == name]
    tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor)), name))


def shift_one_box_head(model: onnx.ModelProto) -> None:
    """The second source layer's box offsets moved by 1 (0.1 x its default boxes' width)."""
    set_initializer(model, "net.heads.loc.1.bias", lambda bias: bias + 1.0)


def loosen_nms(model: onnx.ModelProto) -> None:
    """The NMS threshold of the graph raised from 0.45 to 0.7."""
    (node,) = [n for n in model.graph.node if n.op_type == "NonMaxSuppression"]
    set_initializer(model, node.input[3], lambda iou: np.full_like(iou, 0.7))


@pytest.mark.parametrize("edit", [shift_one_box_head, loosen_nms])
def test_export_check_catches_a_broken_graph(
    exported: dict[str, Path],
    tiny_checkpoint: Path,
    tmp_path: Path,
    edit: Callable[[onnx.ModelProto], None],
) -> None:
    """src/export.py's check, run on a copy of the exported file whose graph was broken on
    purpose, fails with a message naming the detections that differ."""
    detector = Detector.from_checkpoint(tiny_checkpoint, precision="32-true")
    broken = broken_copy(exported["onnx"], tmp_path / "broken.onnx", edit)
    tolerance = Tolerance(
        box_px=EXPORT_DEFAULTS.tolerance_px, score=EXPORT_DEFAULTS.tolerance_score
    )

    with pytest.raises(UserError) as raised:
        check_exported(detector, ExportedModel(broken), tiny_checkpoint, tolerance)
    message = str(raised.value)
    assert message.startswith(f"{broken} disagrees with {tiny_checkpoint} on a batch of 1")
    assert message.endswith("the file stays for a look, not to be used in the checkpoint's place")
    found = re.search(
        r"(\d+) missing, (\d+) extra: (missing|extra) image 0: label \d+ score", message
    )
    assert found, message
    missing, extra = int(found[1]), int(found[2])
    # moved boxes are missing where they were and extra where they went; a looser NMS keeps more
    # boxes (and, at the cap of 200 per image, can push low-scored ones out: missing either way)
    assert extra > 0
    if edit is shift_one_box_head:
        assert missing > 0
    # the intact file passes the same check
    check_exported(detector, ExportedModel(exported["onnx"]), tiny_checkpoint, tolerance)


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
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(UserError, match="folder.onnx is a directory: give an exported file"):
        ExportedModel(tmp_path / "folder.onnx")
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


@pytest.mark.parametrize("text", ["{not json", '{"class_names": ["a"]}', '["a"]', '{"input": 1}'])
def test_damaged_metadata_is_one_error(
    exported: dict[str, Path], tmp_path: Path, text: str
) -> None:
    """Metadata edited by hand (or by another tool) is named, in either format."""
    model = onnx.load(str(exported["onnx"]))
    for prop in model.metadata_props:
        if prop.key == "dssd":
            prop.value = text
    onnx.save(model, str(tmp_path / "edited.onnx"))
    archive = tmp_path / "edited.pt"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(archive), _extra_files={"dssd": text})
    for path in (tmp_path / "edited.onnx", archive):
        with pytest.raises(UserError, match=f"model_file={path}: its 'dssd' metadata is damaged"):
            ExportedModel(path)


def test_an_exported_file_without_its_run_config_cannot_be_scored(tmp_path: Path) -> None:
    """eval.py finds the test data through it; other users of the file do not need it."""
    from dssd.tasks.evaluation import evaluate_exported

    archive = tmp_path / "bare.pt"
    metadata = '{"class_names": ["a"], "input": {"image_size": 8}}'
    torch.jit.save(
        torch.jit.script(torch.nn.Identity()), str(archive), _extra_files={"dssd": metadata}
    )
    assert ExportedModel(archive).class_names == ["a"]
    with pytest.raises(UserError, match="its metadata holds no run_config"):
        evaluate_exported(OmegaConf.create({"model_file": str(archive)}))


def test_eval_of_an_exported_file_refuses_another_precision(exported: dict[str, Path]) -> None:
    """The file computes in float32; bf16 autocast would change the checkpoint's figures (and a
    TorchScript file's) and make a faithful export look broken."""
    from dssd.tasks.evaluation import evaluate_exported

    for precision in ("bf16-mixed", "16-mixed"):
        cfg = {"model_file": str(exported["onnx"]), "trainer": {"precision": precision}}
        with pytest.raises(UserError, match=f"trainer.precision={precision}: an exported file"):
            evaluate_exported(OmegaConf.create(cfg))


def test_eval_of_an_exported_file_refuses_settings_it_would_ignore(
    exported: dict[str, Path], tmp_path: Path
) -> None:
    """Both were accepted without a word: a checkpoint no comparison reads (a broken one too),
    and folding a graph whose batch norms are folded already."""
    from dssd.tasks.evaluation import evaluate_exported

    file = {"model_file": str(exported["onnx"])}
    ignored = {**file, "compare": False, "ckpt_path": str(tmp_path / "broken.ckpt")}
    with pytest.raises(UserError, match=r"compare=false compares with none: drop one of them"):
        evaluate_exported(OmegaConf.create(ignored))
    with pytest.raises(UserError, match=r"fold_bn=true: an exported file's graph has its batch"):
        evaluate_exported(OmegaConf.create({**file, "fold_bn": True}))


def test_a_parity_gap_is_a_warning_that_names_the_checkpoint_exported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dssd.tasks.evaluation import (
        PARITY_TOLERANCE,
        parity,
        parity_table,
        warn_of_disagreement,
    )

    checkpoint = {"test/voc_map": 0.5, "test/map": 0.3}
    exported_from, other = str(tmp_path / "a" / "last.ckpt"), str(tmp_path / "b" / "last.ckpt")
    close = {"test/voc_map": 0.5 + PARITY_TOLERANCE / 2, "test/map": 0.3}
    far = {"test/voc_map": 0.5 + PARITY_TOLERANCE * 2, "test/map": 0.3}
    with caplog.at_level(logging.WARNING, logger="dssd.tasks.evaluation"):
        warn_of_disagreement(parity(close, checkpoint, exported_from), exported_from)
        assert not caplog.records
        warn_of_disagreement(parity(far, checkpoint, exported_from), exported_from)
        (record,) = caplog.records
        assert "disagree by up to 2.00e-03" in record.getMessage()
        assert "was exported from" not in record.getMessage()
        caplog.clear()
        warn_of_disagreement(parity(far, checkpoint, other), exported_from)
        (record,) = caplog.records
        assert f"the file was exported from {exported_from}, not {other}" in record.getMessage()
    # the table says the checkpoint's column is its float32 run, not its own (bf16) test's figures
    table = parity_table(parity(far, checkpoint, exported_from)).splitlines()
    assert table[0] == "| metric | checkpoint (float32) | exported | difference |"
    assert "| voc_map | 0.5000 | 0.5020 | +2.00e-03 |" in table


def test_export_refuses_settings_and_outputs_it_cannot_use(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Before anything is written: an unknown format, a tolerance that is not a gap, an output
    whose suffix is not its format's (eval.py tells formats by suffix), an output that is a
    directory, and an output that is the checkpoint itself (the export would overwrite it)."""
    tolerances = {"tolerance_px": 0.001, "tolerance_score": 1e-4}
    cfg = OmegaConf.create({"ckpt_path": str(tiny_checkpoint), "format": "tflite", **tolerances})
    with pytest.raises(UserError, match="format=tflite: choose one of onnx, torchscript"):
        export_checkpoint(cfg)
    cfg.format, cfg.output = "onnx", str(tmp_path / "model.onnx")
    for name in tolerances:
        for bad in (-1.0, "abc"):
            with pytest.raises(UserError, match=f"{name}={bad}: choose a gap in .* >= 0"):
                export_checkpoint(OmegaConf.merge(cfg, {name: bad}))
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "meta.onnx.json").mkdir()  # where its metadata goes
    for output, problem in (
        (tmp_path / "model", "onnx files end in .onnx"),
        (tmp_path / "model.pt", "onnx files end in .onnx"),
        (tmp_path / "folder.onnx", "is a directory"),
        (tmp_path / "meta.onnx", ".json is a directory"),
    ):
        with pytest.raises(UserError, match=f"output={output}.*{problem}"):
            export_checkpoint(OmegaConf.merge(cfg, {"output": str(output)}))
    assert not any(tmp_path.glob("model*")) and not (tmp_path / "meta.onnx").exists()
    # a checkpoint named like an export: written over by default, so refused
    named_pt = tmp_path / "weights.pt"
    shutil.copy(tiny_checkpoint, named_pt)
    with pytest.raises(UserError, match="is the checkpoint itself"):
        export_checkpoint(
            OmegaConf.merge(
                cfg, {"ckpt_path": str(named_pt), "format": "torchscript", "output": None}
            )
        )
    assert named_pt.read_bytes() == tiny_checkpoint.read_bytes()


def test_the_default_output_is_beside_the_path_given_not_where_a_link_leads(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A link to another run's checkpoint exports beside the link: the file beside its target,
    that run's own export, is left as it was."""
    real = tmp_path / "run" / "last.ckpt"
    real.parent.mkdir()
    shutil.copy(tiny_checkpoint, real)
    (tmp_path / "run" / "last.pt").write_text("that run's export")
    link = tmp_path / "mine" / "model.ckpt"
    link.parent.mkdir()
    link.symlink_to(real)
    cfg = {"ckpt_path": str(link), "format": "torchscript", "output": None}
    assert export_checkpoint(OmegaConf.merge(EXPORT_DEFAULTS, cfg)) == link.with_suffix(".pt")
    assert (tmp_path / "run" / "last.pt").read_text() == "that run's export"
    assert ExportedModel(link.with_suffix(".pt")).metadata["checkpoint"] == str(real)


def test_a_run_trained_in_bf16_exports_and_passes_the_check(
    tiny_bf16_checkpoint: Path, test_images: list, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file of a run trained in bf16 (float32 weights, exported and checked in float32)
    passes src/export.py's check and detects what the checkpoint detects in float32. The
    exporter's own warnings, which ask nothing of the user, stay hidden."""
    path = tmp_path / "bf16.onnx"
    cfg = {"ckpt_path": str(tiny_bf16_checkpoint), "format": "onnx", "output": str(path)}
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        assert export_checkpoint(OmegaConf.merge(EXPORT_DEFAULTS, cfg)) == path
    assert not [r for r in caplog.records if r.name.startswith(("onnx_ir", "onnxscript"))]
    assert not [w for w in caught if "create_unbacked_symint" in str(w.message)]
    detector = Detector.from_checkpoint(tiny_bf16_checkpoint, precision="32-true")
    images, orig_sizes = detector.preprocess(test_images)
    theirs = ExportedModel(path).detect(images, orig_sizes)
    module = detector.module
    agreement = compare_with_network(module.net, module.postprocess, images, orig_sizes, theirs)
    assert agreement.agrees and agreement.matched > 0, agreement


def test_a_torchscript_export_says_once_that_torch_deprecates_it(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """torch.jit warns at each call (trace, save, load) and the tracer of a constant it is right
    to fix (the number of default boxes); the export says it in one line instead."""
    path = tmp_path / "tiny.pt"
    cfg = {"ckpt_path": str(tiny_checkpoint), "format": "torchscript", "output": str(path)}
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        assert export_checkpoint(OmegaConf.merge(EXPORT_DEFAULTS, cfg)) == path
        ExportedModel(path)
    assert not [w for w in caught if "torch.jit" in str(w.message)], caught
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)], caught
    (record,) = [r for r in caplog.records if "TorchScript" in r.getMessage()]
    assert "format=onnx" in record.getMessage()


def test_eval_scores_the_onnx_file_like_its_checkpoint(
    exported: dict[str, Path], tiny_checkpoint: Path, tiny_shapes: Path, tmp_path: Path
) -> None:
    """src/eval.py model_file=...: the same evaluator on the checkpoint's test split, then the
    checkpoint itself beside it; the figures agree to 0.001. The file's VOC mAP also lies in the
    range that near-tied scores allow the checkpoint's float32 detections (tests/ties.py): the
    file is another code path, whose scores may rank near-ties the other way."""
    run_in_process(
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
    # the file computes in float32, and so does the checkpoint it is compared with
    low, high = map_range(analysed_ap_ranges(tiny_checkpoint, precision="32-true"))
    assert within(parity["metrics"]["voc_map"]["exported"], (low, high))
    assert record["metrics"]["test/voc_map"] == parity["metrics"]["voc_map"]["exported"]


def test_eval_refuses_to_compare_with_another_networks_checkpoint(
    exported: dict[str, Path], tiny_wandb_run: Path, tiny_shapes: Path, tmp_path: Path
) -> None:
    """ckpt_path= of a DSSD run beside the SSD file: one error before the test, not a
    state-dict traceback after it."""
    other = tiny_wandb_run / "checkpoints" / "last.ckpt"
    proc = run_in_process(
        "eval.py",
        f"model_file={exported['onnx']}",
        f"ckpt_path={other}",
        f"+data.root={tiny_shapes}",
        "+data.num_workers=0",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: ckpt_path={other} (to compare with {exported['onnx']}) holds another network"
        )
    )
    assert "Testing" not in proc.stdout + proc.stderr
