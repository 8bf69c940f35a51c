"""`python -m benchmarks.export` (make bench) on the smallest model: every runtime timed at each
batch size, the ratios to eager computed from the same figures, the JSON and markdown written.
No timing is asserted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import export

pytest.importorskip("onnxruntime")


@pytest.mark.slow
def test_export_benchmark_times_every_runtime(tmp_path: Path) -> None:
    result = export.main(
        [
            "--models",
            "ssd_r18",
            "--batches",
            "1",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--out",
            str(tmp_path / "export.md"),
            "--json",
            str(tmp_path / "export.json"),
        ]
    )

    assert [(r["model"], r["batch"]) for r in result["rows"]] == [("ssd_r18", 1), ("ssd_r18", 2)]
    for row in result["rows"]:
        assert set(row["images_per_s"]) == set(export.RUNTIMES)
        assert all(v > 0 and math.isfinite(v) for v in row["images_per_s"].values())
    assert json.loads((tmp_path / "export.json").read_text())["rows"] == result["rows"]
    table = (tmp_path / "export.md").read_text()
    first = result["rows"][0]["images_per_s"]
    assert f"{first['onnxruntime'] / first['eager']:.2f}x" in table
