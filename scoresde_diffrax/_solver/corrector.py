import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._custom_types import ScalarLike
from .._sde import AbstractSDE
from .._sde.base import check_positive_finite
from .._term import batched_score


def _check_num_steps(num_steps, owner: str) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(
            f"{owner}: `num_steps` must be an int >= 1, got {num_steps!r}."
        )


def langevin_alpha(sde: AbstractSDE, t: ScalarLike, t_next: ScalarLike):
    r"""The paper's $\alpha_i$ over the step $[t', t]$: $a(t)^2 / a(t')^2$, i.e.
    $1 - \beta_i$ for VP and sub-VP and $1$ for VE, from the SDE's marginals so that it
    holds on any step grid."""
    r, _ = sde.transition(t_next, t)
    return r**2


class AbstractCorrector(eqx.Module):
    r"""A corrector: Markov chain Monte Carlo steps that leave $p_t$ (approximately)
    invariant, run at a fixed time $t$ before each predictor step of a
    [`PredictorCorrector`][]. Every step is the Langevin update

    $$x \leftarrow x + \epsilon\, s_\theta(t, x) + \sqrt{2\epsilon}\, z,$$

    and correctors differ in the step size $\epsilon$ (`step_size`).
    """

    num_steps: eqx.AbstractVar[int]

    @abc.abstractmethod
    def step_size(
        self,
        sde: AbstractSDE,
        t: ScalarLike,
        t_next: ScalarLike,
        score: Array,
        noise: Array,
        batched: bool,
    ) -> Array:
        """The step size $\\epsilon$: shape `(batch,)` (one per example) if `batched`,
        else a scalar."""

    def correct(
        self,
        sde: AbstractSDE,
        score: Callable,
        t: ScalarLike,
        t_next: ScalarLike,
        y: Float[Array, "..."],
        noise: Float[Array, "num_steps ..."],
        *,
        batched: bool = True,
    ) -> Float[Array, "..."]:
        r"""Run `num_steps` corrector steps at time `t`.

        **Arguments:**

        - `sde`: the forward SDE.
        - `score`: a per-example score `score(t, x)`.
        - `t`: the time the chain runs at.
        - `t_next`: the next (smaller) time of the sampler's grid; only sets
            $\alpha = a(t)^2 / a(t')^2$ of the step size.
        - `y`: the state: a batch `(batch, *shape)` if `batched`, else one example.
        - `noise`: standard normals, shape `(num_steps, *y.shape)`.
        - `batched`: whether `y` has a leading batch axis (default True).

        **Returns:** the state after the steps.
        """
        if noise.shape != (self.num_steps,) + y.shape:
            raise ValueError(
                f"`noise` must have shape (num_steps, *y.shape) = "
                f"{(self.num_steps,) + y.shape}, got {noise.shape}."
            )
        for i in range(self.num_steps):
            s = batched_score(score, t, y) if batched else score(t, y)
            z = noise[i]
            eps = self.step_size(sde, t, t_next, s, z, batched)
            eps = eps.reshape(eps.shape + (1,) * (y.ndim - eps.ndim))
            y = (y + eps * s + jnp.sqrt(2 * eps) * z).astype(y.dtype)
        return y


def _norms(x: Array, batched: bool) -> Array:
    if batched:
        return jnp.sqrt(jnp.sum(x.reshape(x.shape[0], -1) ** 2, axis=1))
    return jnp.sqrt(jnp.sum(x**2))


class Langevin(AbstractCorrector):
    r"""The Langevin corrector of Song et al. (2021), Algorithm 5: step size

    $$\epsilon = 2 \alpha \left(r \frac{\lVert z \rVert}{\lVert s_\theta(t, x)
    \rVert}\right)^2,$$

    with $r$ the signal-to-noise ratio `snr` and $\alpha = a(t)^2 / a(t')^2$ over the
    sampler's step ($1$ for VE, $1 - \beta_i$ for VP, and defined the same way for
    sub-VP, where the paper's code fails).

    **Arguments:**

    - `snr`: target signal-to-noise ratio, > 0 (the paper: 0.16 for VE on CIFAR-10,
        0.01 for VP).
    - `num_steps`: corrector steps per predictor step, >= 1.
    - `batch_norm`: if False (default), $\lVert z \rVert$ and $\lVert s_\theta\rVert$
        are per example, so an example never depends on the others in its batch; if
        True, each norm is averaged over the batch first, as in the paper's code.

    **Reference:** Song et al., ICLR 2021, Appendix G, Algorithm 5.
    """

    snr: float = 0.16
    num_steps: int = eqx.field(static=True, default=1)
    batch_norm: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_positive_finite("snr", self.snr, "Langevin")
        _check_num_steps(self.num_steps, "Langevin")

    def step_size(self, sde, t, t_next, score, noise, batched):
        gn, nn = _norms(score, batched), _norms(noise, batched)
        if self.batch_norm and batched:
            gn, nn = jnp.mean(gn), jnp.mean(nn)
            gn, nn = jnp.full(score.shape[:1], gn), jnp.full(score.shape[:1], nn)
        tiny = jnp.finfo(score.dtype).tiny
        alpha = langevin_alpha(sde, t, t_next)
        return 2 * alpha * (self.snr * nn / jnp.maximum(gn, tiny)) ** 2


class AnnealedLangevin(AbstractCorrector):
    r"""Annealed Langevin dynamics (NCSN; Song & Ermon 2019), as the corrector of Song
    et al. (2021): step size $\epsilon = 2 \alpha\, (r\, s(t))^2$ with $s(t)$ the
    marginal standard deviation, $r$ = `snr` and $\alpha$ as for [`Langevin`][].

    **Arguments:**

    - `snr`: > 0 (default 0.16).
    - `num_steps`: steps per predictor step, >= 1 (default 1).

    **Reference:** Song & Ermon, *Generative Modeling by Estimating Gradients of the
    Data Distribution*, NeurIPS 2019.
    """

    snr: float = 0.16
    num_steps: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        check_positive_finite("snr", self.snr, "AnnealedLangevin")
        _check_num_steps(self.num_steps, "AnnealedLangevin")

    def step_size(self, sde, t, t_next, score, noise, batched):
        eps = 2 * langevin_alpha(sde, t, t_next) * (self.snr * sde.std(t)) ** 2
        return jnp.full(score.shape[:1], eps) if batched else eps
