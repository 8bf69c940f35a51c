"""Box operations for SSD / DSSD: coding, matching, loss and post-processing."""

from dssd.ops.boxes import (
    batched_iou,
    cxcywh_to_xyxy,
    decode,
    encode,
    pad_targets,
    xyxy_to_cxcywh,
)
from dssd.ops.loss import MultiBoxLoss, hard_negative_mask
from dssd.ops.matching import match, match_indices
from dssd.ops.postprocess import PostProcessor

__all__ = [
    "MultiBoxLoss",
    "PostProcessor",
    "batched_iou",
    "cxcywh_to_xyxy",
    "decode",
    "encode",
    "hard_negative_mask",
    "match",
    "match_indices",
    "pad_targets",
    "xyxy_to_cxcywh",
]
