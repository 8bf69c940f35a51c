"""Tests of dssd.ops.match against a per-image loop reference."""

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from dssd.ops import match, pad_targets


def random_xyxy(num: int, generator: torch.Generator, max_size: float = 0.3) -> torch.Tensor:
    xy = torch.rand(num, 2, generator=generator) * 0.7
    wh = torch.rand(num, 2, generator=generator) * (max_size - 0.01) + 0.01
    return torch.cat([xy, xy + wh], dim=-1)


def reference_match(
    priors: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SSD matching of one image, written as the original per-ground-truth loop."""
    priors_xyxy = box_convert(priors, "cxcywh", "xyxy")
    if len(boxes) == 0:
        return priors_xyxy, torch.zeros(len(priors), dtype=torch.int64)
    iou = box_iou(boxes, priors_xyxy)  # [N, P]
    best_iou, best_gt = iou.max(dim=0)
    best_prior = iou.argmax(dim=1)
    for j in range(len(boxes)):
        best_gt[best_prior[j]] = j
        best_iou[best_prior[j]] = 2.0
    positive = best_iou > threshold
    matched_labels = torch.where(positive, labels[best_gt], 0)
    matched_boxes = torch.where(positive[:, None], boxes[best_gt], priors_xyxy)
    return matched_boxes, matched_labels


def make_targets(sizes: list[int], priors: torch.Tensor, g: torch.Generator) -> list[dict]:
    """Ground truth mixing jittered priors (high IoU), random boxes, tiny boxes (low IoU) and
    near-duplicates (two gts claiming the same best prior)."""
    priors_xyxy = box_convert(priors, "cxcywh", "xyxy")
    targets = []
    for n in sizes:
        kinds = torch.randint(0, 4, (n,), generator=g)
        boxes = random_xyxy(n, g)
        jittered = priors_xyxy[torch.randint(0, len(priors), (n,), generator=g)]
        jittered = jittered + 0.02 * torch.randn(n, 4, generator=g)
        boxes = torch.where((kinds == 0)[:, None], jittered, boxes)
        boxes = torch.where((kinds == 1)[:, None], random_xyxy(n, g, max_size=0.03), boxes)
        for j in range(1, n):
            if kinds[j] == 3:
                boxes[j] = boxes[j - 1] + 1e-3
        labels = torch.randint(1, 5, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_match_equals_reference(threshold: float) -> None:
    g = torch.Generator().manual_seed(0)
    priors = box_convert(random_xyxy(300, g), "xyxy", "cxcywh")
    sizes = [4, 0, 9, 1, 0, 12]
    targets = make_targets(sizes, priors, g)
    gt_boxes, gt_labels = pad_targets(targets)

    boxes, labels = match(priors, gt_boxes, gt_labels, threshold)

    assert boxes.shape == (6, 300, 4) and labels.shape == (6, 300)
    assert labels.dtype == torch.int64
    assert torch.isfinite(boxes).all()
    priors_xyxy = box_convert(priors, "cxcywh", "xyxy")
    num_threshold_matches = 0
    for i, t in enumerate(targets):
        expected_boxes, expected_labels = reference_match(
            priors, t["boxes"], t["labels"], threshold
        )
        assert torch.equal(labels[i], expected_labels)
        assert torch.equal(boxes[i], expected_boxes)
        claimed = box_iou(t["boxes"], priors_xyxy).argmax(dim=1).unique() if sizes[i] else []
        num_threshold_matches += int((expected_labels > 0).sum()) - len(claimed)
    assert (labels[1] == 0).all() and (labels[4] == 0).all()
    # Both rules are exercised: low-IoU bipartite matches and extra above-threshold matches.
    positive = labels > 0
    matched_iou = (box_iou(boxes[positive], priors_xyxy)).gather(1, positive.nonzero()[:, 1:])
    assert (matched_iou <= threshold).any()
    assert num_threshold_matches > 0


def test_match_all_images_empty() -> None:
    g = torch.Generator().manual_seed(1)
    priors = box_convert(random_xyxy(20, g), "xyxy", "cxcywh")
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    gt_boxes, gt_labels = pad_targets([empty, empty, empty])

    boxes, labels = match(priors, gt_boxes, gt_labels)

    assert labels.shape == (3, 20) and (labels == 0).all()
    torch.testing.assert_close(boxes, box_convert(priors, "cxcywh", "xyxy").expand(3, -1, -1))


def test_match_bipartite_collision_higher_index_wins() -> None:
    # Prior 0 is the best (but low-IoU) prior of both small gts; gt 1 must keep it.
    priors = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]])
    gt_boxes = torch.tensor([[[0.45, 0.45, 0.5, 0.5], [0.5, 0.5, 0.55, 0.55], [0, 0, 0, 0]]])
    gt_labels = torch.tensor([[3, 7, 0]])

    boxes, labels = match(priors, gt_boxes, gt_labels)

    assert labels.tolist() == [[7, 0, 0]]
    assert torch.equal(boxes[0, 0], gt_boxes[0, 1])


def test_match_padding_never_matches() -> None:
    # A padding row whose box coincides with a prior must still be ignored.
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2]])
    gt_boxes = torch.tensor([[[0.4, 0.4, 0.6, 0.6], [0.1, 0.1, 0.3, 0.3]]])
    gt_labels = torch.tensor([[2, 0]])

    _, labels = match(priors, gt_boxes, gt_labels)

    assert labels.tolist() == [[2, 0]]


def test_match_threshold_is_strict() -> None:
    # IoUs with the gt: 1.0 (bipartite), exactly 0.5 (background), 0.6 (positive).
    priors = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.5, 0.5, 1.0], [0.3, 0.5, 0.6, 1.0]])
    gt_boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0]]])
    gt_labels = torch.tensor([[4]])

    _, labels = match(priors, gt_boxes, gt_labels, iou_threshold=0.5)

    assert labels.tolist() == [[4, 0, 4]]
