"""A trained checkpoint outside Lightning's loops: the detector rebuilt from the run config stored
in the checkpoint (``src/eval.py``, the detection notebook), its test data, and its detections
matched to the ground truth."""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import ConcatDataset
from torchvision.ops import box_iou

from dssd.data.datamodule import DetectionDataModule
from dssd.data.voc import read_image
from dssd.errors import UserError


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint at ``path`` (on the CPU) and the run configuration ``src/train.py`` stored
    in it; a missing file or a checkpoint without that configuration is a :class:`UserError`."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "dssd_config" not in checkpoint:
        raise UserError(
            f"{path} holds no run configuration: only checkpoints written by "
            "src/train.py can be evaluated with src/eval.py."
        )
    return checkpoint, OmegaConf.create(checkpoint["dssd_config"])


def load_detector(path: str | Path) -> tuple[pl.LightningModule, DictConfig]:
    """The model of the checkpoint at ``path``, rebuilt from its stored run configuration, with
    the checkpoint's weights, on the CPU, in eval mode; and that configuration."""
    checkpoint, run_cfg = load_checkpoint(path)
    model = instantiate(run_cfg.model)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), run_cfg


def load_test_data(run_cfg: DictConfig, **data_overrides: Any) -> DetectionDataModule:
    """The run's datamodule (``run_cfg.data``, with e.g. ``root=...`` overridden) set up for
    testing: ``datamodule.datasets["test"]`` holds the test images."""
    datamodule = instantiate(OmegaConf.merge(run_cfg.data, data_overrides))
    datamodule.setup("test")
    return datamodule


def load_example(datamodule: DetectionDataModule, index: int) -> dict[str, Any]:
    """Test image ``index``: "image_id", "input" (the network's [3, S, S] tensor), "orig_size"
    ([2], height and width), "image" (the original RGB uint8 array), "boxes" (ground truth,
    original-image pixels xyxy), "labels" and "difficult"."""
    dataset = datamodule.datasets["test"]
    tensor, target = dataset[index]
    part, local = dataset, index
    if isinstance(dataset, ConcatDataset):  # e.g. several VOC test sets
        k = bisect.bisect_right(dataset.cumulative_sizes, index)
        part, local = dataset.datasets[k], index - ([0, *dataset.cumulative_sizes])[k]
    # an unreadable image is replaced by the next readable one (strict=False)
    local = (local + target.get("skipped_images", 0)) % len(part)
    height, width = target["orig_size"].tolist()
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return {
        "image_id": target["image_id"],
        "input": tensor,
        "orig_size": target["orig_size"],
        "image": read_image(part.image_paths[local]),
        "boxes": target["boxes"] * scale,
        "labels": target["labels"],
        "difficult": target["difficult"],
    }


def match_detections(
    detections: dict[str, Tensor], truth: dict[str, Tensor], iou_threshold: float = 0.5
) -> dict[str, Any]:
    """Count true and false positives as the VOC devkit does: each detection, best score first,
    takes the ground-truth box of its class that it overlaps most; at IoU >= ``iou_threshold``
    it is a true positive if that box is not taken yet, else a false positive, and on a
    difficult object neither. Returns
    the counts "tp", "fp", "missed" (non-difficult objects left unmatched) and "is_tp" (bool per
    detection, in the input's order)."""
    boxes, scores, labels = detections["boxes"], detections["scores"], detections["labels"]
    difficult = truth.get("difficult", torch.zeros(len(truth["labels"]), dtype=torch.bool))
    iou = box_iou(boxes.float(), truth["boxes"].float())
    iou[labels[:, None] != truth["labels"][None, :]] = -1.0
    taken = torch.zeros(len(truth["labels"]), dtype=torch.bool)
    is_tp = torch.zeros(len(boxes), dtype=torch.bool)
    ignored = torch.zeros(len(boxes), dtype=torch.bool)
    for i in torch.argsort(scores, descending=True).tolist():
        if iou.shape[1] == 0:
            break
        overlap, j = iou[i].max(0)
        if overlap < iou_threshold:
            continue
        if difficult[j]:
            ignored[i] = True
        elif not taken[j]:
            taken[j] = is_tp[i] = True
    return {
        "tp": int(is_tp.sum()),
        "fp": int((~is_tp & ~ignored).sum()),
        "missed": int((~taken & ~difficult).sum()),
        "is_tp": is_tp,
    }
