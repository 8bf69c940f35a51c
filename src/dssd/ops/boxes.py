"""Box format conversions, batched IoU, SSD box coding and target padding."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

Variances = tuple[float, float, float, float]


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """Convert ``(cx, cy, w, h)`` boxes to ``(x1, y1, x2, y2)``; any leading dims."""
    cxcy, wh = boxes[..., :2], boxes[..., 2:]
    return torch.cat([cxcy - 0.5 * wh, cxcy + 0.5 * wh], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """Convert ``(x1, y1, x2, y2)`` boxes to ``(cx, cy, w, h)``; any leading dims."""
    x1y1, x2y2 = boxes[..., :2], boxes[..., 2:]
    return torch.cat([0.5 * (x1y1 + x2y2), x2y2 - x1y1], dim=-1)


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def batched_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of every pair of xyxy boxes, image by image.

    Args:
        boxes1: ``[B, N, 4]``.
        boxes2: ``[P, 4]`` (shared by all images, e.g. the priors) or ``[B, P, 4]``.

    Returns:
        ``[B, N, P]``. Same arithmetic as :func:`torchvision.ops.box_iou`, so a zero
        (padding) box has IoU 0 with any box of positive area.
    """
    if boxes2.dim() == 2:
        boxes2 = boxes2.unsqueeze(0)
    # one coordinate at a time: contiguous [B, N, P] tensors, no strided [B, N, P, 2] ones
    a = [c[:, :, None] for c in boxes1.unbind(-1)]
    b = [c[:, None, :] for c in boxes2.unbind(-1)]
    w = (torch.min(a[2], b[2]) - torch.max(a[0], b[0])).clamp(min=0)
    h = (torch.min(a[3], b[3]) - torch.max(a[1], b[1])).clamp(min=0)
    inter = w * h
    union = _area(boxes1)[:, :, None] + _area(boxes2)[:, None, :] - inter
    return inter / union


def encode(matched_xyxy: Tensor, priors: Tensor, variances: Variances) -> Tensor:
    """Encode xyxy boxes as SSD offsets relative to their priors.

    Args:
        matched_xyxy: ``[B, P, 4]`` box assigned to each prior, xyxy.
        priors: ``[P, 4]`` cxcywh.
        variances: scales of the (cx, cy, w, h) offsets.

    Returns:
        ``[B, P, 4]`` regression targets ``((g_c - p_c) / (v * p_wh), log(g_wh / p_wh) / v)``.
    """
    var = priors.new_tensor(variances)
    g = xyxy_to_cxcywh(matched_xyxy)
    cxcy = (g[..., :2] - priors[:, :2]) / (var[:2] * priors[:, 2:])
    wh = torch.log(g[..., 2:] / priors[:, 2:]) / var[2:]
    return torch.cat([cxcy, wh], dim=-1)


def decode(loc: Tensor, priors: Tensor, variances: Variances) -> Tensor:
    """Invert :func:`encode`: SSD offsets ``[B, P, 4]`` to xyxy boxes ``[B, P, 4]``."""
    var = priors.new_tensor(variances)
    cxcy = priors[:, :2] + loc[..., :2] * var[:2] * priors[:, 2:]
    wh = priors[:, 2:] * torch.exp(loc[..., 2:] * var[2:])
    return cxcywh_to_xyxy(torch.cat([cxcy, wh], dim=-1))


def pad_targets(
    targets: list[dict[str, Tensor]], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Stack variable-length ground truth into padded batch tensors.

    Args:
        targets: one dict per image with ``"boxes"`` ``[N_i, 4]`` and ``"labels"`` ``[N_i]``.
        device: where to put the result (default: where the targets are).

    Returns:
        ``boxes [B, N, 4]`` float32 and ``labels [B, N]`` int64 with ``N = max(1, max N_i)``;
        padding rows have label 0 (background) and an all-zero box, so that code vectorised
        over the padded batch can mask them out with ``labels > 0``.
    """
    boxes = pad_sequence([t["boxes"].reshape(-1, 4).float() for t in targets], batch_first=True)
    labels = pad_sequence([t["labels"].long() for t in targets], batch_first=True)
    if labels.shape[1] == 0:  # every image is empty: keep one padding row
        boxes = boxes.new_zeros(len(targets), 1, 4)
        labels = labels.new_zeros(len(targets), 1)
    return boxes.to(device), labels.to(device)
