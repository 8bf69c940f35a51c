"""dssd.tools.anchor_coverage: default-box coverage on hand-built boxes counted by hand, and the
command on the tiny shapes set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dssd.data.shapes import CLASSES
from dssd.data.voc import VOCDataset
from dssd.tools.anchor_coverage import coverage, parse_args, prior_layers, report, run

# layer 0: the top-left and bottom-right quarters; layer 1: the whole image (cx, cy, w, h)
PRIORS = torch.tensor(
    [[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], dtype=torch.float32
)
LAYERS = torch.tensor([0, 0, 1])
# xyxy, normalised
BOXES = torch.tensor(
    [
        [0.0, 0.0, 0.5, 0.5],  # a: the first quarter itself (IoU 1 on layer 0; 0.25 on layer 1)
        [0.0, 0.0, 1.0, 1.0],  # b: the whole image (IoU 1 on layer 1; 0.25 on layer 0)
        [0.4, 0.4, 0.6, 0.6],  # c: small and central: 0.01 / 0.28 on layer 0, 0.04 on layer 1
        [0.0, 0.0, 0.6, 0.6],  # d: 0.25 / 0.36 with the first quarter, 0.36 with the image
    ]
)


def test_prior_layers_follow_the_networks_order() -> None:
    assert prior_layers([2, 1], [2, 3]).tolist() == [0] * 8 + [1] * 3


def test_coverage_equals_the_count_by_hand() -> None:
    result = coverage(PRIORS, LAYERS, BOXES, threshold=0.5)

    np.testing.assert_allclose(result.best_iou, [1.0, 1.0, 0.04, 0.25 / 0.36], rtol=1e-6)
    assert result.best_layer.tolist() == [0, 1, 1, 0]
    assert result.covered.tolist() == [True, True, False, True]
    assert result.positives.tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(
        result.layer_best_iou,
        [[1.0, 0.25], [0.25, 1.0], [0.01 / 0.28, 0.04], [0.25 / 0.36, 0.36]],
        rtol=1e-6,
    )


def test_report_counts_by_size_and_layer() -> None:
    result = coverage(PRIORS, LAYERS, BOXES, threshold=0.5)
    # areas in original pixels of a 300 x 300 image; sides in a 100-pixel input
    areas = np.array([150.0**2, 300.0**2, 60.0**2, 180.0**2])
    sides = np.array([50.0, 100.0, 20.0, 60.0])

    data = report(result, areas, sides)

    assert data["objects"] == 4 and data["covered"] == 0.75
    assert data["mean_positives"] == 0.75 and data["no_positive"] == 1
    assert data["by_coco_size"]["small"]["objects"] == 0
    assert data["by_coco_size"]["medium"] == {
        "objects": 1,
        "covered": 0.0,
        "mean_best_iou": pytest.approx(0.04),
        "mean_positives": 0.0,
    }
    assert data["by_coco_size"]["large"]["objects"] == 3
    assert data["by_coco_size"]["large"]["covered"] == 1.0
    assert data["by_input_size"]["16-32"]["objects"] == 1
    assert data["by_input_size"]["32-64"]["objects"] == 2
    assert data["by_input_size"]["64-128"]["objects"] == 1
    assert [r["best_here"] for r in data["by_layer"]] == [2, 2]
    # layer 0 alone covers a and d, layer 1 alone b
    assert [r["covered_by_layer"] for r in data["by_layer"]] == [0.5, 0.25]
    assert sum(data["best_iou_histogram"].values()) == 4
    assert data["best_iou_histogram"]["0.0-0.1"] == 1 and data["best_iou_histogram"]["0.9-1.0"] == 2


def test_command_on_the_tiny_shapes(tiny_shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "coverage"
    args = parse_args(
        [
            "model=ssd_r18",
            f"data.root={tiny_shapes}",
            "data.num_workers=0",
            "--split",
            "test",
            "--picture",
            "--out",
            str(out),
        ]
    )

    data = run(args)

    objects = sum(len(a["boxes"]) for a in VOCDataset(tiny_shapes, "test", CLASSES).annotations)
    assert data["objects"] == objects > 0
    assert sum(r["best_here"] for r in data["by_layer"]) == objects
    assert len(data["by_layer"]) == 5  # ssd_r18's five source maps
    assert json.loads((out / "coverage.json").read_text()) == data
    assert "Default-box coverage" in (out / "coverage.md").read_text()
    assert (out / "layer0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
