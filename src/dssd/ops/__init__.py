"""Box operations for SSD / DSSD: coding, matching, loss and post-processing."""

from dssd.ops.agreement import Agreement, Tolerance, compare_detections, compare_with_network
from dssd.ops.boxes import BoxCoder, batched_iou, pad_targets
from dssd.ops.loss import MultiBoxLoss, hard_negative_mask
from dssd.ops.matching import match, match_indices
from dssd.ops.postprocess import GraphPostProcessor, PostProcessor

__all__ = [
    "Agreement",
    "BoxCoder",
    "GraphPostProcessor",
    "MultiBoxLoss",
    "PostProcessor",
    "Tolerance",
    "batched_iou",
    "compare_detections",
    "compare_with_network",
    "hard_negative_mask",
    "match",
    "match_indices",
    "pad_targets",
]
