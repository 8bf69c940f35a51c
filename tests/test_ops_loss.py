"""Tests of dssd.ops.loss against a per-image loop reference."""

import math

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert

from dssd.ops import MultiBoxLoss, hard_negative_mask
from ssd_reference import reference_match_indices

VARIANCES = (0.1, 0.1, 0.2, 0.2)


def random_xyxy(num: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(num, 2, generator=generator) * 0.7
    wh = torch.rand(num, 2, generator=generator) * 0.29 + 0.01
    return torch.cat([xy, xy + wh], dim=-1)


def reference_hard_negatives(
    conf_loss: torch.Tensor, positive: torch.Tensor, ratio: float
) -> torch.Tensor:
    """Mining of one image ``[P]``: indices of the hardest negatives."""
    num_pos = int(positive.sum())
    num_neg = min(int(ratio * num_pos), len(positive) - num_pos)
    negatives = (~positive).nonzero()[:, 0]
    order = conf_loss[negatives].argsort(descending=True)
    return negatives[order[:num_neg]]


def reference_loss(
    loc: torch.Tensor,
    conf: torch.Tensor,
    priors: torch.Tensor,
    targets: list[dict],
    threshold: float,
    ratio: float,
    loc_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """SSD loss computed image by image with the released code's matching loop and the formulas."""
    total_loc, total_conf, total_pos = loc.sum() * 0, conf.sum() * 0, 0
    for i, t in enumerate(targets):
        best_gt = reference_match_indices(priors, t["boxes"], threshold)
        positive = best_gt >= 0
        labels = torch.zeros(len(priors), dtype=torch.int64)
        labels[positive] = t["labels"][best_gt[positive]]
        ce = F.cross_entropy(conf[i], labels, reduction="none")
        negatives = reference_hard_negatives(ce.detach(), positive, ratio)
        total_conf = total_conf + ce[positive].sum() + ce[negatives].sum()
        if positive.any():
            g = box_convert(t["boxes"][best_gt[positive]], "xyxy", "cxcywh")
            p = priors[positive]
            target = torch.stack(
                [
                    (g[:, 0] - p[:, 0]) / (VARIANCES[0] * p[:, 2]),
                    (g[:, 1] - p[:, 1]) / (VARIANCES[1] * p[:, 3]),
                    torch.log(g[:, 2] / p[:, 2]) / VARIANCES[2],
                    torch.log(g[:, 3] / p[:, 3]) / VARIANCES[3],
                ],
                dim=1,
            )
            diff = (loc[i][positive] - target).abs()
            total_loc = total_loc + torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).sum()
        total_pos += int(positive.sum())
    n = max(total_pos, 1)
    return total_loc / n, total_conf / n, total_pos


def make_batch(sizes: list[int], num_priors: int, num_classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    # Priors in close pairs, so the IoU threshold step adds matches to the bipartite ones.
    priors_xyxy = random_xyxy(num_priors // 2, g).repeat(2, 1)
    priors_xyxy[num_priors // 2 :] += 0.01 * torch.rand(num_priors // 2, 4, generator=g)
    priors = box_convert(priors_xyxy, "xyxy", "cxcywh")
    targets = []
    for n in sizes:
        # Half jittered priors, half random boxes.
        jittered = priors_xyxy[torch.randint(0, num_priors, (n,), generator=g)]
        jittered = jittered + 0.01 * torch.rand(n, 4, generator=g)
        boxes = torch.where(torch.rand(n, 1, generator=g) < 0.5, jittered, random_xyxy(n, g))
        labels = torch.randint(1, num_classes + 1, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    loc = torch.randn(len(sizes), num_priors, 4, generator=g).requires_grad_()
    conf = (3 * torch.randn(len(sizes), num_priors, num_classes + 1, generator=g)).requires_grad_()
    return loc, conf, priors, targets


def test_hard_negative_mask_equals_reference() -> None:
    g = torch.Generator().manual_seed(0)
    conf_loss = torch.rand(5, 40, generator=g)  # distinct values: no ties
    positive = torch.rand(5, 40, generator=g) < torch.tensor([[0.1], [0.0], [0.5], [0.9], [0.02]])
    positive[1] = False  # no positives at all

    for ratio in (3.0, 2.5, 0.5):
        mask = hard_negative_mask(conf_loss, positive, ratio)

        assert mask.shape == (5, 40) and mask.dtype == torch.bool
        for i in range(5):
            expected = torch.zeros(40, dtype=torch.bool)
            expected[reference_hard_negatives(conf_loss[i], positive[i], ratio)] = True
            assert torch.equal(mask[i], expected)
    assert not mask[1].any()
    assert mask[3].sum() == 40 - positive[3].sum()  # capped by the number of negatives


def test_multibox_loss_equals_reference() -> None:
    loc, conf, priors, targets = make_batch([3, 0, 6, 1, 0], num_priors=120, num_classes=4, seed=1)
    criterion = MultiBoxLoss(iou_threshold=0.5, neg_pos_ratio=3.0, loc_weight=1.5)

    out = criterion(loc, conf, priors, targets)
    out["loss"].backward()
    grads = loc.grad.clone(), conf.grad.clone()
    loc.grad, conf.grad = None, None
    expected_loc, expected_conf, num_pos = reference_loss(
        loc, conf, priors, targets, threshold=0.5, ratio=3.0, loc_weight=1.5
    )
    (expected_conf + 1.5 * expected_loc).backward()

    assert set(out) == {"loss", "loss_loc", "loss_conf", "num_pos"}
    assert num_pos > 10 and out["num_pos"].item() == num_pos
    torch.testing.assert_close(out["loss_loc"], expected_loc)
    torch.testing.assert_close(out["loss_conf"], expected_conf)
    torch.testing.assert_close(out["loss"], expected_conf + 1.5 * expected_loc)
    torch.testing.assert_close(grads[0], loc.grad)
    torch.testing.assert_close(grads[1], conf.grad)
    assert (grads[1][1] == 0).all() and (grads[1][0] != 0).any()  # empty image: no signal


def test_multibox_loss_no_positives_is_zero() -> None:
    loc, conf, priors, targets = make_batch([0, 0, 0], num_priors=30, num_classes=3, seed=2)

    out = MultiBoxLoss()(loc, conf, priors, targets)
    out["loss"].backward()

    assert out["loss"].item() == 0.0 and out["num_pos"].item() == 0
    assert out["loss_loc"].item() == 0.0 and out["loss_conf"].item() == 0.0
    assert out["loss"].requires_grad
    assert (loc.grad == 0).all() and (conf.grad == 0).all()


def test_multibox_loss_perfect_prediction_is_small() -> None:
    # A gt equal to a prior, predicted with zero offsets and confident logits: loss ~ 0.
    priors = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    targets = [{"boxes": torch.tensor([[0.2, 0.2, 0.4, 0.4]]), "labels": torch.tensor([2])}]
    conf = torch.tensor([[[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]]], requires_grad=True)
    loc = torch.zeros(1, 2, 4, requires_grad=True)

    out = MultiBoxLoss()(loc, conf, priors, targets)

    assert out["num_pos"].item() == 1
    assert out["loss_loc"].item() < 1e-6
    assert math.isclose(out["loss_conf"].item(), 2 * math.log(1 + 2 * math.exp(-5)), rel_tol=1e-3)
