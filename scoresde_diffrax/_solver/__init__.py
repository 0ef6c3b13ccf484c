import warnings

from .ancestral import AncestralSampling as AncestralSampling
from .corrector import (
    AbstractCorrector as AbstractCorrector,
    AnnealedLangevin as AnnealedLangevin,
    Langevin as Langevin,
)
from .ddim import DDIM as DDIM
from .dpm_solver import DPMSolverPP2M as DPMSolverPP2M, DPMSolverState as DPMSolverState
from .edm import EDMHeun as EDMHeun
from .predictor_corrector import PredictorCorrector as PredictorCorrector
from .reverse_diffusion import ReverseDiffusion as ReverseDiffusion
from .time_grid import time_grid as time_grid


# DDIM(eta > 0) and EDMHeun(churn > 0) take the reverse-SDE terms only for their noise,
# and serve the probability-flow ODE without it, so they cannot carry diffrax's
# Ito/Stratonovich class marker (which would make `sample` ask for `method`). The noise
# is additive, where the Ito and Stratonovich solutions coincide; silence diffrax's
# warning about the missing marker for these two classes only.
warnings.filterwarnings(
    "ignore",
    message=r"`(DDIM|EDMHeun)` is not marked as converging",
    category=UserWarning,
)
