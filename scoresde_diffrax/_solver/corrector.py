import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._custom_types import ScalarLike
from .._scalars import check_int, check_positive
from .._sde import AbstractSDE
from .._term import batched_score


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


_NORMS = ("noise", "batch", "example")


class Langevin(AbstractCorrector):
    r"""The Langevin corrector of Song et al. (2021), Algorithm 5: step size

    $$\epsilon = 2 \alpha \left(r \frac{\lVert z \rVert}{\lVert s_\theta(t, x)
    \rVert}\right)^2,$$

    with $r$ the signal-to-noise ratio `snr` and $\alpha = a(t)^2 / a(t')^2$ over the
    sampler's step ($1$ for VE, $1 - \beta_i$ for VP, and defined the same way for
    sub-VP, where the paper's code fails). `norms` says which norms enter:

    - `"noise"` (default): the norms of the noise alone, $\lVert z \rVert^2 \to d$
        (its mean) and $\lVert s_\theta \rVert^2 \to d / s(t)^2$, the Fisher
        information of the forward noise, which bounds $\mathbb{E}_{p_t}
        \lVert \nabla \log p_t \rVert^2$ from above for any data. So
        $\epsilon = 2 \alpha (r\, s(t))^2$ depends on $t$ only: the chain is an
        ordinary Langevin chain with a fixed step, whose stationary law is $p_t$ up to
        $O(\epsilon)$ (unbiased, tested on exact mixtures), and example $i$ depends on
        `fold_in(key, i)` only, bitwise the same under sharding. The realised
        signal-to-noise ratio is at most `snr` (equal when the data's own spread is
        small against $s(t)$). This is the step of [`AnnealedLangevin`][].
    - `"batch"`: each norm averaged over the batch first, as in the paper's code.
        Unbiased up to $O(\epsilon)$ and $O(1/\text{batch})$, and larger steps than
        `"noise"` where the data's spread dominates; but every example depends on the
        whole batch (through the two averages), so the first 10 of 1,000 samples are
        not 10 samples drawn alone, and sharded runs agree with one device only to
        round-off.
    - `"example"`: per-example norms. **Biased**: the
        step depends on the example's own $x$ and $z$, which inflates the stationary
        variance by about $((d + 2) / d)^2$ for Gaussian data in $d$ dimensions
        (1.27 in 16-D), whatever `snr`; in 2-D the step has infinite mean and samples
        blow up. Harmless only for $d$ in the thousands (images).

    **Arguments:**

    - `snr`: target signal-to-noise ratio, > 0 (the paper: 0.16 for VE on CIFAR-10,
        0.01 for VP).
    - `num_steps`: corrector steps per predictor step, >= 1.
    - `norms`: `"noise"` (default), `"batch"` or `"example"`, as above.
    - `batch_norm`: another spelling of `norms`: `True` is `norms="batch"`, `False`
        is `norms="noise"`; given with `norms`, the two must agree.

    **Reference:** Song et al., ICLR 2021, Appendix G, Algorithm 5; for the bias of
    state-dependent step sizes, the stationary density $\propto p / \epsilon(x)$ of
    Langevin dynamics with position-dependent diffusion (e.g. Pavliotis, *Stochastic
    Processes and Applications*, 2014, Section 4.8).
    """

    snr: float = 0.16
    num_steps: int = eqx.field(static=True, default=1)
    norms: str = eqx.field(static=True, default="noise")

    def __init__(
        self,
        snr: float = 0.16,
        num_steps: int = 1,
        norms: str | None = None,
        *,
        batch_norm: bool | None = None,
    ):
        if batch_norm is not None and not isinstance(batch_norm, bool):
            raise ValueError(
                f"Langevin: `batch_norm` must be True or False, got {batch_norm!r}."
            )
        if batch_norm is not None and norms is not None:
            if (norms == "batch") != batch_norm:
                raise ValueError(
                    f"Langevin: `batch_norm={batch_norm}` contradicts "
                    f"`norms={norms!r}`; give `norms` only."
                )
        if norms is None:
            norms = "batch" if batch_norm else "noise"
        if norms not in _NORMS:
            raise ValueError(
                f"Langevin: `norms` must be 'noise', 'batch' or 'example', got "
                f"{norms!r}."
            )
        self.snr = snr
        self.num_steps = num_steps
        self.norms = norms

    def __check_init__(self):
        check_positive("snr", self.snr, owner="Langevin")
        check_int("num_steps", self.num_steps, owner="Langevin")

    @property
    def batch_norm(self) -> bool:
        """Whether the norms are batch averages (`norms == "batch"`)."""
        return self.norms == "batch"

    def step_size(self, sde, t, t_next, score, noise, batched):
        alpha = langevin_alpha(sde, t, t_next)
        if self.norms == "noise":
            eps = 2 * alpha * (self.snr * sde.std(t)) ** 2
            eps = eps.astype(score.dtype)
            return jnp.full(score.shape[:1], eps) if batched else eps
        gn, nn = _norms(score, batched), _norms(noise, batched)
        if self.norms == "batch" and batched:
            gn, nn = jnp.mean(gn), jnp.mean(nn)
            gn, nn = jnp.full(score.shape[:1], gn), jnp.full(score.shape[:1], nn)
        tiny = jnp.finfo(score.dtype).tiny
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
        check_positive("snr", self.snr, owner="AnnealedLangevin")
        check_int("num_steps", self.num_steps, owner="AnnealedLangevin")

    def step_size(self, sde, t, t_next, score, noise, batched):
        eps = 2 * langevin_alpha(sde, t, t_next) * (self.snr * sde.std(t)) ** 2
        return jnp.full(score.shape[:1], eps) if batched else eps
