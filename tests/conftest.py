"""Shared fixtures: a tiny shapes dataset and a helper that runs the Hydra entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from dssd.data.shapes import generate_shapes

# `make test` runs the suite in one pytest-xdist worker per core: each worker, and every process it
# starts, computes on one thread, so that the workers share the cores instead of contending.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 trainval, 8 test and 8 val images, built once per test session."""
    return generate_shapes(
        tmp_path_factory.mktemp("tiny_shapes"), num_trainval=16, num_test=8, num_val=8
    )


# The numeric precisions the suite trains and runs networks in. The tiny runs that most tests
# read train on the CPU in TEST_PRECISION, float32 unless DSSD_TEST_PRECISION says otherwise, on
# every machine: the default experiment's ${fast_precision:} would pick bf16 on CPUs with native
# bf16 only, and the suite would compute differently from one machine to the next. The tests
# that take ``any_precision_checkpoint`` also run on a checkpoint trained in bf16-mixed, always.
PRECISIONS = ("32-true", "bf16-mixed")
TEST_PRECISION = os.environ.get("DSSD_TEST_PRECISION", "32-true")
if TEST_PRECISION not in PRECISIONS:
    raise pytest.UsageError(
        f"DSSD_TEST_PRECISION={TEST_PRECISION}: choose one of {', '.join(PRECISIONS)}"
    )


def tiny_data(root: Path) -> list[str]:
    """Overrides that read the tiny dataset at ``root`` in batches of 8, in the main process."""
    return [
        f"data.root={root}",
        "data.batch_size=8",
        "data.num_workers=0",
    ]


def tiny_run(root: Path, precision: str = TEST_PRECISION) -> list[str]:
    """Overrides of a train.py or eval.py run on the tiny dataset at ``root``, on the CPU in
    ``precision`` (channels-last with bf16, as the default experiment where bf16 is native)."""
    return [
        *tiny_data(root),
        "trainer.accelerator=cpu",
        f"trainer.precision={precision}",
        f"model.channels_last={precision == 'bf16-mixed'}",
    ]


def tiny_overrides(data_root: Path, precision: str = TEST_PRECISION) -> list[str]:
    """Overrides of a 2-iteration train.py run on the tiny dataset at ``data_root``."""
    return [*tiny_run(data_root, precision), "trainer.max_steps=2", "trainer.val_check_interval=2"]


def train_tiny_checkpoint(data_root: Path, run_dir: Path, precision: str) -> Path:
    """best.ckpt of a 2-iteration SSD run on the tiny data in ``precision`` (CSV logger, the
    default test_ckpt) into ``run_dir``."""
    run_entry_point(
        "train.py",
        *tiny_overrides(data_root, precision),
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    )
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.ckpt of a 2-iteration SSD run on ``tiny_shapes`` in TEST_PRECISION, trained once;
    tests read its run directory and must not write there."""
    run_dir = tmp_path_factory.mktemp("tiny_run")
    return train_tiny_checkpoint(tiny_shapes, run_dir, TEST_PRECISION)


@pytest.fixture(scope="session")
def tiny_bf16_checkpoint(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same run trained in bf16-mixed (``tiny_checkpoint`` itself when that is bf16)."""
    if TEST_PRECISION == "bf16-mixed":
        return tiny_checkpoint
    run_dir = tmp_path_factory.mktemp("tiny_run_bf16")
    return train_tiny_checkpoint(tiny_shapes, run_dir, "bf16-mixed")


@pytest.fixture(params=["tiny_checkpoint", "tiny_bf16_checkpoint"])
def any_precision_checkpoint(request: pytest.FixtureRequest) -> Path:
    """``tiny_checkpoint`` and ``tiny_bf16_checkpoint``, one after the other: what a test that
    takes it checks holds for a run trained and tested in float32 and in bf16."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def tiny_wandb_run(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run dir of a 2-iteration DSSD run on ``tiny_shapes`` with the default logger (W&B,
    offline, as `make train` uses it), logging every step; trained once."""
    run_dir = tmp_path_factory.mktemp("tiny_wandb_run")
    run_entry_point(
        "train.py",
        *tiny_overrides(tiny_shapes),
        "model=dssd_r18",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run_dir}",
    )
    return run_dir


# the rows of the tiny_ablation fixture: dssd_prod_stage2 and the rows it needs
TINY_ROWS = ["ssd_pm_a", "ssd_pm_c", "ssd_pm_c_control", "dssd_prod", "dssd_prod_stage2"]
# its seeds; tiny_ablation_two_seeds (make test-full) runs the chain once per seed of two
TINY_SEEDS = (0,)


def run_tiny_ablation(out_dir: Path, data_root: Path, seeds: Sequence[int]) -> Path:
    """`make ablation`'s chain (src/ablation.py) with 2 iterations per row on the tiny dataset at
    ``data_root``, for the rows that the stage-2 row needs (TINY_ROWS: every stage and the
    control), once per seed of ``seeds``, into ``out_dir``."""
    run_entry_point(
        "ablation.py",
        f"out_dir={out_dir}",
        f"seeds=[{','.join(map(str, seeds))}]",
        "only=[dssd_prod_stage2]",
        "bootstrap_samples=200",
        tiny_train_args(data_root),
        timeout=1800,
    )
    return out_dir


def tiny_train_args(data_root: Path) -> str:
    """The ``train_args`` override of the tiny ablation chain: W&B (offline), the default logger,
    as `make ablation` uses it (the notebook reads it)."""
    return f'train_args="{" ".join(tiny_overrides(data_root))} trainer.log_every_n_steps=1"'


@pytest.fixture(scope="session")
def tiny_ablation(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of the tiny ablation chain with TINY_SEEDS; run once per session."""
    return run_tiny_ablation(tmp_path_factory.mktemp("tiny_ablation"), tiny_shapes, TINY_SEEDS)


@pytest.fixture(scope="session")
def tiny_ablation_two_seeds(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ablation chain with seeds 0 and 1 (twice the runs: for slow tests only)."""
    return run_tiny_ablation(tmp_path_factory.mktemp("tiny_ablation2"), tiny_shapes, (0, 1))


def run_entry_point(
    script: str, *overrides: str, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``src/<script>`` with Hydra overrides in a subprocess; with ``check``, fail on errors."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)  # user errors must show as messages, not tracebacks
    proc = subprocess.run(
        [sys.executable, str(ROOT / "src" / script), *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{script} {' '.join(overrides)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        )
    return proc
