"""Tests of dssd.ops.match against a per-image loop reference."""

import pytest
import torch
from torchvision.ops import box_convert, box_iou

from dssd.models.default_boxes import DefaultBoxes
from dssd.ops import match, pad_targets
from ssd_reference import reference_match_indices


def random_xyxy(num: int, generator: torch.Generator, max_size: float = 0.3) -> torch.Tensor:
    xy = torch.rand(num, 2, generator=generator) * 0.7
    wh = torch.rand(num, 2, generator=generator) * (max_size - 0.01) + 0.01
    return torch.cat([xy, xy + wh], dim=-1)


def reference_match(
    priors: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The matched xyxy box (the prior itself for background) and class of every prior."""
    priors_xyxy = box_convert(priors, "cxcywh", "xyxy")
    gt_of = reference_match_indices(priors, boxes, threshold)
    positive = gt_of >= 0
    if not positive.any():
        return priors_xyxy, torch.zeros(len(priors), dtype=torch.int64)
    matched_labels = torch.where(positive, labels[gt_of.clamp(min=0)], 0)
    matched_boxes = torch.where(positive[:, None], boxes[gt_of.clamp(min=0)], priors_xyxy)
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


def test_match_bipartite_collision_goes_to_the_higher_iou() -> None:
    # Prior 0 is the best prior of both gts; gt 0 overlaps it more, so gt 1 takes its second best
    # (prior 2, IoU 0.002), as the released code's greedy matching does: both gts are trained.
    priors = torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.1, 0.1, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    gt_boxes = torch.tensor([[[0.3, 0.3, 0.7, 0.66], [0.45, 0.45, 0.61, 0.61], [0, 0, 0, 0]]])
    gt_labels = torch.tensor([[3, 7, 0]])

    boxes, labels = match(priors, gt_boxes, gt_labels)

    assert labels.tolist() == [[3, 0, 7]]
    assert torch.equal(boxes[0, 0], gt_boxes[0, 0]) and torch.equal(boxes[0, 2], gt_boxes[0, 1])


def test_match_crowded_ground_truths_each_get_a_prior() -> None:
    # 12 small gts around few priors: many share a best prior, and the greedy order cascades.
    g = torch.Generator().manual_seed(3)
    priors = DefaultBoxes([0.2, 0.4], aspect_ratios=(2.0,))([5])  # 5 x 5 centres, 4 boxes each
    centres = 0.4 + 0.2 * torch.rand(12, 2, generator=g)
    boxes = torch.cat([centres - 0.03, centres + 0.03], dim=1)
    labels = torch.arange(1, 13)
    gt_boxes, gt_labels = pad_targets([{"boxes": boxes, "labels": labels}])

    _, matched = match(priors, gt_boxes, gt_labels)

    expected = reference_match_indices(priors, boxes, 0.5)
    assert torch.equal(matched[0], torch.where(expected >= 0, labels[expected], 0))
    assert set(matched[0].tolist()) - {0} == set(range(1, 13))  # every gt has a positive
    best = box_iou(boxes, box_convert(priors, "cxcywh", "xyxy")).argmax(dim=1)
    assert len(best.unique()) < 12  # best priors collide


def test_match_gt_without_overlap_or_area_claims_nothing() -> None:
    # A point box and a box away from every prior: no prior is theirs (a forced prior would be a
    # wrong class, and the point's box would encode to log(0)).
    priors = torch.tensor([[0.25, 0.25, 0.3, 0.3], [0.75, 0.75, 0.3, 0.3]])
    point, away, inside = [0.2, 0.2, 0.2, 0.2], [0.45, 0.45, 0.55, 0.55], [0.7, 0.7, 0.8, 0.8]
    gt_boxes = torch.tensor([[point, away, inside]])
    gt_labels = torch.tensor([[1, 2, 3]])

    _, labels = match(priors, gt_boxes, gt_labels)

    assert labels.tolist() == [[0, 3]]


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
