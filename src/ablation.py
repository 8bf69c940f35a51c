"""Reproduce the paper's Table 4: every row a src/train.py run per seed, then the results table.

python src/ablation.py                        # CPU-sized, embedded data (what `make ablation` runs)
python src/ablation.py ablation=voc0712_321   # the paper's setting
python src/ablation.py seeds=[0,1,2]          # every row once per seed (`make ablation SEEDS=3`)
python src/ablation.py force=[ssd_pm_c]       # rerun a row and the rows that start from it
python src/ablation.py sweeps=true            # write the rows' W&B sweep files (sweeps/)
"""

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from dssd.errors import user_errors  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="table4")
def main(cfg: DictConfig) -> None:
    # imported here, so that --help and --cfg print without loading the result readers
    from dssd.ablation import run_ablation
    from dssd.table4_sweeps import write_sweeps

    setting_name = HydraConfig.get().runtime.choices.ablation
    with user_errors():
        if cfg.sweeps:
            for path in write_sweeps(cfg, setting_name):
                print(f"wrote {path}")
        else:
            run_ablation(cfg, setting_name)


if __name__ == "__main__":
    main()
