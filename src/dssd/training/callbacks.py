"""Lightning callbacks of the suite: data skip report, periodic last checkpoint, NaN stop, the
validation curve, and the test detections as COCO or VOC devkit result files."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException
from torch import Tensor

from dssd.data.coco import detections_to_coco_results, write_coco_results
from dssd.data.datamodule import COCODataModule
from dssd.data.voc import describe_skips, repaired, write_voc_results
from dssd.errors import UserError, writable_directory, writable_file

log = logging.getLogger(__name__)


class DataSkipReport(pl.Callback):
    """Reports, once per training epoch, as ``data/<kind>`` (and a warning when any is non-zero)
    the bad samples skipped or repaired: the training set's ``dataset.skips`` counts and this
    epoch's unreadable images, each once however many samples passed over it, from the ids the
    workers report in each sample's ``"skipped_images"``.
    An epoch this process trained no batch of is not reported: a run resumed from the checkpoint
    of an epoch's last validation starts at that epoch's end, which the first run reported."""

    def __init__(self) -> None:
        self.unreadable_images: set[Any] = set()
        self.batches = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.unreadable_images = set()
        self.batches = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        for target in batch[1]:
            self.unreadable_images.update(target.get("skipped_images", ()))
        self.batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.batches:
            return
        counts = dict(trainer.train_dataloader.dataset.skips)
        counts["unreadable_images"] = len(self.unreadable_images)  # this epoch, from the loaders
        if repaired(counts):
            log.warning(
                "epoch %d, training data skipped or repaired: %s",
                trainer.current_epoch,
                describe_skips(counts),
            )
        pl_module.log_dict({f"data/{k}": float(v) for k, v in counts.items()})


class BestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps the best score of a run resumed after its directory moved
    (copied off a cluster, renamed): Lightning drops the score when ``dirpath`` changed, and the
    first validation after the resume, however poor, would replace ``best.ckpt``. The score is
    kept when the best checkpoint is found under the new ``dirpath``."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        before, best = state_dict.get("dirpath"), state_dict.get("best_model_path") or ""
        moved = os.path.join(str(self.dirpath), os.path.basename(best)) if best else ""
        if before not in (None, self.dirpath) and moved and os.path.isfile(moved):
            log.info("The run moved from %s: its best checkpoint is %s", before, moved)
            paths = {"best_model_path": moved, "kth_best_model_path": moved}
            score = state_dict.get("best_model_score")
            state_dict = {**state_dict, "dirpath": self.dirpath, **paths, "last_model_path": ""}
            state_dict["best_k_models"] = {moved: score} if score is not None else {}
        super().load_state_dict(state_dict)


class LastCheckpoint(Checkpoint):
    """Writes ``last.ckpt`` (resumed by ``ckpt_path=last``) into ``dirpath`` every
    ``every_n_train_steps`` steps (0: never), after each validation (a step ending in one only
    after it: Lightning resumes it as validated), when ``fit`` ends, and when a one-process fit
    is stopped by Ctrl-C or SIGTERM outside a validation. ``ModelCheckpoint`` with ``save_last``
    writes it only with a top-k checkpoint, losing the final steps."""

    def __init__(self, dirpath: str, every_n_train_steps: int = 1000) -> None:
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self.last_model_path = ""
        self.saved_step: int | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        every = self.every_n_train_steps
        if every > 0 and trainer.global_step % every == 0 and not _validates_next(trainer):
            self.save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning orders checkpoint callbacks last, so the best-checkpoint callback (listed
        # before this one) has already recorded this validation's score: write it again.
        self.save(trainer, again=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # Ctrl-C, or SIGTERM (a scheduler's time limit; Lightning raises SIGTERMException):
        # keep the steps trained since the last write. Not under DDP, whose processes need not
        # all stop here (the write waits for every one), nor in a validation, which a resumed
        # fit would take as done.
        stopped = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
        if stopped and trainer.world_size == 1 and not trainer.validating:
            saved = self.saved_step
            self.save(trainer)
            if self.saved_step != saved:
                log.warning(
                    "Stopped at step %d: %s written; ckpt_path=last in this run's directory "
                    "resumes it",
                    trainer.global_step,
                    self.last_model_path,
                )

    def save(self, trainer: pl.Trainer, again: bool = False) -> None:
        """Write ``last.ckpt`` (on every process: the strategy decides who writes), unless this
        step is saved already (``again``: write anyway) or nothing has been trained."""
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not fitting or trainer.sanity_checking or trainer.fast_dev_run:
            return
        if trainer.global_step == 0 or (not again and self.saved_step == trainer.global_step):
            return
        self.last_model_path = os.path.join(self.dirpath, "last.ckpt")
        # written beside it, then renamed over it: Lightning writes through a file in the system's
        # temporary directory, and its move onto another filesystem (a cluster's node-local /tmp)
        # is a copy that a kill can cut short, leaving no checkpoint to resume from
        partial = f"{self.last_model_path}.partial"
        trainer.save_checkpoint(partial, weights_only=False)  # resumable: full state
        if trainer.is_global_zero:
            os.replace(partial, self.last_model_path)
        self.saved_step = trainer.global_step

    def state_dict(self) -> dict[str, Any]:
        return {"dirpath": self.dirpath, "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == self.dirpath:
            self.last_model_path = state_dict.get("last_model_path", "")


class ValidationHistory(pl.Callback):
    """The fit's validation curve (step and ``metrics``), in checkpoints and ``val_history``; and
    the training time of the attempts before a resume, up to the checkpoint it resumed from
    (``earlier_seconds``), so that a resumed run's ``fit_seconds`` is its whole fit's."""

    def __init__(self, metrics: tuple[str, ...] | list[str] = ("val/voc_map",)) -> None:
        self.metrics = tuple(metrics)
        self.history: list[dict[str, float]] = []
        self.earlier_seconds = 0.0
        self._fit_start: float | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        logged = trainer.callback_metrics
        values = {name: float(logged[name]) for name in self.metrics if name in logged}
        self.history.append({"step": trainer.global_step, **values})

    def state_dict(self) -> dict[str, Any]:
        started = self._fit_start if self._fit_start is not None else time.perf_counter()
        seconds = self.earlier_seconds + time.perf_counter() - started
        return {"history": self.history, "fit_seconds": seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])
        self.earlier_seconds = float(state_dict.get("fit_seconds", 0.0))  # older checkpoints: 0


def _validates_next(trainer: pl.Trainer) -> bool:
    """Whether Lightning validates right after the batch that just ended (by its own rule)."""
    every_n_epochs = trainer.check_val_every_n_epoch
    if not trainer.enable_validation or (
        every_n_epochs is not None and (trainer.current_epoch + 1) % every_n_epochs
    ):
        return False
    every_n_batches = trainer.val_check_batch
    if every_n_batches is None or every_n_batches == float("inf"):
        return trainer.is_last_batch
    epoch_loop = trainer.fit_loop.epoch_loop
    batch = epoch_loop.total_batch_idx if every_n_epochs is None else epoch_loop.batch_idx
    return (batch + 1) % every_n_batches == 0


class NonFiniteLossError(UserError):
    """Training stopped because the loss became NaN or infinite."""


class NonFiniteLossStop(pl.Callback):
    """Stops training with :class:`NonFiniteLossError` once the loss is not finite on any process,
    before ``backward``: that step updates nothing; the last checkpoint is the last good state."""

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        where = f"loss {loss.detach().float().item()}" if not finite else "on another process"
        last = _last_checkpoint(trainer)
        lines = [
            f"training stopped: the loss is not finite at step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, {where}); this step did not update the weights.",
            f"The last checkpoint, from before it: {last} (resume: ckpt_path={last})."
            if last
            else "No checkpoint was written before it.",
            "To avoid it: lower the learning rate (model.optimizer.lr=...; a resumed run keeps the "
            "checkpoint's), clip gradients (trainer.gradient_clip_val=1.0), or train in float32 "
            f"(trainer.precision=32-true; this run: {trainer.precision}).",
        ]
        raise NonFiniteLossError("\n  ".join(lines))


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The most recently written checkpoint of the run's checkpoint callbacks, if any."""
    written = [
        getattr(callback, attr, "")
        for callback in trainer.checkpoint_callbacks
        for attr in ("last_model_path", "best_model_path")
    ]
    paths = {path for path in written if path and os.path.isfile(path)}
    return max(paths, key=os.path.getmtime) if paths else None


class TestDetectionsWriter(pl.Callback):
    """Gathers the test detections and image ids of every process for :meth:`write` on rank 0."""

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.pairs: list[tuple[Any, dict[str, Tensor]]] = []  # (image id, detections)

    def on_test_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        detections = [{k: v.cpu() for k, v in d.items()} for d in outputs]
        self.pairs += zip([t["image_id"] for t in batch[1]], detections, strict=True)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pairs = self.pairs
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, pairs)
            pairs = [pair for part in gathered for pair in part]
        if trainer.is_global_zero:
            self.write(trainer, [i for i, _ in pairs], [d for _, d in pairs])

    def write(
        self, trainer: pl.Trainer, image_ids: list[Any], detections: list[dict[str, Tensor]]
    ) -> None:
        raise NotImplementedError


class COCOResultsWriter(TestDetectionsWriter):
    """Writes the test detections of ``datamodule`` to ``path`` as a COCO results JSON
    (``[x, y, w, h]`` pixel boxes, the test file's category ids: COCO data only)."""

    def __init__(self, path: str, datamodule: pl.LightningDataModule) -> None:
        if not isinstance(datamodule, COCODataModule):
            raise UserError(
                f"coco_results={path}: COCO results files need COCO data (data=coco), whose "
                "category ids they use"
            )
        writable_file(path, "coco_results")
        self.path = path
        self.datamodule = datamodule

    def write(
        self, trainer: pl.Trainer, image_ids: list[Any], detections: list[dict[str, Tensor]]
    ) -> None:
        mapping = self.datamodule.label_to_category_id
        results = detections_to_coco_results(detections, image_ids, mapping)
        path = write_coco_results(self.path, results)
        log.info("Wrote %d COCO detections to %s", len(results), path)


class VOCResultsWriter(TestDetectionsWriter):
    """Writes the test detections as the VOC devkit's ``comp4_det_test_<class>.txt`` files."""

    def __init__(self, directory: str) -> None:
        self.directory = writable_directory(directory, "voc_results")

    def write(
        self, trainer: pl.Trainer, image_ids: list[Any], detections: list[dict[str, Tensor]]
    ) -> None:
        class_names = trainer.lightning_module.class_names
        write_voc_results(self.directory, image_ids, detections, class_names)
        log.info(
            "Wrote %d detections of %d images to %s/comp4_det_test_<class>.txt",
            sum(len(d["scores"]) for d in detections),
            len(image_ids),
            self.directory,
        )
