import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._custom_types import Scalar, ScalarLike
from ._sde import AbstractSDE


# The oracle must be exact on every backend: GPUs default to reduced-precision (TF32)
# float32 contractions, which cost ~1e-4 nats per dimension in likelihood tests.
_EXACT = jax.lax.Precision.HIGHEST


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"GaussianMixture.sample: `n` must be an int >= 1, got {n!r}.")


class GaussianMixture(eqx.Module):
    r"""A mixture of Gaussians with diagonal covariances: exact ground truth.

    $$p(x) = \sum_k w_k\, \mathcal{N}(x;\ \mu_k,\ \mathrm{diag}(\sigma_k^2)).$$

    A linear SDE maps it to another mixture: with mean coefficient $a(t)$ and standard
    deviation $s(t)$, component $k$ of $p_t$ is
    $\mathcal{N}(a(t)\mu_k, a(t)^2 \sigma_k^2 + s(t)^2)$. So the score and the
    log-density of every marginal are known in closed form, in any dimension; this class
    is the oracle every sampler and likelihood in the package is tested against.

    **Arguments:**

    - `means`: component means, shape `(K, D)`.
    - `stds`: component standard deviations, shape `(K,)` (isotropic) or `(K, D)`
        (diagonal); all > 0.
    - `weights`: mixture weights, shape `(K,)`, all > 0; normalised here. Default:
        uniform.

    **Example:**

    ```python
    mix = sd.GaussianMixture(jnp.array([[-2.0, 0.0], [2.0, 0.0]]), jnp.array([0.3, 0.5]))
    x = mix.sample(jr.key(0), 1000)            # (1000, 2)
    logp = jax.vmap(mix.log_prob)(x)           # (1000,)
    score = mix.score(sd.VPSDE())              # score(t, x) of p_t, exact
    ```
    """

    means: Float[Array, "K D"]
    stds: Float[Array, "K D"]
    weights: Float[Array, " K"]

    def __init__(
        self,
        means: ArrayLike,
        stds: ArrayLike,
        weights: ArrayLike | None = None,
    ):
        means = jnp.asarray(means)
        if not jnp.issubdtype(means.dtype, jnp.floating):
            means = means.astype(jnp.result_type(float))
        stds = jnp.asarray(stds, dtype=means.dtype)
        if means.ndim != 2:
            raise ValueError(
                f"GaussianMixture: `means` must have shape (K, D), got {means.shape}."
            )
        k, d = means.shape
        if stds.shape == (k,):
            stds = jnp.broadcast_to(stds[:, None], (k, d))
        elif stds.shape != (k, d):
            raise ValueError(
                "GaussianMixture: `stds` must have shape (K,) or (K, D) = "
                f"({k},) or ({k}, {d}) to match `means` {means.shape}, got {stds.shape}."
            )
        if weights is None:
            weights = jnp.full((k,), 1.0 / k, dtype=means.dtype)
        weights = jnp.asarray(weights, dtype=means.dtype)
        if weights.shape != (k,):
            raise ValueError(
                f"GaussianMixture: `weights` must have shape (K,) = ({k},) to match "
                f"`means` {means.shape}, got {weights.shape}."
            )
        if _is_concrete(means, stds, weights):
            for name, v in (("means", means), ("stds", stds), ("weights", weights)):
                if not bool(jnp.all(jnp.isfinite(v))):
                    raise ValueError(f"GaussianMixture: `{name}` must be finite.")
            if not bool(jnp.all(stds > 0)):
                raise ValueError("GaussianMixture: `stds` must all be > 0.")
            if not bool(jnp.all(weights > 0)):
                raise ValueError(
                    "GaussianMixture: `weights` must all be > 0 (they are normalised "
                    "to sum to 1; drop a component instead of giving it weight 0)."
                )
        self.means = means
        self.stds = stds
        self.weights = weights / jnp.sum(weights)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n D"]:
        """Draw `n` independent samples, shape `(n, D)`."""
        _check_n(n)
        ckey, nkey = jr.split(key)
        k = jr.choice(ckey, self.num_components, (n,), p=self.weights)
        z = jr.normal(nkey, (n, self.dim), dtype=self.means.dtype)
        return self.means[k] + self.stds[k] * z

    def sample_with_labels(
        self, key: PRNGKeyArray, n: int
    ) -> tuple[Float[Array, "n D"], Int[Array, " n"]]:
        """Like `sample`, also returning each sample's component index."""
        _check_n(n)
        ckey, nkey = jr.split(key)
        k = jr.choice(ckey, self.num_components, (n,), p=self.weights)
        z = jr.normal(nkey, (n, self.dim), dtype=self.means.dtype)
        return self.means[k] + self.stds[k] * z, k

    def component_log_probs(self, x: Float[ArrayLike, " D"]) -> Float[Array, " K"]:
        """$\\log w_k + \\log \\mathcal{N}(x; \\mu_k, \\sigma_k^2)$ for every $k$."""
        x = jnp.asarray(x, dtype=self.means.dtype)
        if x.shape != (self.dim,):
            raise ValueError(
                f"GaussianMixture: `x` must be one point of shape ({self.dim},), got "
                f"{x.shape}; use jax.vmap for a batch."
            )
        z = (x[None, :] - self.means) / self.stds
        log_norm = jnp.sum(jnp.log(self.stds), axis=-1) + 0.5 * self.dim * math.log(
            2 * math.pi
        )
        return jnp.log(self.weights) - 0.5 * jnp.sum(z**2, axis=-1) - log_norm

    def log_prob(self, x: Float[ArrayLike, " D"]) -> Scalar:
        """Exact log-density at one point (`jax.vmap` for many)."""
        return jax.nn.logsumexp(self.component_log_probs(x))

    def responsibilities(self, x: Float[ArrayLike, " D"]) -> Float[Array, " K"]:
        """Posterior probability of each component given one point."""
        return jax.nn.softmax(self.component_log_probs(x))

    def classify(self, x: Float[ArrayLike, " D"]) -> Int[Array, ""]:
        """Index of the most probable component for one point."""
        return jnp.argmax(self.component_log_probs(x))

    def grad_log_prob(self, x: Float[ArrayLike, " D"]) -> Float[Array, " D"]:
        """Exact $\\nabla_x \\log p(x)$ at one point, in closed form."""
        x = jnp.asarray(x, dtype=self.means.dtype)
        r = self.responsibilities(x)
        per_component = (self.means - x[None, :]) / self.stds**2
        return jnp.einsum("k,kd->d", r, per_component, precision=_EXACT)

    def marginal(self, sde: AbstractSDE, t: ScalarLike) -> "GaussianMixture":
        """The exact marginal $p_t$ of this mixture pushed through `sde`."""
        a = sde.mean_coeff(t).astype(self.means.dtype)
        s = sde.std(t).astype(self.means.dtype)
        stds = jnp.sqrt((a * self.stds) ** 2 + s**2)
        return eqx.tree_at(lambda m: (m.means, m.stds), self, (a * self.means, stds))

    def score(self, sde: AbstractSDE) -> "MixtureScore":
        """The exact score $(t, x) \\mapsto \\nabla_x \\log p_t(x)$ under `sde`, usable
        wherever the package takes a score."""
        return MixtureScore(self, sde)

    def mean(self) -> Float[Array, " D"]:
        """Mean of the mixture."""
        return jnp.einsum("k,kd->d", self.weights, self.means, precision=_EXACT)

    def covariance(self) -> Float[Array, "D D"]:
        """Covariance matrix of the mixture."""
        m = self.mean()
        second = jnp.einsum(
            "k,kd,ke->de", self.weights, self.means, self.means, precision=_EXACT
        )
        second = second + jnp.diag(
            jnp.einsum("k,kd->d", self.weights, self.stds**2, precision=_EXACT)
        )
        return second - jnp.outer(m, m)


class MixtureScore(eqx.Module):
    """Exact score of the marginals of a [`GaussianMixture`][] under an SDE.

    Called as `score(t, x)` on one example `x` of shape `(D,)`. Build it with
    `mixture.score(sde)`.
    """

    mixture: GaussianMixture
    sde: AbstractSDE

    def __check_init__(self):
        if not isinstance(self.sde, AbstractSDE):
            raise TypeError(
                "MixtureScore: `sde` must be an AbstractSDE (sd.VPSDE(), ...), got "
                f"{type(self.sde).__name__}."
            )

    def __call__(self, t: ScalarLike, x: Float[ArrayLike, " D"]) -> Float[Array, " D"]:
        x = jnp.asarray(x)
        return self.mixture.marginal(self.sde, t).grad_log_prob(x).astype(x.dtype)
