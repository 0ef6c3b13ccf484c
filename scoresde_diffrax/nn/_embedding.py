import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

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


class ConditionEmbedding(eqx.Module):
    r"""Embeds a condition, a class label or a context vector of fixed size, with a
    learned "no condition" token, for the conditional networks of `sd.nn`
    (classifier-free guidance, Ho & Salimans 2021).

    A label $c \in \{0, \dots, K-1\}$ picks row $c$ of a learned table of $K + 1$
    rows; row $K$ is the null token. A context vector $c \in \mathbb{R}^m$ goes
    through a learned linear map; its null token is a learned vector. Exactly one of
    `num_classes` and `context_dim` is > 0.

    **Arguments:**

    - `dim`: size of the embedding.
    - `num_classes`: number of classes $K$ (0: not a label).
    - `context_dim`: size $m$ of a context vector (0: not a context).
    - `key`: PRNG key for the initial weights.

    Called as `embed(condition, drop)` on one example: `condition` an integer scalar
    (label) or a vector `(context_dim,)`, or None for the null token; `drop` a boolean
    (may be traced): where True the null token replaces the condition.
    """

    table: Float[Array, "rows dim"] | None
    linear: eqx.nn.Linear | None
    null: Float[Array, " dim"] | None
    num_classes: int = eqx.field(static=True)
    context_dim: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        num_classes: int = 0,
        context_dim: int = 0,
        key: PRNGKeyArray,
    ):
        if (num_classes > 0) == (context_dim > 0):
            raise ValueError(
                "ConditionEmbedding: exactly one of `num_classes` and `context_dim` "
                f"must be > 0, got {num_classes} and {context_dim}."
            )
        k1, k2 = jr.split(key)
        self.num_classes = int(num_classes)
        self.context_dim = int(context_dim)
        if num_classes:
            self.table = 0.1 * jr.normal(k1, (num_classes + 1, dim))
            self.linear = self.null = None
        else:
            self.table = None
            self.linear = eqx.nn.Linear(context_dim, dim, key=k1)
            self.null = 0.1 * jr.normal(k2, (dim,))

    def check(self, condition, owner: str) -> None:
        """A `ValueError` naming `condition` if its shape or dtype does not fit."""
        if condition is None:
            return
        shape, dtype = jnp.shape(condition), jnp.result_type(condition)
        if self.num_classes:
            if shape != () or not jnp.issubdtype(dtype, jnp.integer):
                raise ValueError(
                    f"{owner}: `condition` must be one integer class label (shape ()) "
                    f"in 0..{self.num_classes - 1}, got shape {shape}, dtype {dtype}."
                )
        elif shape != (self.context_dim,):
            raise ValueError(
                f"{owner}: `condition` must be one context vector of shape "
                f"({self.context_dim},), got shape {shape}."
            )

    def __call__(
        self,
        condition: Int[ArrayLike, ""] | Float[ArrayLike, " context_dim"] | None,
        drop: bool | Bool[ArrayLike, ""] = False,
    ) -> Float[Array, " dim"]:
        if self.table is not None:
            null_row = self.table[self.num_classes]
            if condition is None:
                return null_row
            # Out-of-range labels are refused before (sd.ClassifierFreeGuidance, the
            # losses); here they would be clamped by the gather.
            emb = self.table[jnp.asarray(condition)]
            return jnp.where(drop, null_row, emb)
        assert self.linear is not None and self.null is not None
        if condition is None:
            return self.null
        emb = self.linear(jnp.asarray(condition, self.null.dtype))
        return jnp.where(drop, self.null, emb)


def check_condition_config(num_classes, context_dim, owner: str) -> None:
    """`num_classes` and `context_dim` are ints >= 0, at most one of them > 0."""
    for name, v in (("num_classes", num_classes), ("context_dim", context_dim)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{owner}: `{name}` must be an int >= 0, got {v!r}.")
    if num_classes and context_dim:
        raise ValueError(
            f"{owner}: give a class label (`num_classes`) or a context vector "
            f"(`context_dim`) as the condition, not both (got {num_classes} and "
            f"{context_dim})."
        )


def condition_features(embed, temb, condition, drop, owner: str):
    """`temb` plus the condition's embedding (conditional networks), or `temb` itself
    (unconditional ones, which refuse a condition)."""
    if embed is None:
        if condition is not None:
            raise ValueError(
                f"{owner}: `condition` given to an unconditional network (build it "
                "with `num_classes` or `context_dim` to condition it)."
            )
        return temb
    embed.check(condition, owner)
    return temb + embed(condition, drop).astype(temb.dtype)
