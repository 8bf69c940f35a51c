"""Interrupted runs resume from last.ckpt; a non-finite loss stops training with a clear error."""

from __future__ import annotations

import csv
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import ROOT, run_in_process, tiny_run
from dssd.deployment.inference import load_checkpoint
from dssd.errors import UserError
from dssd.tasks.training import best_checkpoint, check_fresh_directory, resume_checkpoint
from dssd.training import callbacks as callbacks_module
from dssd.training.callbacks import (
    BestCheckpoint,
    DataSkipReport,
    LastCheckpoint,
    NonFiniteLossError,
    NonFiniteLossStop,
    ValidationHistory,
)

# --- unit tests on a tiny model: fast -------------------------------------------------------------


class TinyModule(pl.LightningModule):
    """A linear model whose training loss is NaN at step ``nan_at`` (never, if None)."""

    def __init__(self, nan_at: int | None = None) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)
        self.nan_at = nan_at

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        if self.global_step == self.nan_at:
            loss = loss * float("nan")
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/score", float(self.global_step))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class SaveRecorder(pl.Callback):
    """Records (global step, stage) of every checkpoint the trainer writes."""

    def __init__(self) -> None:
        self.saves: list[tuple[int, str]] = []

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module, checkpoint: dict) -> None:
        self.saves.append((trainer.global_step, trainer.state.stage.value))


def tiny_fit(
    directory: Path, module: TinyModule, max_steps: int, every: int, val_every: int | None = None
) -> SaveRecorder:
    """Fit on 12 samples, 3 batches an epoch, with LastCheckpoint (and best.ckpt if validating)."""
    recorder = SaveRecorder()
    callbacks = [
        LastCheckpoint(dirpath=str(directory), every_n_train_steps=every),
        NonFiniteLossStop(),
        ValidationHistory(["val/score", "val/absent"]),
        recorder,
    ]
    if val_every:
        best = ModelCheckpoint(directory, "best", monitor="val/score", mode="max", save_top_k=1)
        callbacks.insert(0, best)
    trainer = pl.Trainer(
        max_steps=max_steps,
        max_epochs=-1,
        val_check_interval=val_every,
        check_val_every_n_epoch=None if val_every else 1,
        limit_val_batches=1 if val_every else 0,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=4)
    trainer.fit(module, train_dataloaders=data, val_dataloaders=data if val_every else None)
    return recorder


def test_last_checkpoint_every_n_steps_after_validation_and_at_the_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):
        recorder = tiny_fit(tmp_path, TinyModule(), max_steps=11, every=3, val_every=4)
    # full, resumable checkpoints by choice (Lightning otherwise logs that it chose for us)
    assert "weights_only" not in caplog.text
    last = [step for step, stage in recorder.saves if stage == "train"]
    # every 3 steps, and at step 11 when fit ends (Lightning's save_last alone would stop at 9)
    assert last == [3, 6, 9, 11]
    # after each validation: best.ckpt, then last.ckpt again with the validation's results
    assert [step for step, stage in recorder.saves if stage == "validate"] == [4, 4, 8, 8]
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 11
    # the two checkpoint callbacks keep separate states in the checkpoint
    keys = [k for k in checkpoint["callbacks"] if "Checkpoint" in k]
    assert len(keys) == 2 and any(k.startswith("LastCheckpoint") for k in keys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]
    # the validation curve: each validation's step and value, kept in the checkpoint
    (history,) = [
        v for k, v in checkpoint["callbacks"].items() if k.startswith("ValidationHistory")
    ]
    assert history["history"] == [{"step": 4, "val/score": 4.0}, {"step": 8, "val/score": 8.0}]
    assert history["fit_seconds"] > 0


def test_last_checkpoint_is_replaced_whole_or_not_at_all(tmp_path: Path) -> None:
    """A write cut short (a kill while Lightning moves its temporary file from another
    filesystem) left a truncated last.ckpt, the run's only point to resume from."""
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"the step-4 checkpoint")

    def cut_short(path: str, weights_only: bool) -> None:
        Path(path).write_bytes(b"the step-6 chec")
        raise KeyboardInterrupt

    trainer = SimpleNamespace(
        state=SimpleNamespace(fn=TrainerFn.FITTING),
        sanity_checking=False,
        fast_dev_run=False,
        global_step=6,
        is_global_zero=True,
        save_checkpoint=cut_short,
    )
    with pytest.raises(KeyboardInterrupt):
        LastCheckpoint(str(tmp_path), every_n_train_steps=2).save(trainer)
    assert last.read_bytes() == b"the step-4 checkpoint"


def test_a_resumed_fit_counts_the_training_time_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fit_seconds`` of a resumed run is its whole fit's: the time up to the checkpoint it
    resumed from (kept by ValidationHistory) and its own."""

    class Clock:  # 10 s between readings
        now = 0.0

        def perf_counter(self) -> float:
            self.now += 10.0
            return self.now

    monkeypatch.setattr(callbacks_module, "time", Clock())
    tiny_fit(tmp_path, TinyModule(), max_steps=6, every=3)
    first = history_state(tmp_path / "last.ckpt")["fit_seconds"]
    assert first > 0
    history = ValidationHistory()
    trainer = pl.Trainer(
        max_steps=9,
        callbacks=[LastCheckpoint(dirpath=str(tmp_path), every_n_train_steps=3), history],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=4)
    trainer.fit(TinyModule(), data, ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert history.earlier_seconds == first
    assert history_state(tmp_path / "last.ckpt")["fit_seconds"] > first


class CountedData(TensorDataset):
    """Samples with the training set's ``skips`` counts, batched as ``(images, targets)``."""

    skips = {"missing_images": 0}

    @staticmethod
    def collate(samples: list[tuple[torch.Tensor]]) -> tuple[torch.Tensor, list[dict]]:
        return torch.stack([s[0] for s in samples]), [{} for _ in samples]


class ReportedModule(TinyModule):
    """Records the step of each ``log_dict``: DataSkipReport's one call per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.reported: list[int] = []

    def log_dict(self, *args: object, **kwargs: object) -> None:
        self.reported.append(self.global_step)


def test_a_resumed_fit_reports_the_data_of_the_epochs_it_trains_only(tmp_path: Path) -> None:
    """A checkpoint written after the validation that ends an epoch resumes before that epoch's
    end, whose hooks Lightning then calls again: its data counts, logged by the first fit, are
    not logged twice."""
    data = DataLoader(CountedData(torch.randn(12, 2)), batch_size=4, collate_fn=CountedData.collate)
    for max_steps, ckpt_path, reported in ((6, None, [3, 6]), (9, tmp_path / "last.ckpt", [9])):
        module = ReportedModule()
        trainer = pl.Trainer(
            max_steps=max_steps,
            callbacks=[
                LastCheckpoint(dirpath=str(tmp_path), every_n_train_steps=3),
                DataSkipReport(),
            ],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            val_check_interval=3,
            limit_val_batches=1,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, data, data, ckpt_path=ckpt_path, weights_only=True)
        assert module.reported == reported


def history_state(path: Path) -> dict:
    checkpoint = torch.load(path, weights_only=True)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ValidationHistory")]
    return state


def test_a_step_that_validates_is_written_after_its_validation_only(tmp_path: Path) -> None:
    """Lightning resumes from a checkpoint of a validating step as if its validation had run:
    written before the validation, it would lose that point if the run died during it."""
    recorder = tiny_fit(tmp_path, TinyModule(), max_steps=9, every=2, val_every=4)
    assert [step for step, stage in recorder.saves if stage == "train"] == [2, 6, 9]
    assert [step for step, stage in recorder.saves if stage == "validate"] == [4, 4, 8, 8]


def test_a_validation_at_each_epoch_end_defers_that_steps_write(tmp_path: Path) -> None:
    recorder = SaveRecorder()
    trainer = pl.Trainer(
        max_steps=7,
        callbacks=[LastCheckpoint(dirpath=str(tmp_path), every_n_train_steps=1), recorder],
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = DataLoader(TensorDataset(torch.randn(12, 2)), batch_size=4)  # 3 batches an epoch
    trainer.fit(TinyModule(), train_dataloaders=data, val_dataloaders=data)
    assert [step for step, stage in recorder.saves if stage == "train"] == [1, 2, 4, 5, 7]
    assert [step for step, stage in recorder.saves if stage == "validate"] == [3, 6]


def test_non_finite_loss_stops_before_backward_and_writes_no_checkpoint(tmp_path: Path) -> None:
    module = TinyModule(nan_at=5)
    with pytest.raises(NonFiniteLossError) as info:
        tiny_fit(tmp_path, module, max_steps=10, every=1)
    assert isinstance(info.value, UserError)  # so the entry points print it and exit with 2
    message = str(info.value)
    assert "not finite at step 5" in message and "loss nan" in message
    assert str(tmp_path / "last.ckpt") in message and "gradient_clip_val" in message
    # the NaN step neither computed gradients nor updated the weights nor wrote a checkpoint
    assert all(p.grad is None for p in module.parameters())
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 5
    for name, value in module.state_dict().items():
        assert torch.isfinite(value).all()
        assert torch.equal(checkpoint["state_dict"][name], value), name


def test_non_finite_loss_at_the_first_step_says_there_is_no_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="No checkpoint was written"):
        tiny_fit(tmp_path, TinyModule(nan_at=0), max_steps=10, every=1)
    assert not list(tmp_path.iterdir())


def test_resume_checkpoint_resolves_and_checks_the_path(tmp_path: Path) -> None:
    def cfg(ckpt_path: str | None):
        return OmegaConf.create({"ckpt_path": ckpt_path, "paths": {"output_dir": str(tmp_path)}})

    assert resume_checkpoint(cfg(None)) is None
    with pytest.raises(UserError, match="hydra.run.dir=<that run's directory"):
        resume_checkpoint(cfg("last"))
    with pytest.raises(UserError, match="no such checkpoint"):
        resume_checkpoint(cfg(str(tmp_path / "nowhere.ckpt")))
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"")  # e.g. cut off while being written
    for value in ("last", str(last)):
        with pytest.raises(UserError, match="is not a checkpoint written by src/train.py"):
            resume_checkpoint(cfg(value))
    record = {"state_dict": {}, "hyper_parameters": {"run_config": {"model": {}}}, "global_step": 8}
    torch.save(record, last)
    assert resume_checkpoint(cfg("last")) == str(last)
    assert resume_checkpoint(cfg(str(last))) == str(last)
    # a schedule shorter than the fit: Lightning stopped at once and tested the step-8 weights
    shorter = OmegaConf.merge(cfg("last"), {"trainer": {"max_steps": 4}})
    with pytest.raises(UserError, match="trained for 8 steps, more than trainer.max_steps=4"):
        resume_checkpoint(shorter)
    for steps in (8, 12):  # a finished fit tested again; an extended one
        assert resume_checkpoint(OmegaConf.merge(shorter, {"trainer": {"max_steps": steps}}))


def test_resuming_into_another_network_is_named_before_lightning_loads_it(
    tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The configured network must be the checkpoint's: one with other tensors is refused with
    the way out (the run's overrides, or init_from), not Lightning's list of every shape."""
    checkpoint, run_cfg = load_checkpoint(tiny_checkpoint)
    cfg = OmegaConf.create({"ckpt_path": str(tiny_checkpoint)})
    model = instantiate(run_cfg.model)
    assert resume_checkpoint(cfg, model) == str(tiny_checkpoint)
    model.net.heads.conf[0] = nn.Conv2d(model.net.heads.conf[0].in_channels, 5, 3, padding=1)
    with pytest.raises(UserError, match=r"another network .*2 tensors .*heads\.conf\.0\.weight"):
        resume_checkpoint(cfg, model)
    model.net.probe = nn.Linear(1, 1)
    with pytest.raises(UserError, match=r"4 tensors differ in name or shape, e.g. net\.probe"):
        resume_checkpoint(cfg, model)
    # a changed learning rate or weight decay: Lightning restores the checkpoint's, silently
    lr, decay = run_cfg.model.optimizer.lr, run_cfg.model.optimizer.weight_decay
    faster = OmegaConf.merge(run_cfg, cfg, {"model": {"optimizer": {"lr": 0.5, "weight_decay": 0}}})
    with caplog.at_level(logging.WARNING):
        resume_checkpoint(faster)
    assert f"model.optimizer.lr: {lr} -> 0.5; model.optimizer.weight_decay: {decay} -> 0" in (
        caplog.text
    )
    assert "the new values have no effect" in caplog.text and "other settings" not in caplog.text
    # another optimiser, another set of trained modules (Lightning failed at the first step on
    # the optimiser state) or another network with the same tensors: refused
    adamw = "AdamW" in run_cfg.model.optimizer._target_
    other = "torch.optim.SGD" if adamw else "torch.optim.AdamW"
    for change, named in (
        ({"optimizer": {"_target_": other}}, "model.optimizer._target_: "),
        ({"freeze": ["backbone"]}, re.escape("model.freeze: [] -> ['backbone']")),
        ({"postprocess": {}, "net": {"image_size": 65}}, "model.net.image_size: "),
    ):
        refused = OmegaConf.merge(run_cfg, cfg, {"model": change})
        with pytest.raises(UserError, match=f"other settings of its network.*{named}"):
            resume_checkpoint(refused)
    # what only builds the network, whose weights the checkpoint replaces, may differ; a
    # setting newer than the checkpoint's run is warned of
    caplog.clear()
    net = {"backbone": {"pretrained": True}, "newer_setting": 1}
    built = OmegaConf.merge(run_cfg, cfg, {"model": {"net": net}})
    with caplog.at_level(logging.WARNING):
        resume_checkpoint(built)
    assert "pretrained" not in caplog.text
    assert "other settings than its run's: model.net.newer_setting: None -> 1." in caplog.text
    # other data or model settings: warned of, by name (loading, schedule and LR aside)
    caplog.clear()
    changed = OmegaConf.merge(
        run_cfg,
        {"ckpt_path": str(tiny_checkpoint), "seed": run_cfg.seed},
        {"data": {"batch_size": run_cfg.data.batch_size + 1, "num_workers": 7}},
        {"model": {"scheduler": {"milestones": [99]}}},
    )
    with caplog.at_level(logging.WARNING):
        resume_checkpoint(changed)
    (message,) = [r.getMessage() for r in caplog.records if "other settings" in r.getMessage()]
    size = run_cfg.data.batch_size
    assert f"data.batch_size: {size} -> {size + 1}" in message
    assert "num_workers" not in message and "milestones" not in message
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resume_checkpoint(OmegaConf.merge(run_cfg, {"ckpt_path": str(tiny_checkpoint)}))
    assert "other settings" not in caplog.text
    # a stage-0 checkpoint resumed as stage 1: Lightning failed on the optimiser's param groups
    later = OmegaConf.merge(cfg, {"stage": 1, "stages": [{}, {}]})
    with pytest.raises(UserError, match="is a stage-0 run's checkpoint, resumed here as stage 1"):
        resume_checkpoint(later)


def test_a_new_fit_in_a_directory_holding_a_run_is_refused(tmp_path: Path) -> None:
    """``hydra.run.dir=<run>`` without ``ckpt_path=last``, or with another run's checkpoint,
    overwrote that run's checkpoints."""

    def cfg(**settings):
        return OmegaConf.create({"train": True, "paths": {"output_dir": str(tmp_path)}, **settings})

    check_fresh_directory(cfg())
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match="holds an earlier run, .* ckpt_path=last resumes it"):
        check_fresh_directory(cfg())
    check_fresh_directory(cfg(ckpt_path="last"))
    check_fresh_directory(cfg(ckpt_path=str(tmp_path / "checkpoints" / "best.ckpt")))
    check_fresh_directory(cfg(train=False))
    # another run's checkpoint resumed here overwrote this run
    other = tmp_path / "other" / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match="resumes another run into this directory"):
        check_fresh_directory(cfg(ckpt_path=str(other)))
    check_fresh_directory(cfg(ckpt_path=str(other), paths={"output_dir": str(tmp_path / "new")}))


def test_the_refusal_comes_before_hydra_records_the_command_in_that_run(tmp_path: Path) -> None:
    """Hydra writes the command's config to ``<run dir>/.hydra/`` before the task starts: the
    refused fit replaced the earlier run's recorded config (its seed, its overrides)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / ".hydra").mkdir()
    recorded = {name: f"{name} of the earlier run\n" for name in ("config.yaml", "overrides.yaml")}
    for name, text in recorded.items():
        (run / ".hydra" / name).write_text(text)
    proc = run_in_process("train.py", f"hydra.run.dir={run}", "seed=7", check=False)
    assert proc.returncode == 2 and "holds an earlier run" in proc.stderr
    assert {name: (run / ".hydra" / name).read_text() for name in recorded} == recorded
    assert not (run / "train.log").exists()
    # a resume refused inside the task, after Hydra wrote the record: the record is put back
    proc = run_in_process("train.py", f"hydra.run.dir={run}", "ckpt_path=last", check=False)
    assert proc.returncode == 2 and "is not a checkpoint written by src/train.py" in proc.stderr
    assert {name: (run / ".hydra" / name).read_text() for name in recorded} == recorded


# --- src/train.py end to end ----------------------------------------------------------------------


def global_step(path: Path) -> int:
    """The step of a checkpoint; 0 while it does not exist or cannot be read yet."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, or (if the save is not atomic) still being written
        return 0
    return int(checkpoint["global_step"])


def train_steps(metrics_file: Path) -> list[int]:
    """The steps at which a CSVLogger's metrics.csv has a training loss."""
    with metrics_file.open() as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]


def test_killed_run_resumes_with_ckpt_path_last(tiny_shapes: Path, tmp_path: Path) -> None:
    max_steps, run_dir = 12, tmp_path / "run"
    overrides = [
        *tiny_run(tiny_shapes),
        "data.batch_size=2",
        "logger=csv",
        "+logger.csv.flush_logs_every_n_steps=1",
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=4",
        "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "test=false",
        f"hydra.run.dir={run_dir}",
    ]
    last = run_dir / "checkpoints" / "last.ckpt"
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    log_file = tmp_path / "killed.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "src" / "train.py"), *overrides],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 600
            # killed after step 6's checkpoint: past the first validation (step 4), whose new
            # metric columns make the CSV logger rewrite its file, which a kill could cut short
            while proc.poll() is None and time.monotonic() < deadline:
                if global_step(last) >= 6:
                    break
                time.sleep(0.2)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log_file.read_text()[-4000:]
    saved = global_step(last)
    assert 6 <= saved < max_steps  # interrupted with steps left to do

    # an earlier attempt's test results, of weights the resumed fit replaces, are removed
    earlier = [run_dir / "test_results.json", run_dir / "voc_results" / "comp4_det_test_a.txt"]
    for path in earlier:
        path.parent.mkdir(exist_ok=True)
        path.write_text("of an earlier attempt")
    # init_from, which a resumed checkpoint's weights would replace, is not read (a stage-0
    # checkpoint moved away since stage 1 started stopped the resume)
    run_in_process("train.py", *overrides, "ckpt_path=last", f"init_from={tmp_path}/moved.ckpt")
    assert not any(path.exists() for path in earlier)
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == max_steps
    # the optimiser and the LR schedule continued from the saved state, not from scratch
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == max_steps
    adam_steps = {int(s["step"]) for s in checkpoint["optimizer_states"][0]["state"].values()}
    assert adam_steps == {max_steps}
    # the validation curve holds every validation once, the killed run's and the resumed run's,
    # wherever the kill fell (last.ckpt is written at a validating step only after validating)
    (curve,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("ValidationHistory")]
    assert [point["step"] for point in curve["history"]] == [4, 8, 12]
    # the resumed run logs to csv/version_1, from the step after the saved one on
    resumed = train_steps(run_dir / "csv" / "version_1" / "metrics.csv")
    assert resumed == list(range(saved, max_steps))
    # the killed run's log is on disk up to the step before the checkpoint's last one: Lightning
    # writes the checkpoint in on_train_batch_end, before that step's metrics are logged
    assert max(train_steps(run_dir / "csv" / "version_0" / "metrics.csv")) >= saved - 2


@pytest.mark.parametrize(
    "signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_a_fit_stopped_by_ctrl_c_or_sigterm_writes_its_steps(
    tiny_shapes: Path, tmp_path: Path, signum: int
) -> None:
    """Lightning's graceful shutdown wrote nothing: the steps since the last periodic write (up
    to 1,000 on VOC and COCO) were lost."""
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_run(tiny_shapes),
        "data.batch_size=2",
        "logger=csv",
        "+logger.csv.flush_logs_every_n_steps=1",
        "trainer.max_steps=400",
        "trainer.val_check_interval=400",
        "trainer.log_every_n_steps=1",
        "callbacks.last_checkpoint.every_n_train_steps=1000",
        "test=false",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    metrics = run_dir / "csv" / "version_0" / "metrics.csv"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "train.py"), *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if metrics.is_file() and len(train_steps(metrics)) >= 3:
                break
            time.sleep(0.2)
        proc.send_signal(signum)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # (Lightning's SIGTERMException exits 0, as a finished fit)
    assert proc.returncode == (1 if signum == signal.SIGINT else 143), output[-3000:]
    step = global_step(run_dir / "checkpoints" / "last.ckpt")
    assert 3 <= step < 400, output[-3000:]
    assert f"Stopped at step {step}: " in output


def test_ckpt_path_last_without_a_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    """Said before the embedded data is built (it was built first, half a minute)."""
    data = tmp_path / "data"
    proc = run_in_process(
        "train.py",
        f"data.root={data}",
        "logger=csv",
        "ckpt_path=last",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 2
    missing = tmp_path / "run" / "checkpoints" / "last.ckpt"
    err = proc.stderr
    assert err.startswith(f"error: ckpt_path=last, but there is no {missing} to resume from")
    assert not data.exists()


def test_diverging_run_stops_with_a_user_error(tiny_shapes: Path, tmp_path: Path) -> None:
    """An absurd LR: step 0 is finite and makes the weights huge; the loss at step 1 is NaN."""
    proc = run_in_process(
        "train.py",
        *tiny_run(tiny_shapes),
        "data.batch_size=2",
        "logger=csv",
        "model.optimizer.lr=1e30",
        "trainer.max_steps=5",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "error: training stopped: the loss is not finite at step 1" in proc.stderr
    assert "Traceback" not in proc.stderr
    # nothing was written after the NaN: last.ckpt is step 1's, with finite weights
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_best_checkpoint_is_the_model_checkpoints_not_last_checkpoints(tmp_path: Path) -> None:
    last = LastCheckpoint(dirpath=str(tmp_path))
    trainer = pl.Trainer(callbacks=[last], logger=False, enable_progress_bar=False)
    assert trainer.checkpoint_callback is last and best_checkpoint(trainer) == ""
    best = ModelCheckpoint(tmp_path, "best", monitor="val/score")
    best.best_model_path = str(tmp_path / "best.ckpt")
    trainer = pl.Trainer(callbacks=[last, best], logger=False, enable_progress_bar=False)
    assert best_checkpoint(trainer) == str(tmp_path / "best.ckpt")


def test_a_moved_run_keeps_its_best_score_when_resumed(tmp_path: Path) -> None:
    """Lightning drops the best score of a checkpoint whose directory changed, so the first
    validation after resuming a moved run replaced best.ckpt however poor it was."""
    old, new = tmp_path / "old", tmp_path / "new"
    new.mkdir()
    state = ModelCheckpoint(old, "best", monitor="val/score", mode="max").state_dict()
    state.update(best_model_path=str(old / "best.ckpt"), best_model_score=torch.tensor(0.7))
    state["best_k_models"] = {str(old / "best.ckpt"): torch.tensor(0.7)}
    trainer = pl.Trainer(logger=False, enable_progress_bar=False)

    def resumed(kind: type[ModelCheckpoint]) -> ModelCheckpoint:
        callback = kind(new, "best", monitor="val/score", mode="max", save_top_k=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's "The dirpath has changed"
            callback.load_state_dict(dict(state))
        return callback

    assert resumed(ModelCheckpoint).best_model_score is None  # what Lightning does
    assert resumed(BestCheckpoint).best_model_score is None  # best.ckpt did not move with it
    (new / "best.ckpt").write_bytes(b"")
    best = resumed(BestCheckpoint)
    assert best.best_model_score == pytest.approx(0.7)
    assert best.best_model_path == str(new / "best.ckpt")
    assert not best.check_monitor_top_k(trainer, torch.tensor(0.1))  # a poorer score: kept
    assert best.check_monitor_top_k(trainer, torch.tensor(0.9))
