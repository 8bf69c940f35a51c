"""Plumbing of dssd.tools.benchmark_baselines: both sides of each comparison compute the same
thing on the same inputs (no timing assertions)."""

import json
import math

import pytest
import torch

from dssd.models.default_boxes import DefaultBoxes
from dssd.tools import benchmark_baselines as bb


@pytest.fixture(scope="module")
def priors() -> torch.Tensor:
    """DSSD-style default boxes on small maps: 8 per location, 2,728 in all."""
    return DefaultBoxes([0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05])([16, 8, 4, 3, 2, 1])


def test_loss_paths_agree(priors: torch.Tensor) -> None:
    x = bb.loss_inputs(priors, 321, batch_size=6, seed=3)
    check = bb.compare_losses(x)
    for key in ("ours_loss", "ours_loc", "ours_conf", "tv_loss", "tv_loc", "tv_conf"):
        assert math.isfinite(check[key]) and check[key] > 0, key
    # same matching rules (best prior per gt + IoU > 0.5; torchvision's >= 0.5 differs only
    # on exact ties), same positives
    assert check["ours_pos"] == check["tv_pos"] > 0
    # argmax ties between equal-IoU priors may go either way (rounding differs: pixels vs
    # normalised coordinates), nothing else
    assert check["labels_agree"] > 0.999
    # same formula (SSD's loss normalised by the positives in both); the few tie-broken priors
    # above are different priors with different offsets, hence a tolerance of a percent
    assert check["ours_loss"] == pytest.approx(check["tv_loss"], rel=1e-2)
    assert check["ours_loc"] == pytest.approx(check["tv_loc"], rel=1e-2)
    assert check["ours_conf"] == pytest.approx(check["tv_conf"], rel=1e-2)


def test_loss_rows_check_the_losses(priors: torch.Tensor) -> None:
    rows = bb.bench_loss(priors, 321, batch_size=2, iters=1)
    assert len(rows) == 2
    assert rows[0].extra["ours_pos"] == rows[0].extra["tv_pos"]
    assert all(r.ours_ms > 0 and r.baseline_ms > 0 and r.target == bb.LOSS_TARGET for r in rows)


@pytest.mark.parametrize("case", ["realistic", "untrained"])
def test_postprocessors_agree(priors: torch.Tensor, case: str) -> None:
    if case == "realistic":
        conf = bb.realistic_logits(3, len(priors), object_fraction=0.05, seed=1)
    else:
        conf = bb.untrained_logits(3, len(priors), seed=1)
    x = bb.post_inputs(priors, 321, conf)
    ours, theirs = bb.run_ours_post(x), bb.run_tv_post(x)
    agree = bb.match_detections(ours, theirs)
    assert agree["ours"] > 0
    assert agree["max_count_diff"] == 0
    assert agree["matched_fraction"] == 1.0
    # the realistic case lets far fewer scores through than the untrained one
    passing = bb.passing_per_image(conf)
    assert passing < 0.2 * len(priors) * 20 if case == "realistic" else passing > 0.9 * len(priors)


def test_match_detections_sees_differences(priors: torch.Tensor) -> None:
    x = bb.post_inputs(priors, 321, bb.realistic_logits(2, len(priors), seed=2))
    ours = bb.run_ours_post(x)
    shifted = [{**d, "boxes": d["boxes"] + 5.0} for d in ours]
    dropped = [{k: v[1:] for k, v in d.items()} for d in ours]
    assert bb.match_detections(ours, ours)["matched_fraction"] == 1.0
    assert bb.match_detections(ours, shifted)["matched_fraction"] < 0.5
    assert bb.match_detections(ours, dropped)["max_count_diff"] == 1


def test_coco_evaluators_agree() -> None:
    gt, dets = bb.synthetic_coco(40, seed=5)
    assert len({d["image_id"] for d in dets}) == 40
    stats_pc, _ = bb.coco_eval_pycocotools(gt, dets)
    stats_fc, _ = bb.coco_eval_faster(gt, dets)
    assert 0.05 < stats_pc[0] < 0.95
    assert stats_fc == pytest.approx(stats_pc, abs=1e-3)


def test_main_writes_table_and_json(tmp_path) -> None:
    out, js = tmp_path / "baselines.md", tmp_path / "baselines.json"
    rows = bb.main(["--only", "coco", "--coco-images", "20", "--out", str(out), "--json", str(js)])
    assert len(rows) == 1 and rows[0].extra["max_diff"] < 1e-3
    text = out.read_text()
    assert "| COCO eval 20 images" in text and "threads" in text and "BN folding" in text
    data = json.loads(js.read_text())
    assert data["environment"]["torch"] == torch.__version__
    assert data["rows"][0]["ratio"] == pytest.approx(rows[0].ratio)


def test_chunked_matching_equals_whole_batch(priors: torch.Tensor, monkeypatch) -> None:
    """The CPU path that matches a few images at a time (trimming padding) changes nothing."""
    import dssd.ops.matching as matching
    from dssd.ops import match, pad_targets

    targets = bb.random_targets(7, seed=4)
    targets[2] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    gt_boxes, gt_labels = pad_targets(targets)
    monkeypatch.setattr(matching, "_CHUNK_ELEMENTS", 1 << 40)
    whole = match(priors, gt_boxes, gt_labels)
    monkeypatch.setattr(matching, "_CHUNK_ELEMENTS", 1)
    chunked = match(priors, gt_boxes, gt_labels)
    assert (whole[1] > 0).sum() > 0
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
