"""Distributed data parallel: the ``ddp`` trainer config, training on two processes, and test
metrics gathered across processes equal to those of one process.

The runs use ``ddp_spawn`` on CPU (gloo) with two processes; ``conf/trainer/ddp.yaml`` is the GPU
configuration (``ddp``, sync BN), composed here with the CPU overrides.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.strategies import DDPStrategy

from conftest import run_entry_point
from dssd.data.datamodule import EvaluationShard, ShapesDataModule
from dssd.data.shapes import CLASSES
from dssd.errors import UserError
from dssd.tasks.training import check_launch
from dssd.training.callbacks import VOCResultsWriter
from test_configs import compose_train, hydra_runtime

WORLD_SIZE = 2
# Per process, in training; evaluation runs in batches of 1 (see the metric test).
BATCH_SIZE = 2
EVAL_BATCH_SIZE = 1


# On two processes: the ddp config with CPU in place of its GPU settings, and ddp_spawn (the
# processes are started here, and the results come back to this one) in place of ddp (which runs
# the command line again: see the last test).
def ddp_cpu(devices: int = WORLD_SIZE, spawn: bool = True) -> tuple[str, ...]:
    """The ddp config on ``devices`` CPU processes, with ddp_spawn unless ``spawn`` is false."""
    overrides = (
        "trainer=ddp",
        "trainer.accelerator=cpu",
        f"trainer.devices={devices}",
        "trainer.sync_batchnorm=false",
    )
    return (*overrides, "trainer.strategy=ddp_spawn") if spawn else overrides


DDP_CPU = ddp_cpu()
# the test split of the evaluation test: a multiple of neither 2 nor 3
FIFTEEN = 15


def tiny_run_config(root: Path, *overrides: str) -> DictConfig:
    """The CPU-sized SSD on the tiny shapes data, in float32, one image size for all runs."""
    return compose_train(
        "model=ssd_r18",
        f"data.root={root}",
        "data.num_workers=0",
        f"data.batch_size={BATCH_SIZE}",
        "trainer.precision=32-true",
        "model.channels_last=false",
        "logger=none",
        *overrides,
    )


def build_trainer(cfg: DictConfig, root_dir: Path, **kwargs: Any) -> pl.Trainer:
    """The configured Trainer, without checkpoints, loggers or progress output."""
    options = {
        "callbacks": [],
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **kwargs,
    }
    return instantiate(cfg.trainer, default_root_dir=str(root_dir), **options)


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


# --- the configs -------------------------------------------------------------------------------


def test_ddp_config_is_ddp_with_sync_batchnorm_on_every_gpu() -> None:
    trainer = compose_train("trainer=ddp").trainer
    assert trainer.strategy == "ddp"
    assert trainer.sync_batchnorm is True
    assert trainer.accelerator == "gpu"
    assert trainer.devices == -1
    assert trainer.num_nodes == 1
    assert trainer.use_distributed_sampler is True
    # what it builds on (conf/trainer/default.yaml, gpu.yaml) is kept
    assert trainer.benchmark is True
    assert trainer.max_steps == compose_train().trainer.max_steps


def test_ddp_config_takes_the_number_of_nodes() -> None:
    trainer = compose_train("trainer=ddp", "trainer.num_nodes=2", "trainer.devices=4").trainer
    assert (trainer.num_nodes, trainer.devices, trainer.strategy) == (2, 4, "ddp")


@pytest.mark.parametrize("name", ["default", "cpu", "gpu"])
def test_single_device_configs_do_not_sync_batchnorm(name: str) -> None:
    """SyncBatchNorm raises on CPU tensors, so only the ddp config may turn it on."""
    trainer = compose_train(f"trainer={name}").trainer
    assert not trainer.get("sync_batchnorm", False)
    assert trainer.get("strategy", "auto") == "auto"


def test_ddp_config_builds_a_two_process_trainer_on_cpu(tmp_path: Path) -> None:
    trainer = build_trainer(compose_train(*DDP_CPU), tmp_path)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == WORLD_SIZE
    assert trainer.world_size == WORLD_SIZE


# --- two processes -----------------------------------------------------------------------------


class SameWeightsOnEveryProcess(pl.Callback):
    """After training, every process must hold the same weights (DDP's all-reduce of gradients);
    each process that checked leaves a file ``rank<global rank>`` in ``out``."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        with torch.no_grad():
            flat = torch.cat([p.detach().flatten() for p in pl_module.parameters()])
        gathered = pl_module.all_gather(flat)
        assert gathered.shape[0] == WORLD_SIZE
        assert torch.equal(gathered[0], gathered[1]), "the processes' weights differ"
        (self.out / f"rank{trainer.global_rank}").touch()


class CountTestImages(pl.Callback):
    """Logs ``check/test_images`` (images tested, all processes together) and fails if any image
    was tested twice."""

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.image_ids: list[str] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.image_ids += [t["image_id"] for t in batch[1]]

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        gathered: list[list[str]] = [self.image_ids]
        if torch.distributed.is_initialized():
            gathered = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, self.image_ids)
        image_ids = [image_id for part in gathered for image_id in part]
        assert len(set(image_ids)) == len(image_ids), f"images tested twice: {image_ids}"
        pl_module.log("check/test_images", float(len(image_ids)))


@dataclass
class DDPFit:
    weights_before: dict[str, torch.Tensor]
    weights_after: dict[str, torch.Tensor]
    metrics: dict[str, float]
    # the processes that found their weights equal to the others'
    weights_checked: list[str]


@pytest.fixture(scope="module")
def ddp_fit(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> DDPFit:
    """Five optimiser steps on two processes, then one validation.

    No LR warm-up, LR 1e-3 and no augmentation: after these steps the weights find some of the
    training images' objects, which the metric test below needs (untrained weights score 0
    everywhere).
    """
    cfg = tiny_run_config(
        tiny_shapes,
        *DDP_CPU,
        "trainer.max_steps=5",
        "trainer.val_check_interval=5",
        "trainer.check_val_every_n_epoch=null",
        "trainer.log_every_n_steps=1",
        "model.scheduler=null",
        "schedules.0.lr=1.0e-3",
        "data.augment=null",
    )
    pl.seed_everything(0)
    model = instantiate(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = tmp_path_factory.mktemp("ddp_fit")
    trainer = build_trainer(cfg, out, callbacks=[SameWeightsOnEveryProcess(out)])
    trainer.fit(model, datamodule=instantiate(cfg.data))
    # ddp_spawn loads the weights of process 0 back into this process's module
    after = {k: v.clone() for k, v in model.state_dict().items()}
    checked = sorted(p.name for p in out.glob("rank*"))
    return DDPFit(before, after, scalars(trainer.callback_metrics), checked)


def test_training_runs_on_two_processes_and_logs_losses(ddp_fit: DDPFit) -> None:
    assert ddp_fit.weights_checked == [f"rank{r}" for r in range(WORLD_SIZE)]
    metrics = ddp_fit.metrics
    for name in ("train/loss", "train/loss_loc", "train/loss_conf", "val/loss", "val/map_50"):
        assert name in metrics, sorted(metrics)
    assert 0 < metrics["train/loss"] < float("inf")
    changed = [
        k for k, v in ddp_fit.weights_before.items() if not torch.equal(v, ddp_fit.weights_after[k])
    ]
    assert any(k.startswith("net.backbone.") for k in changed)
    assert any(k.startswith("net.heads.") for k in changed)


@pytest.fixture(scope="module")
def fifteen_images(tiny_shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny shapes data with a split ``fifteen`` of 15 of its training images
    (in which the trained weights find objects): a multiple of neither 2 nor 3 processes."""
    root = tmp_path_factory.mktemp("fifteen") / "shapes"
    shutil.copytree(tiny_shapes, root)
    splits = root / "ImageSets" / "Main"
    ids = (splits / "trainval.txt").read_text().split()[:FIFTEEN]
    (splits / "fifteen.txt").write_text("\n".join(ids) + "\n")
    return root


def test_every_test_image_is_scored_once_on_any_number_of_processes(
    fifteen_images: Path, ddp_fit: DDPFit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One set of weights tested on 15 images by one, two and three processes: each image once,
    and the same mAPs, per-class APs and devkit result files, exactly.

    The shares are unequal (8 + 7, 5 + 5 + 5) and follow the dataset's order
    (``EvaluationShard``), so the metrics, which gather every process's detections, see them in
    the order one process gives. Every process computes in one thread, so that each image's
    detections are the same float operations on every process. Batches of 1: the MultiBox loss of
    a batch is normalised by the batch's matched boxes, so with larger batches it depends on
    which images share one. The test loss, a mean over images that Lightning gathers as a sum
    and a count, adds in another order, hence to float rounding.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read by the processes ddp_spawn starts
    threads = torch.get_num_threads()
    overrides = ("data.test_split=fifteen", f"data.batch_size={EVAL_BATCH_SIZE}")
    results, result_files = {}, {}
    for processes in (1, 2, 3):
        trainer_overrides = ("trainer=cpu",) if processes == 1 else ddp_cpu(processes)
        cfg = tiny_run_config(fifteen_images, *trainer_overrides, *overrides)
        model = instantiate(cfg.model)
        model.load_state_dict(ddp_fit.weights_after)
        devkit = tmp_path / f"devkit{processes}"
        callbacks = [CountTestImages(), VOCResultsWriter(str(devkit))]
        trainer = build_trainer(cfg, tmp_path / str(processes), callbacks=callbacks)
        torch.set_num_threads(1)
        try:
            (returned,) = trainer.test(model, datamodule=instantiate(cfg.data), verbose=False)
        finally:
            torch.set_num_threads(threads)
        results[processes] = scalars(trainer.callback_metrics)
        # with ddp_spawn, the metrics come back from process 0
        assert scalars(returned) == results[processes]
        result_files[processes] = {p.name: p.read_bytes() for p in sorted(devkit.iterdir())}

    single = results[1]
    map_names = [k for k in single if k.startswith("test/") and "loss" not in k]
    # COCO mAP/mAR, the VOC devkit mAP and the AP of each class (dssd.evaluation.metrics.VOCMeanAP
    # on VOC data)
    assert {"test/map", "test/map_50", "test/map_75", "test/mar_200", "test/voc_map"} <= set(
        map_names
    )
    assert any(k.startswith("test/ap/") for k in map_names)
    assert single["test/map_50"] > 0, "the weights find no object: nothing is compared"
    assert len(result_files[1]) == len(CLASSES) and any(result_files[1].values())
    for processes in (2, 3):
        ddp = results[processes]
        assert sorted(ddp) == sorted(single)
        assert ddp["check/test_images"] == single["check/test_images"] == FIFTEEN
        assert {name: ddp[name] for name in map_names} == {name: single[name] for name in map_names}
        assert result_files[processes] == result_files[1], f"{processes} processes"
        for name in ("test/loss", "test/loss_loc", "test/loss_conf"):
            assert ddp[name] == pytest.approx(single[name], rel=1e-5), name


def test_an_evaluation_shard_is_a_contiguous_block_without_repeats() -> None:
    dataset = list(range(15))
    for processes in (1, 2, 3, 4, 15):
        shards = [list(EvaluationShard(dataset, processes, rank)) for rank in range(processes)]
        assert [i for shard in shards for i in shard] == dataset
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert [len(EvaluationShard(dataset, processes, r)) for r in range(processes)] == list(
            map(len, shards)
        )
    with pytest.raises(UserError, match="15 evaluation images for 16 processes"):
        EvaluationShard(dataset, 16, 0)


def test_too_few_evaluation_images_for_the_processes_is_said_before_training(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    """It was said at the first validation, after the training up to it (and twice)."""
    root = tmp_path / "shapes"
    shutil.copytree(tiny_shapes, root)
    splits = root / "ImageSets" / "Main"
    (splits / "one.txt").write_text((splits / "test.txt").read_text().split()[0] + "\n")
    proc = run_entry_point(
        "train.py",
        *ddp_cpu(spawn=False),
        f"data.root={root}",
        "data.test_split=one",
        "data.num_workers=0",
        "trainer.max_steps=2",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "error: 1 test images for 2 processes: each process needs one" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_too_few_evaluation_images_is_said_at_setup_where_srun_started_the_processes(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    """There train.py reads no data before the trainer: each process sets it up in ``fit``, and
    the shard of the first validation said it, after training up to it."""
    root = tmp_path / "shapes"
    shutil.copytree(tiny_shapes, root)
    splits = root / "ImageSets" / "Main"
    (splits / "one.txt").write_text((splits / "val.txt").read_text().split()[0] + "\n")
    datamodule = ShapesDataModule(str(root), CLASSES, val_split="one", image_size=65)
    datamodule.trainer = SimpleNamespace(world_size=2)  # as Lightning attaches it
    with pytest.raises(UserError, match="1 val images for 2 processes: each process needs one"):
        datamodule.setup("fit")


@pytest.mark.slow
def test_train_py_runs_under_ddp_on_two_processes(tiny_shapes: Path, tmp_path: Path) -> None:
    """src/train.py with ``trainer=ddp``: Lightning starts process 1 by running the command line
    again, in the run directory of process 0; fit, checkpoint and test go through."""
    run_entry_point(
        "train.py",
        *ddp_cpu(spawn=False),
        f"data.root={tiny_shapes}",
        "data.num_workers=0",
        f"data.batch_size={BATCH_SIZE}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
    )
    assert (tmp_path / "train_ddp_process_1.log").is_file()
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    (metrics_file,) = tmp_path.glob("csv/version_*/metrics.csv")
    header = metrics_file.read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/map_50", "test/map_50", "test/voc_map"} <= set(header)


@pytest.mark.parametrize("sweep", [["-m"], ["hparams_search=optuna", "hydra.sweeper.n_trials=1"]])
def test_ddp_that_reruns_the_command_is_refused_in_a_local_sweep(
    sweep: list[str], tiny_shapes: Path, tmp_path: Path
) -> None:
    """Each process that ``ddp`` starts by running the command line again would run the whole
    sweep too; the job stops before starting any, and names the ways that work."""
    proc = run_entry_point(
        "train.py",
        *sweep,
        *ddp_cpu(spawn=False),
        f"data.root={tiny_shapes}",
        f"hydra.sweep.dir={tmp_path}",
        "trainer.max_steps=2",
        "logger=csv",
        check=False,
    )
    assert "error: trainer.strategy=ddp on trainer.devices=2 in a sweep" in proc.stderr, (
        proc.stderr[-2000:]
    )
    assert "hydra/launcher=slurm" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("train_ddp_process_1.log"))


def test_ddp_in_a_sweep_is_left_alone_under_srun(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under srun (or torchrun) every process exists already and Lightning starts none, so a
    sweep of DDP runs is each task's own, not refused; nor is ddp_spawn here, which starts its
    processes itself (check_trainer refuses it in a fit for another reason)."""
    cfg = compose_train("hparams_search=optuna", *ddp_cpu(spawn=False))
    with hydra_runtime(cfg):
        with pytest.raises(UserError, match="in a sweep"):
            check_launch(cfg)
        check_launch(compose_train("hparams_search=optuna", *DDP_CPU))
        # Lightning's "auto" strategy on several devices is its ddp too
        implied = compose_train("hparams_search=optuna", "trainer.accelerator=cpu")
        check_launch(implied)  # one device
        implied.trainer.devices = 2
        with pytest.raises(UserError, match="strategy=auto on trainer.devices=2 in a sweep"):
            check_launch(implied)
    # submitit's local launcher runs the jobs on this machine too
    local = compose_train("hparams_search=optuna", "hydra/launcher=submitit_local")
    with hydra_runtime(local), pytest.raises(UserError, match="in a sweep"):
        check_launch(compose_train(*ddp_cpu(spawn=False)))
    with hydra_runtime(cfg):
        monkeypatch.setenv("SLURM_NTASKS", "2")
        monkeypatch.setenv("SLURM_JOB_NAME", "sweep")
        check_launch(cfg)
