"""Two code paths' detections on the same images (eager and exported, BN folded or not, ...),
compared as sets: their scores differ in the last bits, so near-ties can swap detections or keep
one on one side only, which a position-by-position comparison would report as large gaps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_iou

from dssd.ops.postprocess import PostProcessor

SHOWN = 3  # how many unexplained detections a report spells out
# a detection after matching: matched, explained by a near-tie, unmatched but computed by both
# sides (a reference detection or candidate), or unmatched and computed by the other side only
MATCHED, TIED, VERIFIED, UNVERIFIED = range(4)


@dataclass(frozen=True)
class Tolerance:
    """What two detections of one label may differ by and still be one detection."""

    box_px: float = 1e-3  # the largest coordinate gap, in the pixels the boxes are given in
    score: float = 1e-4  # the largest score gap; also the margin within which scores tie
    iou: float = 0.99  # boxes this close match too (a gap above box_px then fails agrees)
    nms_margin: float = 1e-4  # an overlap this close to the NMS threshold may fall either side


@dataclass
class Agreement:
    """The outcome of :func:`compare_detections`."""

    tolerance: Tolerance
    matched: int = 0
    tied: int = 0  # unmatched detections that a near-tie explains
    missing: list[str] = field(default_factory=list)  # unexplained ones of the reference
    extra: list[str] = field(default_factory=list)  # unexplained ones of the other side
    box_gap: float = 0.0  # the largest gaps between matched detections
    score_gap: float = 0.0

    @property
    def agrees(self) -> bool:
        """No unexplained detection on either side, and every matched box within ``box_px``."""
        return not self.missing and not self.extra and self.box_gap <= self.tolerance.box_px

    def __str__(self) -> str:
        text = (
            f"{self.matched} detections matched (largest box gap {self.box_gap:.2e} px, score "
            f"gap {self.score_gap:.2e}), {self.tied} unmatched at a near-tie; "
            f"{len(self.missing)} missing, {len(self.extra)} extra"
        )
        examples = [f"missing {d}" for d in self.missing] + [f"extra {d}" for d in self.extra]
        if examples:
            text += ": " + "; ".join(examples[:SHOWN]) + ("; ..." if len(examples) > SHOWN else "")
        return text


@dataclass
class _Side:
    """One side's detections of one image, as float64 numpy arrays, and their states."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    state: np.ndarray | None = None  # MATCHED, ... per detection, once matched

    @classmethod
    def of(cls, detections: dict[str, Tensor]) -> _Side:
        return cls(
            detections["boxes"].detach().cpu().double().reshape(-1, 4).numpy(),
            detections["scores"].detach().cpu().double().reshape(-1).numpy(),
            detections["labels"].detach().cpu().long().reshape(-1).numpy(),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def describe(self, image: int, i: int, opposite: _Side, tol: Tolerance) -> str:
        """Detection ``i``, and the score gap to ``opposite``'s detections of its label and box
        (within ``box_px``) when only that gap, above ``score``, kept them apart."""
        box = ", ".join(f"{v:.1f}" for v in self.boxes[i])
        text = f"image {image}: label {self.labels[i]} score {self.scores[i]:.4f} at [{box}]"
        gaps = np.abs(opposite.boxes - self.boxes[i]).max(-1, initial=0.0)
        same = (gaps <= tol.box_px) & (opposite.labels == self.labels[i])
        gap = np.abs(opposite.scores[same] - self.scores[i]).min(initial=np.inf)
        if tol.score < gap < np.inf:
            text += f" (the other side's at this box scores {gap:.2e} apart)"
        return text


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _close(a: _Side, b: _Side, tol: Tolerance) -> tuple[np.ndarray, np.ndarray]:
    """Which pairs of ``a`` x ``b`` may be one detection, and their box gaps."""
    gap = np.abs(a.boxes[:, None, :] - b.boxes[None, :, :]).max(-1, initial=0.0)
    close = (gap <= tol.box_px) | (_iou(a.boxes, b.boxes) >= tol.iou)
    close &= a.labels[:, None] == b.labels[None, :]
    close &= np.abs(a.scores[:, None] - b.scores[None, :]) <= tol.score
    return close, gap


def _one_to_one(a: _Side, b: _Side, tol: Tolerance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The most pairs of :func:`_close` detections, each used once, the closest boxes first
    (scipy's assignment; a cost above every feasible total marks the pairs not allowed)."""
    close, gap = _close(a, b, tol)
    if not close.any():
        return np.zeros(0, int), np.zeros(0, int), gap
    rows, cols = linear_sum_assignment(np.where(close, gap, gap[close].sum() + 1.0))
    keep = close[rows, cols]
    return rows[keep], cols[keep], gap


def _tie_explains(
    side: _Side, i: int, opposite: _Side, post: PostProcessor, tol: Tolerance
) -> bool:
    """Whether a near-tie explains why detection ``i`` of ``side`` is missing from ``opposite``:
    its score ties with the threshold or with the lowest of a full ``opposite``; or it is
    ``VERIFIED`` and a detection of ``opposite`` of its label, computed by both sides and scored as
    high, may have suppressed it: their overlap ties with the NMS IoU, or, for an unmatched one,
    their scores tie or a tie explains that one."""
    score = side.scores[i]
    if score <= post.score_threshold + tol.score:
        return True
    if len(opposite) >= post.max_detections and score <= opposite.scores.min() + tol.score:
        return True
    if side.state[i] != VERIFIED:
        return False
    same = (opposite.labels == side.labels[i]) & (opposite.scores >= score - tol.score)
    same &= opposite.state != UNVERIFIED
    if not same.any():
        return False
    iou = _iou(side.boxes[i : i + 1], opposite.boxes)[0]
    same &= iou > post.nms_iou - tol.nms_margin
    at_threshold = iou <= post.nms_iou + tol.nms_margin
    flip = (opposite.state != MATCHED) & (
        (np.abs(opposite.scores - score) <= tol.score) | (opposite.state == TIED)
    )
    return bool((same & (at_threshold | flip)).any())


def compare_detections(
    reference: Sequence[dict[str, Tensor]],
    other: Sequence[dict[str, Tensor]],
    tolerance: Tolerance = Tolerance(),
    postprocess: PostProcessor | None = None,
    candidates: Sequence[dict[str, Tensor]] | None = None,
) -> Agreement:
    """Match two lists of per-image detections (``boxes`` xyxy, ``scores``, ``labels``) one to one,
    forgiving an unmatched one only when a near-tie at a decision of ``postprocess`` (both sides'
    settings) explains it. ``candidates`` (:meth:`PostProcessor.candidates` of the reference) tell
    one kept at a near-tie from one made up: without them only the reference's are explained."""
    if len(reference) != len(other):
        raise ValueError(f"detections of {len(reference)} and {len(other)} images to compare")
    if candidates is not None and len(candidates) != len(reference):
        raise ValueError(f"candidates of {len(candidates)} images for {len(reference)}")
    result = Agreement(tolerance)
    for image, (ours, theirs) in enumerate(zip(reference, other, strict=True)):
        ref, oth = _Side.of(ours), _Side.of(theirs)
        rows, cols, gap = _one_to_one(ref, oth, tolerance)
        result.matched += len(rows)
        result.box_gap = max(result.box_gap, float(gap[rows, cols].max(initial=0.0)))
        score_gap = np.abs(ref.scores[rows] - oth.scores[cols]).max(initial=0.0)
        result.score_gap = max(result.score_gap, float(score_gap))
        ref.state = np.full(len(ref), VERIFIED)
        oth.state = np.full(len(oth), UNVERIFIED)
        if candidates is not None:  # those the reference computed too
            oth.state[_close(oth, _Side.of(candidates[image]), tolerance)[0].any(1)] = VERIFIED
        ref.state[rows] = MATCHED
        oth.state[cols] = MATCHED
        # a flip's knock-on effects: repeat until no new tie explains a detection
        changed = postprocess is not None
        while changed:
            changed = False
            for side, opposite in ((ref, oth), (oth, ref)):
                for i in np.flatnonzero(side.state >= VERIFIED):
                    if _tie_explains(side, i, opposite, postprocess, tolerance):
                        side.state[i] = TIED
                        changed = True
        result.tied += int((ref.state == TIED).sum() + (oth.state == TIED).sum())
        for side, opposite, listed in ((ref, oth, result.missing), (oth, ref, result.extra)):
            unexplained = np.flatnonzero(side.state >= VERIFIED)
            listed += [side.describe(image, i, opposite, tolerance) for i in unexplained]
    return result


@torch.no_grad()
def compare_with_network(
    net: nn.Module,
    postprocess: PostProcessor,
    images: Tensor,
    orig_sizes: Tensor,
    other: Sequence[dict[str, Tensor]],
    tolerance: Tolerance = Tolerance(),
) -> Agreement:
    """:func:`compare_detections` of ``other``, another computation's detections of ``images``
    (original sizes ``orig_sizes``), against ``net``'s with ``postprocess`` (and its candidates)."""
    loc, conf = net(images)
    reference = postprocess(loc, conf, net.priors, orig_sizes)
    candidates = postprocess.candidates(loc, conf, net.priors, orig_sizes)
    return compare_detections(reference, other, tolerance, postprocess, candidates)
