"""Batched IoU, SSD box coding and target padding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from torchvision.ops import box_convert


def _area(boxes: Tensor) -> Tensor:
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def batched_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU ``[B, N, P]`` of xyxy ``boxes1 [B, N, 4]`` and ``boxes2`` (``[P, 4]``, shared by all
    images like the priors, or ``[B, P, 4]``), with :func:`torchvision.ops.box_iou`'s arithmetic:
    a zero (padding) box has IoU 0 with any box of positive area."""
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


@dataclass(frozen=True)
class BoxCoder:
    """SSD box coding: a box as offsets from its prior, scaled by ``variances`` of ``(cx, cy, w,
    h)``; the loss encodes and the post-processor decodes with one coder, so both agree."""

    variances: Sequence[float] = (0.1, 0.1, 0.2, 0.2)

    def __post_init__(self) -> None:
        variances = tuple(float(v) for v in self.variances)  # whatever sequence the config gives
        if len(variances) != 4:
            raise ValueError(f"need 4 variances (cx, cy, w, h), got {variances}")
        object.__setattr__(self, "variances", variances)

    def encode(self, boxes: Tensor, priors: Tensor) -> Tensor:
        """Encode xyxy ``boxes [..., 4]`` as offsets from their cxcywh ``priors`` (broadcastable):
        ``((g_c - p_c) / (v * p_wh), log(g_wh / p_wh) / v)``."""
        var = priors.new_tensor(self.variances)
        g = box_convert(boxes, "xyxy", "cxcywh")
        cxcy = (g[..., :2] - priors[..., :2]) / (var[:2] * priors[..., 2:])
        wh = torch.log(g[..., 2:] / priors[..., 2:]) / var[2:]
        return torch.cat([cxcy, wh], dim=-1)

    def decode(self, loc: Tensor, priors: Tensor) -> Tensor:
        """Invert :meth:`encode`: offsets ``[..., 4]`` to xyxy boxes ``[..., 4]``."""
        var = priors.new_tensor(self.variances)
        cxcy = priors[..., :2] + loc[..., :2] * var[:2] * priors[..., 2:]
        wh = priors[..., 2:] * torch.exp(loc[..., 2:] * var[2:])
        return box_convert(torch.cat([cxcy, wh], dim=-1), "cxcywh", "xyxy")


def pad_targets(
    targets: list[dict[str, Tensor]], device: torch.device | str | None = None
) -> tuple[Tensor, Tensor]:
    """Stack per-image ``"boxes"`` and ``"labels"`` into ``boxes [B, N, 4]`` float32 and ``labels
    [B, N]`` int64 (``N = max(1, max N_i)``), padded with label 0 and a zero box."""
    boxes = pad_sequence([t["boxes"].reshape(-1, 4).float() for t in targets], batch_first=True)
    labels = pad_sequence([t["labels"].long() for t in targets], batch_first=True)
    if labels.shape[1] == 0:  # every image is empty: keep one padding row
        boxes = boxes.new_zeros(len(targets), 1, 4)
        labels = labels.new_zeros(len(targets), 1)
    return boxes.to(device), labels.to(device)
