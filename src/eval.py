"""Evaluate a checkpoint written by src/train.py on the test split.

python src/eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
"""

import hydra
from omegaconf import DictConfig

from dssd.tasks.entry import prepare, run_task

prepare(__file__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, float]:
    from dssd.tasks.evaluation import evaluate

    return run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
