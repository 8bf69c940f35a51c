"""DataSkipReport counts the unreadable images that DataLoader workers pass over."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from dssd.data import VOCDataModule
from dssd.data.shapes import CLASSES, generate_shapes
from dssd.training.callbacks import DataSkipReport


class RecordingModule:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_dict(self, values: dict[str, float]) -> None:
        self.logged.update(values)


@pytest.mark.parametrize("which", [slice(1, 6, 3), slice(2, 4)], ids=["apart", "neighbours"])
def test_unreadable_images_found_in_workers_reach_the_report(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, which: slice
) -> None:
    root = generate_shapes(tmp_path / "shapes", num_trainval=8, num_test=2, num_val=2)
    broken = sorted((root / "JPEGImages").glob("*.jpg"))[which]
    for path in broken:
        path.write_bytes(b"not a jpeg")
    datamodule = VOCDataModule(
        str(root), CLASSES, image_size=65, batch_size=2, num_workers=1, strict=False
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    trainer = SimpleNamespace(train_dataloader=loader, current_epoch=0)
    module = RecordingModule()
    report = DataSkipReport()
    report.on_train_epoch_start(trainer, module)
    for batch_idx, batch in enumerate(loader):
        report.on_train_batch_end(trainer, module, None, batch, batch_idx)
    with caplog.at_level(logging.WARNING):
        report.on_train_epoch_end(trainer, module)
    # each broken image is drawn once per epoch and passed over (the next image replaces it);
    # with batch 2 and drop_last all 8 samples are drawn. Of two neighbours, the first is passed
    # over twice (drawn itself, and by the sample before it that also passes the second):
    # counted once
    assert module.logged["data/unreadable_images"] == len(broken)
    # the warning gives the counts in words, as the datamodule's line does
    (warning,) = [r.getMessage() for r in caplog.records if "skipped or repaired" in r.getMessage()]
    assert warning.endswith(f"skipped or repaired: 1 empty_images, {len(broken)} unreadable_images")
