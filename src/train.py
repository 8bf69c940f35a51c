"""Train a detector, then test it (its final weights, or test_ckpt=best|<file>).

python src/train.py                                  # CPU-sized SSD on the embedded data
python src/train.py model=ssd321 trainer=gpu         # the paper's SSD321
python src/train.py --help                           # every config group and option
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from dssd.config import register_resolvers  # noqa: E402
from dssd.errors import user_errors  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    # imported here, so that --help and --cfg print without loading Lightning
    from dssd.tasks import train

    with user_errors():
        return train(cfg)


if __name__ == "__main__":
    main()
