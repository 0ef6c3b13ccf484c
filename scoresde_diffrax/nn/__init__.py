"""Score networks on one example: `model(t, x)`."""

from ._classifier import (
    ClassifierConfig as ClassifierConfig,
    NoiseConditionalClassifier as NoiseConditionalClassifier,
)
from ._conv import (
    ChannelsLastConv2d as ChannelsLastConv2d,
    loop_friendly as loop_friendly,
    ShiftConv2d as ShiftConv2d,
)
from ._embedding import (
    ConditionEmbedding as ConditionEmbedding,
    GaussianFourierEmbedding as GaussianFourierEmbedding,
    SinusoidalEmbedding as SinusoidalEmbedding,
)
from ._mlp import MLPConfig as MLPConfig, MLPScore as MLPScore
from ._ncsnpp import (
    NCSNpp as NCSNpp,
    NCSNppConfig as NCSNppConfig,
    paper_config as paper_config,
    PAPER_MODELS as PAPER_MODELS,
)
from ._official import (
    CheckpointError as CheckpointError,
    load_official as load_official,
    load_official_checkpoint as load_official_checkpoint,
    load_official_score as load_official_score,
    network_config as network_config,
    OFFICIAL_CONFIGS as OFFICIAL_CONFIGS,
    official_parameters as official_parameters,
    official_sde as official_sde,
    official_state_dict_shapes as official_state_dict_shapes,
    OfficialScore as OfficialScore,
    read_official_config as read_official_config,
    read_torch_checkpoint as read_torch_checkpoint,
)
from ._unet import UNet as UNet, UNetConfig as UNetConfig
