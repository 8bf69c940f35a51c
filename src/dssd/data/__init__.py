"""Data: the embedded shapes dataset, the VOC reader, transforms and the LightningDataModule.

Names are imported lazily so that ``python -m dssd.data.shapes`` and the generator's worker
processes do not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

# each submodule and the names it exports
_EXPORTS = {
    "coco": ("COCODataset", "detections_to_coco_results", "write_coco_results"),
    "datamodule": ("COCODataModule", "ShapesDataModule", "VOCDataModule", "collate_detection"),
    "shapes": ("CLASSES", "generate_shapes"),
    "transforms": ("DetectionTransform", "build_transforms", "seed_worker"),
    "voc": ("VOCAnnotationError", "VOCDataset", "parse_voc_xml", "read_image"),
}
_MODULE_OF = {name: sub for sub, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
