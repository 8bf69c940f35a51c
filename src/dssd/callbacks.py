"""Lightning callbacks of the suite."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class DataSkipReport(pl.Callback):
    """Reports, once per training epoch, the bad samples the data pipeline skipped or repaired.

    Two sources: the counts made when the training set was built (``dataset.skips``: dropped or
    clipped boxes, unparseable annotations, ...) and the unreadable images passed over while
    loading this epoch, which DataLoader workers report through each sample's
    ``"skipped_images"`` field. Logged as ``data/<kind>`` and, when any is non-zero, as a warning.
    """

    def __init__(self) -> None:
        self.unreadable_images = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.unreadable_images = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self.unreadable_images += sum(int(t.get("skipped_images", 0)) for t in batch[1])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datasets = getattr(trainer.datamodule, "datasets", {})
        counts = dict(getattr(datasets.get("train"), "skips", {}))
        counts["unreadable_images"] = self.unreadable_images  # this epoch, from the loaders
        if any(v for k, v in counts.items() if k != "empty_images"):  # empty images are fine
            log.warning(
                "epoch %d, training data skipped or repaired: %s",
                trainer.current_epoch,
                dict(sorted(counts.items())),
            )
        pl_module.log_dict({f"data/{k}": float(v) for k, v in counts.items()})
