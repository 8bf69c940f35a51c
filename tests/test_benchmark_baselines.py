"""Plumbing of `python -m benchmarks.baselines`: each comparison's row carries the check that both
sides compute the same thing on the same inputs (no timing assertions). That our ops agree with
torchvision's is tested on its own in tests/test_ops_torchvision.py."""

import json

import pytest
import torch

from benchmarks import baselines as bb
from dssd.models.default_boxes import DefaultBoxes


@pytest.fixture(scope="module")
def priors() -> torch.Tensor:
    """DSSD-style default boxes on small maps: 8 per location, 2,728 in all."""
    return DefaultBoxes([0.1, 0.2, 0.37, 0.54, 0.71, 0.88, 1.05])([16, 8, 4, 3, 2, 1])


def test_loss_rows_check_the_losses(priors: torch.Tensor) -> None:
    rows = bb.bench_loss(priors, 321, batch_size=2, iters=1)
    assert len(rows) == 2
    check = rows[0].extra
    assert check["ours_pos"] == check["tv_pos"] > 0 and check["labels_agree"] > 0.999
    assert check["ours_loss"] == pytest.approx(check["tv_loss"], rel=1e-2)
    assert all(r.ours_ms > 0 and r.baseline_ms > 0 and r.target == bb.LOSS_TARGET for r in rows)


def test_postprocess_rows_check_the_detections(priors: torch.Tensor) -> None:
    rows = bb.bench_postprocess("tiny", priors, 321, [2], iters=1, worst_case=True)
    assert [r.what.split()[2] for r in rows] == ["realistic", "untrained"]
    for r in rows:
        assert r.extra["ours"] > 0 and r.extra["agrees"], r.check
        assert r.extra["matched"] + r.extra["tied"] >= r.extra["ours"] > 0
        assert r.ours_ms > 0 and r.baseline_ms > 0 and r.target == bb.POSTPROCESS_TARGET
    # the realistic case lets far fewer scores through than the untrained one
    realistic, untrained = (r.extra["passing_per_image"] for r in rows)
    assert realistic < 0.2 * len(priors) * 20 and untrained > 0.9 * len(priors)


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
