"""`python -m benchmarks.speed` (make bench) on the smallest models: a smoke run of every
figure of the table, training fed by the tiny shapes set's loader and the profile included, and
of the loader section. No timing is asserted, only that each figure exists and is positive, that
the box counts are the networks', that BN folding left the outputs unchanged, that the training
step is the configured optimiser's and that the profiles were written."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from pytorch_lightning.plugins.precision import MixedPrecision

from benchmarks import speed
from benchmarks.common import build_net, compose_config, random_targets
from conftest import tiny_data
from dssd.errors import UserError
from dssd.models import fold_batchnorm

MODELS = ["ssd_r18", "dssd_r18"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_shapes: Path) -> tuple[dict, str, str]:
    out = tmp_path_factory.mktemp("bench")
    args = ["--quick", "--models", *MODELS, "--large-batch", "2", "--train-batch", "2"]
    args += ["--device", "cpu", "--out", str(out / "bench.md"), "--json", str(out / "bench.json")]
    args += ["--profile", str(out / "profile"), *tiny_data(tiny_shapes)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = speed.main(args)
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
        assert [ratio["batch"] for ratio in speed.fold_ratios(r)] == [1, 2]
        assert f"| {r['model']} | 2 |" in text  # the training row
    assert "BN folding speed-up" in text and "backward + SGD step" in text


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
        assert r["training"]["optimizer"] == "SGD"  # the paper's, the default override
        assert r["batchnorms"] > 0 and r["batchnorms_left_folded"] == 0


def test_training_fed_by_the_loader(run: tuple[dict, str, str]) -> None:
    report, text, _ = run
    assert report["environment"]["train_data"] == "shapes"
    for r in report["results"]:
        fed = r["fed_training"]
        assert fed["data"] == "shapes" and fed["workers"] == 0 and fed["batch"] == 2
        # the network of the in-memory row, not one sized for the loader's data (6 classes)
        assert fed["num_classes"] == r["num_classes"] == 20
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
    args = speed.parse_args(["--train-data", "coco", "data.num_workers=3"])
    assert args.overrides == ["data=voc0712", "optimizer=sgd", "~experiment", "data.num_workers=3"]
    fed = ["data=coco", "optimizer=sgd", "~experiment", "data.num_workers=3"]
    assert speed.fed_overrides(args) == fed
    # a chosen data config, optimiser or experiment is kept
    args = speed.parse_args(["data=coco", "optimizer=adamw", "experiment=shapes"])
    assert args.overrides == ["data=coco", "optimizer=adamw", "experiment=shapes"]


@pytest.mark.parametrize("data", ["shapes", "voc0712"])
def test_the_fed_loader_is_the_data_configs_own(data: str) -> None:
    """SSD augmentation and the data config's workers, not the default experiment's recipe
    (resize and flip only, no worker)."""
    args = speed.parse_args(["--train-data", data])
    cfg = speed.model_config("ssd321", None, speed.fed_overrides(args))
    own = compose_config("ssd321", None, [f"data={data}", "~experiment"]).data
    assert cfg.data.augment._target_ == "dssd.data.augment.ssd_augmentation"
    assert cfg.data.num_workers == own.num_workers >= 1


def test_too_few_images_for_a_batch_is_a_clear_error(tiny_shapes: Path) -> None:
    cfg = compose_config("ssd_r18", None, ["data=shapes", *tiny_data(tiny_shapes)])
    with pytest.raises(UserError, match="16 training images, fewer than one batch of 64"):
        speed.training_loader(cfg, 64)


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
    # and directly, through the helper
    net = build_net("dssd_r18", None).eval()
    x = torch.randn(1, 3, net.image_size, net.image_size)
    for diff, magnitude in speed.max_output_difference(net, fold_batchnorm(net), x):
        assert diff <= 1e-4 * max(1.0, magnitude)


def test_paper_box_counts() -> None:
    """Table 7's default boxes: 17,080 at 321, 43,688 at 513 and SSD300's 8,732."""
    for model, boxes in [("ssd321", 17080), ("dssd513", 43688), ("ssd300_vgg", 8732)]:
        cfg = compose_config(model, None, ["data=voc0712"])
        assert instantiate(cfg.model.net).priors.shape[0] == boxes


def test_loader_section_prints_the_loader_rate(tiny_shapes: Path, tmp_path: Path) -> None:
    """`--only loader` over more batches than one epoch holds (16 images, batches of 4), one row
    per input size (ssd_r18 and dssd_r18 share 193) and worker count; torch's threads restored."""
    threads = torch.get_num_threads()
    argv = ["--only", "loader", "--models", *MODELS, "--loader-workers", "0", "--train-batch", "4"]
    argv += ["--loader-batches", "6", "--device", "cpu", "--out", str(tmp_path / "loader.md")]
    with contextlib.redirect_stdout(io.StringIO()):
        report = speed.main([*argv, *tiny_data(tiny_shapes)])
    assert torch.get_num_threads() == threads
    assert report["results"] == []
    (row,) = report["loader"]
    assert (row["image_size"], row["data"], row["workers"], row["batch"]) == (193, "shapes", 0, 4)
    # with 0 workers the main process does the work: one worker's worth
    assert row["images_per_s"] > 0 and row["images_per_s"] == row["images_per_s_per_worker"]
    text = (tmp_path / "loader.md").read_text()
    assert f"| 193 | shapes | 0 | 4 | {row['images_per_s']:.1f} |" in text
    assert "fwd img/s" not in text and "Training" not in text


def test_paper_ssd_rows_are_timed_with_prediction_module_c() -> None:
    # the paper's SSD321 / SSD513 of Tables 3, 6 and 7 include PM(c)
    for name in ("ssd321", "ssd513"):
        net = speed.model_config(name, None, ["data=voc0712"]).model.net
        assert net.prediction_module.variant == "c"
    plain = speed.model_config("ssd300_vgg", None, ["data=voc0712"]).model.net
    assert plain.prediction_module.variant == "a"


def test_training_step_uses_the_configured_optimizer() -> None:
    """One step with optimizer=adamw moves every parameter that has a gradient by about the
    learning rate (Adam's first step: lr * g / |g|), which an SGD step does not."""
    args = speed.parse_args(["--device", "cpu", "optimizer=adamw"])
    cfg = speed.model_config("ssd_r18", None, args.overrides)
    net = instantiate(cfg.model.net)
    before = [p.detach().clone() for p in net.parameters()]
    x = torch.randn(2, 3, net.image_size, net.image_size)
    speed.training_step(net, cfg, args)(x, random_targets(2, net.num_classes))
    lr = cfg.model.optimizer.lr
    moved = torch.cat(
        [
            (p.detach() - b).abs().flatten()
            for p, b in zip(net.parameters(), before, strict=True)
            if p.grad is not None
        ]
    )
    assert moved.max() <= 1.01 * lr
    assert (moved > 0.9 * lr).float().mean() > 0.5


def test_bf16_is_lightnings_mixed_precision() -> None:
    plugin = speed.precision(speed.parse_args(["--device", "cpu", "--bf16"]))
    assert isinstance(plugin, MixedPrecision) and plugin.precision == "bf16-mixed"
    with plugin.train_step_context():
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with speed.precision(speed.parse_args(["--device", "cpu"])).train_step_context():
        assert not torch.is_autocast_enabled("cpu")


def test_a_models_entry_carries_its_own_overrides() -> None:
    """`--models dssd_r18:neck=fpn` times the CPU-sized DSSD with FPN as its neck (make bench's
    necks section); an unknown model name is refused by the parser."""
    args = speed.parse_args(["--models", "dssd_r18", "dssd_r18:neck=fpn,fusion=sum"])
    assert args.models == ["dssd_r18", "dssd_r18:neck=fpn,fusion=sum"]
    assert speed.model_config("dssd_r18", None, []).model.net.neck._target_.endswith("Decoder")
    fpn = speed.model_config("dssd_r18:neck=fpn", None, ["optimizer=sgd"]).model.net.neck
    assert fpn._target_ == "dssd.models.FPN"
    with pytest.raises(SystemExit):
        speed.parse_args(["--models", "no_such_model:neck=fpn"])


@pytest.mark.parametrize("large_batch", [1, 2])
def test_batch_one_gets_iters_timed_passes(large_batch: int, monkeypatch, tmp_path: Path) -> None:
    """`--iters` passes at batch 1 and `--iters-large` at the large batch; with
    `--large-batch 1` the single batch-1 row keeps `--iters`, which the header reports."""
    timed = speed.time_inference
    passes: dict[int, int] = {}

    def counting(nets, postprocess, priors, x, iters, *rest):
        passes[x.shape[0]] = iters
        return timed(nets, postprocess, priors, x, iters, *rest)

    monkeypatch.setattr(speed, "time_inference", counting)
    args = ["--models", "ssd_r18", "--only", "inference", "--device", "cpu", "--warmup", "0"]
    args += ["--image-size", "193", "--iters", "3", "--iters-large", "1"]
    args += ["--large-batch", str(large_batch), "--out", str(tmp_path / "bench.md")]
    with contextlib.redirect_stdout(io.StringIO()):
        speed.main(args)
    assert passes == ({1: 3} if large_batch == 1 else {1: 3, 2: 1})
    assert "3 timed passes at batch 1" in (tmp_path / "bench.md").read_text()


def test_profiles_of_a_model_with_dotted_overrides_keep_their_names(tmp_path: Path) -> None:
    """``Path.with_suffix`` cut ``ssd_r18:model.net.x_inference`` at its last dot: the inference
    and training profiles of such a model were written to one pair of files."""
    for section in ("inference", "training"):
        speed.write_profile(
            lambda: torch.ones(2) + 1, torch.device("cpu"), tmp_path / f"ssd_r18:a.b=1_{section}"
        )
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        f"ssd_r18:a.b=1_{section}{suffix}"
        for section in ("inference", "training")
        for suffix in (".trace.json", ".txt")
    ]


def test_the_post_processing_line_is_the_models_own() -> None:
    """It said "top 400 per class, NMS 0.45, 200 per image" whatever model.postprocess held."""
    result = {"model": "ssd_r18", "image_size": 193, "boxes": 10, "inference": []}
    paper = {**result, "score_threshold": 0.01}
    paper["postprocess"] = {"top_k": 400, "nms_iou": 0.45, "max_detections": 200}
    other = {**result, "model": "dssd_r18", "score_threshold": 0.3}
    other["postprocess"] = {"top_k": 10, "nms_iou": 0.6, "max_detections": 50}
    (line,) = [ln for ln in speed.inference_tables([paper, other]) if "post-processing" in ln]
    assert "score > 0.01, top 400 per class, NMS 0.45, 200 per image" in line
    assert "score > 0.3, top 10 per class, NMS 0.6, 50 per image" in line


def test_a_compiled_network_is_warmed_up_before_it_is_timed() -> None:
    """``--quick --compile`` timed the compilation: a folding "speed-up" of 3x."""
    assert speed.parse_args(["--quick", "--compile"]).warmup == 1
    assert speed.parse_args(["--quick"]).warmup == 0
    assert speed.parse_args(["--compile", "--warmup", "3"]).warmup == 3
