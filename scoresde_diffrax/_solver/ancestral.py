from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

from ._common import check_decreasing, dense_info, SDETerms, unpack_sde


class AncestralSampling(dfx.AbstractItoSolver):
    r"""Ancestral sampling (Song et al. 2021, eqs. 47 and 48; Ho et al. 2020): sample the
    Gaussian posterior $q(x_{t'} \mid x_t, \hat x_0)$ of the forward process with the
    data estimated by Tweedie's formula, $\hat x_0 = (x + s(t)^2 s_\theta)/a(t)$.

    With $(r, v)$ = `sde.transition(t', t)` over the step, the posterior mean is

    $$\frac{x + v\, s_\theta(t, x)}{r},$$

    the paper's VP formula $(x + \beta_i s_\theta)/\sqrt{1-\beta_i}$ and VE formula
    $x + (\sigma_i^2 - \sigma_{i-1}^2) s_\theta$. The noise variance is the posterior
    variance $v\, s(t')^2 / s(t)^2$ (the paper's VE formula; for VP, DDPM's
    $\tilde\beta_i$), or with `upper_variance=True` the transition variance $v$ (DDPM's
    $\sigma_i^2 = \beta_i$, which the paper uses for VP). The derivation holds for any
    linear SDE, so sub-VP works too.

    A diffrax solver of the reverse-time SDE terms (`method="sde"`, inferred): one score
    evaluation per step, fixed steps only; also a predictor for
    [`PredictorCorrector`][].

    **Arguments:**

    - `upper_variance`: use the transition variance $v$ instead of the posterior
        variance (default False).
    - `denoise`: if True (default), the final step returns the posterior mean (no
        noise), as DDPM does.

    **References:** Ho, Jain, Abbeel, *Denoising Diffusion Probabilistic Models*,
    NeurIPS 2020; Song et al., ICLR 2021, Appendix F.
    """

    upper_variance: bool = eqx.field(static=True, default=False)
    denoise: bool = eqx.field(static=True, default=True)

    term_structure: ClassVar = SDETerms
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args):
        return None

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del solver_state, made_jump, args
        p = unpack_sde(terms, "AncestralSampling")
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, "AncestralSampling")
        r, v = p.sde.transition(t_next, t)
        mean = (y0 + v * p.score_at(t, y0)) / r
        if self.upper_variance:
            var = v
        else:
            var = v * (p.sde.std(t_next) / p.sde.std(t)) ** 2
        z = p.normal(t0, t1, y0)
        if self.denoise:
            z = jnp.where(p.is_last(t0, t1), 0.0, z)
        y1 = (mean + jnp.sqrt(var) * z).astype(y0.dtype)
        return y1, None, dense_info(y0, y1), None, dfx.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
