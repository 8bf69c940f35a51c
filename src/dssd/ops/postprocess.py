"""SSD inference post-processing: decode, per-class top-k, class-aware NMS, per-image top-k."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms

from dssd.ops.boxes import BoxCoder


class PostProcessor(nn.Module):
    """Turn raw SSD outputs into per-image detections in pixels of the original images.

    Per image and foreground class: keep priors whose softmax score is > ``score_threshold``,
    keep the ``top_k`` best, apply NMS at ``nms_iou``; then keep the ``max_detections``
    best detections of the image over all classes. Boxes are decoded by ``box_coder`` (the one the
    loss encodes with; SSD's variances by default) and clamped to [0, 1] before being scaled to
    pixels. The whole batch is handled at once: one threshold and one sort bring the passing
    scores of every (image, class) together (or one dense top-k when most scores pass, as with an
    untrained network), only those candidates are decoded, and NMS runs on each (image, class)
    slice in turn on a CPU, in one ``batched_nms`` call on a GPU.
    """

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
        """Detect.

        Args:
            loc: ``[B, P, 4]`` predicted offsets.
            conf: ``[B, P, C + 1]`` class logits, class 0 = background.
            priors: ``[P, 4]`` cxcywh, normalised.
            orig_sizes: ``[B, 2]`` (height, width) of the original images.

        Returns:
            One dict per image: ``"boxes"`` float32 ``[K, 4]`` xyxy pixels, ``"scores"`` float32
            ``[K]`` and ``"labels"`` int64 ``[K]`` in ``1..C``, sorted by decreasing score.
        """
        batch_size, num_priors, num_classes = conf.shape[0], conf.shape[1], conf.shape[2] - 1
        k = min(self.top_k, num_priors)
        scores = conf.float().softmax(dim=-1)[..., 1:]  # [B, P, C]
        image_index, prior_index, class_index = (scores > self.score_threshold).nonzero(
            as_tuple=True
        )
        if len(image_index) > 2 * batch_size * num_classes * k:
            # most scores pass (an untrained network): a dense per-(image, class) top-k is cheaper
            # than sorting all of them
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
        )
        boxes = boxes.clamp(0.0, 1.0)
        if boxes.is_cuda:
            # one kernel for every group (torchvision's coordinate-offset trick); a loop of
            # per-group calls would launch B x C kernels
            keep = batched_nms(boxes, scores, groups, self.nms_iou)
        else:
            keep = _grouped_nms(boxes, scores, groups, batch_size * num_classes, self.nms_iou)

        # by image, then by decreasing score (stable sorts keep the earlier order on ties)
        keep = keep[scores[keep].argsort(descending=True, stable=True)]
        keep = keep[torch.sort(image_index[keep], stable=True).indices]
        counts = torch.bincount(image_index[keep], minlength=batch_size)
        keep = keep[_rank_in_group(image_index[keep], batch_size) < self.max_detections]
        sizes = counts.clamp(max=self.max_detections).tolist()

        scale = orig_sizes.flip(-1).repeat(1, 2).to(boxes)  # (w, h, w, h) per image
        boxes = boxes[keep] * scale[image_index[keep]]
        labels = class_index[keep] + 1
        per_image = zip(
            boxes.split(sizes), scores[keep].split(sizes), labels.split(sizes), strict=True
        )
        return [{"boxes": b, "scores": s, "labels": c} for b, s, c in per_image]

    def candidates(
        self, loc: Tensor, conf: Tensor, priors: Tensor, orig_sizes: Tensor
    ) -> list[dict[str, Tensor]]:
        """The detections before NMS and the per-image cap (per image and class, the ``top_k``
        best above the score threshold): those that another computation of the same network may
        keep at a near-tie (:func:`dssd.ops.agreement.compare_detections`)."""
        unfiltered = copy.copy(self)
        unfiltered.nms_iou = 1.0  # NMS drops a box above this IoU: none
        unfiltered.max_detections = conf.shape[1] * (conf.shape[2] - 1)
        return unfiltered(loc, conf, priors, orig_sizes)


class GraphPostProcessor(nn.Module):
    """:class:`PostProcessor`'s detections as one graph of tensor operations with fixed-size
    outputs, for export (ONNX, TorchScript) with a dynamic batch size.

    Same rule and settings as ``post``: per image and foreground class the ``top_k`` best scores
    above ``score_threshold``, NMS at ``nms_iou``, then the ``max_detections`` best of the image.
    NMS runs once for the whole batch: each candidate is shifted by its class along x and by its
    image along y (boxes lie in [0, 1]), so that boxes of different classes or images never
    overlap. Shifting on two axes keeps the offsets below ``2 * max(B, C)`` rather than the
    ``2 * B * C`` of a single offset per (image, class), which keeps float32 IoUs close to the
    unshifted ones.

    Returns ``num_detections [B]`` int64 and, padded with zeros after each image's
    ``num_detections``, ``boxes [B, K, 4]`` float32 xyxy normalised to [0, 1], ``scores [B, K]``
    and ``labels [B, K]`` int64 in ``1..C``, sorted by decreasing score; ``K = max_detections``.
    """

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
        device = conf.device
        k = min(self.top_k, priors.shape[0])
        scores = conf.float().softmax(dim=-1)[..., 1:]  # [B, P, C]
        boxes = self.box_coder.decode(loc.float(), priors.float()).clamp(0.0, 1.0)  # [B, P, 4]
        candidates = _top_k_per_class(scores, k)
        passing = (candidates[0] > self.score_threshold).reshape(-1).nonzero().squeeze(1)
        scores, prior_index, image_index, class_index = (t.reshape(-1)[passing] for t in candidates)
        boxes = boxes[image_index, prior_index]
        shift = torch.stack([class_index, image_index], dim=1).to(boxes).repeat(1, 2) * 2.0
        keep = nms(boxes + shift, scores, self.nms_iou)
        # by decreasing score, then by image keeping that order (distinct integer keys: no ties
        # left to break, and top-k exports where a stable sort does not). Positions come from a
        # cumulative sum rather than arange(len(...)), which a trace would freeze to a constant.
        count = keep.shape[0]
        keep = keep[scores[keep].topk(count).indices]
        position = torch.ones_like(keep).cumsum(0) - 1
        keep = keep[(-(image_index[keep] * count + position)).topk(count).indices]
        image_index = image_index[keep]
        per_image = (image_index[:, None] == torch.arange(batch_size, device=device)).sum(0)
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
    batch_size, num_classes = scores.shape[0], scores.shape[1]
    image_index = torch.arange(batch_size, device=scores.device)[:, None, None]
    class_index = torch.arange(num_classes, device=scores.device)[None, :, None]
    return scores, prior_index, image_index.expand_as(scores), class_index.expand_as(scores)


def _rank_in_group(groups: Tensor, num_groups: int) -> Tensor:
    """Position of every element within its group; ``groups`` must be sorted."""
    counts = torch.bincount(groups, minlength=num_groups)
    first = counts.cumsum(0) - counts
    return torch.arange(len(groups), device=groups.device) - first[groups]


def _grouped_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, num_groups: int, iou_threshold: float
) -> Tensor:
    """NMS within each group of a sorted ``groups``; indices of the kept boxes.

    Each group is a contiguous slice, so every :func:`torchvision.ops.nms` call sees only its
    own boxes: unlike :func:`torchvision.ops.batched_nms` on CPU, no mask over all the boxes per
    group (its "vanilla" path) and no quadratic cost across groups (its offset trick).
    """
    keep = []
    start = 0
    for count in torch.bincount(groups, minlength=num_groups).tolist():
        if count:
            end = start + count
            keep.append(nms(boxes[start:end], scores[start:end], iou_threshold) + start)
            start = end
    return torch.cat(keep) if keep else groups.new_zeros(0)
