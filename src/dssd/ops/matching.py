"""SSD prior-to-ground-truth matching, vectorised over a padded batch."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert

from dssd.ops.boxes import batched_iou

_CHUNK_ELEMENTS = 1 << 18  # IoU entries per chunk of images (CPU)


def match(
    priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou_threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """:func:`match_indices` with the matched ``boxes [B, P, 4]`` xyxy; a background prior is
    "matched" to itself, so its box is finite and encodes to zero offsets."""
    gt_index, labels = match_indices(priors, gt_boxes, gt_labels, iou_threshold)
    boxes = torch.gather(gt_boxes, 1, gt_index[:, :, None].expand(-1, -1, 4))
    boxes = torch.where((labels > 0)[:, :, None], boxes, box_convert(priors, "cxcywh", "xyxy"))
    return boxes, labels


def match_indices(
    priors: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou_threshold: float = 0.5
) -> tuple[Tensor, Tensor]:
    """The ground truth ``gt_index [B, P]`` (where the label is not 0) and class ``labels [B, P]``
    (0 = background) of every cxcywh prior for ``gt_boxes [B, N, 4]`` xyxy and ``gt_labels [B, N]``
    padded with 0: first every ground truth claims its highest-IoU prior (the highest gt index wins
    a tie), then every other prior its highest-IoU ground truth if that IoU > ``iou_threshold``."""
    priors_xyxy = box_convert(priors, "cxcywh", "xyxy")
    # the [B, N, P] IoU and its temporaries are big (32 x 10 x 17080 floats: 22 MB each); a few
    # images at a time keeps them in cache, several times faster on CPU
    chunk = max(1, _CHUNK_ELEMENTS // max(1, gt_labels.shape[1] * len(priors)))
    if gt_labels.device.type == "cpu" and chunk < len(gt_labels):
        parts = []
        for boxes, labels in zip(gt_boxes.split(chunk), gt_labels.split(chunk), strict=True):
            # padding never matches: drop the columns that are padding in every image of the chunk
            width = max(1, int((labels > 0).sum(dim=1).max()))
            if bool((labels[:, :width] > 0).sum() == (labels > 0).sum()):
                boxes, labels = boxes[:, :width], labels[:, :width]
            parts.append(_match(priors_xyxy, boxes, labels, iou_threshold))
        return torch.cat([i for i, _ in parts]), torch.cat([lab for _, lab in parts])
    return _match(priors_xyxy, gt_boxes, gt_labels, iou_threshold)


def _match(
    priors_xyxy: Tensor, gt_boxes: Tensor, gt_labels: Tensor, iou_threshold: float
) -> tuple[Tensor, Tensor]:
    """:func:`match_indices` on xyxy priors."""
    valid = gt_labels > 0
    iou = batched_iou(gt_boxes, priors_xyxy).masked_fill(~valid[:, :, None], -1.0)  # [B, N, P]
    best_iou, best_gt = iou.max(dim=1)  # [B, P]
    # Bipartite step; amax makes the highest gt index win, padding (-1) never claims a prior.
    gt_index = torch.arange(gt_labels.shape[1], device=gt_labels.device).expand_as(gt_labels)
    claimed_by = torch.full_like(best_gt, -1).scatter_reduce(
        1, iou.argmax(dim=2), torch.where(valid, gt_index, -1), reduce="amax"
    )
    forced = claimed_by >= 0
    best_gt = torch.where(forced, claimed_by, best_gt)
    positive = forced | (best_iou > iou_threshold)

    return best_gt, torch.gather(gt_labels, 1, best_gt).masked_fill(~positive, 0)
