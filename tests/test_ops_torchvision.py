"""dssd.ops against torchvision's SSD (``torchvision.models.detection.SSD``) on the same priors,
ground truth and head outputs: ``MultiBoxLoss`` gives the loss of its training path (``box_iou`` +
``SSDMatcher`` per image, then ``compute_loss``) and ``PostProcessor`` the detections of its
``postprocess_detections``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_convert, box_iou

from dssd.models.default_boxes import DefaultBoxes
from dssd.ops import MultiBoxLoss, PostProcessor, match, pad_targets

SIZE = 321  # image side in pixels, torchvision's coordinates
NUM_CLASSES = 21  # VOC: 20 classes + background


@pytest.fixture(scope="module")
def priors() -> torch.Tensor:
    """DSSD-style default boxes on small maps: 8 per location, 2,728 in all."""
    return DefaultBoxes([0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05])([16, 8, 4, 3, 2, 1])


def torchvision_ssd() -> SSD:
    """torchvision's SSD as the holder of its loss and post-processing; its backbone, head and
    anchor generator are never run: the anchors are passed in."""
    return SSD(
        nn.Identity(), DefaultBoxGenerator([[2]]), (SIZE, SIZE), NUM_CLASSES, head=nn.Identity()
    )


def test_torchvisions_defaults_are_the_projects() -> None:
    """IoU 0.5 and 3:1 negatives for the loss, score 0.01, top 400, NMS 0.45 and 200 per image
    for the detections, offsets scaled by SSD's variances (0.1, 0.1, 0.2, 0.2)."""
    ssd, loss, post = torchvision_ssd(), MultiBoxLoss(), PostProcessor()
    assert ssd.proposal_matcher.low_threshold == loss.iou_threshold == 0.5
    assert ssd.neg_to_pos_ratio == loss.neg_pos_ratio == 3
    assert ssd.score_thresh == post.score_threshold == 0.01
    assert ssd.topk_candidates == post.top_k == 400
    assert ssd.nms_thresh == post.nms_iou == 0.45
    assert ssd.detections_per_img == post.max_detections == 200
    assert ssd.box_coder.weights == (10, 10, 5, 5)


def anchors(priors: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """The priors (normalised cxcywh) as torchvision's anchors: xyxy pixels, one per image."""
    return [box_convert(priors, "cxcywh", "xyxy") * SIZE] * batch_size


def ground_truth(batch_size: int, g: torch.Generator) -> list[dict[str, torch.Tensor]]:
    """1-10 boxes per image (normalised xyxy, sides 0.05-0.8) of random foreground classes."""
    targets = []
    for _ in range(batch_size):
        n = int(torch.randint(1, 11, (1,), generator=g))
        wh = 0.05 + 0.75 * torch.rand(n, 2, generator=g)
        xy = torch.rand(n, 2, generator=g) * (1 - wh)
        labels = torch.randint(1, NUM_CLASSES, (n,), generator=g)
        targets.append({"boxes": torch.cat([xy, xy + wh], dim=1), "labels": labels})
    return targets


def test_multibox_loss_equals_torchvisions_ssd_loss(priors: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(3)
    batch_size = 6
    targets = ground_truth(batch_size, g)
    loc = torch.randn(batch_size, len(priors), 4, generator=g)
    conf = torch.randn(batch_size, len(priors), NUM_CLASSES, generator=g)
    ssd = torchvision_ssd()
    targets_px = [{"boxes": t["boxes"] * SIZE, "labels": t["labels"]} for t in targets]
    matched = [
        ssd.proposal_matcher(box_iou(t["boxes"], a))
        for t, a in zip(targets_px, anchors(priors, batch_size), strict=True)
    ]
    head = {"bbox_regression": loc, "cls_logits": conf}
    theirs = ssd.compute_loss(targets_px, head, anchors(priors, batch_size), matched)
    ours = MultiBoxLoss()(loc, conf, priors, targets)

    # same matching rules (best prior per ground truth + IoU > 0.5; torchvision's >= 0.5 differs
    # only on exact ties), same positives
    _, labels = match(priors, *pad_targets(targets))
    their_labels = torch.stack(
        [
            torch.where(m >= 0, t["labels"][m.clamp(min=0)], 0)
            for t, m in zip(targets, matched, strict=True)
        ]
    )
    assert int((labels > 0).sum()) == sum(int((m >= 0).sum()) for m in matched) > 0
    # argmax ties between equal-IoU priors may go either way (rounding differs: pixels vs
    # normalised coordinates), nothing else
    assert (labels == their_labels).float().mean() > 0.999
    # same formula (SSD's loss normalised by the positives in both); the few tie-broken priors
    # above are different priors with different offsets, hence a tolerance of a percent
    loss_loc, loss_conf = theirs["bbox_regression"], theirs["classification"]
    assert float(ours["loss_loc"]) == pytest.approx(float(loss_loc), rel=1e-2)
    assert float(ours["loss_conf"]) == pytest.approx(float(loss_conf), rel=1e-2)
    assert float(ours["loss"]) == pytest.approx(float(loss_loc + loss_conf), rel=1e-2)


def class_logits(case: str, batch_size: int, num_priors: int, g: torch.Generator) -> torch.Tensor:
    """N(0, 1) logits: ``untrained`` as they are (every score ~1/21 passes 0.01); ``trained``
    with +8 on the background of 95% of the priors and on one random class of the others."""
    logits = torch.randn(batch_size, num_priors, NUM_CLASSES, generator=g)
    if case == "untrained":
        return logits
    objects = torch.rand(batch_size, num_priors, generator=g) < 0.05
    classes = torch.randint(1, NUM_CLASSES, (batch_size, num_priors), generator=g)
    boosted = torch.where(objects, classes, 0)
    return logits.scatter_add(2, boosted[..., None], torch.full_like(logits[..., :1], 8.0))


@pytest.mark.parametrize("case", ["trained", "untrained"])
def test_postprocessor_equals_torchvisions_ssd(priors: torch.Tensor, case: str) -> None:
    g = torch.Generator().manual_seed(1)
    batch_size = 3
    loc = 0.5 * torch.randn(batch_size, len(priors), 4, generator=g)
    conf = class_logits(case, batch_size, len(priors), g)
    ours = PostProcessor()(loc, conf, priors, torch.tensor([[SIZE, SIZE]] * batch_size))
    head = {"bbox_regression": loc, "cls_logits": conf}
    with torch.no_grad():
        theirs = torchvision_ssd().postprocess_detections(
            head, anchors(priors, batch_size), [(SIZE, SIZE)] * batch_size
        )
    for a, b in zip(ours, theirs, strict=True):
        # the same number of detections, and each of one side has one of the same class, score
        # (within 1e-4) and box (IoU >= 0.99) on the other
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        same = (
            (box_iou(a["boxes"].double(), b["boxes"].double()) >= 0.99)
            & (a["labels"][:, None] == b["labels"][None, :])
            & ((a["scores"][:, None] - b["scores"][None, :]).abs() < 1e-4)
        )
        assert same.any(dim=1).all() and same.any(dim=0).all()
