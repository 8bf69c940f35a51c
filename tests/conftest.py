"""Shared fixtures: a tiny shapes dataset and a helper that runs the Hydra entry points."""

from __future__ import annotations

import io
import logging
import os
import runpy
import shutil
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from filelock import FileLock
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig

from dssd.data.shapes import generate_shapes

# `make test` runs the suite in one pytest-xdist worker per core: each worker, and every process it
# starts, computes on one thread, so that the workers share the cores instead of contending.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]
) -> Path:
    """The folder ``name`` that ``build`` fills, once per test session: under pytest-xdist the
    workers share it (the first to need it builds it while the others wait on a file lock), so
    that no worker repeats the minutes of training another has spent. A build that fails leaves
    no folder behind: the next worker that needs it tries again, and fails alike."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    shared = tmp_path_factory.getbasetemp().parent  # the session's, above every worker's
    folder, done = shared / name, shared / f"{name}.done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 trainval, 8 test and 8 val images, built once per test session."""
    return built_once(
        tmp_path_factory,
        "tiny_shapes",
        lambda root: generate_shapes(root, num_trainval=16, num_test=8, num_val=8),
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


def objects_in_size_rows(
    data_root: Path, split: str, bounds: dict[str, tuple[float, float]]
) -> int:
    """The objects (not difficult) a split's size table counts over the ``bounds`` on sqrt(area)
    in pixels, each range with both its ends (COCO's): an object on an edge counts twice."""
    from dssd.data.voc import VOCDataset

    classes = ["circle", "square", "triangle", "star", "cross", "ellipse"]
    targets = VOCDataset(data_root, split, classes).annotations
    kept = [np.asarray(t["boxes"])[~np.asarray(t["difficult"])] for t in targets]
    side = np.sqrt(np.concatenate([(b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) for b in kept]))
    return sum(int(((side >= low) & (side <= high)).sum()) for low, high in bounds.values())


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
    run_in_process(
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
    run_dir = built_once(
        tmp_path_factory,
        "tiny_run",
        lambda run_dir: train_tiny_checkpoint(tiny_shapes, run_dir, TEST_PRECISION),
    )
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="session")
def tiny_bf16_checkpoint(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same run trained in bf16-mixed (``tiny_checkpoint`` itself when that is bf16)."""
    if TEST_PRECISION == "bf16-mixed":
        return tiny_checkpoint
    run_dir = built_once(
        tmp_path_factory,
        "tiny_run_bf16",
        lambda run_dir: train_tiny_checkpoint(tiny_shapes, run_dir, "bf16-mixed"),
    )
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(params=["tiny_checkpoint", "tiny_bf16_checkpoint"])
def any_precision_checkpoint(request: pytest.FixtureRequest) -> Path:
    """``tiny_checkpoint`` and ``tiny_bf16_checkpoint``, one after the other: what a test that
    takes it checks holds for a run trained and tested in float32 and in bf16."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="session")
def tiny_wandb_run(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run dir of a 2-iteration DSSD run on ``tiny_shapes`` with the default logger (W&B,
    offline, as `make train` uses it), logging every step; trained once."""
    return built_once(
        tmp_path_factory,
        "tiny_wandb_run",
        lambda run_dir: run_entry_point(
            "train.py",
            *tiny_overrides(tiny_shapes),
            "model=dssd_r18",
            "trainer.log_every_n_steps=1",
            f"hydra.run.dir={run_dir}",
        ),
    )


# the rows of the tiny_ablation fixture: dssd_prod_stage2 and the rows it needs
TINY_ROWS = ["ssd_pm_a", "ssd_pm_c", "ssd_pm_c_control", "dssd_prod", "dssd_prod_stage2"]
# its seeds; tiny_ablation_two_seeds (make test-full) runs the chain once per seed of two
TINY_SEEDS = (0,)


def run_tiny_ablation(out_dir: Path, data_root: Path, seeds: Sequence[int]) -> Path:
    """`make ablation`'s chain (src/ablation.py) with 2 iterations per row on the tiny dataset at
    ``data_root``, for the rows that the stage-2 row needs (TINY_ROWS: every stage and the
    control), once per seed of ``seeds``, into ``out_dir``."""
    run_in_process(
        "ablation.py",
        f"out_dir={out_dir}",
        f"seeds=[{','.join(map(str, seeds))}]",
        "only=[dssd_prod_stage2]",
        "bootstrap_samples=200",
        tiny_train_args(data_root),
    )
    return out_dir


def tiny_train_args(data_root: Path) -> str:
    """The ``train_args`` override of the tiny ablation chain: W&B (offline), the default logger,
    as `make ablation` uses it (the notebook reads it)."""
    return f'train_args="{" ".join(tiny_overrides(data_root))} trainer.log_every_n_steps=1"'


@pytest.fixture(scope="session")
def tiny_ablation(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of the tiny ablation chain with TINY_SEEDS; run once per session."""
    return built_once(
        tmp_path_factory,
        "tiny_ablation",
        lambda out_dir: run_tiny_ablation(out_dir, tiny_shapes, TINY_SEEDS),
    )


@pytest.fixture(scope="session")
def tiny_ablation_two_seeds(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny ablation chain with seeds 0 and 1 (twice the runs: for slow tests only)."""
    return built_once(
        tmp_path_factory,
        "tiny_ablation2",
        lambda out_dir: run_tiny_ablation(out_dir, tiny_shapes, (0, 1)),
    )


def run_entry_point(
    script: str, *overrides: str, check: bool = True, timeout: int = 600
) -> subprocess.CompletedProcess:
    """Run ``src/<script>`` with Hydra overrides in a subprocess; with ``check``, fail on errors.
    For commands that start W&B runs or DDP processes; the others take :func:`run_in_process`."""
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


def run_in_process(script: str, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """:func:`run_entry_point` in this process, in a fraction of the time (the libraries are
    imported already): ``src/<script>`` runs as ``__main__`` with its command line in
    ``sys.argv``; what it prints and the warnings it shows are captured; an uncaught exception
    is printed as a traceback with exit status 1, as Python would; and what Hydra sets up for a
    run (its global state, logging, the environment) is put back afterwards. For commands that
    W&B or DDP processes take no part in: those keep their subprocess."""
    path = ROOT / "src" / script
    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with (
        _entry_point_state(),
        redirect_stdout(stdout),
        redirect_stderr(stderr),
        warnings.catch_warnings(),
    ):
        warnings.showwarning = _show_on_stderr
        os.environ["WANDB_MODE"] = "offline"
        os.environ.pop("HYDRA_FULL_ERROR", None)
        sys.argv = [str(path), *overrides]
        try:
            runpy.run_path(str(path), run_name="__main__")
        except SystemExit as exit_:
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except Exception:
            traceback.print_exc()
            code = 1
    command = [sys.executable, str(path), *overrides]
    proc = subprocess.CompletedProcess(command, code, stdout.getvalue(), stderr.getvalue())
    if check and code != 0:
        pytest.fail(f"{script} {' '.join(overrides)} exited {code}:\n{proc.stderr[-4000:]}")
    return proc


def _show_on_stderr(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A warning where a process shows it, on (the captured) stderr, in order with the rest."""
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


@contextmanager
def _entry_point_state() -> Iterator[None]:
    """Put back, on leaving, what an entry point run in this process changes for the next
    test: ``sys.argv``, the environment, Hydra's global state, and the
    handlers and levels of every logger that existed (Hydra's job logging replaces the root's)."""
    argv, environ, hydra_config = sys.argv, dict(os.environ), HydraConfig.instance().cfg
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    saved = {
        logger: (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        for logger in loggers
        if isinstance(logger, logging.Logger)
    }
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(environ)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = hydra_config
        for logger, (handlers, level, propagate, disabled) in saved.items():
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
