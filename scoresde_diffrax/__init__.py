"""scoresde_diffrax: score-based generative modelling with SDEs on JAX + Diffrax.

The public API. Everything here is a stable name; private modules may change.
"""

from . import (
    bench as bench,
    data as data,
    metrics as metrics,
    nn as nn,
    operators as operators,
    pictures as pictures,
)
from ._bits import bits_per_dim as bits_per_dim, dequantize as dequantize
from ._brownian import PerSampleBrownianPath as PerSampleBrownianPath
from ._checkpoint import (
    describe_model as describe_model,
    describe_sde as describe_sde,
    load_checkpoint as load_checkpoint,
    read_metadata as read_metadata,
    save_checkpoint as save_checkpoint,
    sde_from_description as sde_from_description,
)
from ._conditioning import PerExample as PerExample
from ._divergence import (
    AbstractDivergence as AbstractDivergence,
    ExactDivergence as ExactDivergence,
    Hutchinson as Hutchinson,
)
from ._errors import (
    OutOfMemoryError as OutOfMemoryError,
    SolveError as SolveError,
)
from ._exact import (
    AbstractMixture as AbstractMixture,
    FullCovarianceMixture as FullCovarianceMixture,
    GaussianMixture as GaussianMixture,
    MixtureClassifier as MixtureClassifier,
    MixtureScore as MixtureScore,
)
from ._flow import (
    decode as decode,
    encode as encode,
    interpolate_latents as interpolate_latents,
)
from ._grid import learn_time_grid as learn_time_grid, LearnedGrid as LearnedGrid
from ._guidance import (
    ClassifierFreeGuidance as ClassifierFreeGuidance,
    ClassifierGuidance as ClassifierGuidance,
    ConditionalScore as ConditionalScore,
)
from ._inverse import (
    colorization as colorization,
    grey_decoupling as grey_decoupling,
    Impute as Impute,
    ImputeState as ImputeState,
)
from ._inverse_linear import DPS as DPS, Project as Project
from ._likelihood import (
    LikelihoodResult as LikelihoodResult,
    log_likelihood as log_likelihood,
)
from ._loss import (
    AbstractLabelledLoss as AbstractLabelledLoss,
    AbstractLoss as AbstractLoss,
    ClassifierLoss as ClassifierLoss,
    ConditionalDSMLoss as ConditionalDSMLoss,
    DDPMLoss as DDPMLoss,
    DSMLoss as DSMLoss,
    SMLDLoss as SMLDLoss,
)
from ._norm import batch_max_rms_norm as batch_max_rms_norm
from ._optim import (
    adam_with_warmup as adam_with_warmup,
    ema_decay_at as ema_decay_at,
)
from ._sample import sample as sample, SampleResult as SampleResult
from ._score import EpsScore as EpsScore, X0Score as X0Score
from ._sde import (
    AbstractSDE as AbstractSDE,
    SubVPSDE as SubVPSDE,
    VESDE as VESDE,
    VPSDE as VPSDE,
)
from ._solver import (
    AbstractCorrector as AbstractCorrector,
    AbstractMultistepSolver as AbstractMultistepSolver,
    AncestralSampling as AncestralSampling,
    AnnealedLangevin as AnnealedLangevin,
    DDIM as DDIM,
    DEIS as DEIS,
    DPMSolverPP2M as DPMSolverPP2M,
    DPMSolverPP3M as DPMSolverPP3M,
    DPMSolverState as DPMSolverState,
    EDMHeun as EDMHeun,
    Langevin as Langevin,
    MultistepState as MultistepState,
    PredictorCorrector as PredictorCorrector,
    Restart as Restart,
    restart_schedule as restart_schedule,
    ReverseDiffusion as ReverseDiffusion,
    StochasticDDIM as StochasticDDIM,
    StochasticDPMSolverPP as StochasticDPMSolverPP,
    StochasticEDMHeun as StochasticEDMHeun,
    time_grid as time_grid,
    UniPC as UniPC,
)
from ._term import (
    Diffusion as Diffusion,
    forward_sde_terms as forward_sde_terms,
    ForwardDrift as ForwardDrift,
    probability_flow_term as probability_flow_term,
    reverse_sde_terms as reverse_sde_terms,
    ScoreDrift as ScoreDrift,
)
from ._train import (
    NonFiniteLossError as NonFiniteLossError,
    train as train,
    TrainResult as TrainResult,
    TrainState as TrainState,
)


__version__ = "0.1.0"
