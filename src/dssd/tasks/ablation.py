"""``src/ablation.py``: the paper's Table 4 in the chosen setting (``ablation=``), run row by row
(:func:`dssd.table4.runner.run_ablation`), or its W&B sweep files written (``sweeps=true``)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dssd.errors import BOOLEAN, UserError, check_settings
from dssd.table4.runner import override_key, run_ablation
from dssd.table4.sweeps import write_sweeps

# the settings of running the table, which writing its sweep files does not read
RUN_SETTINGS = (
    "seeds",
    "force",
    "only",
    "train_args",
    "bootstrap_samples",
    "confidence",
    "analysis",
)


def ablation(cfg: DictConfig) -> None:
    """Run the setting's rows and write the table, or with ``cfg.sweeps`` the sweep files."""
    hydra = HydraConfig.get()
    check_overrides(hydra.overrides.task, cfg.sweeps)
    check_settings(cfg, ("sweeps", *BOOLEAN), ("analysis", *BOOLEAN))
    if cfg.sweeps:
        for path in write_sweeps(cfg, hydra.runtime.choices.ablation, hydra.runtime.choices.rows):
            print(f"wrote {path}")
    else:
        run_ablation(cfg, hydra.runtime.choices.ablation)


def check_overrides(overrides: list[str], sweeps: object) -> None:
    """Refuse a new key (``+trainer.max_steps=5``: nothing here reads it; src/train.py's settings
    go in ``train_args``), and, with ``sweeps=true``, the settings only a run of the table reads."""
    for override in overrides:
        key = override_key(override)
        if override.startswith("+"):
            raise UserError(
                f"{override}: src/ablation.py has no setting {key} (conf/table4.yaml lists them); "
                f"an override of every row's src/train.py goes in train_args, e.g. "
                f"'train_args=\"{override.lstrip('+')}\"'"
            )
        empty = not override.partition("=")[2].strip("'\" ")  # make's train_args=""
        if sweeps is True and key in RUN_SETTINGS and not empty:
            raise UserError(
                f"{override}: sweeps=true only writes the rows' sweep files, whose runs W&B's "
                f"agent starts; {', '.join(RUN_SETTINGS)} are settings of running the table"
            )
