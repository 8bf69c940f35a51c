"""Export: a checkpoint of src/train.py as one ONNX or TorchScript file (src/export.py), checked
on the spot against the checkpoint's own detections."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from dssd.callbacks import writable_directory
from dssd.detector import Detector
from dssd.errors import UserError
from dssd.export import (
    FORMATS,
    ExportedModel,
    check_format,
    export_detector,
    max_box_difference,
)

log = logging.getLogger(__name__)

# batch sizes of the check after export: the example batch of the export has two images
CHECK_BATCH_SIZES = (1, 3)


def export_checkpoint(cfg: DictConfig) -> Path:
    """Write the BN-folded detector of ``cfg.ckpt_path`` with its decoding and NMS as
    ``cfg.format`` at ``cfg.output`` (default: beside the checkpoint), then run the file on batches
    of 1 and 3 noise images and compare its boxes with the checkpoint's detections: a gap above
    ``cfg.tolerance_px`` pixels is an error. Returns the file's path."""
    check_format(cfg.format)
    detector = Detector.from_checkpoint(cfg.ckpt_path, device="cpu", fold_bn=True)
    checkpoint = Path(cfg.ckpt_path).resolve()
    output = Path(cfg.output) if cfg.output else checkpoint.with_suffix(FORMATS[cfg.format])
    writable_directory(output.parent, "output")
    log.info("Exporting %s as %s to %s", checkpoint, cfg.format, output)
    export_detector(detector, cfg.format, output, checkpoint=checkpoint)
    exported = ExportedModel(output)
    gaps = {n: max_box_difference(detector, exported, n) for n in CHECK_BATCH_SIZES}
    for batch_size, gap in gaps.items():
        log.info("batch %d: largest box gap to the checkpoint %.2e px", batch_size, gap)
    if max(gaps.values()) > cfg.tolerance_px:
        raise UserError(
            f"{output} disagrees with {checkpoint}: box gaps {gaps} px exceed "
            f"tolerance_px={cfg.tolerance_px}"
        )
    size = detector.image_size
    log.info(
        "Wrote %s (%.1f MB) and %s.json: input images float32 [batch, 3, %d, %d] (RGB, mean %s, "
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
