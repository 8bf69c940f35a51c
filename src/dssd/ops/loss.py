"""SSD MultiBox loss: matching, hard negative mining, softmax CE + Smooth-L1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dssd.ops.boxes import BoxCoder, pad_targets
from dssd.ops.matching import match_indices


def hard_negative_mask(conf_loss: Tensor, positive: Tensor, neg_pos_ratio: float = 3.0) -> Tensor:
    """SSD hard negative mining: the ``[B, P]`` mask of each image's ``min(floor(neg_pos_ratio *
    num_pos), P - num_pos)`` non-``positive`` priors with the largest ``conf_loss [B, P]``."""
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = torch.minimum((neg_pos_ratio * num_pos).long(), positive.shape[1] - num_pos)
    loss = conf_loss.detach().masked_fill(positive, float("-inf"))
    # a top-k as deep as the largest num_neg, not a full sort (ties may pick other priors)
    k = int(num_neg.max()) if num_neg.numel() else 0
    in_top = torch.arange(k, device=loss.device) < num_neg
    return torch.zeros_like(positive).scatter_(1, loss.topk(k, dim=1).indices, in_top) & ~positive


class MultiBoxLoss(nn.Module):
    """SSD training loss (Liu et al. 2016, eq. 1), vectorised over the batch: (softmax CE over
    positives and mined negatives + ``loc_weight`` * Smooth-L1 over positives) / N positives."""

    def __init__(
        self,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        box_coder: BoxCoder | None = None,
        loc_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.box_coder = box_coder if box_coder is not None else BoxCoder()
        self.loc_weight = loc_weight

    def forward(
        self, loc: Tensor, conf: Tensor, priors: Tensor, targets: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """The loss of ``loc [B, P, 4]`` offsets and ``conf [B, P, C + 1]`` logits on cxcywh
        ``priors [P, 4]`` for per-image xyxy ``"boxes"`` and ``"labels"``: ``"loss"``,
        ``"loss_loc"``, ``"loss_conf"`` (0, still in the graph, when N = 0) and ``"num_pos"``."""
        # float32 whatever the autocast precision: the loss sums thousands of small terms
        loc, conf = loc.float(), conf.float()
        with torch.no_grad():
            gt_boxes, gt_labels = pad_targets(targets, device=loc.device)
            gt_index, labels = match_indices(priors, gt_boxes, gt_labels, self.iou_threshold)
            positive = labels > 0
            # only positives have a regression target: gather and encode just those
            image_index, prior_index = positive.nonzero().unbind(1)
            matched_boxes = gt_boxes[image_index, gt_index[image_index, prior_index]]
            loc_target = self.box_coder.encode(matched_boxes, priors[prior_index])
            # rank the negatives by their background loss; the CE and its gradient then cover just
            # the kept priors (a dense CE backward is most of this loss's time on CPU)
            background_loss = -F.log_softmax(conf, dim=-1)[..., 0]
            negative = hard_negative_mask(background_loss, positive, self.neg_pos_ratio)
            kept = positive | negative
        num_pos = positive.sum()
        normaliser = num_pos.clamp(min=1)
        loss_conf = F.cross_entropy(conf[kept], labels[kept], reduction="sum") / normaliser
        loss_loc = F.smooth_l1_loss(loc[positive], loc_target, reduction="sum") / normaliser
        return {
            "loss": loss_conf + self.loc_weight * loss_loc,
            "loss_loc": loss_loc,
            "loss_conf": loss_conf,
            "num_pos": num_pos.float(),
        }
