"""Training: fit the configured detector (a DSSD stage, maybe resumed or started from another
stage's weights), then test it."""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint

from dssd.config import training_stage
from dssd.data.datamodule import DetectionDataModule
from dssd.deployment.inference import differing_tensors, load_checkpoint
from dssd.errors import (
    BOOLEAN,
    UserError,
    check_settings,
    creatable_directory,
    number,
    whole,
)
from dssd.evaluation.module import coco_metric_names
from dssd.results.runs import clear_test_results
from dssd.tasks.common import (
    build_trainer,
    check_accelerator,
    check_image_size,
    check_precision,
    check_scorable,
    check_test_batches,
    log_run_config,
    read_data,
    report_test_results,
    result_writers,
    scalar_metrics,
    seed_run,
    several_processes_started,
)
from dssd.training.callbacks import ValidationHistory
from dssd.training.checkpoints import read_checkpoint
from dssd.training.module import DetectionModule
from dssd.training.stages import load_initial_weights

log = logging.getLogger(__name__)


def check_stage(cfg: DictConfig) -> None:
    """Refuse a stage that does not exist, or stages 1 and 2 without a checkpoint to start from
    (``init_from``, or a checkpoint of the stage to resume)."""
    stage = training_stage(cfg)
    if stage > 0 and not cfg.get("init_from") and not resuming(cfg):
        raise UserError(
            f"stage {stage} starts from a stage-{stage - 1} checkpoint: add "
            "init_from=<that run's dir>/checkpoints/last.ckpt (see docs/configuration.md, "
            "Training stages)"
        )


def resuming(cfg: DictConfig) -> bool:
    """Whether this run resumes a fit (``ckpt_path``), whose checkpoint holds every weight."""
    return bool(cfg.get("ckpt_path")) and cfg.get("train", True)


def check_run(cfg: DictConfig) -> None:
    """Refuse, before any work, a run that would do nothing, or test an untrained network as if
    it were the run's result, or one whose schedule, seed, metric or input size no fit can use."""
    check_settings(cfg, ("train", *BOOLEAN), ("test", *BOOLEAN))
    if not cfg.train and not cfg.test:
        raise UserError("train=false test=false: nothing to do")
    if not cfg.train and cfg.get("ckpt_path"):
        raise UserError(
            "ckpt_path resumes a fit, but train=false: test a checkpoint with src/eval.py "
            "ckpt_path=<file>, or here with test_ckpt=<file>"
        )
    if not cfg.train and (cfg.get("test_ckpt") or "last") == "last" and not cfg.get("init_from"):
        raise UserError(
            "train=false tests the weights this run starts from, which without init_from or "
            "test_ckpt=<file> are untrained: test a run with src/eval.py "
            "ckpt_path=<run dir>/checkpoints/last.ckpt"
        )
    check_image_size(cfg, "set the model's size, which the data follows")
    check_accelerator(cfg.trainer)
    if cfg.get("test", True):
        check_test_batches(cfg.trainer, "test=false fits without a test")
    if cfg.train:
        check_schedule(cfg)
        check_trainer(cfg.trainer)
        for name in ("weight_decay", "momentum"):  # torch refuses them inside the fit
            value = cfg.model.optimizer.get(name)
            if value is not None and not number(0)(value):
                raise UserError(f"model.optimizer.{name}={value}: choose a {name} >= 0")
    metrics = [f"val/{n}" for n in [*coco_metric_names(cfg.model.coco_max_detections), "voc_map"]]
    name = cfg.get("optimized_metric")
    if name is not None and name not in metrics and not str(name).startswith("val/ap/"):
        raise UserError(
            f"optimized_metric={name}: best.ckpt and the sweeps take the highest value of it, "
            f"so choose a validation metric that is higher when better: {', '.join(metrics)}, "
            "or val/ap/<class>"
        )
    classes = OmegaConf.select(cfg, "data.class_names")  # None: COCO's, read from its files
    if str(name).startswith("val/ap/") and classes and name[len("val/ap/") :] not in classes:
        raise UserError(
            f"optimized_metric={name}: no class {name[len('val/ap/') :]!r} in data.class_names "
            f"({', '.join(classes)})"
        )


def check_schedule(cfg: DictConfig) -> None:
    """The stage's iterations, learning rate and LR steps (``schedules.<stage>`` unless
    overridden) are numbers a fit can use; a warm-up or LR step at or past the end (a schedule
    shortened by its max_steps alone) is worth a warning."""
    scheduler, stage = cfg.model.scheduler, training_stage(cfg)
    steps, warmup = cfg.trainer.max_steps, scheduler.get("warmup_iters", 0)
    milestones = scheduler.get("milestones") or []
    for name, value, valid, what in (
        ("trainer.max_steps", steps, whole(1), "a whole number of iterations >= 1"),
        ("model.optimizer.lr", cfg.model.optimizer.lr, number(0), "a learning rate > 0"),
        ("model.scheduler.warmup_iters", warmup, whole(0), "a whole number >= 0"),
        (
            "model.scheduler.milestones",
            milestones,
            lambda v: all(whole(1)(m) for m in v),
            "a list of iterations >= 1",
        ),
    ):
        if not valid(value) or (name == "model.optimizer.lr" and value == 0):
            raise UserError(f"{name}={value} (schedules.{stage} unless overridden): choose {what}")
    late = [f"LR step at {m}" for m in milestones if m >= steps]
    late += [f"warm-up to {warmup}"] if warmup > steps else []
    if late:
        log.warning(
            "The fit ends at iteration %d, before its %s: the learning rate is not decayed as "
            "the schedule intends. Shorten those with it, e.g. schedules.%d.milestones=[...] "
            "schedules.%d.warmup_iters=...",
            *(steps, ", ".join(late), stage, stage),
        )


def check_trainer(trainer: DictConfig) -> None:
    """Trainer settings of a fit that Lightning would take without a word (a negative clipping
    value switches clipping off) or fail on with a traceback; null: Lightning's default."""
    check_precision(trainer)
    for name, valid, what in (
        ("gradient_clip_val", number(0), "a norm >= 0, or null for no clipping"),
        (
            "val_check_interval",
            lambda v: whole(1)(v) or (isinstance(v, float) and 0 < v <= 1),
            "a number of iterations >= 1, or a fraction of an epoch in (0, 1]",
        ),
        ("accumulate_grad_batches", whole(1), "a whole number >= 1"),
        ("check_val_every_n_epoch", whole(1), "a whole number of epochs >= 1, or null"),
    ):
        value = trainer.get(name)
        if value is not None and not valid(value):
            raise UserError(f"trainer.{name}={value}: choose {what}")
    accelerator = str(trainer.get("accelerator", "auto"))
    cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if trainer.get("sync_batchnorm") and cpu:
        raise UserError(
            "trainer.sync_batchnorm=true (from trainer=ddp) needs GPUs, PyTorch's SyncBatchNorm "
            "refuses CPU tensors: add trainer.sync_batchnorm=false on the CPU"
        )
    if str(trainer.get("strategy", "")).startswith("ddp_spawn"):
        raise UserError(
            f"trainer.strategy={trainer.strategy}: the processes it starts keep the fit's "
            "validation curve and logs to themselves, so the run's record and CSV log would "
            "lose them; use trainer.strategy=ddp (on the CPU too)"
        )


def warn_shapes_recipe(cfg: DictConfig) -> None:
    """Say when a recipe for the embedded data (``experiment=shapes*``, the default) trains other
    data: the experiment's batch size, augmentation and schedule replace the data config's."""
    if not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    experiment, data = str(choices.get("experiment")), str(choices.get("data"))
    if experiment.startswith("shapes") and not data.startswith("shapes"):
        augment = cfg.data.get("augment")
        log.warning(
            "experiment=%s is a recipe for the embedded shapes data; with data=%s it sets the "
            "batch size, augmentation, loader workers and schedule over the data config's "
            "(here: batch %s, augmentation %s, %s workers, %s iterations). Choose an "
            "experiment for this data (e.g. experiment=ssd321_voc0712) or write one "
            "(docs/data.md, Your own dataset); command-line overrides still apply",
            experiment,
            data,
            cfg.data.get("batch_size"),
            augment.get("_target_", "").rsplit(".", 1)[-1] if augment else "none",
            cfg.data.get("num_workers"),
            cfg.trainer.max_steps,
        )


def _ends_before_validation(cfg: DictConfig) -> tuple[int, int] | None:
    """``(max_steps, val_check_interval)`` when the fit ends before its first validation: the
    interval counts batches, ``max_steps`` optimizer steps of ``accumulate_grad_batches`` each."""
    interval, steps = cfg.trainer.get("val_check_interval"), cfg.trainer.get("max_steps")
    batches = cfg.trainer.get("accumulate_grad_batches") or 1
    if isinstance(interval, int) and isinstance(steps, int) and isinstance(batches, int):
        if 0 < steps * batches < interval:
            return steps, interval
    return None


def _never_validates(cfg: DictConfig) -> str | None:
    """Why the run will never validate, or None."""
    if not cfg.get("train", True):
        return "train=false"
    if cfg.trainer.get("limit_val_batches") == 0:
        return "trainer.limit_val_batches=0"
    if ends := _ends_before_validation(cfg):
        return "trainer.max_steps={} < trainer.val_check_interval={}".format(*ends)
    return None


def warn_no_validation(cfg: DictConfig) -> None:
    """Say at start-up when the fit will never validate: ``trainer.val_check_interval`` (which
    an experiment sets) beyond ``trainer.max_steps``, e.g. a run shortened by the latter alone."""
    if ends := _ends_before_validation(cfg):
        steps, interval = ends
        log.warning(
            "trainer.max_steps=%d ends before the first validation (trainer.val_check_interval="
            "%d, set by the experiment): no validation curve and no best.ckpt. Give "
            "trainer.val_check_interval below %d, or shorten the schedule itself with "
            "schedules.%d.max_steps=%d (the shapes experiments validate every quarter of it)",
            steps,
            interval,
            steps,
            training_stage(cfg),
            steps,
        )


def check_launch(cfg: DictConfig) -> None:
    """Refuse Lightning's ``ddp`` on several devices inside a local Hydra sweep: it starts the
    other processes by running the command line again, so each would start the whole sweep
    (under srun or torchrun the processes exist already, and nothing is started)."""
    if several_processes_started():
        return
    strategy = str(cfg.trainer.get("strategy") or "auto")
    # "auto" on several devices is Lightning's ddp, which starts its processes the same way
    relaunches = strategy == "auto" or (
        strategy.startswith("ddp")
        and not strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook"))
    )
    # Hydra's own launcher and submitit's local one run the jobs on this machine
    launcher = HydraConfig.get().launcher._target_ if _in_multirun() else ""
    local = launcher.endswith(("BasicLauncher", ".LocalLauncher"))
    if relaunches and cfg.trainer.get("devices", 1) != 1 and local:
        raise UserError(
            f"trainer.strategy={strategy} on trainer.devices={cfg.trainer.devices} in a sweep "
            "(-m or hparams_search): Lightning starts "
            "its other processes by running this command again, and each would start the "
            "whole sweep. Run one DDP job per command (a shell loop), or launch the sweep "
            "on SLURM (hydra/launcher=slurm); see docs/distributed.md"
        )


def check_search(cfg: DictConfig) -> None:
    """Refuse a hyperparameter search (``hparams_search``) whose study would mean nothing: one
    that minimises a metric that is better higher (every ``optimized_metric``), one that
    searches another stage's schedule (``schedules.0.lr`` at ``stage=1``), which no trial uses,
    or one whose trials never validate, so that none returns a value and each counts as failed."""
    if not _in_multirun():
        return
    sweeper = HydraConfig.get().sweeper
    direction = sweeper.get("direction")
    if direction is not None and cfg.get("optimized_metric") is None:
        raise UserError(
            "optimized_metric=null: each trial of a search returns that validation metric to "
            "the sweeper; choose one (val/map_50 by default)"
        )
    never = _never_validates(cfg)
    if direction is not None and never:
        raise UserError(
            f"no trial of this search would validate ({never}), so none could return "
            f"{cfg.get('optimized_metric')} (optimized_metric) to the sweeper"
        )
    # a string, or the sweeper's Direction enum ("Direction.maximize")
    if direction is not None and str(direction).lower().rsplit(".")[-1] != "maximize":
        raise UserError(
            f"hydra.sweeper.direction={direction}: {cfg.get('optimized_metric')} "
            "(optimized_metric) is better higher, so the search must maximize it"
        )
    stage = training_stage(cfg)
    for key in sweeper.get("params") or {}:
        match = re.match(r"schedules\.(\d+)\.", str(key))
        if match and int(match.group(1)) != stage:
            raise UserError(
                f"the search varies {key}, but stage {stage} trains with schedules.{stage}: "
                f"search model.optimizer.lr (the LR of the stage trained) or schedules.{stage}.*"
            )


def check_test_ckpt(cfg: DictConfig, model: DetectionModule | None = None) -> None:
    """Refuse a ``test_ckpt`` that cannot be tested, before anything is trained: ``last`` (the
    default, the paper's final weights), ``best`` (the run's ``best.ckpt``, chosen by
    ``optimized_metric`` on the validation split) or a checkpoint file (of ``model``'s network,
    given it)."""
    value = cfg.get("test_ckpt") or "last"
    if value == "best":
        if not (cfg.get("callbacks") or {}).get("model_checkpoint"):
            raise UserError(
                "test_ckpt=best tests the best.ckpt of the model_checkpoint callback, which is "
                "switched off here; use test_ckpt=last (the final weights)"
            )
        if not cfg.get("train", True):
            raise UserError(
                "test_ckpt=best picks the best checkpoint of this run's fit, but train=false: "
                "give the file instead, test_ckpt=<run dir>/checkpoints/best.ckpt"
            )
    elif value != "last" and str(value).lower() in ("last", "best"):
        raise UserError(f"test_ckpt={value}: did you mean test_ckpt={str(value).lower()}?")
    elif value != "last":
        option = "test_ckpt (last, best or a checkpoint file)"
        checkpoint = read_checkpoint(value, option, require=("state_dict",))
        if model is not None and (differ := differing_tensors(model, checkpoint["state_dict"])):
            raise UserError(
                f"test_ckpt={value} holds another network than the one configured here "
                f"({len(differ)} tensors differ in name or shape, e.g. {differ[0]}): test it with "
                "src/eval.py ckpt_path=<that file>"
            )


def best_checkpoint(trainer: pl.Trainer) -> str:
    """The ``best.ckpt`` of the fit's first ``ModelCheckpoint``; empty: none."""
    callbacks = trainer.checkpoint_callbacks
    return next((c.best_model_path for c in callbacks if isinstance(c, ModelCheckpoint)), "")


def checkpoint_to_test(cfg: DictConfig, trainer: pl.Trainer) -> str | None:
    """The ``ckpt_path`` of the final test (``test_ckpt``); None: the weights in memory."""
    value = cfg.get("test_ckpt") or "last"
    if value == "last":
        log.info("Testing the final weights (test_ckpt=last).")
        return None
    if value == "best":
        best = best_checkpoint(trainer)
        if not best:
            raise UserError(
                "test_ckpt=best, but no best checkpoint was written (did validation run? "
                f"{cfg.get('optimized_metric')} is what selects it); use test_ckpt=last"
            )
        log.info("Testing the best checkpoint on the validation split, %s.", best)
        return best
    log.info("Testing %s (test_ckpt).", value)
    return str(value)


def train(cfg: DictConfig) -> float | None:
    """Fit the configured model, test it (``test_ckpt``) and return ``cfg.optimized_metric``."""
    check_stage(cfg)
    check_run(cfg)
    check_launch(cfg)
    check_search(cfg)
    warn_shapes_recipe(cfg)
    if cfg.get("train", True):
        warn_no_validation(cfg)
    check_fresh_directory(cfg)
    for name, callback in (cfg.get("callbacks") or {}).items():  # written to at the first save
        if callback and callback.get("dirpath"):
            creatable_directory(callback.dirpath, f"callbacks.{name}.dirpath")
    seed_run(cfg)
    run_config = OmegaConf.to_container(cfg, resolve=True)

    datamodule = instantiate(cfg.data)
    if not cfg.get("test", True) and isinstance(datamodule, DetectionDataModule):
        # no test figure: the test files need not exist, nor be kept apart from training
        # (data=voc07++12 trains on VOC2007 test)
        datamodule.fit_roles = ("train", "val")
    # run_config goes in after Hydra built the parts: through instantiate, its own nested
    # ``_target_`` entries would be instantiated too
    model: DetectionModule = instantiate(cfg.model, _partial_=True)(run_config=run_config)
    if cfg.get("test", True):
        check_test_ckpt(cfg, model)
    if resuming(cfg) and cfg.get("init_from"):
        log.info(
            "init_from=%s is not read: the resumed checkpoint holds every weight", cfg.init_from
        )
    elif cfg.get("init_from"):
        load_initial_weights(model, cfg.init_from, cfg.stages[cfg.stage].init_modules)
    # checked before the data is read (the embedded data is built for a fit)
    resume = resume_checkpoint(cfg, model) if resuming(cfg) else None
    trainer = build_trainer(cfg, result_writers(cfg, datamodule))  # no W&B run started yet
    read_data(datamodule, "fit" if cfg.get("train", True) else "test")
    if cfg.get("test", True):
        model.unscored_test_file = check_scorable(cfg, datamodule)
    if isinstance(datamodule, DetectionDataModule):  # said now, not after hours of training
        datamodule.check_evaluation_sizes(trainer.world_size)
    log_run_config(trainer.loggers, run_config)

    metrics: dict[str, float] = {}
    fit_record: dict[str, Any] = {}
    history = next((c for c in trainer.callbacks if isinstance(c, ValidationHistory)), None)
    if resume and trainer.is_global_zero:
        # the earlier attempt's results, of weights this fit replaces, are not left beside a
        # checkpoint of another step if it stops part way (make ablation would count it done)
        clear_test_results(cfg.paths.output_dir)
    if cfg.get("train", True):
        start = time.perf_counter()
        # checkpoints hold plain values only (DetectionModule), so they load as weights
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        earlier = history.earlier_seconds if history else 0.0  # a resumed fit's attempts
        fit_record["fit_seconds"] = earlier + time.perf_counter() - start
        metrics.update(scalar_metrics(trainer.callback_metrics))
        # read now: testing a checkpoint restores the callbacks' state, this history included
        if history:
            fit_record["val_history"] = list(history.history)
    if cfg.get("test", True):
        tested = checkpoint_to_test(cfg, trainer)
        trainer.test(model, datamodule=datamodule, ckpt_path=tested, weights_only=True)
        metrics.update(scalar_metrics(trainer.callback_metrics))
        if trainer.is_global_zero:
            record = {**fit_record, "tested_checkpoint": tested or "final weights"}
            report_test_results(cfg, model, metrics, record)

    value = metrics.get(cfg.get("optimized_metric", ""))
    if best := best_checkpoint(trainer):
        log.info("Best checkpoint (validation split): %s", best)
    if value is not None:
        log.info("%s = %.4f (optimized_metric, what a sweep compares)", cfg.optimized_metric, value)
    elif cfg.get("optimized_metric") and _in_multirun():
        _warn_objective_missing(cfg.optimized_metric, cfg.trainer.get("limit_val_batches"))
    return value


def _in_multirun() -> bool:
    """Whether this run is one job of a Hydra sweep (``-m`` or ``hparams_search``)."""
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _warn_objective_missing(metric: str, limit_val_batches: float | None) -> None:
    """Say why a sweep's trial returns nothing: no validation ran, so its objective (a
    validation metric; a misnamed one stops the checkpoint callback first) was never logged."""
    why = (
        "trainer.limit_val_batches=0 switches it off"
        if limit_val_batches == 0
        else "one runs at each epoch's end, or every trainer.val_check_interval steps: give one "
        "below trainer.max_steps"
    )
    log.warning(
        "%s (optimized_metric, what a sweep's trial returns) was never logged: no validation "
        "ran (%s); the sweeper counts this trial as failed",
        metric,
        why,
    )


def last_checkpoint(cfg: DictConfig) -> str:
    """Where this run writes its ``last.ckpt`` (and ``ckpt_path=last`` resumes from)."""
    directory = OmegaConf.select(cfg, "callbacks.last_checkpoint.dirpath")
    return os.path.join(directory or os.path.join(cfg.paths.output_dir, "checkpoints"), "last.ckpt")


def check_fresh_directory(cfg: DictConfig) -> None:
    """Refuse a fit in a directory that holds a run (its ``last.ckpt``) unless it resumes that
    run (``ckpt_path=last`` or one of its checkpoints): a new fit, or one resumed from another
    run's checkpoint, would overwrite that run's checkpoints and results."""
    path = last_checkpoint(cfg)
    if not cfg.train or not os.path.isfile(path):
        return
    resumed = cfg.get("ckpt_path")
    if not resumed:
        raise UserError(
            f"{path} exists: this directory holds an earlier run, which a new fit would "
            "overwrite. ckpt_path=last resumes it; to train anew, choose another hydra.run.dir "
            "(or remove that run)"
        )
    own = Path(path).resolve().parent
    if str(resumed) != "last" and Path(resumed).resolve().parent != own:
        raise UserError(
            f"ckpt_path={resumed} resumes another run into this directory, which holds its own "
            f"({path}) and would be overwritten: resume it in its own directory, or here with "
            "ckpt_path=last"
        )


# what a resumed run may change without a warning: how data are loaded and the schedule (a
# longer one extends the run: the LR steps follow it)
RESUMABLE_CHANGES = (
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "model.scheduler.",
)
# what it may not change: the network (another fusion has the same tensors), what trains and the
# optimiser's kind, which the checkpoint's optimiser state must fit (Lightning fails at the first
# step otherwise); but for the settings read only to build the network, whose weights it replaces
FIXED_ON_RESUME = ("model.net.", "model.freeze", "model.optimizer._target_")
BUILD_ONLY = ("model.net.backbone.pretrained", "model.net.backbone.weights")
_ABSENT = object()


def changed_settings(run_config: DictConfig, cfg: DictConfig) -> dict[str, str]:
    """The data, model, seed and trainer-numerics settings of ``cfg`` that differ from the
    checkpoint's ``run_config``: each key's ``then -> now``."""

    def flat(node: object, prefix: str) -> dict[str, object]:
        if isinstance(node, dict):
            return {
                k: v
                for key, value in node.items()
                for k, v in flat(value, f"{prefix}.{key}").items()
            }
        return {prefix: node}

    keys = ("data", "model", "seed", "trainer.precision", "trainer.accumulate_grad_batches")
    changed = {}
    for key in keys:
        sides = [OmegaConf.select(c, key) for c in (run_config, cfg)]
        if None in sides:  # not in an older checkpoint's config, or not configured here
            continue
        then, now = (
            flat(OmegaConf.to_container(s, resolve=True) if OmegaConf.is_config(s) else s, key)
            for s in sides
        )
        for name in sorted(then.keys() | now.keys()):
            if then.get(name) != now.get(name) and not name.startswith(RESUMABLE_CHANGES):
                changed[name] = f"{then.get(name)} -> {now.get(name)}"
    return changed


def _listed(changed: dict[str, str], keys: list[str]) -> str:
    """``key: then -> now; ...`` of ``keys``."""
    return "; ".join(f"{key}: {changed[key]}" for key in keys)


def resume_checkpoint(cfg: DictConfig, model: DetectionModule | None = None) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from (``cfg.ckpt_path``; ``last``: ``last.ckpt`` in
    this run's checkpoint directory), checked to exist (Lightning only warns and starts over), to
    have been trained with this network, stage, trained modules and optimiser (Lightning fails on
    the optimiser state, or goes on with another fusion) and, given ``model``, to hold its tensors
    (Lightning fails with every tensor's shape)."""
    ckpt_path = cfg.get("ckpt_path")
    if not ckpt_path:
        return None
    if str(ckpt_path) == "last":
        path = last_checkpoint(cfg)
        missing = (
            f"ckpt_path=last, but there is no {path} to resume from. Every run writes to a "
            "new directory: to resume an interrupted run, run src/train.py again with the "
            "same overrides plus hydra.run.dir=<that run's directory, e.g. "
            "logs/train/runs/<date_time>> ckpt_path=last, or give the file itself, "
            "ckpt_path=<that run's directory>/checkpoints/last.ckpt."
        )
    else:
        path = str(ckpt_path)
        missing = (
            f"ckpt_path={path}: no such checkpoint to resume from. Give a checkpoint file "
            "(e.g. <run dir>/checkpoints/last.ckpt), or hydra.run.dir=<run dir> ckpt_path=last."
        )
    if not os.path.isfile(path):
        raise UserError(missing)
    checkpoint, run_config = load_checkpoint(path)  # a checkpoint of src/train.py
    step = checkpoint.get("global_step", 0)
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    if 0 < max_steps < step:
        raise UserError(
            f"ckpt_path={path} was trained for {step} steps, more than trainer.max_steps="
            f"{max_steps}: the fit would stop at once and test weights of step {step} as a "
            f"{max_steps}-step run's. Test it with src/eval.py ckpt_path={path}"
        )
    if step == max_steps:
        log.info("%s finished its fit (step %d): only the test runs again", path, step)
    changed = changed_settings(run_config, cfg)
    # (a setting newer than the checkpoint's run is warned of only)
    if fixed := [
        k
        for k in changed
        if k.startswith(FIXED_ON_RESUME)
        and k not in BUILD_ONLY
        and OmegaConf.select(run_config, k, default=_ABSENT) is not _ABSENT
    ]:
        raise UserError(
            f"ckpt_path={path} was trained with other settings of its network, of what trains "
            f"or of its optimiser: {_listed(changed, fixed)}. Resuming restores its weights and "
            "optimiser state, which these must fit: resume with its run's overrides (its "
            ".hydra/overrides.yaml), or start a new fit from its weights with init_from=<that file>"
        )
    if optimiser := [k for k in changed if k.startswith("model.optimizer.")]:
        log.warning(
            "%s: resuming %s restores its optimiser's state, hyper-parameters included, so the "
            "new values have no effect (init_from=<that file> starts a new fit from its weights)",
            _listed(changed, optimiser),
            path,
        )
    if others := [k for k in changed if k not in optimiser and k not in BUILD_ONLY]:
        log.warning(
            "resuming %s with other settings than its run's: %s. The run's record (its figures, "
            "its validation curve) will mix the two; give the run's overrides (its "
            ".hydra/overrides.yaml) to go on as it was",
            path,
            _listed(changed, others),
        )
    if run_config.get("stage", 0) != training_stage(cfg):
        raise UserError(
            f"ckpt_path={path} is a stage-{run_config.stage} run's checkpoint, resumed here as "
            f"stage {training_stage(cfg)}: resume it with stage={run_config.stage} (its run's "
            f".hydra/overrides.yaml), or start stage {training_stage(cfg)} from it with "
            "init_from=<that file>"
        )
    if model is not None:
        if differ := differing_tensors(model, checkpoint["state_dict"]):
            raise UserError(
                f"ckpt_path={path} holds another network than the one configured here "
                f"({len(differ)} tensors differ in name or shape, e.g. {differ[0]}). Resume with "
                "the overrides its run was trained with (its .hydra/overrides.yaml), or start a "
                "new run from its weights with init_from=<that file>."
            )
    return path
