"""dssd.deployment.inference: a checkpoint's detector and test data rebuilt outside Lightning, and
the TP / FP count of the detection notebook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dssd.config import compose_train
from dssd.data.voc import VOCDataset
from dssd.deployment.detector import Detector
from dssd.deployment.inference import (
    choose_device,
    load_checkpoint,
    load_example,
    load_test_data,
    match_detections,
    restore_detector,
)
from dssd.errors import UserError
from dssd.training.module import DetectionModule


def test_the_checkpoint_rebuilds_the_trained_model(tiny_checkpoint: Path) -> None:
    detector = Detector.from_checkpoint(tiny_checkpoint, fold_bn=False)
    model, run_cfg = detector.module, detector.run_config
    assert isinstance(model, DetectionModule) and not model.training
    assert run_cfg.model.net.image_size == 321
    stored = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    weights = model.state_dict()
    assert weights.keys() == stored.keys()
    assert all(torch.equal(weights[k], stored[k]) for k in stored)


def test_load_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "none.ckpt")
    foreign = tmp_path / "foreign.ckpt"
    for hyper_parameters in ({}, ["lr", 0.1]):  # another program's: not a mapping
        torch.save({"state_dict": {}, "hyper_parameters": hyper_parameters}, foreign)
        with pytest.raises(UserError, match="holds no run configuration"):
            load_checkpoint(foreign)


def test_load_checkpoint_reads_the_run_config_of_older_checkpoint_files(tmp_path: Path) -> None:
    path = tmp_path / "older.ckpt"
    older = {"stage": 1, "model": {}}
    torch.save({"state_dict": {}, "dssd_config": older}, path)
    assert load_checkpoint(path)[1].stage == 1


def test_checkpoints_naming_moved_modules_still_rebuild(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A checkpoint written when DetectionModule was dssd.module.DetectionModule (and the schedule
    dssd.schedules.warmup_multistep) rebuilds the same model from the classes' current paths."""
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    model_cfg = checkpoint["hyper_parameters"]["run_config"]["model"]
    assert model_cfg["_target_"] == "dssd.training.module.DetectionModule"
    model_cfg["_target_"] = "dssd.module.DetectionModule"
    model_cfg["scheduler"]["_target_"] = "dssd.schedules.warmup_multistep"
    older = tmp_path / "older.ckpt"
    torch.save(checkpoint, older)
    stored, run_cfg = load_checkpoint(older)
    assert run_cfg.model._target_ == "dssd.training.module.DetectionModule"
    assert run_cfg.model.scheduler._target_ == "dssd.training.schedules.warmup_multistep"
    model = restore_detector(stored, run_cfg.model)
    assert isinstance(model, DetectionModule)
    weights = model.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in stored["state_dict"].items())


def test_dssd_checkpoints_written_before_the_neck_group_still_rebuild(tmp_path: Path) -> None:
    """A DSSD checkpoint whose run config gives the decoder as ``model.net.deconv`` (a partial of
    the deconvolution module with its channels) rebuilds as ``neck`` + ``neck_channels``, with
    the same weights and outputs."""
    cfg = compose_train(["model=dssd_r18w32", "fusion=sum", "upsample=bilinear"])
    run_config = {"model": OmegaConf.to_container(cfg.model, resolve=True)}
    torch.manual_seed(0)
    module = instantiate(cfg.model).eval()
    net = run_config["model"]["net"]
    net.pop("neck_channels")
    net["deconv"] = {
        "_target_": "dssd.models.DeconvolutionModule",
        "_partial_": True,
        "channels": 128,
        "fusion": net.pop("neck")["fusion"],
        "upsample": "bilinear",
    }
    older = tmp_path / "older_dssd.ckpt"
    torch.save({"state_dict": module.state_dict(), "dssd_config": run_config}, older)
    stored, run_cfg = load_checkpoint(older)
    assert "deconv" not in run_cfg.model.net and run_cfg.model.net.neck_channels == 128
    assert run_cfg.model.net.neck.fusion == "sum" and run_cfg.model.net.neck.upsample == "bilinear"
    rebuilt = restore_detector(stored, run_cfg.model)
    x = torch.randn(1, 3, 321, 321)
    with torch.no_grad():
        for a, b in zip(module.net(x), rebuilt.net(x), strict=True):
            assert torch.equal(a, b)


def test_test_data_and_examples_in_original_pixels(
    tiny_checkpoint: Path, tiny_shapes: Path
) -> None:
    _, run_cfg = load_checkpoint(tiny_checkpoint)
    data = load_test_data(run_cfg, batch_size=1)
    assert data.batch_size == 1 and len(data.datasets["test"]) == 8
    raw = VOCDataset(tiny_shapes, "test", data.class_names)
    for index in (0, 7):
        example = load_example(data, index)
        image, truth = raw[index]
        assert example["image_id"] == truth["image_id"]
        assert example["input"].shape == (3, 321, 321)
        assert (example["image"] == image).all()
        assert example["orig_size"].tolist() == list(image.shape[:2])
        torch.testing.assert_close(
            example["boxes"], torch.as_tensor(truth["boxes"]), atol=0.01, rtol=0
        )
        assert example["labels"].tolist() == truth["labels"].tolist()


def test_match_detections_counts_like_the_voc_devkit() -> None:
    truth = {
        "boxes": torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50.0]]),
        "labels": torch.tensor([1, 1, 2]),
        "difficult": torch.tensor([False, False, True]),
    }
    detections = {
        "boxes": torch.tensor(
            [
                [0, 0, 10, 10],  # the first object: TP
                [0, 0, 10, 9],  # the same object again: FP
                [20, 20, 30, 30],  # the second object, but another class: FP
                [0, 0, 4, 4],  # IoU 0.16 with the first object: FP
                [40, 40, 50, 50.0],  # the difficult object: neither
            ]
        ),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]),
        "labels": torch.tensor([1, 1, 2, 1, 2]),
    }
    match = match_detections(detections, truth)
    assert match["is_tp"].tolist() == [True, False, False, False, False]
    assert match["is_ignored"].tolist() == [False, False, False, False, True]
    assert (match["tp"], match["fp"], match["ignored"], match["missed"]) == (1, 3, 1, 1)

    # the best score matches first, whatever the order of the detections
    order = torch.tensor([1, 0, 2, 3, 4])
    reordered = match_detections({k: v[order] for k, v in detections.items()}, truth)
    assert reordered["is_tp"].tolist() == [False, True, False, False, False]
    assert reordered["is_ignored"].tolist() == [False, False, False, False, True]

    nothing = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}
    assert match_detections(nothing, truth)["missed"] == 2
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    assert match_detections(detections, empty)["fp"] == 5


def test_a_gpu_index_the_machine_lacks_is_a_setting_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not torch's traceback when the detector is moved there (as if on a one-GPU machine)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_device("cuda:0") == torch.device("cuda:0")
    assert choose_device("cuda") == torch.device("cuda")
    with pytest.raises(UserError, match=r"device=cuda:1: this machine has 1 cuda device\(s\)"):
        choose_device("cuda:1")
