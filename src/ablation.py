"""Reproduce the paper's Table 4: every row a src/train.py run per seed, then the results table.

python src/ablation.py [ablation=voc0712_321] [seeds=[0,1,2]] [force=[ssd_pm_c]] [sweeps=true]
"""

import hydra
from omegaconf import DictConfig

from dssd.tasks.entry import prepare, run_task

prepare(__file__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="table4")
def main(cfg: DictConfig) -> None:
    from dssd.tasks.ablation import ablation

    return run_task(ablation, cfg)


if __name__ == "__main__":
    main()
