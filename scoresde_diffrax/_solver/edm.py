import math
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

from ._common import (
    check_decreasing,
    dense_info,
    Problem,
    SDETerms,
    unpack_ode,
    unpack_sde,
)


def _edm_step(p: Problem, t0, t1, y0, churn_args, name: str):
    """One step of Karras et al.'s Algorithm 2 from solver time `t0` to `t1`;
    `churn_args = (churn, s_noise, s_tmin, s_tmax)` or None (deterministic)."""
    sde = p.sde
    t, t_next = p.time(t0), p.time(t1)
    y0 = check_decreasing(y0, t, t_next, name)
    a0, s0 = sde.mean_coeff(t), sde.std(t)
    a1, s1 = sde.mean_coeff(t_next), sde.std(t_next)
    sig0, sig1 = s0 / a0, s1 / a1
    xh = y0 / a0
    th, sigh = t, sig0
    if churn_args is not None:
        churn, s_noise, s_tmin, s_tmax = churn_args
        active = (sig0 >= s_tmin) & (sig0 <= s_tmax)
        sig_top = sde.std(sde.T) / sde.mean_coeff(sde.T)
        sigh = jnp.minimum(jnp.where(active, sig0 * (1 + churn), sig0), sig_top)
        th = jnp.where(sigh > sig0, sde.t_from_log_snr(-2 * jnp.log(sigh)), t)
        z = p.normal(t0, t1, y0)
        xh = xh + jnp.sqrt(jnp.maximum(sigh**2 - sig0**2, 0.0)) * s_noise * z

    def eps_hat(tt, x_scaled):
        a, s = sde.mean_coeff(tt), sde.std(tt)
        return -s * p.score_at(tt, (a * x_scaled).astype(y0.dtype))

    d = eps_hat(th, xh)
    x_euler = xh + (sig1 - sigh) * d
    d2 = eps_hat(t_next, x_euler)
    x1 = xh + (sig1 - sigh) * 0.5 * (d + d2)
    y1 = (a1 * x1).astype(y0.dtype)
    return y1, None, dense_info(y0, y1), None, dfx.RESULTS.successful


class EDMHeun(dfx.AbstractSolver):
    r"""The deterministic second-order Heun sampler of Karras et al. (2022),
    Algorithm 2 without churn, for any linear SDE, as a diffrax solver of the
    probability-flow ODE (`method="ode"`, inferred; order 2).

    In the scaled state $\hat x = x / a(t)$ with noise level $\sigma = s(t)/a(t)$, the
    probability-flow ODE is $\mathrm{d}\hat x / \mathrm{d}\sigma = \hat\epsilon =
    -s(t)\, s_\theta(t, x)$; each step is Heun's method in $\sigma$ (two score
    evaluations). Fixed steps only; pair it with `sd.time_grid(sde, n, kind="edm")`.
    With stochastic churn: [`StochasticEDMHeun`][].

    **Arguments:**

    - `churn`: the churn $\gamma$; this solver is the $\gamma = 0$ case, so only `0`
        (the default) is accepted (any other value raises a `ValueError` pointing to
        [`StochasticEDMHeun`][]).

    **Reference:** Karras, Aittala, Aila, Laine, *Elucidating the Design Space of
    Diffusion-Based Generative Models*, NeurIPS 2022.
    """

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __init__(self, churn: float = 0.0):
        if churn != 0:
            raise ValueError(
                f"EDMHeun: `churn` must be 0 for the deterministic sampler, got "
                f"{churn!r}; for churn > 0 use sd.StochasticEDMHeun(churn={churn!r})."
            )

    def order(self, terms):
        return 2

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump, args
        p = unpack_ode(terms, "EDMHeun")
        return _edm_step(p, t0, t1, y0, None, "EDMHeun")

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


class StochasticEDMHeun(dfx.AbstractItoSolver):
    r"""The stochastic Heun sampler of Karras et al. (2022), Algorithm 2 with
    "stochastic churn", for any linear SDE, as a diffrax solver of the reverse-time SDE
    terms (`method="sde"`, inferred), from whose Brownian path it takes its noise.

    Each step first raises the noise level to $\hat\sigma = \sigma (1 + \gamma)$ by
    adding fresh noise $\sqrt{\hat\sigma^2 - \sigma^2}\, S_\text{noise}\, z$
    ($\gamma$ = `churn` when $\sigma \in [S_\text{tmin}, S_\text{tmax}]$), then takes
    the Heun step of [`EDMHeun`][] from $\hat\sigma$. Two score evaluations per step;
    fixed steps only; pair it with `sd.time_grid(sde, n, kind="edm")`.

    **Arguments:**

    - `churn`: $\gamma$ per step, in `(0, sqrt(2) - 1]` (Karras et al.'s
        $\min(S_\text{churn}/N, \sqrt2 - 1)$ for $N$ steps). Default 0.1.
    - `s_noise`: $S_\text{noise}$, > 0 (default 1).
    - `s_tmin`, `s_tmax`: the range of $\sigma$ where churn applies (default all).

    **Reference:** Karras, Aittala, Aila, Laine, *Elucidating the Design Space of
    Diffusion-Based Generative Models*, NeurIPS 2022.
    """

    churn: float = eqx.field(static=True, default=0.1)
    s_noise: float = eqx.field(static=True, default=1.0)
    s_tmin: float = eqx.field(static=True, default=0.0)
    s_tmax: float = eqx.field(static=True, default=math.inf)

    term_structure: ClassVar = SDETerms
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __check_init__(self):
        name = "StochasticEDMHeun"
        try:
            churn = float(self.churn)
            s_noise = float(self.s_noise)
            s_tmin, s_tmax = float(self.s_tmin), float(self.s_tmax)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{name}: `churn`, `s_noise`, `s_tmin` and `s_tmax` must be numbers."
            ) from e
        if not (0.0 < churn <= math.sqrt(2) - 1 + 1e-12):
            raise ValueError(
                f"{name}: `churn` must be in (0, sqrt(2) - 1], got {self.churn!r} "
                "(churn = 0 is the deterministic sd.EDMHeun())."
            )
        if not (s_noise > 0 and math.isfinite(s_noise)):
            raise ValueError(f"{name}: `s_noise` must be > 0, got {self.s_noise!r}.")
        if not s_tmin <= s_tmax:
            raise ValueError(f"{name}: `s_tmin` must be <= `s_tmax`.")

    def order(self, terms):
        return None

    def strong_order(self, terms):
        return None

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump, args
        name = f"StochasticEDMHeun(churn={self.churn})"
        p = unpack_sde(terms, name)
        churn = (self.churn, self.s_noise, self.s_tmin, self.s_tmax)
        return _edm_step(p, t0, t1, y0, churn, name)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
