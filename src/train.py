"""Train a detector, then test it (its final weights, or test_ckpt=best|<file>).

python src/train.py [model=ssd321 trainer=gpu]   # (the paper's SSD321; --help: every option)
"""

import hydra
from omegaconf import DictConfig

from dssd.tasks.entry import prepare, run_task

prepare(__file__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from dssd.tasks.training import train

    return run_task(train, cfg)


if __name__ == "__main__":
    main()
