"""dssd.Detector: a checkpoint run on files, PIL images and arrays gives the detections of the
evaluation pipeline, in original-image pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_lightning.plugins.precision import MixedPrecision, Precision

from dssd import Detector
from dssd.data.voc import read_image
from dssd.deployment.inference import load_test_data
from dssd.errors import UserError
from dssd.models import count_batchnorms
from dssd.ops import Tolerance, compare_detections, compare_with_network


@pytest.fixture(scope="module")
def detector(tiny_checkpoint: Path) -> Detector:
    """The tiny checkpoint as loaded for evaluation: batch norms kept."""
    return Detector.from_checkpoint(tiny_checkpoint, fold_bn=False, batch_size=2)


@pytest.fixture(scope="module")
def test_images(tiny_shapes: Path) -> list[Path]:
    return sorted((tiny_shapes / "JPEGImages").glob("*.jpg"))


def assert_same(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys() == {"boxes", "scores", "labels", "names"}
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(found[key], expected[key]), key
    assert found["names"] == expected["names"]


def test_detector_is_exported_lazily() -> None:
    code = "import sys, dssd.data.shapes; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    import dssd

    assert dssd.Detector is Detector
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = dssd.nothing  # noqa: B018


def test_attributes_come_from_the_checkpoint(detector: Detector) -> None:
    assert detector.image_size == detector.run_config.model.net.image_size == 321
    assert detector.class_names == detector.module.class_names
    assert len(detector.class_names) == 6 and detector.device == torch.device("cpu")
    assert detector.mean == (0.485, 0.456, 0.406) and detector.std == (0.229, 0.224, 0.225)
    assert not detector.module.training
    assert count_batchnorms(detector.module.net) > 0


def test_the_evaluation_pipelines_detections(any_precision_checkpoint: Path) -> None:
    """The reference: the run's test dataloader batch through the hooks Lightning calls in
    testing (eval.py), in the run's precision (Lightning's own precision plugin), here on a
    module rebuilt separately. The same computation: the same detections, bit for bit."""
    detector = Detector.from_checkpoint(any_precision_checkpoint, fold_bn=False, batch_size=4)
    precision = detector.run_config.trainer.precision
    assert detector.precision == precision
    data = load_test_data(detector.run_config, batch_size=4, num_workers=0)
    reference = Detector.from_checkpoint(any_precision_checkpoint, fold_bn=False).module
    batch = next(iter(data.test_dataloader()))
    plugin = MixedPrecision(precision, "cpu") if precision == "bf16-mixed" else Precision()
    with torch.no_grad(), plugin.forward_context():
        expected = reference.predict_step(batch, 0)
    found = detector.predict(list(data.datasets["test"].image_paths[:4]))
    assert len(found) == 4
    for got, want, target in zip(found, expected, batch[1], strict=True):
        assert len(got["scores"]) > 0
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(got[key], want[key]), key
        assert got["boxes"].dtype == torch.float32 and got["labels"].dtype == torch.int64
        height, width = target["orig_size"].tolist()
        assert got["boxes"][:, 2].max() <= width and got["boxes"][:, 3].max() <= height
        assert got["names"] == [detector.class_names[i - 1] for i in got["labels"].tolist()]


def test_a_precision_other_than_the_runs(tiny_checkpoint: Path) -> None:
    detector = Detector.from_checkpoint(tiny_checkpoint, precision="bf16-mixed")
    assert detector.precision == "bf16-mixed"
    with pytest.raises(UserError, match="precision=64-true: the detector runs in one of 32-true"):
        Detector.from_checkpoint(tiny_checkpoint, precision="64-true")


def test_a_path_a_pil_image_and_an_array_agree(
    detector: Detector, test_images: list[Path], tmp_path: Path
) -> None:
    # PNG: lossless, so OpenCV (paths) and PIL decode the same pixels
    png = tmp_path / "image.png"
    Image.open(test_images[0]).save(png)
    array = np.asarray(Image.open(png))
    from_path = detector.predict(png)
    assert isinstance(from_path, dict) and len(from_path["scores"]) > 0
    assert_same(detector.predict(Image.open(png)), from_path)
    assert_same(detector.predict(array), from_path)
    assert_same(detector.predict(str(png)), from_path)
    # RGBA: the alpha channel is dropped
    rgba = np.concatenate([array, np.full_like(array[..., :1], 7)], axis=2)
    assert_same(detector.predict(rgba), from_path)
    assert_same(detector.predict(Image.fromarray(rgba)), from_path)


def test_grayscale_images_are_converted_to_rgb(detector: Detector, test_images: list[Path]) -> None:
    gray = np.asarray(Image.open(test_images[0]).convert("L"))
    expected = detector.predict(np.repeat(gray[..., None], 3, axis=2))
    assert_same(detector.predict(gray), expected)
    assert_same(detector.predict(gray[..., None]), expected)
    assert_same(detector.predict(Image.fromarray(gray)), expected)
    inputs, sizes = detector.preprocess([gray])
    assert inputs.shape == (1, 3, 321, 321) and sizes.tolist() == [list(gray.shape)]
    assert sizes.dtype == torch.int64


def test_sixteen_bit_grey_reads_alike_from_a_file_and_from_pil(
    detector: Detector, test_images: list[Path], tmp_path: Path
) -> None:
    """OpenCV decodes a 16-bit PNG to its high 8 bits; PIL's "I;16" image converted to RGB
    would clip every pixel white, so it is scaled alike."""
    import cv2

    gray = np.asarray(Image.open(test_images[0]).convert("L"))
    png = tmp_path / "grey16.png"
    cv2.imwrite(str(png), gray.astype(np.uint16) * 257)
    expected = detector.predict(gray)
    assert_same(detector.predict(png), expected)
    pil = Image.open(png)
    assert pil.mode.startswith("I")
    assert_same(detector.predict(pil), expected)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_pil_pixels_of_no_known_range_are_refused(detector: Detector, mode: str) -> None:
    """convert("I") of an 8-bit image or a [0, 1] float image: PIL's conversion to RGB would
    clip them, black or nearly, and the network would find nothing."""
    image = Image.new("L", (40, 30), 200).convert(mode)
    with pytest.raises(ValueError, match=f"mode {mode} .*convert it to 8-bit RGB"):
        detector.predict(image)


def test_an_empty_file_is_not_a_readable_image(detector: Detector, tmp_path: Path) -> None:
    """OpenCV's decoder asserts on an empty buffer rather than returning None."""
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty.jpg: not a readable image .*the file is empty"):
        detector.predict(empty)
    with pytest.raises(OSError, match="the file is empty"):
        read_image(empty)


def test_a_list_gives_what_each_image_gives(detector: Detector, test_images: list[Path]) -> None:
    """Batches of 2 against images one by one: another batch composition, which may change the
    last bits of the scores, so the detections are compared as sets."""
    images = [test_images[0], read_image(test_images[1]), Image.open(test_images[2])]
    found = detector.predict(images)  # batches of 2: one full, one partial
    assert isinstance(found, list) and len(found) == 3
    module = detector.module
    for image, detections in zip(images, found, strict=True):
        inputs, sizes = detector.preprocess([image])
        with torch.no_grad(), detector.autocast():  # the detector's precision: only batches differ
            agreement = compare_with_network(
                module.net, module.postprocess, inputs, sizes, [detections], Tolerance(box_px=1e-4)
            )
        assert agreement.agrees and agreement.matched > 0, agreement
    assert detector.predict([]) == []


def test_score_threshold_replaces_the_post_processing_threshold(
    detector: Detector, test_images: list[Path]
) -> None:
    postprocess = detector.module.postprocess
    checkpoints = postprocess.score_threshold
    default = detector.predict(test_images[0])
    assert default["scores"].min() > checkpoints
    # halfway between the 5th score and the next lower one (greedy NMS only lets better boxes
    # suppress a box: the best ones are the same)
    scores = default["scores"]
    count = 5 + int((scores[5:] == scores[4]).sum())
    threshold = float(scores[count - 1 : count + 1].mean())
    found = detector.predict(test_images[0], score_threshold=threshold)
    assert postprocess.score_threshold == checkpoints  # unchanged: a copy took the threshold
    best = {key: default[key][:count] for key in ("boxes", "scores", "labels")}
    agreement = compare_detections([best], [found], Tolerance(box_px=1e-4))
    assert agreement.agrees and agreement.matched == count, agreement
    assert len(detector.predict(test_images[0], score_threshold=1.0)["boxes"]) == 0


def test_folded_batch_norms_give_the_same_detections(
    any_precision_checkpoint: Path, test_images: list[Path]
) -> None:
    """Folding the batch norms into the convolutions changes the scores' last bits only: the
    same detections as sets, in float32 (bf16 would round the folded weights themselves)."""
    folded = Detector.from_checkpoint(any_precision_checkpoint, precision="32-true")
    plain = Detector.from_checkpoint(any_precision_checkpoint, fold_bn=False, precision="32-true")
    assert count_batchnorms(folded.module.net) == 0 and count_batchnorms(plain.module.net) > 0
    inputs, sizes = folded.preprocess(test_images[:3])
    found = folded.module.predict(inputs, sizes)
    module = plain.module
    agreement = compare_with_network(
        module.net, module.postprocess, inputs, sizes, found, Tolerance(box_px=1e-3, score=1e-5)
    )
    assert agreement.agrees, agreement
    assert agreement.matched > 0


def test_bad_inputs(detector: Detector, tmp_path: Path, test_images: list[Path]) -> None:
    missing = tmp_path / "missing.jpg"
    with pytest.raises(UserError, match=f"{missing}: not a readable image"):
        detector.predict(missing)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(UserError, match=f"{text}: not a readable image"):
        detector.predict([test_images[0], text])
    image = read_image(test_images[0])
    with pytest.raises(ValueError, match="must be uint8 RGB, got dtype float32"):
        detector.predict(image.astype(np.float32))
    for shape in [(2, *image.shape), (*image.shape[:2], 2), (0, 5, 3)]:
        with pytest.raises(ValueError, match="must be HxW, HxWx1, HxWx3"):
            detector.predict(np.zeros(shape, np.uint8))
    with pytest.raises(TypeError, match="got int"):
        detector.predict(3)
    with pytest.raises(UserError, match="no such checkpoint file"):
        Detector.from_checkpoint(tmp_path / "none.ckpt")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        Detector(detector.module, detector.run_config, batch_size=0)
