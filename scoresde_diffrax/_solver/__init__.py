from .ancestral import AncestralSampling as AncestralSampling
from .corrector import (
    AbstractCorrector as AbstractCorrector,
    AnnealedLangevin as AnnealedLangevin,
    Langevin as Langevin,
)
from .ddim import DDIM as DDIM, StochasticDDIM as StochasticDDIM
from .dpm_solver import DPMSolverPP2M as DPMSolverPP2M, DPMSolverState as DPMSolverState
from .edm import EDMHeun as EDMHeun, StochasticEDMHeun as StochasticEDMHeun
from .multistep import (
    AbstractMultistepSolver as AbstractMultistepSolver,
    DEIS as DEIS,
    DPMSolverPP3M as DPMSolverPP3M,
    MultistepState as MultistepState,
    StochasticDPMSolverPP as StochasticDPMSolverPP,
    UniPC as UniPC,
)
from .predictor_corrector import PredictorCorrector as PredictorCorrector
from .restart import Restart as Restart, restart_schedule as restart_schedule
from .reverse_diffusion import ReverseDiffusion as ReverseDiffusion
from .time_grid import time_grid as time_grid
