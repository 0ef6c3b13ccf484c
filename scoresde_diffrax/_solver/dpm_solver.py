from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, PyTree

from ._common import check_decreasing, dense_info, unpack_ode
from .multistep import AbstractMultistepSolver


class DPMSolverState(eqx.Module):
    """Multistep state of [`DPMSolverPP2M`][]: the previous data prediction, the
    previous step in half log-SNR, and whether there is a previous step."""

    x0: PyTree[Array]
    h: Array
    has_prev: Bool[Array, ""]


class DPMSolverPP2M(AbstractMultistepSolver):
    r"""DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep solver
    of the probability-flow ODE in log-SNR time with the data prediction
    $\hat x_0 = (x + s(t)^2 s_\theta(t, x)) / a(t)$, for any linear SDE (VP, sub-VP,
    VE; the original is written for VP).

    With $\lambda = \tfrac12$ `sde.log_snr`, $h_i = \lambda_{i} - \lambda_{i-1}$ and
    $r_i = h_{i-1} / h_i$:

    $$x_i = \frac{s_i}{s_{i-1}} x_{i-1} - a_i (e^{-h_i} - 1)
    \Big[(1 + \tfrac{1}{2 r_i}) \hat x_0^{(i-1)} - \tfrac{1}{2 r_i}
    \hat x_0^{(i-2)}\Big],$$

    and the first step is DPM-Solver++(1) (= DDIM). One score evaluation per step;
    the previous data prediction is carried in the solver state. Order 2; fixed steps
    only (pair it with `sd.time_grid(sde, n, kind="logsnr")` and `diffrax.StepTo`, or
    `num_steps`), at least 2 of them (an [`AbstractMultistepSolver`][]). Takes the
    probability-flow ODE term (`method="ode"`, inferred).

    **Reference:** Lu, Zhou, Bao, Chen, Li, Zhu, *DPM-Solver++: Fast Solver for Guided
    Sampling of Diffusion Probabilistic Models*, 2022 (arXiv:2211.01095).
    """

    term_structure: ClassVar = dfx.AbstractTerm

    def order(self, terms):
        return 2

    def multistep_order(self) -> int:
        return 2

    def init(self, terms, t0, t1, y0, args):
        dtype = jnp.result_type(y0)
        return DPMSolverState(
            jnp.zeros_like(y0), jnp.ones((), dtype), jnp.asarray(False)
        )

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del args
        p = unpack_ode(terms, "DPMSolverPP2M")
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, "DPMSolverPP2M")
        sde = p.sde
        a0, s0 = sde.mean_coeff(t), sde.std(t)
        a1, s1 = sde.mean_coeff(t_next), sde.std(t_next)
        h = 0.5 * (sde.log_snr(t_next) - sde.log_snr(t))
        x0 = (y0 + s0**2 * p.score_at(t, y0)) / a0
        use_prev = solver_state.has_prev & jnp.logical_not(made_jump)
        c = 0.5 * h / jnp.where(use_prev, solver_state.h, h)
        d = jnp.where(use_prev, (1 + c) * x0 - c * solver_state.x0, x0)
        y1 = ((s1 / s0) * y0 - a1 * jnp.expm1(-h) * d).astype(y0.dtype)
        state = DPMSolverState(x0, h.astype(solver_state.h.dtype), jnp.asarray(True))
        return y1, None, dense_info(y0, y1), state, dfx.RESULTS.successful
