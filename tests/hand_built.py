"""Hand-built detections and objects for the analysis tests: square boxes on a line, and one
image's (pred, target) dicts from short tuples."""

from __future__ import annotations

import torch


def box(x: float, y: float = 0.0, size: float = 10.0) -> list[float]:
    """A square xyxy box of side ``size`` at (x, y)."""
    return [x, y, x + size, y + size]


def image(
    dets: list[tuple[float, int, list[float]]], gts: list[tuple[int, list[float]]], difficult=None
):
    """(pred, target) dicts from (score, label, box) detections and (label, box) objects; the
    target has "difficult" flags only when given."""
    pred = {
        "boxes": torch.tensor([d[2] for d in dets], dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor([d[0] for d in dets], dtype=torch.float32),
        "labels": torch.tensor([d[1] for d in dets], dtype=torch.long),
    }
    target = {
        "boxes": torch.tensor([g[1] for g in gts], dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor([g[0] for g in gts], dtype=torch.long),
    }
    if difficult is not None:
        target["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return pred, target
