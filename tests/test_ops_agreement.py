"""dssd.ops.compare_detections: two code paths' detections compared as sets.

Hand-built cases show that near-ties the post-processing can resolve either way (the order of two
detections, the score threshold, the per-image cap, NMS between two overlapping boxes) are
accepted, while a moved box, a dropped box and a changed label are caught. A post-processor run
twice on logits 1e-6 apart (ties made on purpose) must agree; one run on boxes moved, or with its
NMS threshold changed, must not.
"""

from __future__ import annotations

import pytest
import torch

from dssd.ops import PostProcessor, Tolerance, compare_detections, compare_with_network
from test_ops_postprocess import make_inputs

# two scores 3e-8 apart, as eager PyTorch and onnxruntime gave for one pair of detections
HIGH, LOW = 0.28606284, 0.28606281


def detections(*rows: tuple[int, float, list[float]]) -> dict[str, torch.Tensor]:
    """One image's detections from (label, score, xyxy box) rows."""
    if not rows:
        return {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        }
    labels, scores, boxes = zip(*rows, strict=True)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels),
    }


A = [10.0, 10.0, 110.0, 110.0]
B = [200.0, 50.0, 260.0, 150.0]
C = [40.0, 300.0, 90.0, 330.0]
# A shifted right by 30 px: IoU 70/130 = 0.54 with A, above SSD's NMS threshold 0.45
A_SHIFTED = [40.0, 10.0, 140.0, 110.0]
POST = PostProcessor(score_threshold=0.01, nms_iou=0.45, max_detections=3)


def test_two_near_tied_detections_in_swapped_order_agree() -> None:
    ours = [detections((1, 0.9, C), (3, HIGH, A), (2, LOW, B))]
    # the other path scores them the other way round by 3e-8, so lists them swapped
    theirs = [detections((1, 0.9, C), (2, HIGH, B), (3, LOW, A))]
    # compared by position, the second detection moved by 190 px and changed its label
    assert (ours[0]["boxes"] - theirs[0]["boxes"]).abs().max() == 190
    assert not torch.equal(ours[0]["labels"], theirs[0]["labels"])

    agreement = compare_detections(ours, theirs)

    assert agreement.agrees, agreement
    assert (agreement.matched, agreement.tied, agreement.box_gap) == (3, 0, 0.0)
    assert agreement.score_gap == pytest.approx(HIGH - LOW, abs=1e-8)


def test_a_moved_box_is_caught() -> None:
    ours = [detections((1, 0.9, C), (3, 0.5, A))]
    moved = [detections((1, 0.9, C), (3, 0.5, [a + 5.0 for a in A]))]

    agreement = compare_detections(ours, moved, postprocess=POST)

    assert not agreement.agrees
    assert (agreement.matched, len(agreement.missing), len(agreement.extra)) == (1, 1, 1)
    assert str(agreement).endswith(
        "missing image 0: label 3 score 0.5000 at [10.0, 10.0, 110.0, 110.0]; "
        "extra image 0: label 3 score 0.5000 at [15.0, 15.0, 115.0, 115.0]"
    )


def test_a_box_moved_by_more_than_the_tolerance_but_still_matched_is_caught() -> None:
    """At IoU >= 0.99 the two boxes are one detection, and their gap is what is reported."""
    ours = [detections((3, 0.5, A))]
    nudged = [detections((3, 0.5, [A[0] + 0.01, *A[1:]]))]

    agreement = compare_detections(ours, nudged, Tolerance(box_px=1e-3))

    assert not agreement.agrees
    assert agreement.matched == 1 and not agreement.missing and not agreement.extra
    assert agreement.box_gap == pytest.approx(0.01, rel=1e-3)
    assert compare_detections(ours, nudged, Tolerance(box_px=0.02)).agrees


def test_a_dropped_box_is_caught() -> None:
    ours = [detections((1, 0.9, C)), detections((3, 0.5, A), (2, 0.4, B))]
    dropped = [detections((1, 0.9, C)), detections((3, 0.5, A))]

    agreement = compare_detections(ours, dropped, postprocess=POST)

    assert not agreement.agrees
    assert agreement.missing == ["image 1: label 2 score 0.4000 at [200.0, 50.0, 260.0, 150.0]"]
    assert agreement.extra == [] and agreement.matched == 2


def test_a_changed_label_is_caught() -> None:
    ours = [detections((1, 0.9, C), (3, 0.5, A))]
    relabelled = [detections((1, 0.9, C), (2, 0.5, A))]

    agreement = compare_detections(ours, relabelled, postprocess=POST)

    assert not agreement.agrees
    assert (len(agreement.missing), len(agreement.extra)) == (1, 1)
    assert "label 3" in agreement.missing[0] and "label 2" in agreement.extra[0]


def test_a_changed_score_is_caught_and_reported_as_a_score_gap() -> None:
    ours = [detections((3, 0.5, A))]
    rescored = [detections((3, 0.6, A))]
    agreement = compare_detections(ours, rescored, postprocess=POST)
    assert not agreement.agrees
    # the same box and label: the report gives the gap, not two unrelated detections
    assert agreement.missing == [
        "image 0: label 3 score 0.5000 at [10.0, 10.0, 110.0, 110.0] "
        "(the other side's at this box scores 1.00e-01 apart)"
    ]
    assert agreement.extra[0].endswith("(the other side's at this box scores 1.00e-01 apart)")
    # with no score gap allowed, two scores a rounding apart print as that rounding
    strict = Tolerance(score=0.0)
    agreement = compare_detections([detections((3, HIGH, A))], [detections((3, LOW, A))], strict)
    assert not agreement.agrees and "scores 2.98e-08 apart" in agreement.missing[0]
    # a partner within the tolerance that another detection took: no gap to report
    twice = [detections((3, 0.5, A), (3, 0.50001, A))]
    agreement = compare_detections(twice, [detections((3, 0.5, A))])
    assert agreement.matched == 1 and len(agreement.missing) == 1
    assert "apart" not in agreement.missing[0]


def test_a_detection_at_the_score_threshold_may_be_kept_on_one_side_only() -> None:
    ours = [detections((3, 0.5, A), (2, 0.01000003, B))]
    theirs = [detections((3, 0.5, A))]  # its score came out at 0.00999998 there

    assert compare_detections(ours, theirs, postprocess=POST).agrees
    assert compare_detections(ours, theirs, postprocess=POST).tied == 1
    # without the post-processing's settings nothing explains it
    assert not compare_detections(ours, theirs).agrees
    # far from the threshold, it is a dropped box
    far = [detections((3, 0.5, A), (2, 0.2, B))]
    assert not compare_detections(far, theirs, postprocess=POST).agrees


def test_the_last_place_under_the_cap_may_go_to_either_of_two_tied_detections() -> None:
    """max_detections=3: the third place ties between B and C."""
    ours = [detections((1, 0.9, A), (2, 0.8, [0, 0, 5, 5]), (3, HIGH, B))]
    theirs = [detections((1, 0.9, A), (2, 0.8, [0, 0, 5, 5]), (1, HIGH, C))]

    agreement = compare_detections(ours, theirs, postprocess=POST)

    assert agreement.agrees, agreement
    assert (agreement.matched, agreement.tied) == (2, 2)
    # with room for a fourth detection, the cap explains neither
    roomy = PostProcessor(score_threshold=0.01, nms_iou=0.45, max_detections=4)
    assert not compare_detections(ours, theirs, postprocess=roomy).agrees


def test_nms_between_two_tied_overlapping_boxes_may_keep_either() -> None:
    """A and A_SHIFTED overlap beyond the NMS threshold and tie: one side keeps A, the other
    A_SHIFTED. The reference computed both (its candidates), so the flip is a tie; a box of the
    other side that the reference never computed is not."""
    ours = [detections((1, 0.9, C), (3, HIGH, A))]
    theirs = [detections((1, 0.9, C), (3, LOW, A_SHIFTED))]
    candidates = [detections((1, 0.9, C), (3, HIGH, A), (3, LOW, A_SHIFTED))]

    agreement = compare_detections(ours, theirs, postprocess=POST, candidates=candidates)
    assert agreement.agrees, agreement
    assert agreement.tied == 2

    # a box moved onto A_SHIFTED with its score kept looks alike, but the reference never
    # computed that box: caught
    moved = [detections((1, 0.9, C), (3, HIGH, A_SHIFTED))]
    not_computed = [detections((1, 0.9, C), (3, HIGH, A))]
    assert not compare_detections(ours, moved, postprocess=POST, candidates=not_computed).agrees
    # without the reference's candidates, no NMS flip can be told from a moved box
    assert not compare_detections(ours, theirs, postprocess=POST).agrees
    # scores far apart: NMS cannot have kept the lower one on one side and the higher one on
    # the other
    apart = [detections((1, 0.9, C), (3, 0.3, A_SHIFTED))]
    apart_candidates = [detections((1, 0.9, C), (3, HIGH, A), (3, 0.3, A_SHIFTED))]
    assert not compare_detections(ours, apart, postprocess=POST, candidates=apart_candidates).agrees


def test_images_must_correspond() -> None:
    with pytest.raises(ValueError, match="detections of 1 and 2 images"):
        compare_detections([detections()], [detections(), detections()])


def tied_inputs(seed: int) -> tuple[torch.Tensor, ...]:
    """Inputs whose logits take few distinct values, so that many scores tie exactly, on dense
    overlapping priors, so that NMS meets the ties."""
    loc, conf, priors, orig_sizes = make_inputs(2, 300, 3, seed)
    return loc, conf.round(), priors, orig_sizes


class FixedOutputs(torch.nn.Module):
    """A "network" that returns given outputs, whatever the images."""

    def __init__(self, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor) -> None:
        super().__init__()
        self.loc, self.conf, self.priors = loc, conf, priors

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc, self.conf


@pytest.mark.parametrize("max_detections", [60, 1000], ids=["capped", "uncapped"])
def test_a_post_processor_agrees_with_itself_on_logits_a_rounding_apart(
    max_detections: int,
) -> None:
    """The same detector computed twice, the second time with its logits moved by 1e-6 (as
    another order of float operations moves them): the exact ties of the first become near ties
    broken either way, which moves detections across the per-image cap (``capped``: 60 of about
    500 kept) and across NMS decisions (``uncapped``). Compared as sets, the two agree, where
    plain one-to-one matching does not; the NMS threshold changed, or the boxes moved by 2% of
    the image, is caught."""
    post = PostProcessor(score_threshold=0.01, nms_iou=0.45, max_detections=max_detections)
    loose = PostProcessor(score_threshold=0.01, nms_iou=0.6, max_detections=max_detections)
    tied = unmatched = 0
    for seed in range(4):
        loc, conf, priors, orig_sizes = tied_inputs(seed)
        net, images = FixedOutputs(loc, conf, priors), torch.zeros(2)
        noise = 1e-6 * torch.randn(conf.shape, generator=torch.Generator().manual_seed(seed))
        theirs = post(loc, conf + noise, priors, orig_sizes)

        agreement = compare_with_network(net, post, images, orig_sizes, theirs)
        assert agreement.agrees, f"seed {seed}: {agreement}"
        tied += agreement.tied
        plain = compare_detections(post(loc, conf, priors, orig_sizes), theirs)
        unmatched += len(plain.missing) + len(plain.extra)

        changed_nms = loose(loc, conf + noise, priors, orig_sizes)
        assert not compare_with_network(net, post, images, orig_sizes, changed_nms).agrees
        shift = 0.02 * orig_sizes[:, 1:].float()
        moved = [{**d, "boxes": d["boxes"] + shift[i]} for i, d in enumerate(theirs)]
        assert not compare_with_network(net, post, images, orig_sizes, moved).agrees
    # the ties were there, and explained
    assert tied == unmatched > 0
