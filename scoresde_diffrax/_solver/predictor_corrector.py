from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

from .._checks import solver_kinds
from ._common import check_decreasing, dense_info, NoiseGate, SDETerms, unpack_sde
from .corrector import AbstractCorrector, Langevin
from .reverse_diffusion import ReverseDiffusion


class PredictorCorrector(dfx.AbstractItoSolver):
    r"""The predictor-corrector sampler of Song et al. (2021), Algorithm 1, as a diffrax
    solver: each step runs the corrector at the step's start time $t$, then the
    predictor from $t$ to the next time $t'$.

    Randomness comes only from the Brownian path of the terms (so from the key handed to
    [`sample`][]): the predictor uses the increment over the step; the corrector uses
    the Helmert contrasts of the increments over `corrector.num_steps + 1` equal
    sub-intervals, which are independent of each other and of the predictor's increment
    for any diffrax Brownian path. The same key gives the same samples under `jit` and
    `vmap`; with the default corrector (`sd.Langevin()`, whose step depends on $t$
    only) example $i$ depends on `fold_in(key, i)` alone, so sharded runs are bitwise
    those of one device (not so with `Langevin(norms="batch")`).

    A diffrax solver of the reverse-time SDE terms (`method="sde"`, inferred), fixed
    steps only; score evaluations per step = `corrector.num_steps` + the predictor's.

    **Arguments:**

    - `predictor`: a diffrax solver of the reverse-time SDE: [`ReverseDiffusion`][]
        (default), [`AncestralSampling`][], `diffrax.Euler()` (Euler-Maruyama), ...
    - `corrector`: [`Langevin`][] (default `Langevin(snr=0.16)`, unbiased: see its
        `norms`), [`AnnealedLangevin`][], or None (predictor only).
    - `denoise`: if True (default), the final step (the one ending where the Brownian
        path ends; [`sample`][] sets that to `eps`) takes the predictor without its noise,
        i.e. returns the final predictor mean: the paper's noise removal.

    **Example:**

    ```python
    pc = sd.PredictorCorrector(sd.ReverseDiffusion(), sd.Langevin(snr=0.16))
    x = sd.sample(key, sd.SubVPSDE(), score, (1000, 2), solver=pc, num_steps=1000)
    ```

    **Reference:** Song et al., *Score-Based Generative Modeling through Stochastic
    Differential Equations*, ICLR 2021, Section 4.2 and Appendix G.
    """

    predictor: dfx.AbstractSolver = eqx.field(default_factory=ReverseDiffusion)
    corrector: AbstractCorrector | None = eqx.field(default_factory=Langevin)
    denoise: bool = eqx.field(static=True, default=True)

    term_structure: ClassVar = SDETerms
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __check_init__(self):
        if not isinstance(self.predictor, dfx.AbstractSolver):
            raise ValueError(
                "PredictorCorrector: `predictor` must be a diffrax solver of the "
                "reverse-time SDE (sd.ReverseDiffusion(), sd.AncestralSampling(), "
                f"diffrax.Euler(), ...), got {type(self.predictor).__name__}."
            )
        if not solver_kinds(self.predictor)[1]:
            raise ValueError(
                "PredictorCorrector: `predictor` must integrate the reverse-time SDE; "
                f"{type(self.predictor).__name__} is an ODE-only solver. Use "
                "sd.ReverseDiffusion(), sd.AncestralSampling() or diffrax.Euler()."
            )
        if isinstance(self.predictor, PredictorCorrector):
            raise ValueError(
                "PredictorCorrector: `predictor` cannot itself be a PredictorCorrector."
            )
        if self.corrector is not None and not isinstance(
            self.corrector, AbstractCorrector
        ):
            raise ValueError(
                "PredictorCorrector: `corrector` must be sd.Langevin(...), "
                "sd.AnnealedLangevin(...) or None, got "
                f"{type(self.corrector).__name__}."
            )

    def order(self, terms):
        return None

    def strong_order(self, terms):
        # The corrector's steps have a size set by `snr`, not by the step: the chain
        # converges in distribution, not pathwise to the reverse SDE.
        return None

    def init(self, terms, t0, t1, y0, args):
        return self.predictor.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        p = unpack_sde(terms, "PredictorCorrector")
        t, t_next = p.time(t0), p.time(t1)
        y = check_decreasing(y0, t, t_next, "PredictorCorrector")
        if self.corrector is not None:
            z = p.normals(t0, t1, y, self.corrector.num_steps)
            y = self.corrector.correct(
                p.sde, p.score, t, t_next, y, z, batched=p.batched
            )
        if self.denoise:
            gate = jnp.where(p.is_last(t0, t1), 0.0, 1.0).astype(y.dtype)
            drift, noise = terms.terms
            terms = dfx.MultiTerm(drift, NoiseGate(noise, gate))
        y1, _, _, state, result = self.predictor.step(
            terms, t0, t1, y, args, solver_state, made_jump
        )
        return y1, None, dense_info(y0, y1), state, result

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
