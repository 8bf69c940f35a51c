"""SSD inference post-processing: decode, per-class top-k, class-aware NMS, per-image top-k."""

from __future__ import annotations

import copy
import itertools

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms

from dssd.ops.boxes import BoxCoder


class PostProcessor(nn.Module):
    """Raw SSD outputs to detections in pixels of the original images: per image and foreground
    class the ``top_k`` best softmax scores > ``score_threshold``, NMS at ``nms_iou``, then the
    image's ``max_detections`` best; only those candidates, grouped by (image, class) over the
    batch, are decoded by ``box_coder`` (the loss's) and clamped to [0, 1]."""

    def __init__(
        self,
        score_threshold: float = 0.01,
        top_k: int = 400,
        nms_iou: float = 0.45,
        max_detections: int = 200,
        box_coder: BoxCoder | None = None,
    ) -> None:
        super().__init__()
        self.score_threshold = score_threshold
        self.top_k = top_k
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.box_coder = box_coder if box_coder is not None else BoxCoder()

    @torch.no_grad()
    def forward(
        self, loc: Tensor, conf: Tensor, priors: Tensor, orig_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        """Detections from ``loc [B, P, 4]`` offsets and ``conf [B, P, C + 1]`` logits on cxcywh
        ``priors [P, 4]``, for images of ``orig_sizes [B, 2]`` (h, w): per image, ``"boxes"``
        float32 ``[K, 4]`` xyxy pixels, ``"scores"`` and ``"labels"`` in ``1..C``, best first."""
        batch_size, num_priors, num_classes = conf.shape[0], conf.shape[1], conf.shape[2] - 1
        k = min(self.top_k, num_priors)
        scores = conf.float().softmax(dim=-1)[..., 1:]  # [B, P, C]
        image_index, prior_index, class_index = (scores > self.score_threshold).nonzero().unbind(1)
        if len(image_index) > 2 * batch_size * num_classes * k:
            # most scores pass (an untrained network): a dense top-k is cheaper than a sort
            candidates = _top_k_per_class(scores, k)
            above = candidates[0] > self.score_threshold
            scores, prior_index, image_index, class_index = (t[above] for t in candidates)
        else:
            # the few passing scores, ordered by (image, class) then by decreasing score
            scores = scores[image_index, prior_index, class_index]
            groups = image_index * num_classes + class_index
            order = scores.argsort(descending=True, stable=True)
            order = order[groups[order].argsort(stable=True)]
            order = order[_rank_in_group(groups[order], batch_size * num_classes) < k]
            scores, prior_index, image_index, class_index = (
                t[order] for t in (scores, prior_index, image_index, class_index)
            )
        # candidates are now contiguous per (image, class), by decreasing score within a group
        groups = image_index * num_classes + class_index
        boxes = self.box_coder.decode(
            loc[image_index, prior_index].float(), priors[prior_index].float()
        ).clamp(0.0, 1.0)
        if boxes.is_cuda:  # one kernel for all groups, not B x C
            keep = _batched_nms(boxes, scores, groups, self.nms_iou)
        else:
            keep = _grouped_nms(boxes, scores, groups, batch_size * num_classes, self.nms_iou)

        # by image, then by decreasing score (stable sorts keep the earlier order on ties)
        keep = keep[scores[keep].argsort(descending=True, stable=True)]
        keep = keep[torch.sort(image_index[keep], stable=True).indices]
        counts = torch.bincount(image_index[keep], minlength=batch_size)
        keep = keep[_rank_in_group(image_index[keep], batch_size) < self.max_detections]
        sizes = counts.clamp(max=self.max_detections).tolist()

        scale = orig_sizes.flip(-1).repeat(1, 2).to(boxes)  # (w, h, w, h) per image
        boxes = (boxes[keep] * scale[image_index[keep]]).split(sizes)
        labels = (class_index[keep] + 1).split(sizes)
        per_image = zip(boxes, scores[keep].split(sizes), labels, strict=True)
        return [{"boxes": b, "scores": s, "labels": c} for b, s, c in per_image]

    def candidates(
        self, loc: Tensor, conf: Tensor, priors: Tensor, orig_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        """The detections before NMS and the per-image cap, which another computation of the same
        network may keep at a near-tie (:func:`dssd.ops.agreement.compare_detections`)."""
        unfiltered = copy.copy(self)
        unfiltered.nms_iou = 1.0  # NMS drops a box above this IoU: none
        unfiltered.max_detections = conf.shape[1] * (conf.shape[2] - 1)
        return unfiltered(loc, conf, priors, orig_sizes)


class GraphPostProcessor(nn.Module):
    """:class:`PostProcessor`'s detections (``post``'s settings) as one graph of tensor operations
    with fixed-size outputs, for export with a dynamic batch: NMS runs once, each box shifted by its
    class along x and its image along y so groups never overlap (two axes keep the offsets, and
    float32 IoU errors, small). Returns ``num_detections [B]`` int64 and, zero-padded after those,
    ``boxes [B, K, 4]`` float32 xyxy in [0, 1], ``scores [B, K]`` and ``labels [B, K]`` int64 in
    ``1..C``, best first (``K = max_detections``)."""

    def __init__(self, post: PostProcessor) -> None:
        super().__init__()
        self.box_coder = post.box_coder
        self.score_threshold = post.score_threshold
        self.top_k = post.top_k
        self.nms_iou = post.nms_iou
        self.max_detections = post.max_detections

    @torch.no_grad()
    def forward(
        self, loc: Tensor, conf: Tensor, priors: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        batch_size = conf.shape[0]
        k = min(self.top_k, priors.shape[0])
        scores = conf.float().softmax(dim=-1)[..., 1:]  # [B, P, C]
        boxes = self.box_coder.decode(loc.float(), priors.float()).clamp(0.0, 1.0)  # [B, P, 4]
        candidates = _top_k_per_class(scores, k)
        passing = (candidates[0] > self.score_threshold).reshape(-1).nonzero().squeeze(1)
        scores, prior_index, image_index, class_index = (t.reshape(-1)[passing] for t in candidates)
        boxes = boxes[image_index, prior_index]
        shift = torch.stack([class_index, image_index], dim=1).to(boxes).repeat(1, 2) * 2.0
        keep = nms(boxes + shift, scores, self.nms_iou)
        # by decreasing score, then by image keeping that order: distinct keys and top-k, which
        # exports where a stable sort does not; a cumsum, not arange(len(...)), which traces fix
        count = keep.shape[0]
        keep = keep[scores[keep].topk(count).indices]
        position = torch.ones_like(keep).cumsum(0) - 1
        keep = keep[(-(image_index[keep] * count + position)).topk(count).indices]
        image_index = image_index[keep]
        per_image = (image_index[:, None] == torch.arange(batch_size, device=conf.device)).sum(0)
        rank = position - (per_image.cumsum(0) - per_image)[image_index]
        kept = (rank < self.max_detections).nonzero().squeeze(1)
        keep, image_index, rank = keep[kept], image_index[kept], rank[kept]
        slot = image_index * self.max_detections + rank
        size = batch_size * self.max_detections
        out_boxes = boxes.new_zeros(size, 4).index_put((slot,), boxes[keep])
        out_scores = scores.new_zeros(size).index_put((slot,), scores[keep])
        out_labels = class_index.new_zeros(size).index_put((slot,), class_index[keep] + 1)
        return (
            per_image.clamp(max=self.max_detections),
            out_boxes.reshape(batch_size, self.max_detections, 4),
            out_scores.reshape(batch_size, self.max_detections),
            out_labels.reshape(batch_size, self.max_detections),
        )


def _top_k_per_class(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ``k`` best of ``scores [B, P, C]`` per image and class, as ``[B, C, k]`` scores, prior
    indices, image indices and class indices (0-based)."""
    scores, prior_index = scores.transpose(1, 2).topk(k, dim=2)
    image_index = torch.arange(scores.shape[0], device=scores.device)[:, None, None]
    class_index = torch.arange(scores.shape[1], device=scores.device)[None, :, None]
    return scores, prior_index, image_index.expand_as(scores), class_index.expand_as(scores)


def _rank_in_group(groups: Tensor, num_groups: int) -> Tensor:
    """Position of every element within its group; ``groups`` must be sorted."""
    counts = torch.bincount(groups, minlength=num_groups)
    first = counts.cumsum(0) - counts
    return torch.arange(len(groups), device=groups.device) - first[groups]


def _batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """``batched_nms`` on float64 boxes: it shifts each group by twice its index (up to 2 x B x C:
    5,118 for 32 COCO images), where float32 keeps about 4e-4 of a box in [0, 1] and the IoU of a
    small box near the threshold would come out on the wrong side."""
    return batched_nms(boxes.double(), scores.double(), groups, iou_threshold)


def _grouped_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: int, iou_threshold: float
) -> Tensor:
    """NMS within each group of a sorted ``groups``, one call per group's slice (on a CPU,
    ``batched_nms`` masks all boxes per group or pays a quadratic cost); the kept boxes' indices."""
    counts = torch.bincount(groups, minlength=num_groups).tolist()
    starts = itertools.accumulate(counts, initial=0)
    slices = zip(boxes.split(counts), scores.split(counts), starts, strict=False)
    keep = [nms(b, s, iou_threshold) + start for b, s, start in slices if len(s)]
    return torch.cat(keep) if keep else groups.new_zeros(0)
