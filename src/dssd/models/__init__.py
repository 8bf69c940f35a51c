"""Networks: backbones, extra layers, prediction heads, default boxes and the detectors."""

from dssd.models.backbones import PretrainedWeightsNotFoundError, ResNetBackbone
from dssd.models.default_boxes import DefaultBoxes
from dssd.models.extra_layers import ExtraBlock, ExtraLayers
from dssd.models.heads import PredictionHeads
from dssd.models.ssd import SSD

__all__ = [
    "SSD",
    "DefaultBoxes",
    "ExtraBlock",
    "ExtraLayers",
    "PredictionHeads",
    "PretrainedWeightsNotFoundError",
    "ResNetBackbone",
]
