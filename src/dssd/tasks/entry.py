"""What every ``src/*.py`` entry point runs around its Hydra app: :func:`prepare` before it
composes the config, :func:`run_task` inside it."""

from __future__ import annotations

import copy
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dssd.config import register_resolvers
from dssd.errors import UserError, quiet_lightning, user_errors, writable_directory


def prepare(script: str) -> None:
    """Set ``PROJECT_ROOT`` (unless set: the folder above ``src/``, holding ``conf/``, ``data/``,
    ``logs/``) and register the config resolvers, before ``script``'s Hydra app composes."""
    root = Path(script).resolve().parents[1]
    os.environ.setdefault("PROJECT_ROOT", str(root))
    register_resolvers()
    with user_errors():
        check_command_line(root / "conf", sys.argv[1:], Path(script).name)


def check_command_line(conf: Path, overrides: list[str], script: str) -> None:
    """Refuse, before Hydra reads them, overrides it would take badly: ``<group>=null`` for a
    config group of ``conf``, which its command line cannot take (its traceback ends in "Config
    group override must be a string or a list"), naming the group's choices; a choice the group
    lacks (``logger=wand``) and a setting the script lacks (``tolerance=0.01``), which Hydra
    refuses in a dozen lines, the second with the advice to add it with ``+``; and a setting
    added with ``+`` that no code of ``script`` reads, so that it would go unheeded without a
    word: at the top level (``+opset=17``) or under a setting the script's config lacks
    (``+model.postprocess.score_threshold=0.5`` in ``predict.py``, which takes the model from
    its checkpoint)."""
    settings = primary_settings(conf / f"{Path(script).stem}.yaml")
    for override in overrides:
        # -m, --cfg job, ...; and group@package=choice, which places a group elsewhere
        if override.startswith("-") or "=" not in override or "@" in override.partition("=")[0]:
            continue
        key, _, value = override.lstrip("+~").partition("=")
        group = conf / key
        first = re.split(r"[./]", key)[0]
        added = override.startswith("+")
        # a setting of its own (not a config group), or one under a setting, the script lacks
        if first != key or group.is_dir():
            lacks = first != key and settings is not None and first not in settings
        else:
            lacks = added if settings is None else key not in settings
        if lacks:
            how = ", and '+' adds one that nothing reads" if added else ""
            raise UserError(
                f"{override}: {script} has no setting {first}{how}; "
                f"`python src/{script} --help` lists its settings"
            )
        if group.is_dir():
            _check_choice(override, key, group, value)


def _check_choice(override: str, key: str, group: Path, value: str) -> None:
    """Refuse null for config group ``key`` (folder ``group``), and a choice it lacks (in a sweep,
    a list of choices); Hydra's own choices (``hydra/launcher=basic``) and sweep functions
    (``choice(...)``) are left to Hydra."""
    choices = sorted(p.stem for p in group.glob("*.yaml"))
    if value.lower() in ("null", "none") and not (value == "none" and "none" in choices):
        instead = f"{key}=none" if "none" in choices else f"one of {choices}"
        raise UserError(f"{override}: {key} is a config group of conf/; choose {instead}")
    if group.parent.name == "hydra" or not re.fullmatch(r"[\w.,+-]+", value):
        return
    unknown = [v for v in value.split(",") if v not in choices]
    if unknown:
        raise UserError(f"{override}: {key} has no choice {unknown[0]}; choose one of {choices}")


def primary_settings(path: Path) -> set[str] | None:
    """The top-level settings of a script's primary config: its keys and the config groups of
    its defaults list, and ``hydra``. Where the script's config has another name than the script
    (``ablation.py`` reads ``table4.yaml``, and checks what it is given itself), None."""
    config = yaml.safe_load(path.read_text()) if path.is_file() else None
    if not isinstance(config, dict):
        return None
    groups = {
        name.split()[-1].split("/")[0].split("@")[0]
        for entry in config.get("defaults", [])
        if isinstance(entry, dict)
        for name in entry
    }
    return {"hydra", *config, *groups} - {"defaults"}


def run_task(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run ``task`` on ``cfg`` (a :class:`~dssd.errors.UserError` printed alone, exit status 2;
    no Lightning product tips), then end the W&B run it opened with its exit status; the scripts
    import ``task`` inside their Hydra app, so ``--help`` and ``--cfg`` skip Lightning."""
    quiet_lightning()
    try:
        with user_errors():
            _require_given(cfg)
            result = task(cfg)
    except BaseException as err:
        code = _exit_status(err)
        _finish_wandb(code)
        if code:
            _restore_resumed_record()
        if isinstance(err, SystemExit) and err.code != code:
            raise SystemExit(code) from err
        raise
    finally:
        _resumed_record.clear()
    _finish_wandb(0)
    return result


def _exit_status(err: BaseException) -> int:
    """The exit status of a task that raised ``err``: a fit stopped by SIGTERM (Lightning's
    ``SIGTERMException``, a ``SystemExit`` without a code, which would exit 0 as if it had
    finished) that of a process SIGTERM ends, 143."""
    exceptions = sys.modules.get("pytorch_lightning.utilities.exceptions")
    if exceptions is not None and isinstance(err, exceptions.SIGTERMException):
        return 128 + signal.SIGTERM
    code = err.code if isinstance(err, SystemExit) else 1
    return 0 if code is None else code if isinstance(code, int) else 1


# The ``.hydra/`` files of the run a train.py command resumes, as they were before Hydra replaced
# them with this command's: put back if the command fails (a refused resume, another network),
# so that the run's record still says how it was trained.
_resumed_record: dict[Path, bytes] = {}


def _keep_resumed_record(run_dir: Path) -> None:
    _resumed_record.update({p: p.read_bytes() for p in (run_dir / ".hydra").glob("*.yaml")})


def _restore_resumed_record() -> None:
    for path, content in _resumed_record.items():
        path.write_bytes(content)


def _finish_wandb(exit_code: int) -> None:
    """:func:`dssd.results.wandb.finish_run`, where the task loaded W&B (imported only then: it
    loads Lightning); a failure to finish is a warning, not in place of the task's own outcome."""
    if "wandb" not in sys.modules:
        return
    from dssd.results.wandb import finish_run

    try:
        finish_run(exit_code)
    except Exception as err:
        logging.getLogger(__name__).warning("Could not close the W&B run (%s)", err)


def _require_given(cfg: DictConfig) -> None:
    """Name every top-level setting the config leaves to the command line (``???``) that was not
    given, before the task starts, rather than at its first use deep inside the task. Nothing is
    resolved: an interpolation may refer to what the task adds (eval.py's ``model``)."""
    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
    if not missing:
        return
    message = "give " + " and ".join(f"{key}=..." for key in missing) + " on the command line"
    if HydraConfig.initialized():
        message += f" (conf/{HydraConfig.get().job.config_name}.yaml says what each takes)"
    raise UserError(message)


class OutputDirectory(Callback):
    """A Hydra callback (conf/hydra/default.yaml) that refuses, with a one-line error and before
    Hydra creates or writes into it, a run's or a sweep's directory that cannot be created (a
    file on its path, no permission), one holding a run train.py would overwrite or a table
    another src/ablation.py holds, and a SLURM sweep on a machine without SLURM."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_directory(config, "hydra.run.dir")
        if config.get("task_name") == "train":
            _check_fresh_run(config)
        elif config.get("task_name") == "ablation" and not config.get("sweeps"):
            _check_table_free(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        if launcher.endswith("SlurmLauncher") and shutil.which("sbatch") is None:
            with user_errors():  # else submitit's traceback, after the sweep's folder is made
                raise UserError(
                    "hydra/launcher=slurm: this machine has no sbatch; start the sweep on a "
                    "SLURM cluster, or run its jobs here without hydra/launcher=slurm"
                )
        _check_output_directory(config, "hydra.sweep.dir")


class SearchTrials(Callback):
    """A Hydra callback (conf/hparams_search/optuna.yaml) that refuses a search of no trials
    (``hydra.sweeper.n_trials``) before it starts: Optuna would end it with the traceback of
    "No trials are completed yet"."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        trials = OmegaConf.select(config, "hydra.sweeper.n_trials")
        if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
            with user_errors():
                raise UserError(
                    f"hydra.sweeper.n_trials={trials}: give the number of trials of the search, "
                    "a whole number from 1"
                )


def _check_fresh_run(config: DictConfig) -> None:
    """src/train.py's refusal of a fit over an earlier run in its directory
    (:func:`~dssd.tasks.training.check_fresh_directory`), made before Hydra records this
    command's config in that run's ``.hydra/``, which it would replace; a resumed run's record
    is kept, to put back if the resume fails."""
    from dssd.tasks.training import check_fresh_directory  # Lightning: for train.py only

    config = copy.deepcopy(config)  # with the run directory Hydra sets when the job starts
    runtime = config.hydra.runtime
    with read_write(runtime), open_dict(runtime):
        runtime.output_dir = os.path.abspath(OmegaConf.select(config, "hydra.run.dir"))
    HydraConfig.instance().set_config(config)
    with user_errors():
        check_fresh_directory(config)
    if config.get("ckpt_path"):
        _keep_resumed_record(Path(runtime.output_dir))


def _check_table_free(config: DictConfig) -> None:
    """src/ablation.py's refusal of a table another runner holds
    (:func:`~dssd.table4.runner.table_lock`), made before Hydra records this command's config in
    that table's ``.hydra/``, which it would replace."""
    from dssd.table4.runner import table_lock

    with user_errors(), table_lock(Path(OmegaConf.select(config, "hydra.run.dir"))):
        pass


def _check_output_directory(config: DictConfig, key: str) -> None:
    """Check the directory at ``key``; the error names the setting it only refers to, if any
    (``${out_dir}``: src/ablation.py's ``out_dir``)."""
    parent, name = key.rsplit(".", 1)
    given = OmegaConf.to_container(OmegaConf.select(config, parent), resolve=False)[name]
    option = match.group(1) if (match := re.fullmatch(r"\$\{([\w.]+)\}", str(given))) else key
    HydraConfig.instance().set_config(config)  # what ``${hydra:...}`` in the path reads
    directory = OmegaConf.select(config, key)
    with user_errors():
        if not str(directory or "").strip():  # not the current directory
            raise UserError(f"{option} is empty: give a directory, not the current one")
        writable_directory(directory, option)
