"""Score networks on one example: `model(t, x)`."""

from ._classifier import (
    ClassifierConfig as ClassifierConfig,
    NoiseConditionalClassifier as NoiseConditionalClassifier,
)
from ._conv import loop_friendly as loop_friendly, ShiftConv2d as ShiftConv2d
from ._embedding import (
    ConditionEmbedding as ConditionEmbedding,
    GaussianFourierEmbedding as GaussianFourierEmbedding,
    SinusoidalEmbedding as SinusoidalEmbedding,
)
from ._mlp import MLPConfig as MLPConfig, MLPScore as MLPScore
from ._unet import UNet as UNet, UNetConfig as UNetConfig
