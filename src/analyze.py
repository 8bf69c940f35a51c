"""Why a trained detector fails, and what it does better or worse than a baseline.

python src/analyze.py run=logs/train/runs/<run> [baseline=logs/train/runs/<other run>]
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from dssd.tasks.entry import prepare, run_task

prepare(__file__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
def main(cfg: DictConfig) -> Path:
    from dssd.tasks.analysis import analyze

    return run_task(analyze, cfg)


if __name__ == "__main__":
    main()
