import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from .._custom_types import ScalarLike


class SinusoidalEmbedding(eqx.Module):
    r"""Transformer-style sinusoidal features of a scalar time (DDPM / DDPM++):
    $[\sin(\omega_k \tau), \cos(\omega_k \tau)]_k$ with $\tau = $ `scale` $\cdot t$ and
    $\omega_k = 10000^{-k/(d/2 - 1)}$.

    **Arguments:**

    - `dim`: number of features, even and >= 4.
    - `scale`: multiplies `t` first (1000 maps $t \in [0, 1]$ to DDPM's step index).
    """

    dim: int = eqx.field(static=True)
    scale: float = eqx.field(static=True)

    def __init__(self, dim: int, scale: float = 1000.0):
        if dim < 4 or dim % 2:
            raise ValueError(
                f"SinusoidalEmbedding: `dim` must be even and >= 4, got {dim}."
            )
        self.dim = dim
        self.scale = scale

    def __call__(self, t: ScalarLike) -> Float[Array, " dim"]:
        half = self.dim // 2
        freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half) / (half - 1))
        arg = self.scale * jnp.asarray(t) * freqs
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])


class GaussianFourierEmbedding(eqx.Module):
    r"""Random Fourier features of a scalar time (NCSN++):
    $[\sin(2\pi W \tau), \cos(2\pi W \tau)]$ with fixed $W \sim \mathcal{N}(0, s^2)$.
    `W` is not trained (it is wrapped in `jax.lax.stop_gradient`).

    **Arguments:**

    - `dim`: number of features, even.
    - `scale`: standard deviation `s` of the frequencies (NCSN++ uses 16).
    - `key`: PRNG key for `W`.
    """

    W: Float[Array, " half"]

    def __init__(self, dim: int, scale: float = 16.0, *, key: PRNGKeyArray):
        if dim < 2 or dim % 2:
            raise ValueError(
                f"GaussianFourierEmbedding: `dim` must be even and >= 2, got {dim}."
            )
        self.W = scale * jr.normal(key, (dim // 2,))

    def __call__(self, t: ScalarLike) -> Float[Array, " dim"]:
        arg = 2 * jnp.pi * jnp.asarray(t) * jax.lax.stop_gradient(self.W)
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])
