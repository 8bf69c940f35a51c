"""SSD MultiBox loss: matching, hard negative mining, softmax CE + Smooth-L1."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dssd.ops.boxes import BoxCoder, pad_targets
from dssd.ops.matching import match_indices


def hard_negative_mask(conf_loss: Tensor, positive: Tensor, neg_pos_ratio: float = 3.0) -> Tensor:
    """Select the hardest negatives of every image (SSD hard negative mining).

    Args:
        conf_loss: ``[B, P]`` per-prior confidence loss (used for ranking only).
        positive: ``[B, P]`` bool mask of positive priors.
        neg_pos_ratio: negatives kept per positive.

    Returns:
        ``[B, P]`` bool mask of the ``min(floor(ratio * num_pos), P - num_pos)`` non-positive
        priors with the largest loss in each image; an image without positives gets none.
    """
    num_pos = positive.sum(dim=1, keepdim=True)
    num_neg = torch.minimum((neg_pos_ratio * num_pos).long(), positive.shape[1] - num_pos)
    loss = conf_loss.detach().masked_fill(positive, float("-inf"))
    # the num_neg largest of each image: a top-k as deep as the largest num_neg, not a full sort
    # of every prior (ties may pick other priors than a sort would, with the same loss values)
    k = int(num_neg.max()) if num_neg.numel() else 0
    order = loss.topk(k, dim=1).indices  # [B, k], decreasing loss
    in_top = torch.arange(k, device=loss.device) < num_neg
    return torch.zeros_like(positive).scatter_(1, order, in_top) & ~positive


class MultiBoxLoss(nn.Module):
    """SSD training loss (Liu et al. 2016, eq. 1), vectorised over the batch.

    ``(sum of softmax CE over positives and mined negatives
    + loc_weight * sum of Smooth-L1 over positives) / N`` with ``N`` the number of positive
    priors in the batch; it is 0 (still attached to the graph) when ``N = 0``. The regression
    targets are the matched boxes encoded by ``box_coder`` (SSD's variances by default).
    """

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
        """Compute the loss.

        Args:
            loc: ``[B, P, 4]`` predicted offsets.
            conf: ``[B, P, C + 1]`` class logits, class 0 = background.
            priors: ``[P, 4]`` cxcywh, normalised.
            targets: per image ``"boxes"`` ``[N_i, 4]`` xyxy normalised and ``"labels"`` ``[N_i]``.

        Returns:
            ``"loss"``, ``"loss_loc"``, ``"loss_conf"`` (all divided by ``N``) and ``"num_pos"``
            (``N`` as a float tensor, for logging).
        """
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
            # rank the negatives by their background loss, -log softmax(conf)[0]; only the ranking
            # needs every prior, so the cross-entropy and its gradient cover just the kept priors
            # (a dense CE backward over B x P x (C + 1) logits is most of this loss's time on CPU)
            background_loss = -F.log_softmax(conf, dim=-1)[..., 0]
            negative = hard_negative_mask(background_loss, positive, self.neg_pos_ratio)
            kept = positive | negative
        num_pos = positive.sum()
        loss_conf = F.cross_entropy(conf[kept], labels[kept], reduction="sum")
        loss_loc = F.smooth_l1_loss(loc[positive], loc_target, beta=1.0, reduction="sum")

        normaliser = num_pos.clamp(min=1)
        loss_conf = loss_conf / normaliser
        loss_loc = loss_loc / normaliser
        return {
            "loss": loss_conf + self.loc_weight * loss_loc,
            "loss_loc": loss_loc,
            "loss_conf": loss_conf,
            "num_pos": num_pos.float(),
        }
