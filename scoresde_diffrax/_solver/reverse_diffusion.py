from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp

from ._common import check_decreasing, dense_info, SDETerms, unpack_sde


class ReverseDiffusion(dfx.AbstractItoSolver):
    r"""The reverse-diffusion predictor of Song et al. (2021), eq. 46: discretise the
    forward SDE over the step as $x_{i+1} = x_i + f_i(x_i) + G_i z_i$, then step the
    reverse SDE with the same coefficients,

    $$x_i = x_{i+1} - f_{i+1}(x_{i+1}) + G_{i+1}^2\, s_\theta(t_{i+1}, x_{i+1})
    + G_{i+1} z.$$

    The discrete coefficients come from the continuous SDE over the actual step
    $[t', t]$: $f(x) = (r - 1) x$ and $G^2 = v$, with $(r, v)$ = `sde.transition(t', t)`
    (the exact Gaussian transition). For VP this is the paper's $r = \sqrt{1-\beta_i}$,
    $G = \sqrt{\beta_i}$; for VE $r = 1$, $G^2 = \sigma_i^2 - \sigma_{i-1}^2$; sub-VP and
    any other linear SDE work the same way, on any step grid.

    A diffrax solver of the reverse-time SDE terms (`method="sde"`, inferred): one score
    evaluation per step, fixed steps only. Use it alone or as the predictor of a
    [`PredictorCorrector`][].

    **Arguments:**

    - `denoise`: if True (default), the final step (the one ending where the Brownian
        path ends, which [`sample`][] sets to `eps`) returns its mean without noise: the
        paper's noise removal.

    **Example:**

    ```python
    x = sd.sample(key, sde, score, (1000, 2), solver=sd.ReverseDiffusion(),
                  num_steps=1000).samples
    ```

    **Reference:** Song et al., *Score-Based Generative Modeling through Stochastic
    Differential Equations*, ICLR 2021, Appendix E.
    """

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
        p = unpack_sde(terms, "ReverseDiffusion")
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, "ReverseDiffusion")
        r, v = p.sde.transition(t_next, t)
        mean = (2 - r) * y0 + v * p.score_at(t, y0)
        z = p.normal(t0, t1, y0)
        if self.denoise:
            z = jnp.where(p.is_last(t0, t1), 0.0, z)
        y1 = (mean + jnp.sqrt(v) * z).astype(y0.dtype)
        return y1, None, dense_info(y0, y1), None, dfx.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
