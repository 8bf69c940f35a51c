"""Tests of dssd.analysis.confusion: the confusion matrix with background.

Hand-built images whose matrices are worked out by hand, and random images against a plain
per-image greedy matching written here with torchvision's IoU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torchvision.ops import box_area, box_iou

from dssd.analysis.confusion import confusion_matrix
from hand_built import box, image

C = 3  # classes 1..3; index C of the matrix is background
BG = 0  # the background label, as in the project


def matrix_of(*images, **kwargs) -> np.ndarray:
    preds, targets = zip(*images, strict=True) if images else ((), ())
    return confusion_matrix(list(preds), list(targets), C, **kwargs)


def expected(entries: dict[tuple[int, int], int]) -> np.ndarray:
    """A [C + 1, C + 1] matrix, zero but for ``entries`` keyed by (true, predicted) label."""
    out = np.zeros((C + 1, C + 1), dtype=np.int64)
    for (t, p), n in entries.items():
        out[(t or C + 1) - 1, (p or C + 1) - 1] = n
    return out


# ---------------------------------------------------------------------------------------------
# One kind of outcome at a time
# ---------------------------------------------------------------------------------------------

HAND_CASES = {
    "correct": (image([(0.9, 1, box(0))], [(1, box(0))]), {(1, 1): 1}),
    "wrong class": (image([(0.9, 2, box(0))], [(1, box(0))]), {(1, 2): 1}),
    "background": (image([(0.9, 3, box(100))], [(1, box(0))]), {(BG, 3): 1, (1, BG): 1}),
    "missed": (image([], [(2, box(0))]), {(2, BG): 1}),
    # listed out of score order: the 0.9 detection takes the object, the 0.8 one is a duplicate
    "duplicate": (
        image([(0.8, 2, box(1)), (0.9, 1, box(0))], [(1, box(0))]),
        {(1, 1): 1, (BG, 2): 1},
    ),
    # below the score threshold (0.3): as if absent, so the object is missed
    "low score": (image([(0.2, 1, box(0))], [(1, box(0))]), {(1, BG): 1}),
    # exactly at the threshold: counts
    "at score threshold": (image([(0.5, 1, box(0))], [(1, box(0))]), {(1, 1): 1}),
    # IoU 50 / 100 = 0.5 exactly matches; 49 / 100 does not
    "iou at threshold": (image([(0.9, 2, [0, 0, 10, 5])], [(2, box(0))]), {(2, 2): 1}),
    "iou below threshold": (
        image([(0.9, 2, [0, 0, 10, 4.9])], [(2, box(0))]),
        {(BG, 2): 1, (2, BG): 1},
    ),
    # the detection takes the object of highest IoU, not the first above the threshold:
    # IoU 85 / 115 with box(0), 95 / 105 with box(2)
    "best iou": (
        image([(0.9, 2, box(1.5))], [(1, box(0)), (3, box(2))]),
        {(3, 2): 1, (1, BG): 1},
    ),
}


@pytest.mark.parametrize("case", HAND_CASES)
def test_hand_built_image(case):
    img, entries = HAND_CASES[case]
    kwargs = {"score_threshold": 0.5} if case == "at score threshold" else {}
    assert np.array_equal(matrix_of(img, **kwargs), expected(entries))


def test_matrix_shape_and_type():
    matrix = matrix_of(image([(0.9, 1, box(0))], [(1, box(0))]))
    assert matrix.shape == (C + 1, C + 1)
    assert matrix.dtype == np.int64


def test_score_threshold_picks_the_operating_point():
    img = image([(0.9, 1, box(0)), (0.4, 2, box(100))], [(1, box(0))])
    assert np.array_equal(matrix_of(img, score_threshold=0.3), expected({(1, 1): 1, (BG, 2): 1}))
    assert np.array_equal(matrix_of(img, score_threshold=0.5), expected({(1, 1): 1}))


def test_iou_threshold_is_honoured():
    img = image([(0.9, 1, [0, 0, 10, 7])], [(1, box(0))])  # IoU 0.7
    assert np.array_equal(matrix_of(img, iou_threshold=0.7), expected({(1, 1): 1}))
    assert np.array_equal(matrix_of(img, iou_threshold=0.75), expected({(BG, 1): 1, (1, BG): 1}))


# ---------------------------------------------------------------------------------------------
# Difficult objects: nowhere in the matrix
# ---------------------------------------------------------------------------------------------


def test_difficult_object_and_detections_on_it_are_ignored():
    # two detections on the difficult object (of another class), none on the missed one
    img = image(
        [(0.9, 1, box(0)), (0.8, 1, box(1)), (0.7, 3, box(100))],
        [(2, box(0)), (2, box(200))],
        difficult=[True, True],
    )
    assert np.array_equal(matrix_of(img), expected({(BG, 3): 1}))


def test_free_object_is_taken_before_a_difficult_one():
    # same place: the first detection takes the non-difficult object, the second lands on the
    # difficult one and is ignored (not a duplicate)
    img = image(
        [(0.9, 1, box(0)), (0.8, 2, box(0))],
        [(2, box(0)), (1, box(0))],
        difficult=[True, False],
    )
    assert np.array_equal(matrix_of(img), expected({(1, 1): 1}))


def test_detection_inside_a_large_difficult_object_is_ignored():
    # IoU 100 / 1600, but COCO's crowd overlap (intersection over the detection's area) is 1
    img = image([(0.9, 1, box(10))], [(1, box(0, size=40))], difficult=[True])
    assert np.array_equal(matrix_of(img), expected({}))


# ---------------------------------------------------------------------------------------------
# Several images, empty images
# ---------------------------------------------------------------------------------------------


def test_detections_only_match_objects_of_their_own_image():
    first = image([(0.9, 1, box(0))], [])
    second = image([], [(1, box(0))])
    assert np.array_equal(matrix_of(first, second), expected({(BG, 1): 1, (1, BG): 1}))


def test_images_add_up():
    images = [img for img, _ in HAND_CASES.values()][:6]
    total = sum(matrix_of(img) for img in images)
    assert np.array_equal(matrix_of(*images), total)


def test_empty_inputs():
    assert np.array_equal(matrix_of(), expected({}))
    assert np.array_equal(matrix_of(image([], []), image([], [])), expected({}))
    only_objects = image([], [(1, box(0)), (3, box(50))])
    assert np.array_equal(matrix_of(only_objects), expected({(1, BG): 1, (3, BG): 1}))
    only_detections = image([(0.9, 2, box(0)), (0.8, 2, box(50))], [])
    assert np.array_equal(matrix_of(only_detections), expected({(BG, 2): 2}))


def test_numpy_inputs():
    pred, target = image([(0.9, 2, box(0))], [(1, box(0))], difficult=[False])
    as_numpy = [{k: v.numpy() for k, v in d.items()} for d in (pred, target)]
    assert np.array_equal(matrix_of(as_numpy), expected({(1, 2): 1}))


def test_is_silent(caplog, capfd):
    caplog.set_level(logging.DEBUG)
    matrix_of(image([(0.9, 1, box(0))], []), image([], [(1, box(0))], difficult=[True]))
    assert not [r for r in caplog.records if r.name.startswith("faster_coco_eval")]
    assert capfd.readouterr() == ("", "")


# ---------------------------------------------------------------------------------------------
# Random images against a plain greedy matching
# ---------------------------------------------------------------------------------------------


def greedy_reference(preds, targets, num_classes, iou_threshold, score_threshold) -> np.ndarray:
    """COCO's class-agnostic greedy matching written out: by descending score, each detection
    takes the free non-difficult object of highest IoU (at least the threshold); failing that it
    is ignored when it covers at least that fraction of its area with a difficult object."""
    out = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for pred, target in zip(preds, targets, strict=True):
        keep = pred["scores"] >= score_threshold
        order = torch.argsort(pred["scores"][keep], descending=True, stable=True)
        boxes, labels = pred["boxes"][keep][order].double(), pred["labels"][keep][order]
        t_boxes = target["boxes"].double()
        hard = target["difficult"]
        iou = box_iou(boxes, t_boxes)
        lo = torch.maximum(boxes[:, None, :2], t_boxes[None, :, :2])
        hi = torch.minimum(boxes[:, None, 2:], t_boxes[None, :, 2:])
        cover = (hi - lo).clamp(min=0).prod(-1) / box_area(boxes)[:, None]
        taken = torch.zeros(len(t_boxes), dtype=torch.bool)
        for d in range(len(boxes)):
            candidates = iou[d].masked_fill(taken | hard, -1.0)
            best = int(candidates.argmax()) if len(t_boxes) else -1
            if best >= 0 and candidates[best] >= iou_threshold:
                taken[best] = True
                out[target["labels"][best] - 1, labels[d] - 1] += 1
            elif not (hard & (cover[d] >= iou_threshold)).any():
                out[num_classes, labels[d] - 1] += 1
        for t in target["labels"][~taken & ~hard]:
            out[t - 1, num_classes] += 1
    return out


def random_images(n_images: int, num_classes: int, seed: int):
    """Objects on a grid of 40 px cells (so they never overlap), jittered detections of some of
    them with random classes, duplicates, and background detections; some objects difficult."""
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(n_images):
        cells = torch.randperm(25, generator=g)[: int(torch.randint(0, 12, (1,), generator=g))]
        corner = torch.stack([cells % 5, cells // 5], 1).float() * 40 + 2
        size = 10 + 26 * torch.rand(len(cells), 2, generator=g)
        t_boxes = torch.cat([corner, corner + size], 1)
        t_labels = torch.randint(1, num_classes + 1, (len(cells),), generator=g)
        difficult = torch.rand(len(cells), generator=g) < 0.15
        copies = t_boxes[torch.randint(0, max(len(cells), 1), (2 * len(cells),), generator=g)]
        copies = copies + 6 * (torch.rand(copies.shape, generator=g) - 0.5)
        xy = 200 * torch.rand(5, 2, generator=g)
        background = torch.cat([xy, xy + 5 + 30 * torch.rand(5, 2, generator=g)], 1)
        p_boxes = torch.cat([copies, background])
        preds.append(
            {
                "boxes": p_boxes,
                "scores": torch.rand(len(p_boxes), generator=g),
                "labels": torch.randint(1, num_classes + 1, (len(p_boxes),), generator=g),
            }
        )
        targets.append({"boxes": t_boxes, "labels": t_labels, "difficult": difficult})
    return preds, targets


@pytest.mark.parametrize(
    ("seed", "iou_threshold", "score_threshold"), [(0, 0.5, 0.3), (1, 0.7, 0.0)]
)
def test_random_images_match_a_plain_greedy_matching(seed, iou_threshold, score_threshold):
    num_classes = 4
    preds, targets = random_images(40, num_classes, seed)
    got = confusion_matrix(preds, targets, num_classes, iou_threshold, score_threshold)
    want = greedy_reference(preds, targets, num_classes, iou_threshold, score_threshold)
    # the data exercise every part of the matrix
    assert np.trace(want[:-1, :-1]) > 0 and want[:-1, :-1].sum() > np.trace(want[:-1, :-1])
    assert want[-1].sum() > 0 and want[:, -1].sum() > 0
    kept = sum(int((p["scores"] >= score_threshold).sum()) for p in preds)
    assert want[:, :-1].sum() < kept  # some detections are on difficult objects
    assert np.array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_is_reported():
    good = image([(0.9, 1, box(0))], [(1, box(0))])
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix([good[0]], [good[1]], 0)
    for bad in (0.0, 1.0, float("nan")):
        with pytest.raises(ValueError, match="iou_threshold"):
            confusion_matrix([good[0]], [good[1]], C, iou_threshold=bad)
    with pytest.raises(ValueError, match="2 prediction dicts but 1 target"):
        confusion_matrix([good[0], good[0]], [good[1]], C)
    out_of_range = image([(0.9, C + 1, box(0))], [])
    with pytest.raises(ValueError, match=r"preds\[1\]\['labels'\] must lie in 1\.\.3"):
        matrix_of(good, out_of_range)
    background_label = image([], [(0, box(0))])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\]"):
        matrix_of(background_label)
