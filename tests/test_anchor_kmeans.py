"""Tests of the Table 1 anchor analysis: k-means on sqrt(box area), the growth rule and the CLI."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from dssd.data.shapes import CLASSES, generate_shapes
from dssd.tools.anchor_kmeans import (
    coco_boxes,
    grow_clusters,
    improvement,
    kmeans_boxes,
    main,
    voc_boxes,
)

# Three size groups: (boxes, sqrt(area) centre, W/H of its boxes; alternating when two).
GROUPS = ((500, 20.0, (1.0,)), (300, 60.0, (0.5,)), (200, 100.0, (3.0, 1 / 3)))


def three_groups() -> tuple[np.ndarray, np.ndarray]:
    """Boxes of GROUPS with sqrt(area) at Laplace quantiles around each centre.

    Splitting a Laplace group in two halves its squared error (a uniform or Gaussian one loses
    75% or 64%), and the scales b ~ 1/sqrt(n) give every group the same error, so a fourth cluster
    improves the error by about 1/6 < 20% while a third one removes a merge of groups 40 apart
    (tails end 20 apart): the rule must stop at exactly 3.
    """
    widths, heights = [], []
    for n, centre, ratios in GROUPS:
        p = (np.arange(n) + 0.5) / n
        b = 30.0 / np.sqrt(n)
        size = centre + np.where(p < 0.5, b * np.log(2 * p), -b * np.log(2 - 2 * p))
        ratio = np.resize(np.asarray(ratios), n)
        widths.append(size * np.sqrt(ratio))
        heights.append(size / np.sqrt(ratio))
    return np.concatenate(widths), np.concatenate(heights)


def plain_lloyd(x: list[float], centres: list[float], iters: int) -> tuple[list[float], list[int]]:
    """Lloyd's algorithm written as loops: reference for the vectorised version."""
    centres = list(centres)

    def assign() -> list[int]:
        labels = []
        for value in x:
            best = 0
            for j in range(len(centres)):
                if abs(value - centres[j]) < abs(value - centres[best]):
                    best = j
            labels.append(best)
        return labels

    labels = assign()
    for _ in range(iters):
        for j in range(len(centres)):
            members = [value for value, label in zip(x, labels, strict=True) if label == j]
            if members:
                centres[j] = sum(members) / len(members)
        new_labels = assign()
        if new_labels == labels:
            break
        labels = new_labels
    return centres, labels


def test_growth_stops_at_the_three_groups() -> None:
    widths, heights = three_groups()
    results = grow_clusters(widths, heights)
    assert [r.k for r in results] == [2, 3]
    assert improvement(results[0], results[1]) > 0.9
    assert 0.1 < improvement(results[1], kmeans_boxes(widths, heights, 4)) < 0.2
    # The 20% rule, not a cap, is what stopped it: a 10% threshold goes on.
    assert grow_clusters(widths, heights, min_improvement=0.1)[-1].k > 3


def test_cluster_statistics_match_the_generating_groups() -> None:
    result = grow_clusters(*three_groups())[-1]
    sizes = np.array([n for n, _, _ in GROUPS])
    np.testing.assert_allclose(result.share, 100 * sizes / sizes.sum())
    np.testing.assert_allclose(result.centres, [c for _, c, _ in GROUPS], atol=1e-9)
    np.testing.assert_allclose(result.wh_ratio, [np.mean(r) for _, _, r in GROUPS])
    np.testing.assert_allclose(result.max_ratio, [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(result.labels, np.repeat([0, 1, 2], sizes))


def test_kmeans_ends_at_a_fixed_point_of_plain_lloyd() -> None:
    """scipy's k-means has converged: the loop-written Lloyd's algorithm started from its centres
    moves neither a centre nor a label, and the error is the sum of squared distances."""
    rng = np.random.default_rng(1)
    widths, heights = rng.lognormal(3.5, 0.8, 400), rng.lognormal(3.5, 0.8, 400)
    x = np.sqrt(widths * heights)
    for k, seed in ((3, 0), (5, 7)):
        result = kmeans_boxes(widths, heights, k, seed=seed)
        centres, labels = plain_lloyd(x.tolist(), result.centres.tolist(), iters=100)
        np.testing.assert_allclose(centres, result.centres, rtol=1e-12)
        np.testing.assert_array_equal(labels, result.labels)
        expected_error = sum((v - centres[j]) ** 2 for v, j in zip(x, labels, strict=True))
        assert result.error == pytest.approx(expected_error, rel=1e-12)


def test_deterministic_given_the_seed() -> None:
    rng = np.random.default_rng(2)
    widths, heights = rng.lognormal(3.5, 0.8, 300), rng.lognormal(3.5, 0.8, 300)
    a, b = kmeans_boxes(widths, heights, 6, seed=3), kmeans_boxes(widths, heights, 6, seed=3)
    np.testing.assert_array_equal(a.centres, b.centres)
    np.testing.assert_array_equal(a.labels, b.labels)
    # the seed does drive the start: one round from two seeds' starts ends elsewhere
    first, other = (kmeans_boxes(widths, heights, 6, seed=s, iters=1) for s in (3, 4))
    assert not np.array_equal(first.centres, other.centres)


def test_kmeans_plus_plus_spreads_the_start_over_the_groups() -> None:
    widths, heights = three_groups()
    for seed in range(5):
        start = kmeans_boxes(widths, heights, 3, seed=seed, iters=1).centres
        np.testing.assert_allclose(start, [c for _, c, _ in GROUPS], atol=15)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive"):
        kmeans_boxes(np.array([1.0, 0.0]), np.array([1.0, 1.0]), 1)
    with pytest.raises(ValueError, match="distinct"):
        kmeans_boxes(np.ones(5), np.ones(5), 2)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_shapes(
        tmp_path_factory.mktemp("shapes"), num_trainval=12, num_test=4, num_val=4
    )


def test_voc_and_coco_readers_agree(shapes_root: Path) -> None:
    for size in (None, 321):
        voc = voc_boxes(shapes_root, "trainval", CLASSES, size)
        coco = coco_boxes(shapes_root / "annotations" / "instances_trainval.json", size)
        assert voc[0].size > 20
        for a, b in zip(voc, coco, strict=True):
            np.testing.assert_allclose(np.sort(a), np.sort(b), rtol=1e-6)


def test_cli_prints_the_table(shapes_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["--root", str(shapes_root), "--split", "trainval", "--size", "321"])
    out = capsys.readouterr().out
    for column in ("cluster", "sqrt(area)", "share %", "W/H", "max(W/H, H/W)", "improvement"):
        assert column in out
    shares = next(line for line in out.splitlines() if line.startswith("share %"))
    assert sum(float(v) for v in shares.split()[2:]) == pytest.approx(100, abs=0.5)
    assert "on a 321x321 input" in out and "chosen k = " in out

    main(["--coco", str(shapes_root / "annotations" / "instances_trainval.json")])
    assert "in original pixels" in capsys.readouterr().out


def test_a_voc_split_is_read_as_training_reads_it(
    shapes_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An image without a file was an error advising data.strict=false, which this tool does not
    take: its boxes are passed over, as training (the VOC configs are not strict) passes over it."""
    root = Path(shutil.copytree(shapes_root, tmp_path / "shapes"))
    first = (root / "ImageSets" / "Main" / "trainval.txt").read_text().split()[0]
    (root / "JPEGImages" / f"{first}.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        widths, _ = voc_boxes(root, "trainval", CLASSES)
    assert 0 < widths.size < voc_boxes(shapes_root, "trainval", CLASSES)[0].size
    assert f"{first}.jpg" in caplog.text and "skipping them" in caplog.text


def test_cli_reports_a_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_coco_files_it_cannot_measure_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An image of width 0 (its boxes have no size on the resized input), an image-info file, a
    bbox that is not numbers: each one error line naming the file, not numpy's or scipy's."""
    image = {"id": 1, "file_name": "a.jpg", "width": 0, "height": 10}
    boxes = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, w, 5]} for w in (3, 5)]
    files = {
        "zero_width.json": ([image], boxes, ["--size", "300"], "has a width or height of 0"),
        "image_info.json": ([image], None, [], "an image-info file, without 'annotations'"),
        "text_bbox.json": ([image], [{**boxes[0], "bbox": "x"}], [], "'bbox' is missing or not"),
    }
    for name, (images, anns, options, problem) in files.items():
        coco = {"images": images, "categories": [{"id": 1, "name": "circle"}]}
        if anns is not None:
            coco["annotations"] = anns
        (tmp_path / name).write_text(json.dumps(coco))
        with pytest.raises(SystemExit) as exit_info:
            main(["--coco", str(tmp_path / name), *options])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "Traceback" not in err
        assert err.startswith(f"error: {tmp_path / name}: ") and problem in err, err
    # without --size the image sizes are not needed: the boxes of the width-0 image are measured
    main(["--coco", str(tmp_path / "zero_width.json")])
    assert "k-means of 2 boxes" in capsys.readouterr().out
