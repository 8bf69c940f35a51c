"""Export a checkpoint written by src/train.py as one ONNX or TorchScript file: the BN-folded
network with box decoding and NMS inside (docs/export.md).

python src/export.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt format=onnx
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

from dssd.config import register_resolvers  # noqa: E402
from dssd.errors import user_errors  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    # imported here, so that --help and --cfg print without loading Lightning
    from dssd.tasks import export_checkpoint

    with user_errors():
        export_checkpoint(cfg)


if __name__ == "__main__":
    main()
