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
    padded with 0: first every ground truth claims a prior of its own (:func:`_claims`), then every
    other prior takes its highest-IoU ground truth if that IoU > ``iou_threshold``."""
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
    claimed_by = _claims(iou)
    forced = claimed_by >= 0
    best_gt = torch.where(forced, claimed_by, best_gt)
    positive = forced | (best_iou > iou_threshold)

    return best_gt, torch.gather(gt_labels, 1, best_gt).masked_fill(~positive, 0)


def _claims(iou: Tensor) -> Tensor:
    """The ground truth that claims each prior, ``[B, P]`` (-1: none), for ``iou [B, N, P]``
    (padding -1): the bipartite step of the released SSD code (``MatchBBox``), greedy, the
    highest-IoU (ground truth, prior) pair among those not yet claimed first. Ground truths that
    share a best prior each get one of their own; one that overlaps no prior (IoU 0: no overlap
    or no area) claims none, so it is never a positive."""
    best_iou, best_prior = iou.max(dim=2)  # [B, N]
    claims = best_iou > 0
    image, gt = claims.nonzero(as_tuple=True)
    claimed_by = torch.full(iou.shape[::2], -1, dtype=torch.int64, device=iou.device)
    claimed_by[image, best_prior[image, gt]] = gt
    if int(claims.sum()) == int((claimed_by >= 0).sum()):
        return claimed_by  # every best prior is another: the greedy order changes nothing
    # A ground truth's claim is among its k best priors: at most k - 1 are claimed before it.
    k = min(iou.shape[1], iou.shape[2])
    top_iou, top_prior = iou.topk(k, dim=2)  # [B, N, k]
    # in prior order, so that the first of equal IoUs is the lowest prior, as in the loop
    top_prior, order = top_prior.sort(dim=2)
    top_iou = top_iou.gather(2, order)
    flat_prior = top_prior.flatten(1)
    gt_index = torch.arange(iou.shape[1], device=iou.device)
    gt_of_entry = gt_index[None, :, None].expand_as(top_prior).flatten(1)
    claimed_by.fill_(-1)
    # The greedy order in rounds: a pair that is the best of its ground truth's and of its prior's
    # free pairs (the highest IoU; the lowest gt, then prior, among equal ones) is the one the
    # one-at-a-time loop takes for both, so every such pair is taken at once.
    while True:
        row_iou, row_best = top_iou.max(dim=2)  # [B, N]: each gt's best free prior
        row_prior = top_prior.gather(2, row_best[..., None]).squeeze(2)
        col_iou = torch.full_like(claimed_by, -1, dtype=iou.dtype).scatter_reduce(
            1, flat_prior, top_iou.flatten(1), reduce="amax"
        )  # [B, P]: each prior's best IoU with a free gt
        at_best = top_iou.flatten(1) == col_iou.gather(1, flat_prior)
        col_gt = torch.full_like(claimed_by, iou.shape[1]).scatter_reduce(
            1, flat_prior, torch.where(at_best, gt_of_entry, iou.shape[1]), reduce="amin"
        )
        taken = (row_iou > 0) & (col_gt.gather(1, row_prior) == gt_index)
        if not bool(taken.any()):
            break
        image, gt = taken.nonzero(as_tuple=True)
        claimed_by[image, row_prior[image, gt]] = gt
        # neither the ground truth nor the prior takes part again
        top_iou[image, gt] = -1.0
        top_iou.masked_fill_((claimed_by >= 0).gather(1, flat_prior).view_as(top_iou), -1.0)
    return claimed_by
