"""Two code paths' detections on the same images, compared as sets.

Eager PyTorch and an exported graph, batch norms folded or not, one batch size or another: two
paths that compute one detector differ in the last bits of their scores. Detections are sorted by
score, so two whose scores nearly tie can swap places, and one whose score or overlap nearly ties
with a decision of the post-processing (the score threshold, NMS against an overlapping box of its
class, the per-image cap) can be kept on one side only. A comparison position by position reports
such cases as large box gaps although both sides are right.

:func:`compare_detections` matches each image's detections one to one instead (same label, boxes
within ``box_px`` or at IoU >= ``iou``, scores within ``score``) and reports the largest gaps of
the matched pairs. An unmatched detection is forgiven only when a near-tie at one of those
decisions explains it (:func:`_tie_explains`); every other one is a disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_iou

from dssd.ops.postprocess import PostProcessor

# how many unexplained detections a report spells out
SHOWN = 3
# what a detection of one side is, after matching: matched with one of the other side, explained
# by a near-tie, unmatched but computed by both sides (a reference detection, or one of the
# reference's candidates), or unmatched and computed by the other side only
MATCHED, TIED, VERIFIED, UNVERIFIED = range(4)


@dataclass(frozen=True)
class Tolerance:
    """What two detections of one label may differ by and still be one detection.

    Attributes:
        box_px: the largest coordinate gap, in the pixels the boxes are given in.
        score: the largest score gap; also the margin within which two scores count as tied.
        iou: boxes at least this close also match (their gap is then reported, and fails
            :attr:`Agreement.agrees` when above ``box_px``).
        nms_margin: an overlap within this of the NMS threshold may fall on either side of it.
    """

    box_px: float = 1e-3
    score: float = 1e-4
    iou: float = 0.99
    nms_margin: float = 1e-4


@dataclass
class Agreement:
    """The outcome of :func:`compare_detections`."""

    tolerance: Tolerance
    matched: int = 0
    # unmatched detections that a near-tie at a post-processing decision explains
    tied: int = 0
    # descriptions of the unexplained ones: the reference's that the other lacks, and the reverse
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    # the largest gaps between matched detections
    box_gap: float = 0.0
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
    """One side's detections of one image, as float64 numpy arrays."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, detections: dict[str, Tensor]) -> _Side:
        return cls(
            detections["boxes"].detach().cpu().double().reshape(-1, 4).numpy(),
            detections["scores"].detach().cpu().double().reshape(-1).numpy(),
            detections["labels"].detach().cpu().long().reshape(-1).numpy(),
        )

    def __len__(self) -> int:
        return len(self.scores)

    def describe(self, image: int, i: int) -> str:
        box = ", ".join(f"{v:.1f}" for v in self.boxes[i])
        return f"image {image}: label {self.labels[i]} score {self.scores[i]:.4f} at [{box}]"


def _iou(a: _Side, b: _Side) -> np.ndarray:
    return box_iou(torch.from_numpy(a.boxes), torch.from_numpy(b.boxes)).numpy()


def _close(a: _Side, b: _Side, tol: Tolerance) -> tuple[np.ndarray, np.ndarray]:
    """Which pairs of ``a`` x ``b`` may be one detection, and their box gaps."""
    gap = np.abs(a.boxes[:, None, :] - b.boxes[None, :, :]).max(-1, initial=0.0)
    close = (gap <= tol.box_px) | (_iou(a, b) >= tol.iou)
    close &= a.labels[:, None] == b.labels[None, :]
    close &= np.abs(a.scores[:, None] - b.scores[None, :]) <= tol.score
    return close, gap


def _one_to_one(a: _Side, b: _Side, tol: Tolerance) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The most pairs of :func:`_close` detections, each used once, the closest boxes first
    (scipy's assignment; a cost above every feasible total marks the pairs not allowed)."""
    close, gap = _close(a, b, tol)
    if not close.any():
        return np.zeros(0, int), np.zeros(0, int), gap
    cost = np.where(close, gap, gap[close].sum() + 1.0)
    rows, cols = linear_sum_assignment(cost)
    keep = close[rows, cols]
    return rows[keep], cols[keep], gap


def _tie_explains(
    side: _Side,
    i: int,
    verified: bool,
    opposite: _Side,
    opposite_state: np.ndarray,
    post: PostProcessor,
    tol: Tolerance,
) -> bool:
    """Whether a near-tie explains why detection ``i`` of ``side`` is missing from ``opposite``
    (whose detections are each in one of the states above):

    - its score is within ``score`` of the score threshold;
    - ``opposite`` is full (``max_detections``) and its score ties with the lowest kept there;
    - both sides computed it (``verified``), and a detection of ``opposite`` of its label that
      both computed, scored at least as high (to ``score``), overlaps it beyond the NMS threshold
      (less ``nms_margin``), so may have suppressed it there, where that overlap is at the
      threshold (to ``nms_margin``); or, for an unmatched one, where the two scores tie (which
      of the two NMS keeps can flip) or a tie already explains that one (the flip's knock-on
      effect on the boxes it suppresses).
    """
    score = side.scores[i]
    if score <= post.score_threshold + tol.score:
        return True
    if len(opposite) >= post.max_detections and score <= opposite.scores.min() + tol.score:
        return True
    if not verified:
        return False
    same = (opposite.labels == side.labels[i]) & (opposite.scores >= score - tol.score)
    same &= opposite_state != UNVERIFIED
    if not same.any():
        return False
    single = _Side(side.boxes[i : i + 1], side.scores[i : i + 1], side.labels[i : i + 1])
    iou = _iou(single, opposite)[0]
    same &= iou > post.nms_iou - tol.nms_margin
    at_threshold = iou <= post.nms_iou + tol.nms_margin
    flip = (opposite_state != MATCHED) & (
        (np.abs(opposite.scores - score) <= tol.score) | (opposite_state == TIED)
    )
    return bool((same & (at_threshold | flip)).any())


def compare_detections(
    reference: Sequence[dict[str, Tensor]],
    other: Sequence[dict[str, Tensor]],
    tolerance: Tolerance = Tolerance(),
    postprocess: PostProcessor | None = None,
    candidates: Sequence[dict[str, Tensor]] | None = None,
) -> Agreement:
    """Compare two lists of per-image detections (dicts of ``boxes`` xyxy, ``scores``,
    ``labels``) of the same images, as sets: see the module doc.

    ``postprocess``: the settings both sides ran with (score threshold, NMS IoU, per-image cap),
    which lets a near-tie at one of its decisions explain an unmatched detection. ``candidates``:
    the reference's detections before NMS and the cap (:meth:`PostProcessor.candidates`), which
    tell a detection the other side kept at a near-tie (the reference computed it too) from one
    it made up; without them, only the reference's unmatched detections can be explained by NMS.
    """
    if len(reference) != len(other):
        raise ValueError(f"detections of {len(reference)} and {len(other)} images to compare")
    if candidates is not None and len(candidates) != len(reference):
        raise ValueError(f"candidates of {len(candidates)} images for {len(reference)}")
    result = Agreement(tolerance)
    for image, (ours, theirs) in enumerate(zip(reference, other, strict=True)):
        ref, oth = _Side.of(ours), _Side.of(theirs)
        rows, cols, gap = _one_to_one(ref, oth, tolerance)
        result.matched += len(rows)
        if len(rows):
            result.box_gap = max(result.box_gap, float(gap[rows, cols].max()))
            score_gap = np.abs(ref.scores[rows] - oth.scores[cols]).max()
            result.score_gap = max(result.score_gap, float(score_gap))
        computed = np.zeros(len(oth), bool)
        if candidates is not None:
            # which of them the reference computed too (one of its candidates)
            computed = _close(oth, _Side.of(candidates[image]), tolerance)[0].any(1)
        state = {
            "ref": np.full(len(ref), VERIFIED),
            "oth": np.where(computed, VERIFIED, UNVERIFIED),
        }
        state["ref"][rows] = MATCHED
        state["oth"][cols] = MATCHED
        sides = {"ref": (ref, "oth"), "oth": (oth, "ref")}
        # a flip's knock-on effects: repeat until no new tie explains a detection
        changed = postprocess is not None
        while changed:
            changed = False
            for name, (side, opposite) in sides.items():
                for i in np.flatnonzero(state[name] >= VERIFIED):
                    verified = state[name][i] == VERIFIED
                    opp = sides[opposite][0]
                    if _tie_explains(
                        side, i, verified, opp, state[opposite], postprocess, tolerance
                    ):
                        state[name][i] = TIED
                        changed = True
        result.tied += int((state["ref"] == TIED).sum() + (state["oth"] == TIED).sum())
        for name, out in (("ref", result.missing), ("oth", result.extra)):
            side = sides[name][0]
            out += [side.describe(image, i) for i in np.flatnonzero(state[name] >= VERIFIED)]
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
    (original sizes ``orig_sizes``), against those of ``net`` with ``postprocess``, whose
    candidates it takes too."""
    loc, conf = net(images)
    reference = postprocess(loc, conf, net.priors, orig_sizes)
    candidates = postprocess.candidates(loc, conf, net.priors, orig_sizes)
    return compare_detections(reference, other, tolerance, postprocess, candidates)
