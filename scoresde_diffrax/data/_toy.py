import math

import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._exact import GaussianMixture
from .._scalars import check_int


def moons(
    key: PRNGKeyArray, n: int, *, noise: float = 0.1, return_labels: bool = False
) -> Float[Array, "n 2"] | tuple[Float[Array, "n 2"], Int[Array, " n"]]:
    """Two interleaving half circles (as scikit-learn's `make_moons`), centred and
    scaled to unit-order spread, with Gaussian `noise` (in the moons' units). With
    `return_labels`, also each point's moon (0 upper, 1 lower); the points are the
    same either way."""
    n = check_int("n", n, owner="moons")
    kb, ka, kn = jr.split(key, 3)
    upper = jr.bernoulli(kb, 0.5, (n,))
    a = jr.uniform(ka, (n,), maxval=math.pi)
    x = jnp.where(upper, jnp.cos(a), 1 - jnp.cos(a))
    y = jnp.where(upper, jnp.sin(a), 0.5 - jnp.sin(a))
    pts = 1.5 * (jnp.stack([x - 0.5, y - 0.25], axis=1) + noise * jr.normal(kn, (n, 2)))
    return (pts, jnp.where(upper, 0, 1).astype(jnp.int32)) if return_labels else pts


def swiss_roll(
    key: PRNGKeyArray, n: int, *, noise: float = 0.05
) -> Float[Array, "n 2"]:
    """A 2-D Swiss roll (spiral), scaled to about [-1.5, 1.5]^2."""
    n = check_int("n", n, owner="swiss_roll")
    ka, kn = jr.split(key)
    t = 1.5 * math.pi * (1 + 2 * jr.uniform(ka, (n,)))
    pts = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=1) / 10.0
    return pts + noise * jr.normal(kn, (n, 2))


def checkerboard(key: PRNGKeyArray, n: int) -> Float[Array, "n 2"]:
    """Uniform on the black squares of a 4x4 checkerboard covering [-2, 2]^2."""
    n = check_int("n", n, owner="checkerboard")
    k1, k2, k3 = jr.split(key, 3)
    x1 = jr.uniform(k1, (n,)) * 4 - 2
    x2 = jr.uniform(k2, (n,)) - jr.randint(k3, (n,), 0, 2).astype(x1.dtype) * 2
    x2 = x2 + (jnp.floor(x1) % 2)
    return jnp.stack([x1, x2], axis=1)


def rings(
    key: PRNGKeyArray, n: int, *, noise: float = 0.05, return_labels: bool = False
) -> Float[Array, "n 2"] | tuple[Float[Array, "n 2"], Int[Array, " n"]]:
    """Three concentric circles of radii 0.5, 1 and 1.5 (equal mass), with noise.
    With `return_labels`, also each point's ring (0 inner to 2 outer); the points are
    the same either way."""
    n = check_int("n", n, owner="rings")
    kr, ka, kn = jr.split(key, 3)
    ring = jr.randint(kr, (n,), 0, 3)
    r = 0.5 * (1 + ring).astype(jnp.result_type(float))
    a = jr.uniform(ka, (n,), maxval=2 * math.pi)
    pts = jnp.stack([r * jnp.cos(a), r * jnp.sin(a)], axis=1)
    pts = pts + noise * jr.normal(kn, (n, 2))
    return (pts, ring.astype(jnp.int32)) if return_labels else pts


def toy_mixture() -> GaussianMixture:
    """Eight Gaussians on a circle of radius 2 (std 0.2): a toy with an exact score."""
    a = jnp.arange(8) * (2 * math.pi / 8)
    means = 2.0 * jnp.stack([jnp.cos(a), jnp.sin(a)], axis=1)
    return GaussianMixture(means, jnp.full((8,), 0.2))


def gaussian_mixture(
    key: PRNGKeyArray, n: int, *, return_labels: bool = False
) -> Float[Array, "n 2"] | tuple[Float[Array, "n 2"], Int[Array, " n"]]:
    """`n` samples of [`toy_mixture`][] (eight Gaussians on a circle); with
    `return_labels`, also each sample's component (0-7); the points are the same
    either way."""
    n = check_int("n", n, owner="gaussian_mixture")
    x, k = toy_mixture().sample_with_labels(key, n)
    return (x, k.astype(jnp.int32)) if return_labels else x
