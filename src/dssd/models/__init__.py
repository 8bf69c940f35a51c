"""Networks: backbones, extra layers, prediction heads, default boxes and the detectors."""

from dssd.models.backbones import (
    PretrainedWeightsNotFoundError,
    ResNetBackbone,
    TorchvisionBackbone,
)
from dssd.models.deconvolution import Decoder, DeconvolutionModule
from dssd.models.default_boxes import DefaultBoxes
from dssd.models.extra_layers import ExtraLayers
from dssd.models.fold_bn import count_batchnorms, fold_batchnorm
from dssd.models.necks import FPN, BiFPN, PANet
from dssd.models.prediction_modules import PredictionModule
from dssd.models.ssd import SSD
from dssd.models.vgg import L2Norm, VGGBackbone, VGGExtraLayers

__all__ = [
    "SSD",
    "BiFPN",
    "Decoder",
    "FPN",
    "PANet",
    "DeconvolutionModule",
    "DefaultBoxes",
    "ExtraLayers",
    "PredictionModule",
    "L2Norm",
    "VGGBackbone",
    "VGGExtraLayers",
    "PretrainedWeightsNotFoundError",
    "ResNetBackbone",
    "TorchvisionBackbone",
    "count_batchnorms",
    "fold_batchnorm",
]
