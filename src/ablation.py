"""Reproduce the paper's Table 4: every row a src/train.py run per seed, then the results table.

python src/ablation.py                        # CPU-sized, embedded data (what `make ablation` runs)
python src/ablation.py ablation=voc0712_321   # the paper's setting
python src/ablation.py seeds=[0,1,2]          # every row once per seed (`make ablation SEEDS=3`)
python src/ablation.py force=[ssd_pm_c]       # rerun a row and the rows that start from it
python src/ablation.py sweeps=true            # write the rows' W&B sweep files (sweeps/)
"""

import hydra
from omegaconf import DictConfig

from dssd.tasks.entry import prepare, run_task

prepare(__file__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="table4")
def main(cfg: DictConfig) -> None:
    return run_task("ablation", cfg)


if __name__ == "__main__":
    main()
