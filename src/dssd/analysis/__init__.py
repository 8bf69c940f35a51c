"""Analyses of a detector's output beyond its mAP."""

from dssd.analysis.errors import (
    ERROR_TYPES,
    ErrorAnalysis,
    ImageErrors,
    Verdict,
    analyse_errors,
    classify_image,
)

__all__ = [
    "ERROR_TYPES",
    "ErrorAnalysis",
    "ImageErrors",
    "Verdict",
    "analyse_errors",
    "classify_image",
]
