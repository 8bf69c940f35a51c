"""src/train.py and src/eval.py run end to end in subprocesses, on a tiny shapes dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from conftest import run_entry_point, tiny_data


def logged_metrics(run_dir: Path) -> dict[str, float]:
    """The last value of every metric in a CSVLogger's metrics.csv."""
    (metrics_file,) = run_dir.glob("csv/version_*/metrics.csv")
    last: dict[str, float] = {}
    with metrics_file.open() as f:
        for row in csv.DictReader(f):
            last.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return last


def test_fast_dev_run(tiny_shapes: Path, tmp_path: Path) -> None:
    proc = run_entry_point(
        "train.py",
        *tiny_data(tiny_shapes),
        "trainer.fast_dev_run=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
    )
    assert "test/map_50" in proc.stdout


def test_eval_reproduces_the_test_map_of_train(tiny_shapes: Path, tmp_path: Path) -> None:
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    run_entry_point(
        "train.py",
        *tiny_data(tiny_shapes),
        "logger=csv",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        f"hydra.run.dir={train_dir}",
    )
    best = train_dir / "checkpoints" / "best.ckpt"
    assert best.is_file() and (train_dir / "checkpoints" / "last.ckpt").is_file()
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    assert checkpoint["dssd_config"]["model"]["net"]["image_size"] == 193

    run_entry_point("eval.py", f"ckpt_path={best}", f"hydra.run.dir={eval_dir}")
    trained, evaluated = logged_metrics(train_dir), logged_metrics(eval_dir)
    # the loss is never 0, so it shows that weights, data and precision are the training run's
    for name in ("test/loss", "test/map", "test/map_50", "test/mar_200"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-6), name

    # float32, so that only folding, not bf16 rounding, separates the two evaluations
    plain_dir, folded_dir = tmp_path / "plain", tmp_path / "folded"
    for run_dir, fold in ((plain_dir, "false"), (folded_dir, "true")):
        run_entry_point(
            "eval.py",
            f"ckpt_path={best}",
            f"fold_bn={fold}",
            "trainer.precision=32-true",
            f"hydra.run.dir={run_dir}",
        )
    plain, folded = logged_metrics(plain_dir), logged_metrics(folded_dir)
    assert folded["test/loss"] == pytest.approx(plain["test/loss"], rel=1e-4)
    assert "batch norm folded" in (folded_dir / "eval.log").read_text()
    assert "batch norm folded" not in (plain_dir / "eval.log").read_text()


def test_eval_rejects_a_foreign_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)
    proc = run_entry_point(
        "eval.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}", check=False
    )
    assert proc.returncode == 2
    assert f"error: {path} holds no run configuration" in proc.stderr


def test_missing_dataset_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "VOCdevkit" / "VOC2007"
    proc = run_entry_point(
        "train.py",
        f"data.root={missing}",
        "data.generate_shapes=false",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 2
    assert f"error: dataset root {missing} does not exist" in proc.stderr
    assert "make data" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", [["model=ssd321"], ["model=dssd321", "fusion=prod"]])
def test_paper_models_fast_dev_run_on_cpu(model: list[str], tiny_shapes: Path, tmp_path: Path):
    """The full ResNet-101 SSD321 / DSSD321 train, validate and test one batch on a CPU."""
    proc = run_entry_point(
        "train.py",
        *model,
        *tiny_data(tiny_shapes),
        "data.batch_size=2",
        "trainer.fast_dev_run=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
    )
    assert "test/map_50" in proc.stdout
