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


def _ddim_step(p: Problem, t0, t1, y0, eta: float, name: str):
    """One DDIM step of the problem `p` from solver time `t0` to `t1`: deterministic
    for `eta == 0`, else with the step's Brownian noise; `name` names the solver in
    errors."""
    t, t_next = p.time(t0), p.time(t1)
    y0 = check_decreasing(y0, t, t_next, name)
    a0, s0 = p.sde.mean_coeff(t), p.sde.std(t)
    a1, s1 = p.sde.mean_coeff(t_next), p.sde.std(t_next)
    score = p.score_at(t, y0)
    x0 = (y0 + s0**2 * score) / a0
    eps = -s0 * score
    if eta == 0:
        y1 = a1 * x0 + s1 * eps
    else:
        _, v = p.sde.transition(t_next, t)
        c = eta * jnp.sqrt(v) * s1 / s0
        z = p.normal(t0, t1, y0)
        y1 = a1 * x0 + jnp.sqrt(jnp.maximum(s1**2 - c**2, 0.0)) * eps + c * z
    y1 = y1.astype(y0.dtype)
    return y1, None, dense_info(y0, y1), None, dfx.RESULTS.successful


class DDIM(dfx.AbstractSolver):
    r"""Deterministic DDIM (Song, Meng & Ermon 2021; $\eta = 0$) for any linear SDE,
    as a diffrax solver of the probability-flow ODE (`method="ode"`, inferred). With
    $\hat x_0 = (x + s(t)^2 s_\theta)/a(t)$ and $\hat\epsilon = -s(t)\, s_\theta$,

    $$x_{t'} = a(t')\, \hat x_0 + s(t')\, \hat\epsilon,$$

    the exact solution of the probability-flow ODE with the data prediction held fixed
    over the step (first order; DPM-Solver-1). One score evaluation per step; fixed
    steps only. For $\eta > 0$ use [`StochasticDDIM`][].

    **Arguments:**

    - `eta`: the DDIM noise level; this solver is the $\eta = 0$ case, so only `0`
        (the default) is accepted (any other value raises a `ValueError` pointing to
        [`StochasticDDIM`][]).

    **Reference:** Song, Meng, Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021.
    """

    term_structure: ClassVar = dfx.AbstractTerm
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __init__(self, eta: float = 0.0):
        if eta != 0:
            raise ValueError(
                f"DDIM: `eta` must be 0 for the deterministic sampler, got {eta!r}; "
                f"for eta > 0 use sd.StochasticDDIM(eta={eta!r})."
            )

    def order(self, terms):
        return 1

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump, args
        p = unpack_ode(terms, "DDIM")
        return _ddim_step(p, t0, t1, y0, 0.0, "DDIM")

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


class StochasticDDIM(dfx.AbstractItoSolver):
    r"""DDIM with $\eta > 0$ (Song, Meng & Ermon 2021) for any linear SDE, as a diffrax
    solver of the reverse-time SDE terms (`method="sde"`, inferred), from which it
    takes its noise. With $\hat x_0$, $\hat\epsilon$ as in [`DDIM`][],

    $$x_{t'} = a(t')\, \hat x_0 + \sqrt{s(t')^2 - c^2}\; \hat\epsilon + c\, z, \qquad
    c = \eta \sqrt{v\, s(t')^2 / s(t)^2},$$

    with $v$ the forward transition variance over the step (`sde.transition`) and $z$
    the step's normalised Brownian increment. `eta=1` is ancestral sampling with the
    posterior variance ([`AncestralSampling`][] without its final noise removal); every
    $\eta$ shares the marginals of the probability-flow ODE. One score evaluation per
    step; fixed steps only.

    **Arguments:**

    - `eta`: in `(0, 1]`, default 1.

    **Reference:** Song, Meng, Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021.
    """

    eta: float = eqx.field(static=True, default=1.0)

    term_structure: ClassVar = SDETerms
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __check_init__(self):
        try:
            eta = float(self.eta)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"StochasticDDIM: `eta` must be a number in (0, 1], got {self.eta!r}."
            ) from e
        if not (0.0 < eta <= 1.0) or math.isnan(eta):
            raise ValueError(
                f"StochasticDDIM: `eta` must be in (0, 1], got {self.eta!r} (eta = 0 "
                "is the deterministic sd.DDIM())."
            )

    def order(self, terms):
        return None

    def strong_order(self, terms):
        # eta = 1 discretises the reverse-time SDE; other eta another member of the
        # family sharing its marginals, so no strong order against these terms.
        return 0.5 if self.eta == 1 else None

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump, args
        name = f"StochasticDDIM(eta={self.eta})"
        p = unpack_sde(terms, name)
        return _ddim_step(p, t0, t1, y0, self.eta, name)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
