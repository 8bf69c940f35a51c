"""The released SSD code's prior matching (Caffe's ``MatchBBox``: greedy bipartite, then per
prior), one image at a time and written as its loops: the reference of the vectorised
``dssd.ops.match`` and of the loss tests."""

from __future__ import annotations

import torch
from torchvision.ops import box_convert, box_iou


def reference_match_indices(
    priors: torch.Tensor, boxes: torch.Tensor, threshold: float
) -> torch.Tensor:
    """The ground truth of each cxcywh prior of one image, ``[P]`` (-1: background): while a
    ground truth is unmatched, the highest-IoU pair of an unmatched ground truth and an unclaimed
    prior is matched, if they overlap at all; then every other prior takes its highest-IoU ground
    truth when that IoU > ``threshold``."""
    gt_of = torch.full((len(priors),), -1, dtype=torch.int64)
    if len(boxes) == 0:
        return gt_of
    iou = box_iou(boxes, box_convert(priors, "cxcywh", "xyxy"))  # [N, P]
    pool = iou.clone()
    for _ in range(len(boxes)):
        j, p = divmod(int(pool.argmax()), pool.shape[1])
        if pool[j, p] <= 0:
            break
        gt_of[p] = j
        pool[j, :], pool[:, p] = -1.0, -1.0
    best_iou, best_gt = iou.max(dim=0)
    return torch.where((gt_of < 0) & (best_iou > threshold), best_gt, gt_of)
