import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


def sliced_wasserstein(
    key: PRNGKeyArray,
    x: Float[ArrayLike, "n D"],
    y: Float[ArrayLike, "m _D"],
    *,
    num_projections: int = 256,
    p: int = 2,
) -> Float[Array, ""]:
    r"""Sliced Wasserstein-$p$ distance between two point clouds.

    $$SW_p(x, y) = \Big(\mathbb{E}_{\theta \sim U(S^{D-1})}
    W_p^p(\theta^\top x, \theta^\top y)\Big)^{1/p},$$

    estimated with `num_projections` random directions from `key`; each 1-D
    $W_p$ is computed exactly from sorted projections (the two clouds are matched by
    quantiles, so `n` and `m` may differ).

    **Arguments:**

    - `key`: PRNG key for the projection directions (use the same key to compare
        several samplers).
    - `x`, `y`: samples, shapes `(n, D)` and `(m, D)`.
    - `num_projections`: number of random directions, >= 1.
    - `p`: the order, >= 1.

    **Returns:** a scalar. Its floor for two independent true samples of size `n` is
    not 0: compare against `sliced_wasserstein(key, true_a, true_b)`.
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"`x` and `y` must have shapes (n, D) and (m, D), got {x.shape}, {y.shape}."
        )
    if x.shape[0] < 1 or y.shape[0] < 1:
        raise ValueError(
            f"`x` and `y` must hold at least one sample each, got {x.shape}, {y.shape}."
        )
    for name, v in (("x", x), ("y", y)):
        if not isinstance(v, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(v))):
            raise ValueError(f"`{name}` must be finite (it has NaN or inf entries).")
    if num_projections < 1:
        raise ValueError(f"`num_projections` must be >= 1, got {num_projections}.")
    if p < 1:
        raise ValueError(f"`p` must be >= 1, got {p}.")
    theta = jr.normal(key, (num_projections, x.shape[1]), dtype=x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    px = jnp.sort(x @ theta.T, axis=0)
    py = jnp.sort(y @ theta.T, axis=0)
    n_q = max(x.shape[0], y.shape[0])
    q = (jnp.arange(n_q) + 0.5) / n_q

    def quantiles(s):
        idx = jnp.clip((q * s.shape[0]).astype(jnp.int32), 0, s.shape[0] - 1)
        return s[idx]

    diff = jax.vmap(lambda a, b: quantiles(a) - quantiles(b), in_axes=(1, 1))(px, py)
    return jnp.mean(jnp.abs(diff) ** p) ** (1.0 / p)
