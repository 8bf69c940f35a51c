"""Detect objects in images or videos with a checkpoint written by src/train.py.

python src/predict.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt \
    input=<image|folder|glob|video>
"""

import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from dssd.config import register_resolvers  # noqa: E402
from dssd.errors import user_errors  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> dict[str, Any]:
    # imported here, so that --help and --cfg print without loading Lightning
    from dssd.tasks import predict

    with user_errors():
        return predict(cfg)


if __name__ == "__main__":
    main()
