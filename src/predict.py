"""Detect objects in images or videos with a checkpoint written by src/train.py.

python src/predict.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt \
    input=<image|folder|glob|video>
"""

from typing import Any

import hydra
from omegaconf import DictConfig

from dssd.tasks.entry import prepare, run_task

prepare(__file__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> dict[str, Any]:
    from dssd.tasks.prediction import predict

    return run_task(predict, cfg)


if __name__ == "__main__":
    main()
