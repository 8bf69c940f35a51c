"""`python -m dssd.tools.benchmark` (make bench) on the smallest models: a smoke run of every
figure of the table, training fed by the tiny shapes set's loader and the profile included. No
timing is asserted, only that each figure exists and is positive, that the box counts are the
networks', that BN folding left the outputs unchanged and that the profiles were written."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from conftest import tiny_data
from dssd.models import fold_batchnorm
from dssd.tools import benchmark, benchmark_data, benchmark_fold
from dssd.tools.timing import build_net, max_output_difference

MODELS = ["ssd_r18", "dssd_r18"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_shapes: Path) -> tuple[dict, str, str]:
    out = tmp_path_factory.mktemp("bench")
    args = ["--quick", "--models", *MODELS, "--large-batch", "2", "--train-batch", "2"]
    args += ["--device", "cpu", "--out", str(out / "bench.md"), "--json", str(out / "bench.json")]
    args += ["--profile", str(out / "profile"), *tiny_data(tiny_shapes)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = benchmark.main(args)
    text = (out / "bench.md").read_text()
    assert text in printed.getvalue()  # the table printed is the one saved
    return report, text, (out / "bench.json").read_text()


def test_table_has_every_row(run: tuple[dict, str, str]) -> None:
    report, text, saved = run
    assert json.loads(saved)["results"] == json.loads(json.dumps(report["results"]))
    env = report["environment"]
    assert env["precision"] == "float32" and env["memory_format"] == "contiguous"
    assert env["device_type"] == "cpu" and env["torch"] == torch.__version__
    assert [r["model"] for r in report["results"]] == MODELS
    for r in report["results"]:
        rows = [(row["batch"], row["bn"]) for row in r["inference"]]
        assert rows == [(1, "unfolded"), (1, "folded"), (2, "unfolded"), (2, "folded")]
        for batch, bn in rows:
            assert f"| {r['model']} | 193 | {r['boxes']:,} | {batch} | {bn} |" in text
        assert [ratio["batch"] for ratio in benchmark.fold_ratios(r)] == [1, 2]
        assert f"| {r['model']} | 2 |" in text  # the training row
    assert "BN folding speed-up" in text and "Training" in text


def test_figures_are_positive(run: tuple[dict, str, str]) -> None:
    report, _, _ = run
    for r in report["results"]:
        for row in r["inference"]:
            for key in ("forward_images_per_s", "total_images_per_s"):
                assert math.isfinite(row[key]) and row[key] > 0
            assert row["total_s"] >= row["forward_s"] > 0
            # untrained weights: every image keeps the full 200 detections
            assert 0 < row["detections_per_image"] <= 200
        assert r["training"]["batch"] == 2 and r["training"]["images_per_s"] > 0
        assert r["batchnorms"] > 0 and r["batchnorms_left_folded"] == 0


def test_training_fed_by_the_loader(run: tuple[dict, str, str]) -> None:
    report, text, _ = run
    assert report["environment"]["train_data"] == "shapes"
    for r in report["results"]:
        fed = r["fed_training"]
        assert fed["data"] == "shapes" and fed["workers"] == 0 and fed["batch"] == 2
        assert fed["images_per_s"] > 0 and fed["loader_images_per_s"] > 0
        assert 0 <= fed["wait_share"] < 1
        # the slower half of the pipeline is named
        slower_is_loader = fed["loader_images_per_s"] < r["training"]["images_per_s"]
        assert fed["bottleneck"] == ("data loading" if slower_is_loader else "CPU compute")
        assert f"| shapes | 0 | {fed['images_per_s']:.2f} |" in text


def test_profiles_name_the_operators(run: tuple[dict, str, str]) -> None:
    report, text, _ = run
    profile_dir = Path(report["environment"]["profile"])
    for r in report["results"]:
        assert set(r["profile"]) == {"inference", "training"}
        for kind, ops in r["profile"].items():
            assert 0 < len(ops) <= 5
            shares = [o["share"] for o in ops]
            assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6
            table = (profile_dir / f"{r['model']}_{kind}.txt").read_text()
            assert ops[0]["op"] in table
            assert json.loads((profile_dir / f"{r['model']}_{kind}.trace.json").read_text())
        # the networks are convolutional: a convolution is among the top operators
        assert any("conv" in o["op"] for o in r["profile"]["training"])
        assert any("nms" in o["op"] or "conv" in o["op"] for o in r["profile"]["inference"])
        assert f"| {r['model']} | inference | `{r['profile']['inference'][0]['op']}`" in text


def test_fed_overrides_replace_the_data_config() -> None:
    args = benchmark.parse_args(["--train-data", "coco", "data.num_workers=3"])
    assert args.overrides == ["data=voc0712", "data.num_workers=3"]
    assert benchmark.fed_overrides(args) == ["data=coco", "data.num_workers=3"]


def test_too_few_images_for_a_batch_is_a_clear_error(tiny_shapes: Path) -> None:
    cfg = benchmark.compose_config("ssd_r18", None, ["data=shapes", *tiny_data(tiny_shapes)])
    with pytest.raises(ValueError, match="16 training images, fewer than one batch of 64"):
        benchmark.training_loader(cfg, 64)


def test_box_counts_are_the_networks(run: tuple[dict, str, str]) -> None:
    report, _, _ = run
    for r in report["results"]:
        net = build_net(r["model"], None, ["data=voc0712"])
        assert r["boxes"] == net.priors.shape[0]
        assert r["num_classes"] == 20


def test_folded_outputs_agree(run: tuple[dict, str, str]) -> None:
    report, _, _ = run
    for r in report["results"]:
        for diff in r["output_difference"].values():
            assert diff["max_abs_diff"] <= 1e-4 * max(1.0, diff["max_abs"])
    # and directly, through the helper benchmark_fold still exports
    assert benchmark_fold.max_output_difference is max_output_difference
    net = build_net("dssd_r18", None).eval()
    x = torch.randn(1, 3, net.image_size, net.image_size)
    for diff, magnitude in max_output_difference(net, fold_batchnorm(net), x):
        assert diff <= 1e-4 * max(1.0, magnitude)


def test_paper_box_counts() -> None:
    """Table 7's default boxes: 17,080 at 321, 43,688 at 513 and SSD300's 8,732."""
    for model, boxes in [("ssd321", 17080), ("dssd513", 43688), ("ssd300_vgg", 8732)]:
        cfg = benchmark.compose_config(model, None, ["data=voc0712"])
        assert instantiate(cfg.model.net).priors.shape[0] == boxes


def test_benchmark_data_prints_the_loader_rate(
    tiny_shapes: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`benchmark_data` over more batches than one epoch holds (16 images, batches of 4)."""
    threads = torch.get_num_threads()
    argv = ["--root", str(tiny_shapes), "--sizes", "96", "--workers", "0", "--batch-size", "4"]
    try:
        benchmark_data.main([*argv, "--batches", "6"])
    finally:
        torch.set_num_threads(threads)
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["size", "workers", "batch", "images/s", "images/s/worker"]
    size, workers, batch, rate, per_worker = row.split()
    assert (size, workers, batch) == ("96", "0", "4")
    assert float(rate) > 0 and float(rate) == float(per_worker)


def test_paper_ssd_rows_are_timed_with_prediction_module_c() -> None:
    # the paper's SSD321 / SSD513 of Tables 3, 6 and 7 include PM(c)
    for name in ("ssd321", "ssd513"):
        net = benchmark.model_config(name, None, ["data=voc0712"]).model.net
        assert net.prediction_module.variant == "c"
    plain = benchmark.model_config("ssd300_vgg", None, ["data=voc0712"]).model.net
    assert plain.prediction_module.variant == "a"
