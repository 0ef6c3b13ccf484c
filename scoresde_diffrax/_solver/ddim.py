import math
from typing import Any, ClassVar

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

from ._common import check_decreasing, dense_info, unpack_ode, unpack_sde


_SDETerms = dfx.MultiTerm[tuple[dfx.AbstractTerm[Any, Any], dfx.AbstractTerm]]


class DDIM(dfx.AbstractSolver):
    r"""DDIM (Song, Meng & Ermon 2021) for any linear SDE, as a diffrax solver. With
    $\hat x_0 = (x + s(t)^2 s_\theta)/a(t)$ and $\hat\epsilon = -s(t)\, s_\theta$,

    $$x_{t'} = a(t')\, \hat x_0 + \sqrt{s(t')^2 - c^2}\; \hat\epsilon + c\, z, \qquad
    c = \eta \sqrt{v\, s(t')^2 / s(t)^2},$$

    with $v$ the forward transition variance over the step (`sde.transition`).
    `eta=0` is deterministic: the exact solution of the probability-flow ODE with the
    data prediction held fixed over the step (first order; DPM-Solver-1), so it takes
    the probability-flow ODE term (`method="ode"`, inferred). `eta=1` is ancestral
    sampling with the posterior variance ([`AncestralSampling`][] without its final
    noise removal); `eta > 0` takes the reverse-SDE terms (`method="sde"`, inferred)
    for its noise. One score evaluation per step; fixed steps only.

    **Arguments:**

    - `eta`: in `[0, 1]`, default 0.

    **Reference:** Song, Meng, Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021.
    """

    eta: float = eqx.field(static=True, default=0.0)

    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __check_init__(self):
        try:
            eta = float(self.eta)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"DDIM: `eta` must be a number in [0, 1], got {self.eta!r}."
            ) from e
        if not (0.0 <= eta <= 1.0) or math.isnan(eta):
            raise ValueError(f"DDIM: `eta` must be in [0, 1], got {self.eta!r}.")

    @property
    def term_structure(self):
        return dfx.AbstractTerm if self.eta == 0 else _SDETerms

    def order(self, terms):
        return 1 if self.eta == 0 else None

    def strong_order(self, terms):
        # eta = 1 discretises the reverse-time SDE; other eta > 0 another member of
        # the family sharing its marginals, so no strong order against these terms.
        return 0.5 if self.eta == 1 else None

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump, args
        if self.eta == 0:
            p = unpack_ode(terms, "DDIM(eta=0)")
        else:
            p = unpack_sde(terms, f"DDIM(eta={self.eta})")
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, "DDIM")
        a0, s0 = p.sde.mean_coeff(t), p.sde.std(t)
        a1, s1 = p.sde.mean_coeff(t_next), p.sde.std(t_next)
        score = p.score_at(t, y0)
        x0 = (y0 + s0**2 * score) / a0
        eps = -s0 * score
        if self.eta == 0:
            y1 = a1 * x0 + s1 * eps
        else:
            _, v = p.sde.transition(t_next, t)
            c = self.eta * jnp.sqrt(v) * s1 / s0
            z = p.normal(t0, t1, y0)
            y1 = a1 * x0 + jnp.sqrt(jnp.maximum(s1**2 - c**2, 0.0)) * eps + c * z
        y1 = y1.astype(y0.dtype)
        return y1, None, dense_info(y0, y1), None, dfx.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
