"""The solver names of `--solver`: each maps to the solver object, the terms (reverse
SDE or probability-flow ODE) and the steps of an `sd.sample` call. `register_solver`
adds more."""

import dataclasses
from collections.abc import Callable

import diffrax as dfx

from .. import (
    AncestralSampling,
    DDIM,
    DPMSolverPP2M,
    EDMHeun,
    Langevin,
    PredictorCorrector,
    ReverseDiffusion,
    time_grid,
)


@dataclasses.dataclass(frozen=True)
class SolverEntry:
    """How a solver name of the CLI maps to `sd.sample` arguments.

    - `make`: builds the diffrax (or scoresde_diffrax) solver object.
    - `method`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    - `adaptive`: PID step-size control with `rtol`/`atol` (then `--steps` is the
        maximum number of steps), else `--steps` fixed steps.
    - `help`: one line for `--help`.
    - `grid`: for fixed steps, the `sd.time_grid` kind (`"uniform"`, `"logsnr"`,
        `"edm"`) of the `--steps` steps.
    """

    make: Callable
    method: str
    adaptive: bool = False
    rtol: float = 1e-5
    atol: float = 1e-5
    help: str = ""
    grid: str = "uniform"

    def sample_kwargs(self, sde, steps: int, eps: float | None) -> dict:
        """The `solver`, `method` and step arguments of `sd.sample` for `steps`
        (`--steps`) and the end time `eps` (None: the SDE's default)."""
        kwargs: dict = dict(solver=self.make(), method=self.method)
        if self.adaptive:
            controller = dfx.PIDController(rtol=self.rtol, atol=self.atol)
            return kwargs | dict(stepsize_controller=controller, max_steps=steps)
        if self.grid == "uniform":
            return kwargs | dict(num_steps=steps)
        ts = time_grid(sde, steps, kind=self.grid, eps=eps)
        return kwargs | dict(stepsize_controller=dfx.StepTo(ts))


def _paper_pc() -> PredictorCorrector:
    return PredictorCorrector(ReverseDiffusion(), Langevin(snr=0.16, batch_norm=True))


SOLVERS: dict[str, SolverEntry] = {
    # diffrax's solvers
    "euler-maruyama": SolverEntry(
        dfx.Euler,
        "sde",
        help="Euler-Maruyama on the reverse SDE, K steps (paper baseline)",
    ),
    "euler-heun-sde": SolverEntry(
        dfx.EulerHeun, "sde", help="Euler-Heun on the reverse SDE, K steps"
    ),
    "heun-sde": SolverEntry(dfx.Heun, "sde", help="Heun on the reverse SDE, K steps"),
    "shark-adaptive": SolverEntry(
        dfx.ShARK,
        "sde",
        True,
        1e-2,
        1e-2,
        "ShARK on the reverse SDE, adaptive (rtol=atol=1e-2)",
    ),
    "sra1-adaptive": SolverEntry(
        dfx.SRA1,
        "sde",
        True,
        1e-2,
        1e-2,
        "SRA1 on the reverse SDE, adaptive (rtol=atol=1e-2)",
    ),
    "ode-euler": SolverEntry(
        dfx.Euler, "ode", help="Euler on the probability-flow ODE, K steps"
    ),
    "heun-ode": SolverEntry(
        dfx.Heun, "ode", help="Heun on the probability-flow ODE, K steps"
    ),
    "midpoint-ode": SolverEntry(
        dfx.Midpoint, "ode", help="midpoint on the probability-flow ODE, K steps"
    ),
    "ode-tsit5": SolverEntry(
        dfx.Tsit5,
        "ode",
        True,
        help="Tsit5 on the probability-flow ODE, adaptive (rtol=atol=1e-5)",
    ),
    "dopri5-ode": SolverEntry(
        dfx.Dopri5,
        "ode",
        True,
        help="Dopri5 (RK45) on the probability-flow ODE, adaptive (rtol=atol=1e-5)",
    ),
    # this package's
    "pc": SolverEntry(
        _paper_pc,
        "sde",
        help="the paper's predictor-corrector: reverse diffusion + Langevin "
        "(snr=0.16, batch-averaged norms as in the paper's code), K steps "
        "(2 evaluations each)",
    ),
    "reverse-diffusion": SolverEntry(
        ReverseDiffusion, "sde", help="reverse-diffusion predictor, K steps"
    ),
    "ancestral": SolverEntry(
        AncestralSampling, "sde", help="ancestral sampling, K steps"
    ),
    "ddim": SolverEntry(DDIM, "ode", help="DDIM (eta=0), K steps uniform in t"),
    "dpm-solver++2m": SolverEntry(
        DPMSolverPP2M,
        "ode",
        help="DPM-Solver++(2M), K steps uniform in log-SNR (try K=25)",
        grid="logsnr",
    ),
    "edm-heun": SolverEntry(
        EDMHeun,
        "ode",
        help="Karras et al.'s Heun, K steps on the EDM rho=7 grid (2 evaluations each)",
        grid="edm",
    ),
}


def register_solver(name: str, entry: SolverEntry) -> None:
    """Add (or replace) a solver name of `scoresde sample --solver`."""
    SOLVERS[name] = entry
