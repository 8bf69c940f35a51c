"""Data: the embedded shapes dataset, the VOC reader, transforms and the LightningDataModule.

Names are imported lazily so that ``python -m dssd.data.shapes`` and the generator's worker
processes do not pay for importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dssd.data.coco import COCODataset, detections_to_coco_results, write_coco_results
    from dssd.data.datamodule import (
        COCODataModule,
        ShapesDataModule,
        VOCDataModule,
        collate_detection,
    )
    from dssd.data.shapes import CLASSES, generate_shapes
    from dssd.data.transforms import DetectionTransform, build_transforms, seed_worker
    from dssd.data.voc import VOCAnnotationError, VOCDataset, parse_voc_xml, read_image

__all__ = [
    "CLASSES",
    "COCODataModule",
    "COCODataset",
    "DetectionTransform",
    "ShapesDataModule",
    "VOCAnnotationError",
    "VOCDataModule",
    "VOCDataset",
    "build_transforms",
    "collate_detection",
    "detections_to_coco_results",
    "generate_shapes",
    "parse_voc_xml",
    "read_image",
    "seed_worker",
    "write_coco_results",
]

# Searched in this order, lightest first, so that shapes names do not import torch.
_SUBMODULES = ("shapes", "voc", "coco", "transforms", "datamodule")


def __getattr__(name: str) -> Any:
    if name in __all__:
        for sub in _SUBMODULES:
            module = importlib.import_module(f"{__name__}.{sub}")
            if name in vars(module):
                return vars(module)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
