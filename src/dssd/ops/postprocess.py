"""SSD inference post-processing: decode, per-class top-k, class-aware NMS, per-image top-k."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from dssd.ops.boxes import Variances, decode


class PostProcessor(nn.Module):
    """Turn raw SSD outputs into per-image detections in pixels of the original images.

    Per image and foreground class: keep priors whose softmax score is > ``score_threshold``,
    keep the ``top_k`` best, apply NMS at ``nms_iou``; then keep the ``max_detections``
    best detections of the image over all classes. Decoded boxes are clamped to [0, 1]
    before being scaled to pixels. The whole batch goes through a single
    :func:`torchvision.ops.batched_nms` call with one group per (image, class).
    """

    def __init__(
        self,
        score_threshold: float = 0.01,
        top_k: int = 400,
        nms_iou: float = 0.45,
        max_detections: int = 200,
        variances: Variances = (0.1, 0.1, 0.2, 0.2),
    ) -> None:
        super().__init__()
        self.score_threshold = score_threshold
        self.top_k = top_k
        self.nms_iou = nms_iou
        self.max_detections = max_detections
        self.variances = tuple(variances)

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
        boxes = decode(loc.float(), priors.float(), self.variances).clamp(0.0, 1.0)  # [B, P, 4]
        scores = conf.float().softmax(dim=-1)[..., 1:].transpose(1, 2)  # [B, C, P]

        scores, prior_index = scores.topk(min(self.top_k, num_priors), dim=2)  # [B, C, k]
        image_index = torch.arange(batch_size, device=device)[:, None, None].expand_as(scores)
        class_index = torch.arange(num_classes, device=device)[None, :, None].expand_as(scores)
        keep = scores > self.score_threshold
        image_index, class_index = image_index[keep], class_index[keep]
        scores = scores[keep]
        boxes = boxes[image_index, prior_index[keep]]

        # float64: batched_nms may offset each group's boxes by up to ~2 * B * C, which would
        # cost float32 precision on normalised coordinates.
        groups = image_index * num_classes + class_index
        keep = batched_nms(boxes.double(), scores.double(), groups, self.nms_iou)
        # keep is sorted by decreasing score; a stable sort by image preserves that per image.
        keep = keep[torch.sort(image_index[keep], stable=True).indices]
        counts = torch.bincount(image_index[keep], minlength=batch_size)
        first = counts.cumsum(0) - counts
        rank = torch.arange(len(keep), device=device) - first[image_index[keep]]
        keep = keep[rank < self.max_detections]
        sizes = counts.clamp(max=self.max_detections).tolist()

        scale = orig_sizes.flip(-1).repeat(1, 2).to(boxes)  # (w, h, w, h) per image
        boxes = boxes[keep] * scale[image_index[keep]]
        labels = class_index[keep] + 1
        per_image = zip(
            boxes.split(sizes), scores[keep].split(sizes), labels.split(sizes), strict=True
        )
        return [{"boxes": b, "scores": s, "labels": c} for b, s, c in per_image]
