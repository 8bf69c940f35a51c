"""Evaluate a checkpoint written by src/train.py on the test split.

python src/eval.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from dssd.config import register_resolvers  # noqa: E402
from dssd.errors import user_errors  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def main(cfg: DictConfig) -> dict[str, float]:
    # imported here, so that --help and --cfg print without loading Lightning
    from dssd.tasks import evaluate

    with user_errors():
        return evaluate(cfg)


if __name__ == "__main__":
    main()
