"""Tests of dssd.ops.PostProcessor against explicit loops over images and classes."""

import pytest
import torch
from torchvision.ops import box_convert, nms

import dssd.ops.postprocess as postprocess
from dssd.ops import BoxCoder, GraphPostProcessor, PostProcessor, Tolerance, compare_detections

VARIANCES = (0.1, 0.1, 0.2, 0.2)


def reference_decode(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """SSD decoding of one image ``[P, 4]`` to xyxy."""
    cx = priors[:, 0] + loc[:, 0] * VARIANCES[0] * priors[:, 2]
    cy = priors[:, 1] + loc[:, 1] * VARIANCES[1] * priors[:, 3]
    w = priors[:, 2] * torch.exp(loc[:, 2] * VARIANCES[2])
    h = priors[:, 3] * torch.exp(loc[:, 3] * VARIANCES[3])
    return box_convert(torch.stack([cx, cy, w, h], dim=1), "cxcywh", "xyxy")


def reference_postprocess(
    loc, conf, priors, orig_sizes, score_threshold, top_k, nms_iou, max_detections
) -> tuple[list[dict], int]:
    """Per-image, per-class SSD detection; also returns the largest pre-cut detection count."""
    results, most_before_cut = [], 0
    for i in range(len(loc)):
        boxes = reference_decode(loc[i], priors).clamp(0, 1)
        scores = conf[i].softmax(dim=-1)
        dets_boxes, dets_scores, dets_labels = [], [], []
        for c in range(1, conf.shape[-1]):
            above = scores[:, c] > score_threshold
            class_scores, class_boxes = scores[above, c], boxes[above]
            order = class_scores.argsort(descending=True)[:top_k]
            class_scores, class_boxes = class_scores[order], class_boxes[order]
            keep = nms(class_boxes, class_scores, nms_iou)
            dets_boxes.append(class_boxes[keep])
            dets_scores.append(class_scores[keep])
            dets_labels.append(torch.full((len(keep),), c, dtype=torch.int64))
        boxes, scores, labels = map(torch.cat, (dets_boxes, dets_scores, dets_labels))
        most_before_cut = max(most_before_cut, len(scores))
        order = scores.argsort(descending=True)[:max_detections]
        h, w = orig_sizes[i].tolist()
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        results.append(
            {"boxes": boxes[order] * scale, "scores": scores[order], "labels": labels[order]}
        )
    return results, most_before_cut


def make_inputs(batch_size: int, num_priors: int, num_classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_priors, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(num_priors, 2, generator=g) * 0.3 + 0.05
    priors = torch.cat([xy, wh], dim=1)
    loc = torch.randn(batch_size, num_priors, 4, generator=g)
    conf = 2 * torch.randn(batch_size, num_priors, num_classes + 1, generator=g)
    orig_sizes = torch.randint(100, 600, (batch_size, 2), generator=g)
    return loc, conf, priors, orig_sizes


def assert_same_detections(result: list[dict], expected: list[dict]) -> None:
    """Well-formed detections, sorted by decreasing score, that are the expected ones: compared
    as sets (the two computations may rank near-tied scores apart), every one matched."""
    assert len(result) == len(expected)
    for r in result:
        assert r["boxes"].dtype == torch.float32 and r["scores"].dtype == torch.float32
        assert r["labels"].dtype == torch.int64
        assert r["boxes"].shape == (len(r["scores"]), 4) and r["labels"].shape == r["scores"].shape
        assert (r["scores"][:-1] >= r["scores"][1:]).all()  # sorted by decreasing score
    agreement = compare_detections(expected, result, Tolerance(box_px=1e-3, score=1e-5))
    assert agreement.agrees, agreement
    assert agreement.matched == sum(len(e["scores"]) for e in expected)


def run_both(loc, conf, priors, orig_sizes, **kwargs) -> tuple[list[dict], list[dict], int]:
    result = PostProcessor(box_coder=BoxCoder(VARIANCES), **kwargs)(loc, conf, priors, orig_sizes)
    expected, most_before_cut = reference_postprocess(loc, conf, priors, orig_sizes, **kwargs)
    return result, expected, most_before_cut


def test_postprocess_equals_reference() -> None:
    loc, conf, priors, orig_sizes = make_inputs(4, 150, 5, seed=0)
    conf[2, :, 0] += 20.0  # an image where no score passes the threshold

    result, expected, _ = run_both(
        loc,
        conf,
        priors,
        orig_sizes,
        score_threshold=0.05,
        top_k=400,
        nms_iou=0.45,
        max_detections=1000,
    )

    assert_same_detections(result, expected)
    assert len(result[2]["scores"]) == 0 and result[2]["boxes"].shape == (0, 4)
    assert min(len(result[i]["scores"]) for i in (0, 1, 3)) > 20
    assert {int(c) for c in result[0]["labels"]} == {1, 2, 3, 4, 5}
    h, w = orig_sizes[0].tolist()
    assert result[0]["boxes"][:, 0::2].max() <= w and result[0]["boxes"][:, 1::2].max() <= h
    assert result[0]["boxes"].min() >= 0


def test_postprocess_top_k_and_max_detections_cut() -> None:
    loc, conf, priors, orig_sizes = make_inputs(3, 200, 4, seed=1)
    kwargs = {"score_threshold": 0.01, "nms_iou": 0.5}

    result, expected, _ = run_both(
        loc, conf, priors, orig_sizes, top_k=6, max_detections=15, **kwargs
    )
    uncut, _, most_before_cut = run_both(
        loc, conf, priors, orig_sizes, top_k=400, max_detections=1000, **kwargs
    )

    assert_same_detections(result, expected)
    assert most_before_cut > 4 * 6  # top_k cuts: more than top_k per class survive NMS
    assert all(len(r["scores"]) == 15 for r in result)  # max_detections cuts
    assert all(len(r["scores"]) > 15 for r in uncut)


def test_postprocess_all_images_empty() -> None:
    loc, conf, priors, orig_sizes = make_inputs(3, 50, 3, seed=2)
    conf[..., 0] += 30.0

    result = PostProcessor()(loc, conf, priors, orig_sizes)

    assert len(result) == 3
    for r in result:
        assert r["boxes"].shape == (0, 4) and r["boxes"].dtype == torch.float32
        assert r["scores"].shape == (0,) and r["scores"].dtype == torch.float32
        assert r["labels"].shape == (0,) and r["labels"].dtype == torch.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_postprocess_on_gpu_equals_the_reference() -> None:
    """The GPU path (one batched_nms call) gives the CPU reference's detections."""
    loc, conf, priors, orig_sizes = make_inputs(4, 150, 5, seed=1)
    kwargs = dict(score_threshold=0.05, top_k=400, nms_iou=0.45, max_detections=1000)
    result = PostProcessor(box_coder=BoxCoder(VARIANCES), **kwargs)(
        loc.cuda(), conf.cuda(), priors.cuda(), orig_sizes.cuda()
    )
    expected, _ = reference_postprocess(loc, conf, priors, orig_sizes, **kwargs)
    assert_same_detections([{k: v.cpu() for k, v in r.items()} for r in result], expected)


@pytest.mark.parametrize(
    ("batch_size", "settings"),
    [
        (4, {"score_threshold": 0.05, "top_k": 400, "nms_iou": 0.45, "max_detections": 1000}),
        (3, {"score_threshold": 0.01, "top_k": 6, "nms_iou": 0.5, "max_detections": 15}),
        (1, {"score_threshold": 0.01, "top_k": 400, "nms_iou": 0.45, "max_detections": 200}),
    ],
)
def test_graph_postprocess_equals_reference(batch_size: int, settings: dict) -> None:
    """The export's one-graph post-processing (padded outputs) detects what the loops do,
    including an image with nothing above the threshold and the top_k / max_detections cuts."""
    loc, conf, priors, orig_sizes = make_inputs(batch_size, 150, 5, seed=batch_size)
    conf[0, :, 0] += 20.0
    post = GraphPostProcessor(PostProcessor(box_coder=BoxCoder(VARIANCES), **settings))

    counts, boxes, scores, labels = post(loc, conf, priors)

    expected, _ = reference_postprocess(loc, conf, priors, orig_sizes, **settings)
    k = settings["max_detections"]
    assert boxes.shape == (batch_size, k, 4) and scores.shape == labels.shape == (batch_size, k)
    assert counts.tolist() == [len(e["scores"]) for e in expected]
    assert counts[0] == 0
    found = []
    for i in range(batch_size):
        n = int(counts[i])
        h, w = orig_sizes[i].tolist()
        pixels = boxes[i, :n] * torch.tensor([w, h, w, h], dtype=torch.float32)
        found.append({"boxes": pixels, "scores": scores[i, :n], "labels": labels[i, :n]})
        # padding: zeros after the image's detections
        assert not scores[i, n:].any() and not labels[i, n:].any() and not boxes[i, n:].any()
    assert_same_detections(found, expected)


def test_gpu_nms_keeps_small_boxes_of_late_groups_apart() -> None:
    """batched_nms shifts group g by 2g; in float32 a 0.03-wide box at g ~ 2,500 (image 31 of a
    COCO batch) has IoUs off by ~4%, so pairs near the 0.45 threshold fall on the wrong side. The
    GPU path's NMS (run here on the CPU, same offsets: fewer than 1,000 boxes) must keep exactly
    what each group's own NMS keeps."""
    g = torch.Generator().manual_seed(0)
    num_pairs = 400
    xy = 0.1 + 0.8 * torch.rand(num_pairs, 2, generator=g)
    first = torch.cat([xy, xy + 0.03], dim=1)
    # the second box shifted along x so that the pair's IoU is 0.40 to 0.50
    iou = 0.40 + 0.10 * torch.rand(num_pairs, generator=g)
    shift = 0.03 * (1 - iou) / (1 + iou)
    second = first + torch.stack([shift, 0 * shift, shift, 0 * shift], dim=1)
    boxes = torch.stack([first, second], dim=1).reshape(-1, 4)
    scores = torch.rand(2 * num_pairs, generator=g)
    groups = (2200 + torch.arange(num_pairs)).repeat_interleave(2)

    keep = postprocess._batched_nms(boxes, scores, groups, 0.45)

    expected = postprocess._grouped_nms(boxes, scores, groups - 2200, num_pairs, 0.45)
    assert set(keep.tolist()) == set(expected.tolist())
    assert len(expected) > num_pairs  # some pairs keep both boxes, some one
    assert len(expected) < 2 * num_pairs
