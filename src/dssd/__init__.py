"""DSSD / SSD detectors. ``from dssd import Detector`` imports the inference API (with torch and
Lightning) on first use only, so light modules such as ``dssd.data.shapes`` stay light."""

from __future__ import annotations

from typing import Any

__all__ = ["Detector"]


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from dssd.deployment.detector import Detector

        return Detector
    raise AttributeError(f"module 'dssd' has no attribute {name!r}")
