"""The entry points run end to end on a tiny shapes dataset, most in this process."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.warnings import PossibleUserWarning
from omegaconf import OmegaConf
from pytorch_lightning.callbacks import ModelSummary as ModelSummaryCallback
from pytorch_lightning.utilities._pytree import _tree_flatten
from pytorch_lightning.utilities.model_summary import ModelSummary

from conftest import ROOT, run_entry_point, run_in_process, tiny_overrides, tiny_run
from dssd import errors
from dssd.data.shapes import CLASSES as SHAPES_CLASSES
from dssd.tasks.common import check_accelerator
from dssd.tasks.entry import check_command_line, run_task


def logged_metrics(run_dir: Path) -> dict[str, float]:
    """The last value of every metric in a CSVLogger's metrics.csv."""
    (metrics_file,) = run_dir.glob("csv/version_*/metrics.csv")
    last: dict[str, float] = {}
    with metrics_file.open() as f:
        for row in csv.DictReader(f):
            last.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return last


@pytest.mark.slow
def test_fast_dev_run(tiny_shapes: Path, tmp_path: Path) -> None:
    proc = run_in_process(
        "train.py",
        *tiny_run(tiny_shapes),
        "trainer.fast_dev_run=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
    )
    assert "test/map_50" in proc.stdout


def test_a_command_run_in_process_says_what_its_process_says_and_leaves_no_trace(
    tmp_path: Path,
) -> None:
    """``run_in_process``, which most tests here use, against the subprocess it stands for: the
    same exit status and output; and the test's process as it was before (its command line,
    environment, Hydra's state and the root logger, which Hydra's job logging replaced)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    def state() -> tuple:
        root = logging.getLogger()
        hydra = (GlobalHydra.instance().is_initialized(), HydraConfig.initialized())
        return list(sys.argv), dict(os.environ), list(root.handlers), root.level, hydra

    command = ("eval.py", "ckpt_path=/nowhere.ckpt", f"hydra.run.dir={tmp_path}")
    before = state()
    in_process = run_in_process(*command, check=False)
    assert state() == before
    assert (tmp_path / "eval.log").is_file()  # Hydra set up the job's logging
    process = run_entry_point(*command, check=False)
    assert in_process.returncode == process.returncode == 2
    assert (
        in_process.stderr
        == process.stderr
        == "error: ckpt_path=/nowhere.ckpt: no such checkpoint file\n"
    )
    assert in_process.stdout == process.stdout


def test_a_fit_without_a_test_does_not_read_the_test_files(
    tiny_shapes: Path, tmp_path: Path
) -> None:
    """test=false: the test split may be missing, or one the fit trains on (voc07++12's VOC2007
    test; the datamodule's side in test_voc0712), since no test figure comes of it."""
    proc = run_in_process(
        "train.py",
        *tiny_run(tiny_shapes),
        "trainer.fast_dev_run=1",
        "logger=csv",
        "test=false",
        "data.test_split=nosuch",
        f"hydra.run.dir={tmp_path}",
    )
    assert "test/map_50" not in proc.stdout and "test data" not in proc.stderr


def test_eval_reproduces_the_test_map_of_train(
    any_precision_checkpoint: Path, tmp_path: Path
) -> None:
    """eval.py tests in the training run's precision (bf16 for a bf16 run): the same figures."""
    train_dir, eval_dir = any_precision_checkpoint.parents[1], tmp_path / "eval"
    # train.py tests the final weights, which last.ckpt holds
    last = train_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["hyper_parameters"]["run_config"]["model"]["net"]["image_size"] == 321

    run_in_process(
        "eval.py", f"ckpt_path={last}", "trainer.accelerator=cpu", f"hydra.run.dir={eval_dir}"
    )
    trained, evaluated = logged_metrics(train_dir), logged_metrics(eval_dir)
    # the loss is never 0, so it shows that weights, data and precision are the training run's
    for name in ("test/loss", "test/map", "test/map_50", "test/mar_200"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-6), name


@pytest.mark.parametrize("setting", ["fold_bn=no", "compare=maybe"])
def test_eval_switches_must_be_true_or_false(setting: str) -> None:
    """Any other value would count as true: ``fold_bn=no`` folded."""
    from hydra import compose, initialize_config_dir

    from dssd.errors import UserError
    from dssd.tasks.evaluation import evaluate

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=/nowhere.ckpt", setting])
    with pytest.raises(UserError, match=re.escape(f"{setting}: choose true or false")):
        evaluate(cfg)


def test_eval_logs_to_the_training_runs_wandb_project_unless_given_one() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dssd.tasks.evaluation import follow_wandb_project
    from test_configs import hydra_runtime

    trained = OmegaConf.create({"logger": {"wandb": {"project": "myproj", "entity": "lab"}}})
    for given, project in (([], "myproj"), (["logger.wandb.project=mine"], "mine")):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("eval", ["logger=wandb", *given], return_hydra_config=True)
        with hydra_runtime(cfg):
            follow_wandb_project(cfg, trained)
        assert (cfg.logger.wandb.project, cfg.logger.wandb.entity) == (project, "lab")


def test_eval_data_is_the_checkpoints_unless_chosen() -> None:
    from omegaconf import OmegaConf

    from dssd.tasks.evaluation import data_to_evaluate

    trained = OmegaConf.create({"_target_": "Trained", "root": "a", "batch_size": 8})
    assert data_to_evaluate(None, trained) == trained
    fields = OmegaConf.create({"root": "b"})  # +data.root=b
    assert data_to_evaluate(fields, trained) == {**trained, "root": "b"}
    chosen = OmegaConf.create({"_target_": "Chosen", "root": "c"})  # data=<name>
    assert data_to_evaluate(chosen, trained) == chosen


@pytest.mark.parametrize("whole", [False, True], ids=["a field", "a data config"])
def test_eval_changes_a_field_of_the_checkpoints_data(
    whole: bool, tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``+data.test_split=`` changes the checkpoint's data (its root stays); ``data=voc0712``
    replaces it, its ``${model.net.image_size}`` resolved against the checkpoint's network."""
    chosen = ["data=voc0712", f"data.root={tiny_shapes}", "data.test_sets=null"]
    chosen.append(f"data.class_names=[{','.join(SHAPES_CLASSES)}]")
    proc = run_in_process(
        "eval.py",
        f"ckpt_path={tiny_checkpoint}",
        *(chosen if whole else []),
        "+data.test_split=nosuch",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"no split 'nosuch' in {tiny_shapes}" in proc.stderr


SWAPPED_CLASSES = [SHAPES_CLASSES[1], SHAPES_CLASSES[0], *SHAPES_CLASSES[2:]]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            f"+data.class_names=[{','.join(SWAPPED_CLASSES)}]",
            f"the test data's classes ['{SWAPPED_CLASSES[0]}', '{SWAPPED_CLASSES[1]}',",
        ),
        ("+data.image_size=193", "data.image_size=193, but the network takes 321"),
    ],
    ids=["classes in another order", "another input size"],
)
def test_eval_refuses_data_the_network_was_not_built_for(
    override: str, message: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Classes in another order would score each output as another class; another input size
    failed deep inside the loss."""
    command = [f"ckpt_path={tiny_checkpoint}", override, f"hydra.run.dir={tmp_path}"]
    proc = run_in_process("eval.py", *command, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"error: {message}" in proc.stderr


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.devices=0", "Trainer settings: `Trainer(devices=0)` value is not a valid"),
        ("voc_results={blocker}/results", "voc_results={blocker}/results: cannot write there"),
        # it tested nothing and wrote empty results, exit status 0
        ("trainer.limit_test_batches=0", "trainer.limit_test_batches=0: the test would score no"),
        # it tested in float64, a precision train.py refuses
        ("trainer.precision=64", "trainer.precision=64: choose one of 32-true"),
    ],
)
def test_eval_refuses_trainer_and_result_settings_before_reading_the_test_data(
    override: str, message: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Said before the test data is read (on VOC, every annotation and image header), not
    after: here the data is missing, and that error would come first."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_in_process(
        "eval.py",
        f"ckpt_path={tiny_checkpoint}",
        f"+data.root={tmp_path / 'missing'}",
        override.format(blocker=blocker),
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.startswith(f"error: {message.format(blocker=blocker)}")


@pytest.mark.slow
def test_eval_folds_batch_norm_on_request(tiny_checkpoint: Path, tmp_path: Path) -> None:
    last = tiny_checkpoint.parent / "last.ckpt"
    # float32, so that only folding, not bf16 rounding, separates the two evaluations
    plain_dir, folded_dir = tmp_path / "plain", tmp_path / "folded"
    for run_dir, fold in ((plain_dir, "false"), (folded_dir, "true")):
        run_in_process(
            "eval.py",
            f"ckpt_path={last}",
            f"fold_bn={fold}",
            "trainer.precision=32-true",
            f"hydra.run.dir={run_dir}",
        )
    plain, folded = logged_metrics(plain_dir), logged_metrics(folded_dir)
    assert folded["test/loss"] == pytest.approx(plain["test/loss"], rel=1e-4)
    assert "batch norm folded" in (folded_dir / "eval.log").read_text()
    assert "batch norm folded" not in (plain_dir / "eval.log").read_text()


@pytest.mark.slow  # the same error path as the truncated file below; in process: test_inference
def test_eval_rejects_a_foreign_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, path)
    proc = run_in_process(
        "eval.py", f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}", check=False
    )
    assert proc.returncode == 2
    expected = f"error: {path} is not a checkpoint written by src/train.py (it holds no run config"
    assert expected in proc.stderr


def broken_checkpoints(checkpoint: Path, directory: Path) -> list[Path]:
    """A truncated copy of ``checkpoint`` and two text files with a checkpoint's name (torch
    fails on one with a sentence, on the other with a bare ``KeyError``)."""
    truncated = directory / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    text, other = directory / "notes.ckpt", directory / "hello.ckpt"
    text.write_text("not a checkpoint\n")
    other.write_text("hello\n")
    return [truncated, text, other]


def test_broken_checkpoint_files_are_named_not_tracebacks(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from dssd.deployment.inference import load_checkpoint
    from dssd.tasks.training import resume_checkpoint
    from dssd.training.checkpoints import CheckpointError
    from dssd.training.stages import read_state_dict
    from test_configs import compose_train

    for path in broken_checkpoints(tiny_checkpoint, tmp_path):
        message = f"{path} is not a checkpoint written by src/train.py (torch.load failed: "
        for read in (
            load_checkpoint,  # eval.py ckpt_path
            read_state_dict,  # init_from
            lambda p: resume_checkpoint(compose_train(f"ckpt_path={p}")),  # resuming
        ):
            with pytest.raises(CheckpointError) as err:
                read(path)
            assert str(err.value).startswith(message), str(err.value)
            # torch's reason in words, not only a number (KeyError(104) of hello.ckpt)
            assert re.search("[a-z]", str(err.value)[len(message) :]), str(err.value)
    # an exported model given as a checkpoint: where it goes instead, not torch's advice to
    # load it with weights_only=False
    archive, onnx = tmp_path / "model.pt", tmp_path / "model.onnx"
    torch.jit.save(torch.jit.script(torch.nn.Identity()), str(archive))
    onnx.write_bytes(b"\x08\x07not a pickle")
    for path in (archive, onnx):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with pytest.raises(CheckpointError, match="it is an exported model: src/eval.py"):
                load_checkpoint(path)
        assert not shown, [str(w.message) for w in shown]  # torch's "TorchScript archive"
    # weights and a run_config of another program (or a mangled one): not rebuilt, named
    for run_config in ("nonsense", {"lr": 0.1, "data": {}}):
        foreign = tmp_path / "foreign.ckpt"
        torch.save({"state_dict": {}, "hyper_parameters": {"run_config": run_config}}, foreign)
        with pytest.raises(CheckpointError, match="its run configuration lacks model"):
            load_checkpoint(foreign)
    truncated = tmp_path / "truncated.ckpt"
    for script, option in (("eval.py", "ckpt_path"), ("train.py", "init_from")):
        proc = run_in_process(
            script,
            f"{option}={truncated}",
            f"hydra.run.dir={tmp_path / script}",
            check=False,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert f"error: {truncated} is not a checkpoint written by src/train.py (" in proc.stderr


def test_a_checkpoint_that_cannot_be_read_is_not_called_foreign(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was "not a checkpoint written by src/train.py (... Permission denied)"."""
    from dssd.training.checkpoints import CheckpointError, read_checkpoint

    def refused(path: str, **_: object) -> None:  # what torch.load meets for a mode-000 file
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(torch, "load", refused)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(tiny_checkpoint, "ckpt_path")
    assert str(err.value) == f"ckpt_path={tiny_checkpoint}: cannot read it (Permission denied)"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["test_ckpt=/nowhere/model.ckpt"], "test_ckpt (last, best or a checkpoint file)="),
        (["test_ckpt=best", "train=false"], "train=false"),
        (["test_ckpt=best", "~callbacks.model_checkpoint"], "switched off"),
        (["test_ckpt=Best"], "test_ckpt=Best: did you mean test_ckpt=best?"),
        (["test_ckpt=LAST"], "did you mean test_ckpt=last?"),
    ],
)
def test_a_test_ckpt_that_cannot_be_tested_is_refused_before_training(
    overrides: list[str], message: str
) -> None:
    from dssd.errors import UserError
    from dssd.tasks.training import check_test_ckpt
    from test_configs import compose_train

    with pytest.raises(UserError, match=re.escape(message)):
        check_test_ckpt(compose_train(*overrides))


def test_a_test_ckpt_of_another_network_is_refused_before_training(tiny_checkpoint: Path) -> None:
    """It failed with Lightning's list of shapes after the whole fit."""
    from hydra.utils import instantiate
    from torch import nn

    from dssd.deployment.inference import load_checkpoint
    from dssd.errors import UserError
    from dssd.tasks.training import check_test_ckpt
    from test_configs import compose_train

    cfg = compose_train(f"test_ckpt={tiny_checkpoint}")
    model = instantiate(load_checkpoint(tiny_checkpoint)[1].model)
    check_test_ckpt(cfg, model)
    model.net.heads.conf[0] = nn.Conv2d(model.net.heads.conf[0].in_channels, 5, 3, padding=1)
    with pytest.raises(UserError, match=r"holds another network .*src/eval.py ckpt_path="):
        check_test_ckpt(cfg, model)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train=no"], "train=no: choose true or false"),
        (["train=false", "test=false"], "train=false test=false: nothing to do"),
        # it tested an untrained network and wrote its figures as the run's (into a finished
        # run's directory too, with hydra.run.dir=<run>)
        (["train=false"], "without init_from or test_ckpt=<file> are untrained"),
        (["train=false", "ckpt_path=/x/last.ckpt"], "ckpt_path resumes a fit, but train=false"),
        (["seed=-1"], "seed=-1: choose a whole number from 0 to 4294967295, or null"),
        (["data.image_size=300"], "data.image_size=300, but the network takes 321"),
        (["schedules.0.max_steps=0"], "trainer.max_steps=0 (schedules.0 unless overridden)"),
        (["schedules.0.lr=-1"], "model.optimizer.lr=-1 (schedules.0 unless overridden)"),
        (["schedules.0.lr=abc"], "model.optimizer.lr=abc"),
        (["schedules.0.milestones=[abc]"], "model.scheduler.milestones=['abc']"),
        # a loss chose the worst checkpoint as best.ckpt; a typo failed after the first validation
        (["optimized_metric=val/loss"], "optimized_metric=val/loss: best.ckpt and the sweeps"),
        (["optimized_metric=val/mAP"], "choose a validation metric that is higher when better"),
        # a misspelt class failed in ModelCheckpoint after the first validation
        (["optimized_metric=val/ap/circel"], "no class 'circel' in data.class_names (circle,"),
        # Lightning switched clipping off for a negative value, or failed with a traceback
        (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1: choose a norm >= 0"),
        (["trainer.val_check_interval=0"], "trainer.val_check_interval=0: choose a number"),
        (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: choose"),
        (["trainer.precision=bf16-true"], "trainer.precision=bf16-true: choose one of 32-true"),
        # ZeroDivisionError, and torch's ValueError, inside the fit
        (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0: choose"),
        # a test of no image, recorded as the run's results
        (["trainer.limit_test_batches=0"], "limit_test_batches=0: the test would score no image"),
        (["model.optimizer.weight_decay=-1"], "model.optimizer.weight_decay=-1: choose a"),
        (["optimizer=sgd", "model.optimizer.momentum=-0.9"], "model.optimizer.momentum=-0.9"),
        # DDP on the CPU: sync BN fails in the started processes; ddp_spawn loses the record
        (["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], "sync_batchnorm=false"),
        (
            ["trainer=ddp", "trainer.accelerator=cpu", "trainer.sync_batchnorm=false"]
            + ["trainer.strategy=ddp_spawn"],
            "use trainer.strategy=ddp",
        ),
    ],
)
def test_a_run_that_cannot_mean_anything_is_refused_before_any_work(
    overrides: list[str], message: str
) -> None:
    from dssd.errors import UserError
    from dssd.tasks.common import seed_run
    from dssd.tasks.training import check_run
    from test_configs import compose_train

    cfg = compose_train(*overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        check_run(cfg)
        seed_run(cfg)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # a traceback after the first validation, when best.ckpt was first written
        (
            "callbacks.model_checkpoint.dirpath={blocker}/checkpoints",
            "callbacks.model_checkpoint.dirpath={blocker}/checkpoints: {blocker} is a file",
        ),
        # the trainer's settings were refused after the data was built and read
        ("trainer.devices=0", "Trainer settings: `Trainer(devices=0)` value is not a valid"),
    ],
)
def test_trainer_and_checkpoint_settings_are_refused_before_the_data_is_built(
    override: str, message: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    data = tmp_path / "data"
    proc = run_in_process(
        "train.py",
        f"data.root={data}",
        "logger=csv",
        override.format(blocker=blocker),
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {message.format(blocker=blocker)}")
    assert not data.exists()


def test_a_schedule_shortened_by_its_length_alone_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``schedules.0.max_steps=200`` alone kept the LR steps at 816 and 1,032: no decay."""
    from dssd.tasks.training import check_run
    from test_configs import compose_train

    with caplog.at_level(logging.WARNING):
        check_run(compose_train())
        assert not caplog.text
        check_run(compose_train("schedules.0.max_steps=200"))
    assert (
        "The fit ends at iteration 200, before its LR step at 816, LR step at 1032:" in caplog.text
    )
    assert "schedules.0.milestones=[...]" in caplog.text


def test_train_tests_the_final_weights_by_default_and_best_on_request(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    # the tiny_checkpoint run used the default test_ckpt
    run_dirs = {"last": tiny_checkpoint.parents[1], "best": tmp_path / "best"}
    run_in_process(
        "train.py",
        *tiny_overrides(tiny_shapes),
        "logger=csv",
        "test_ckpt=best",
        f"hydra.run.dir={run_dirs['best']}",
    )
    tested = {
        choice: json.loads((run_dir / "test_results.json").read_text())["tested_checkpoint"]
        for choice, run_dir in run_dirs.items()
    }
    assert tested["last"] == "final weights"
    assert tested["best"] == str(run_dirs["best"] / "checkpoints" / "best.ckpt")
    assert (
        "Testing the final weights (test_ckpt=last)" in (run_dirs["last"] / "train.log").read_text()
    )
    assert "Testing the final weights" not in (run_dirs["best"] / "train.log").read_text()


def test_the_val_history_is_the_fits_whatever_checkpoint_is_tested(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Testing a checkpoint file (or best.ckpt) restores its callbacks' state: the record kept
    that checkpoint's validation curve (here another run's, one validation at step 2)."""
    run_in_process(
        "train.py",
        *tiny_run(tiny_shapes),
        "trainer.max_steps=3",
        "trainer.val_check_interval=1",
        "logger=csv",
        f"test_ckpt={tiny_checkpoint}",
        f"hydra.run.dir={tmp_path}",
    )
    record = json.loads((tmp_path / "test_results.json").read_text())
    assert [entry["step"] for entry in record["val_history"]] == [1, 2, 3]


def test_logger_none_builds_a_trainer_without_the_lr_monitor() -> None:
    """Lightning stops a fit at its start when a LearningRateMonitor has no logger."""
    from pytorch_lightning.callbacks import LearningRateMonitor

    from dssd.tasks.common import build_trainer
    from test_configs import compose_train, hydra_runtime

    for logger, monitored in (("none", False), ("csv", True)):
        cfg = compose_train(f"logger={logger}", "trainer.accelerator=cpu")
        with hydra_runtime(cfg):
            trainer = build_trainer(cfg)
        assert bool(trainer.loggers) == monitored
        assert any(isinstance(c, LearningRateMonitor) for c in trainer.callbacks) == monitored


def test_missing_dataset_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """Also before the loggers start: no W&B run is opened (whose closing lines would follow
    the error) for a run that cannot read its data."""
    missing = tmp_path / "VOCdevkit" / "VOC2007"
    proc = run_in_process(
        "train.py",
        f"data.root={missing}",
        "data._target_=dssd.data.VOCDataModule",  # ShapesDataModule would build it there
        "logger=wandb",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode == 2
    assert f"error: dataset root {missing} does not exist" in proc.stderr
    assert "make data" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: dataset root")
    assert not (tmp_path / "run" / "wandb").exists()


def test_a_gpu_trainer_without_a_gpu_says_how_to_run_on_the_cpu_before_reading_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """train.py used to build the embedded data (half a minute) and read it before saying so."""
    from hydra import compose, initialize_config_dir

    from dssd.tasks.evaluation import evaluate
    from dssd.tasks.training import check_run
    from test_configs import compose_train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for accelerator in ("gpu", "cuda"):
        with pytest.raises(errors.UserError, match=f"accelerator={accelerator} .* trainer=cpu"):
            check_accelerator(OmegaConf.create({"accelerator": accelerator}))
    check_accelerator(OmegaConf.create({"accelerator": "cpu"}))
    message = "trainer.accelerator=gpu (from trainer=gpu or trainer=ddp"
    with pytest.raises(errors.UserError, match=re.escape(message)):
        check_run(compose_train("trainer=gpu"))
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=/nowhere.ckpt", "trainer=gpu"])
    with pytest.raises(errors.UserError, match=re.escape(message)):
        evaluate(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("model", [["model=ssd321"], ["model=dssd321", "fusion=prod"]])
def test_paper_models_fast_dev_run_on_cpu(model: list[str], tiny_shapes: Path, tmp_path: Path):
    """The full ResNet-101 SSD321 / DSSD321 train, validate and test one batch on a CPU."""
    proc = run_in_process(
        "train.py",
        *model,
        *tiny_run(tiny_shapes),
        "data.batch_size=2",
        "trainer.fast_dev_run=1",
        "logger=csv",
        f"hydra.run.dir={tmp_path}",
    )
    assert "test/map_50" in proc.stdout


def test_tasks_run_without_lightnings_product_tips_or_its_torch_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Lightning advertises products at INFO when a trainer is built, and notes that a configured
    ModelSummary replaces its default one; a task's output keeps Lightning's lines about the run
    (here: the accelerators) and loses those."""
    lightning = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    lightning.removeFilter(errors._NO_TIPS)  # as before any task ran in this process

    def build(_: object) -> pl.Trainer:
        summary = ModelSummaryCallback(max_depth=1)  # as conf/callbacks/default.yaml configures
        return pl.Trainer(
            accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[summary]
        )

    unasked = ("💡 Tip", "Trainer already configured with model summary")
    with caplog.at_level(logging.INFO, logger="pytorch_lightning"):
        build(None)
        assert all(line in caplog.text for line in unasked)  # what the filter is for
        caplog.clear()
        run_task(build, OmegaConf.create({}))
    assert not any(line in caplog.text for line in unasked) and "GPU available" in caplog.text

    # nor the FutureWarning torch raises at Lightning's batch handling, nor the model summary's
    # caveat on bf16-mixed (its weights are float32, as the summary counts them)
    def flatten(_: object) -> None:
        _tree_flatten({"images": torch.zeros(1)})

    def summarize(_: object) -> None:
        module = pl.LightningModule()
        module.layer = torch.nn.Linear(2, 2)
        trainer = pl.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False)
        module._trainer = trainer
        ModelSummary(module)

    def start_frozen(_: object) -> None:  # what Lightning says of stage 1's frozen batch norms
        text = "Found 32 module(s) in eval mode at the start of training. This may lead to"
        warnings.warn(text, PossibleUserWarning, stacklevel=1)

    for emit, expected in (
        (flatten, "LeafSpec"),
        (summarize, "not supported by the model"),
        (start_frozen, "in eval mode at the start of training"),
    ):
        for task in (emit, partial(run_task, emit)):
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                task(OmegaConf.create({}))
            assert any(expected in str(w.message) for w in seen) == (task is emit), expected


def test_the_entry_points_helper_leaves_lightning_to_the_hydra_app() -> None:
    """Imported before the Hydra app sets up logging, Lightning would give its loggers their own
    handler, and its lines ("Seed set to", "GPU available") would miss the run's log file."""
    code = (
        "import sys, dssd.tasks.entry; "
        "assert not [m for m in sys.modules if 'lightning' in m], 'Lightning imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("script", "given", "missing"),
    [
        ("predict.py", [], "ckpt_path=... and input=..."),
        ("predict.py", ["input=data"], "ckpt_path=..."),
        ("export.py", [], "ckpt_path=..."),
        ("analyze.py", [], "run=..."),
    ],
)
def test_settings_left_to_the_command_line_are_named_when_not_given(
    script: str, given: list[str], missing: str, tmp_path: Path
) -> None:
    """A ``???`` setting of an entry config that the command does not give is one line naming
    it and the config that describes it, before any work, not OmegaConf's traceback."""
    proc = run_in_process(script, *given, f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    config = f"conf/{script.removesuffix('.py')}.yaml"
    assert f"error: give {missing} on the command line ({config} says" in proc.stderr


def test_a_logger_that_cannot_write_is_named(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger

    from dssd.errors import UserError
    from dssd.tasks.common import log_run_config

    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match=r"the CSVLogger cannot write its logs into .*a_file"):
        log_run_config([CSVLogger(tmp_path / "a_file")], {"seed": 1})
    log_run_config([CSVLogger(tmp_path / "logs")], {"seed": 1})
    assert "seed: 1" in next((tmp_path / "logs").rglob("hparams.yaml")).read_text()


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"nonsense": 1}, "unexpected keyword argument 'nonsense'"), ({"mode": "sometimes"}, "mode")],
)
def test_wandb_settings_it_refuses_are_named(
    setting: dict, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A traceback from ``wandb.init`` (a TypeError, or pydantic's validation error) before."""
    from pytorch_lightning.loggers import WandbLogger

    from dssd.errors import UserError
    from dssd.tasks.common import log_run_config

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, **setting)
    with pytest.raises(UserError, match=f"W&B refuses the run's settings: .*{message}"):
        log_run_config([logger], {"seed": 1})


def test_tensorboard_shows_the_run_settings_beside_its_metrics(tmp_path: Path) -> None:
    """TensorBoard's HPARAMS tab gets the flattened config (Lightning writes it to hparams.yaml
    only) and the metrics whose scalars fill its columns; no placeholder scalar is logged."""
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    from dssd.tasks.common import HPARAMS_METRICS, log_run_config

    logger = TensorBoardLogger(tmp_path, name="tensorboard", default_hp_metric=False)  # as conf/
    config = {"model": {"net": {"image_size": 321, "scales": [0.1, 0.2]}}, "strict": True}
    log_run_config([logger], config)
    logger.log_metrics({"test/voc_map": 0.5}, step=4)
    logger.finalize("success")
    events = EventAccumulator(logger.log_dir).Reload()

    def plugin_data(tag: str) -> HParamsPluginData:
        return HParamsPluginData.FromString(events.PluginTagToContent("hparams")[tag])

    settings = plugin_data("_hparams_/session_start_info").session_start_info.hparams
    assert settings["model.net.image_size"].number_value == 321
    assert settings["model.net.scales"].string_value == "[0.1, 0.2]"
    assert settings["strict"].string_value == "True"  # a word, not the number 1
    metrics = plugin_data("_hparams_/experiment").experiment.metric_infos
    assert [m.name.tag for m in metrics] == list(HPARAMS_METRICS)
    assert events.Tags()["scalars"] == ["test/voc_map"]


def test_an_online_wandb_run_without_a_login_is_named_before_any_work(
    tiny_shapes: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """W&B's "No API key configured" traceback (exit status 1): train.py's before training, but
    predict.py's after every output was written, with no summary printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_FULL"))}
    env["HOME"] = str(tmp_path / "home")  # no ~/.netrc, no W&B settings: no login
    image = next((tiny_shapes / "JPEGImages").glob("*.jpg"))
    commands = {
        "train.py": [*tiny_overrides(tiny_shapes), f"hydra.run.dir={tmp_path / 'train'}"],
        "eval.py": [
            f"ckpt_path={tiny_checkpoint}",
            "trainer.accelerator=cpu",
            f"hydra.run.dir={tmp_path / 'eval'}",
            "logger=wandb",
        ],
        "predict.py": [
            f"ckpt_path={tiny_checkpoint}",
            f"input={image}",
            f"output_dir={tmp_path / 'predict'}",
            f"hydra.run.dir={tmp_path / 'predict_run'}",
            "logger=wandb",
        ],
    }
    for script, overrides in commands.items():
        proc = subprocess.run(
            [sys.executable, str(ROOT / "src" / script), *overrides, "logger.wandb.offline=false"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "error: W&B could not start the run (" in proc.stderr, script
        assert "logger.wandb.offline=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "train" / "checkpoints").exists()
    assert not (tmp_path / "predict" / "detections.json").exists()
    assert not (tmp_path / "eval" / "test_results.json").exists()


def test_settings_added_under_a_setting_the_script_has_pass() -> None:
    """``+`` under a setting of the script's config, or of a config group it composes, adds a key
    that code reads (``eval.py +data.root=...``)."""
    for script, given in [
        ("eval.py", ["+data.root=/data", "+trainer.num_nodes=2"]),
        ("train.py", ["+model.net.extra=1", "+hydra/launcher=basic", "+experiment=shapes"]),
        # choices of a group (a sweep's list of them, Hydra's own, a sweep function) and settings
        ("train.py", ["-m", "model=ssd321,dssd321", "logger=choice(csv,wandb)", "++seed=3"]),
        ("train.py", ["hydra/launcher=submitit_local", "data/augment=ssd", "--cfg", "job"]),
        ("train.py", ["backbone@model.net.backbone=resnet18"]),  # a group placed by package
        ("ablation.py", ["+trainer.max_steps=5"]),  # which src/ablation.py names itself
    ]:
        check_command_line(ROOT / "conf", given, script)


@pytest.mark.parametrize(
    ("script", "given", "error"),
    [
        ("ablation.py", ["out_dir={file}"], "out_dir={file} is a file, not a directory"),
        ("train.py", ["hydra.run.dir={file}/run"], "hydra.run.dir={file}/run: cannot write there"),
        ("train.py", ["-m", "hydra.sweep.dir={file}"], "hydra.sweep.dir={file} is a file"),
        ("predict.py", ["hydra.run.dir={file}"], "hydra.run.dir={file} is a file"),
        # Hydra wrote .hydra/ and ablation.log into the current directory before the refusal
        ("ablation.py", ["out_dir="], "out_dir is empty: give a directory, not the current one"),
    ],
)
def test_an_output_directory_that_cannot_be_created_is_named(
    script: str, given: list[str], error: str, tmp_path: Path
) -> None:
    """Hydra creates the run's directory before the task starts; a file in its way was its
    traceback (``FileExistsError``), with the setting that placed it left to guess."""
    file = tmp_path / "results.md"
    file.write_text("")
    proc = run_in_process(script, *(g.format(file=file) for g in given), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {error.format(file=file)}" in proc.stderr
    assert file.read_text() == ""


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a SLURM machine")
def test_a_slurm_sweep_without_slurm_is_one_line(tmp_path: Path) -> None:
    """It was submitit's traceback ("Could not detect srun"), the sweep's folder left behind."""
    sweep = tmp_path / "sweep"
    proc = run_in_process(
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: hydra/launcher=slurm: this machine has no sbatch" in proc.stderr
    assert not sweep.exists()


def test_eval_says_when_the_test_files_are_files_the_run_has_seen(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``+data.test_annotations=`` the training file, or a VOC split the run validated on, gives
    figures on seen images: eval.py says so (a warning: a look at the fit itself is legitimate)."""
    from omegaconf import OmegaConf

    from dssd.data.datamodule import COCODataModule, VOCDataModule
    from dssd.tasks.evaluation import warn_seen_test_files

    voc = {"_target_": "dssd.data.VOCDataModule", "root": str(tmp_path), "class_names": ["cat"]}
    coco = {"_target_": "dssd.data.COCODataModule", "root": str(tmp_path), "val_holdout": 10}
    coco_training_file = "annotations/instances_train2017.json"
    cases = [
        (voc, VOCDataModule(str(tmp_path), ["cat"], test_split="trainval"), "trained on"),
        (voc, VOCDataModule(str(tmp_path / "."), ["cat"], test_split="val"), "chose its best"),
        (voc, VOCDataModule(str(tmp_path), ["cat"]), None),
        ({**voc, "val_holdout": 5}, VOCDataModule(str(tmp_path), ["cat"], test_split="val"), None),
        (
            coco,
            COCODataModule(str(tmp_path), val_holdout=10, test_annotations=coco_training_file),
            "trained on",
        ),
        (coco, COCODataModule(str(tmp_path), val_holdout=10), None),
    ]
    for trained, tested, said in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            warn_seen_test_files(tested, OmegaConf.create(trained))
        assert ("images it has seen" in caplog.text) == (said is not None), (trained, said)
        assert said is None or f"the checkpoint's run {said}" in caplog.text


@pytest.mark.parametrize(
    ("script", "given", "error"),
    [
        (
            "train.py",
            "logger=null",
            "logger=null: logger is a config group of conf/; choose logger=none",
        ),
        ("eval.py", "logger=null", "choose logger=none"),
        (
            "train.py",
            "callbacks=null",
            "callbacks=null: callbacks is a config group of conf/; choose one of ['default']",
        ),
        ("train.py", "+optimizer=None", "choose one of ['adamw', 'sgd']"),
        ("export.py", "+opset=17", "export.py has no setting opset, and '+' adds one that"),
        ("eval.py", "++fp16=true", "eval.py has no setting fp16"),
        ("predict.py", "+postprocess.max_detections=5", "predict.py has no setting postprocess"),
        ("export.py", "+model.postprocess.score_threshold=0.5", "export.py has no setting model"),
        # misspelt: Hydra's dozen lines, the first advising '+', which the check above refuses
        ("export.py", "tolerance=0.01", "export.py has no setting tolerance; `python src/export"),
        ("predict.py", "model.net.x=1", "predict.py has no setting model"),
        (
            "eval.py",
            "logger=wand",
            "logger=wand: logger has no choice wand; choose one of ['csv', 'none', 'tensorboard'",
        ),
        ("train.py", "model=ssd321,dssd_321", "model has no choice dssd_321; choose one of"),
        ("ablation.py", "ablation=shapes_ful", "ablation has no choice shapes_ful"),
    ],
)
def test_a_config_group_set_to_null_or_an_added_setting_is_named(
    script: str, given: str, error: str
) -> None:
    """Hydra's command line cannot set a config group to null: its traceback ended in "Config
    group override must be a string or a list. Got NoneType". A top-level setting added with '+'
    (Hydra's advice for a key the config lacks) went unheeded without a word. A misspelt setting
    or choice was Hydra's message of a dozen lines, with exit status 1."""
    proc = run_in_process(script, given, "--cfg", "job", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {given}: ") and error in proc.stderr
