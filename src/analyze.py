"""Why a trained detector fails, and what it does better or worse than a baseline.

python src/analyze.py run=logs/train/runs/<run> [baseline=logs/train/runs/<other run>]
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from dssd.config import register_resolvers  # noqa: E402
from dssd.errors import user_errors  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
def main(cfg: DictConfig) -> Path:
    # imported here, so that --help and --cfg print without loading Lightning
    from dssd.tasks import analyze

    with user_errors():
        return analyze(cfg)


if __name__ == "__main__":
    main()
