"""SSD inference post-processing: decode, per-class top-k, class-aware NMS, per-image top-k."""

from __future__ import annotations

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
        device = conf.device
        k = min(self.top_k, num_priors)
        scores = conf.float().softmax(dim=-1)[..., 1:]  # [B, P, C]
        image_index, prior_index, class_index = (scores > self.score_threshold).nonzero(
            as_tuple=True
        )
        if len(image_index) > 2 * batch_size * num_classes * k:
            # most scores pass (an untrained network): a dense per-(image, class) top-k is cheaper
            # than sorting all of them
            scores, prior_index = scores.transpose(1, 2).topk(k, dim=2)  # [B, C, k]
            above = scores > self.score_threshold
            image_index = torch.arange(batch_size, device=device)[:, None, None].expand_as(above)
            class_index = torch.arange(num_classes, device=device)[None, :, None].expand_as(above)
            image_index, class_index = image_index[above], class_index[above]
            prior_index, scores = prior_index[above], scores[above]
            groups = image_index * num_classes + class_index
        else:
            # the few passing scores, ordered by (image, class) then by decreasing score
            scores = scores[image_index, prior_index, class_index]
            groups = image_index * num_classes + class_index
            order = scores.argsort(descending=True, stable=True)
            order = order[groups[order].argsort(stable=True)]
            rank = _rank_in_group(groups[order], batch_size * num_classes)
            order = order[rank < k]
            image_index, prior_index, class_index = (
                image_index[order],
                prior_index[order],
                class_index[order],
            )
            scores, groups = scores[order], groups[order]
        # candidates are now contiguous per (image, class), by decreasing score within a group
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
