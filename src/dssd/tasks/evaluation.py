"""Evaluation: test a checkpoint of src/train.py, its network rebuilt from the run configuration
stored in it."""

from __future__ import annotations

import logging

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from dssd.inference import load_checkpoint, restore_detector
from dssd.models import fold_batchnorm
from dssd.tasks.reporting import report_test_results, scalar_metrics
from dssd.tasks.trainer import build_trainer, result_writers

log = logging.getLogger(__name__)


def data_to_evaluate(chosen: DictConfig | None, trained: DictConfig) -> DictConfig:
    """The data config to test on, from eval.py's own ``data`` (``chosen``) and the training
    run's (``trained``).

    A whole data config (``data=<name>`` on the command line: it names its ``_target_``) replaces
    the training run's; fields alone (``+data.root=...``) change the training run's; nothing
    chosen keeps it.
    """
    if not chosen:
        return trained
    if "_target_" in chosen:
        return chosen
    return OmegaConf.merge(trained, chosen)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test the checkpoint ``cfg.ckpt_path`` and return the test metrics.

    The network is rebuilt from the run configuration stored in the checkpoint by ``train``; so is
    the datamodule, unless ``cfg.data`` says otherwise (:func:`data_to_evaluate`). The metrics
    follow the data tested (its class names and VOC AP rule), and the numeric precision is the
    training run's unless ``trainer.precision`` is given, so that the test figures repeat.
    """
    checkpoint, run_cfg = load_checkpoint(cfg.ckpt_path)
    with open_dict(cfg):  # a data config chosen here may refer to ${model.net.image_size}
        cfg.model = run_cfg.model
        cfg.data = data_to_evaluate(cfg.get("data"), run_cfg.data)
    if cfg.trainer.precision is None:
        cfg.trainer.precision = run_cfg.trainer.precision
    if "run_name" in run_cfg:  # W&B names: the training run's, tagged eval
        cfg.run_name = run_cfg.run_name
        cfg.run_tags = [*run_cfg.run_tags, "eval"]
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    with open_dict(cfg):  # the metrics of the data tested
        cfg.model.class_names = list(datamodule.class_names)
        cfg.model.use_07_metric = datamodule.use_07_metric
    model = restore_detector(checkpoint, cfg.model)
    if cfg.get("fold_bn", False):
        model.net = fold_batchnorm(model.net)
        log.info("Evaluating with every batch norm folded into its convolution.")
    trainer = build_trainer(cfg, result_writers(cfg, datamodule))
    trainer.test(model, datamodule=datamodule)
    metrics = scalar_metrics(trainer.callback_metrics)
    if trainer.is_global_zero:
        report_test_results(cfg, model, metrics, {"tested_checkpoint": str(cfg.ckpt_path)})
    return metrics
