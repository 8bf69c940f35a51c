"""Data: the embedded shapes dataset, the VOC reader, transforms and the LightningDataModule.

The DataModules (the data configs' ``_target_``) are imported lazily so that
``python -m dssd.data.shapes`` and the generator's worker processes do not pay for importing torch
and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

# the names of dssd.data.datamodule that dssd.data exports
__all__ = ["COCODataModule", "ShapesDataModule", "VOCDataModule"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.datamodule"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
