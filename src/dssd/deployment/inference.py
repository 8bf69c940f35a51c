"""A trained checkpoint outside Lightning's loops: the detector rebuilt from the run config stored
in the checkpoint (``src/eval.py``, :class:`dssd.deployment.detector.Detector`), its test data, and
its detections matched to the ground truth (the detection notebook)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from dssd.data.datamodule import DetectionDataModule, dataset_items
from dssd.data.voc import read_image
from dssd.errors import UserError
from dssd.evaluation.matching import match_image
from dssd.training.checkpoints import not_a_checkpoint, read_checkpoint
from dssd.training.module import DetectionModule


def choose_device(name: str) -> torch.device:
    """``auto``: the GPU when there is one, else the CPU; otherwise the device named, which must
    be here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:  # torch's message lists every device type it knows
        raise UserError(
            f"device={name}: not a device name; choose auto, cpu, cuda, cuda:<index> or mps"
        ) from None
    here = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not here.get(device.type, True):
        raise UserError(f"device={name}: this machine has no {device.type} device; device=cpu")
    count = torch.cuda.device_count() if device.type == "cuda" else None
    if count is not None and device.index is not None and device.index >= count:
        raise UserError(
            f"device={name}: this machine has {count} cuda device(s), cuda:0 to cuda:{count - 1}"
        )
    return device


# module paths, named by older checkpoints' run configurations, that have moved
_MOVED_MODULES = {
    "dssd.module.": "dssd.training.module.",
    "dssd.schedules.": "dssd.training.schedules.",
    "dssd.callbacks.": "dssd.training.callbacks.",
}


def _current_targets(config: Any) -> Any:
    """``config`` (plain dicts and lists) with each ``_target_`` under a moved module rewritten."""
    if isinstance(config, list):
        return [_current_targets(value) for value in config]
    if not isinstance(config, dict):
        return config
    out = {key: _current_targets(value) for key, value in config.items()}
    target = out.get("_target_")
    for old, new in _MOVED_MODULES.items():
        if isinstance(target, str) and target.startswith(old):
            out["_target_"] = new + target[len(old) :]
    return out


def _current_neck(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with an older checkpoint's ``model.net.deconv`` (the deconvolution module's
    partial: channels, fusion, upsampling) as the neck ``model.net.neck`` (a ``Decoder`` partial)
    and ``model.net.neck_channels``; the weights' names did not change."""
    net = config.get("model", {}).get("net", {})
    if isinstance(net, dict) and "deconv" in net:
        deconv = net.pop("deconv")
        net["neck"] = None
        if deconv:
            net["neck"] = {"_target_": "dssd.models.Decoder", "_partial_": True}
            net["neck"].update({k: deconv[k] for k in ("fusion", "upsample") if k in deconv})
            net["neck_channels"] = deconv.get("channels", 512)
    return config


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], DictConfig]:
    """The checkpoint at ``path`` (on the CPU) and the run config ``src/train.py`` stored in it
    (``run_config`` hyper-parameter, or older files' ``dssd_config``), brought up to date; a
    missing file, a non-checkpoint or one without that config is a :class:`UserError`."""
    checkpoint = read_checkpoint(path, "ckpt_path", require=("state_dict",))
    hyper_parameters = checkpoint.get("hyper_parameters")
    run_config = hyper_parameters.get("run_config") if isinstance(hyper_parameters, dict) else None
    if run_config is None:
        run_config = checkpoint.get("dssd_config")
    if run_config is None:
        raise not_a_checkpoint(path, "it holds no run configuration")
    # another program's hyper-parameter of that name: no network to rebuild
    if not isinstance(run_config, dict) or "model" not in run_config:
        raise not_a_checkpoint(path, "its run configuration lacks model")
    return checkpoint, OmegaConf.create(_current_neck(_current_targets(run_config)))


def differing_tensors(model: torch.nn.Module, state_dict: dict[str, Tensor]) -> list[str]:
    """The names of the tensors that ``model`` and ``state_dict`` do not share in one shape."""
    ours = model.state_dict()
    differ = sorted(set(ours) ^ set(state_dict))
    return differ + [n for n in ours if n in state_dict and ours[n].shape != state_dict[n].shape]


def restore_detector(
    checkpoint: dict[str, Any], model_cfg: DictConfig, source: str = "the checkpoint"
) -> DetectionModule:
    """The model ``model_cfg`` describes, with the weights of ``checkpoint``, in eval mode; weights
    of another network are a :class:`UserError` naming ``source`` and a differing tensor."""
    model = instantiate(model_cfg)
    differ = differing_tensors(model, checkpoint["state_dict"])
    if differ:
        raise UserError(
            f"{source} holds another network than the one configured for it ({len(differ)} "
            f"tensors differ in name or shape, e.g. {differ[0]})"
        )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


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
    # e.g. in one of several VOC test sets; a test image that cannot be read is an error, never
    # replaced by the next one
    part, local = dataset_items(dataset)[index]
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
    """One image's "tp", "fp", "ignored" (detections on difficult objects, neither TP nor FP),
    "missed" (non-difficult objects unmatched), and "is_tp" and "is_ignored" (bool per detection,
    input order), by the VOC metric's own matcher (:func:`dssd.evaluation.matching.match_image`),
    so that they are those behind the mAP."""
    difficult = truth.get("difficult")
    if difficult is None:
        difficult = torch.zeros(len(truth["labels"]), dtype=torch.bool)
    order = torch.sort(detections["scores"].cpu(), descending=True, stable=True).indices
    matched = match_image(
        detections["boxes"].cpu()[order],
        detections["labels"].cpu()[order],
        truth["boxes"].cpu(),
        truth["labels"].cpu(),
        difficult.cpu().bool(),
        iou_threshold,
    )
    is_tp, ignored = (flags[order.argsort()] for flags in matched)  # back to the input's order
    found = int(is_tp.sum())
    return {
        "tp": found,
        "fp": int((~is_tp & ~ignored).sum()),
        "ignored": int(ignored.sum()),
        "missed": int((~difficult.bool()).sum()) - found,
        "is_tp": is_tp,
        "is_ignored": ignored,
    }
