"""Export a checkpoint of src/train.py as one ONNX or TorchScript file (docs/export.md).

python src/export.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt format=onnx
"""

import hydra
from omegaconf import DictConfig

from dssd.tasks.entry import prepare, run_task

prepare(__file__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from dssd.tasks.exporting import export_checkpoint

    return run_task(export_checkpoint, cfg)


if __name__ == "__main__":
    main()
