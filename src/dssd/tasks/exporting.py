"""Export: a checkpoint of src/train.py as one ONNX or TorchScript file (src/export.py), checked
on the spot against the checkpoint's own detections."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from dssd.deployment.detector import Detector
from dssd.deployment.export import (
    FORMATS,
    ExportedModel,
    agreement_with,
    check_format,
    export_detector,
)
from dssd.errors import UserError, check_settings, number, writable_file
from dssd.ops import Tolerance

log = logging.getLogger(__name__)

# batch sizes of the check after export: the example batch of the export has two images
CHECK_BATCH_SIZES = (1, 3)


def export_checkpoint(cfg: DictConfig) -> Path:
    """Write the BN-folded detector of ``cfg.ckpt_path`` with its decoding and NMS as
    ``cfg.format`` at ``cfg.output`` (default: beside the checkpoint), then check the file
    (:func:`check_exported`). Returns the file's path."""
    check_format(cfg.format)
    check_settings(
        cfg,
        ("tolerance_px", number(0), "a gap in pixels >= 0"),
        ("tolerance_score", number(0), "a gap in score >= 0"),
    )
    # the exported graph computes in float32
    detector = Detector.from_checkpoint(cfg.ckpt_path, "cpu", fold_bn=True, precision="32-true")
    checkpoint = Path(cfg.ckpt_path).resolve()
    suffix = FORMATS[cfg.format]
    # beside the path given, not the file a link leads to (whose exported file it would replace)
    output = Path(cfg.output) if cfg.output else Path(cfg.ckpt_path).with_suffix(suffix)
    if output.suffix != suffix:  # eval.py model_file= and ExportedModel tell formats by suffix
        raise UserError(f"output={output}: {cfg.format} files end in {suffix}")
    if output.resolve() == checkpoint:
        raise UserError(
            f"output={output} is the checkpoint itself, which the export would overwrite: give "
            "another output=..."
        )
    writable_file(output, "output")
    writable_file(f"{output}.json", "output")  # the file's metadata beside it
    log.info("Exporting %s as %s to %s", checkpoint, cfg.format, output)
    export_detector(detector, cfg.format, output, checkpoint=checkpoint)
    tolerance = Tolerance(box_px=cfg.tolerance_px, score=cfg.tolerance_score)
    check_exported(detector, ExportedModel(output), checkpoint, tolerance)
    size = detector.image_size
    log.info(
        "Wrote %s (%.1f MiB) and %s.json: input images float32 [batch, 3, %d, %d] (RGB, mean %s, "
        "std %s); outputs num_detections, boxes (xyxy in [0, 1]), scores, labels. Score it "
        "on the test split with: python src/eval.py model_file=%s",
        output,
        output.stat().st_size / 2**20,
        output,
        size,
        size,
        list(detector.mean),
        list(detector.std),
        output,
    )
    return output


def check_exported(
    detector: Detector, exported: ExportedModel, checkpoint: Path, tolerance: Tolerance
) -> None:
    """Compare the detections of ``exported`` and ``detector`` on noise batches as sets
    (:func:`dssd.ops.compare_detections`): a :class:`UserError` naming what differs unless each
    has its partner within ``tolerance`` or a near-tie explains its absence."""
    for batch_size in CHECK_BATCH_SIZES:
        agreement = agreement_with(detector, exported, batch_size, tolerance)
        log.info("batch %d against the checkpoint: %s", batch_size, agreement)
        if not agreement.agrees:
            raise UserError(
                f"{exported.path} disagrees with {checkpoint} on a batch of {batch_size} noise "
                f"images: {agreement} (tolerance_px={tolerance.box_px}, "
                f"tolerance_score={tolerance.score}); the file stays for a look, not to be used "
                "in the checkpoint's place"
            )
