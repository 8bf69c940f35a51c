"""``src/ablation.py``: the paper's Table 4 in the chosen setting (``ablation=``), run row by row
(:func:`dssd.table4.runner.run_ablation`), or its W&B sweep files written (``sweeps=true``)."""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from dssd.table4.runner import run_ablation
from dssd.table4.sweeps import write_sweeps


def ablation(cfg: DictConfig) -> None:
    """Run the setting's rows and write the table, or with ``cfg.sweeps`` the sweep files."""
    choices = HydraConfig.get().runtime.choices
    if cfg.sweeps:
        for path in write_sweeps(cfg, choices.ablation, choices.rows):
            print(f"wrote {path}")
    else:
        run_ablation(cfg, choices.ablation)
