"""The paper's optimiser (Adam with a linear warm-up after gradient clipping) and the
exponential moving average of the weights that the samples are drawn from."""

import functools

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from ._checks import check_int, check_positive


@functools.lru_cache(maxsize=32)
def adam_with_warmup(
    learning_rate: float = 2e-4, warmup_steps: int = 5000, grad_clip: float = 1.0
) -> optax.GradientTransformation:
    r"""The paper's optimiser: Adam whose learning rate rises linearly over
    `warmup_steps` ($\eta \min(1, (n + 1)/W)$; constant $\eta$ for $W = 0$), after
    global-norm clipping of the gradient to `grad_clip`.

    **Arguments:**

    - `learning_rate`: peak learning rate. Paper default 2e-4.
    - `warmup_steps`: length of the linear warm-up, >= 0 (0: none). Paper default
        5000.
    - `grad_clip`: maximum global norm of the gradient (`None` or <= 0: no clipping).
        Paper default 1.0.

    Cached, so equal arguments give the same object (and no recompilation).
    """
    check_positive("learning_rate", learning_rate)
    check_int("warmup_steps", warmup_steps, 0)

    def schedule(count):
        if warmup_steps == 0:
            return jnp.full_like(count, learning_rate, jnp.result_type(float))
        return learning_rate * jnp.minimum((count + 1) / warmup_steps, 1.0)

    parts = []
    if grad_clip is not None and grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.adam(schedule))
    return optax.chain(*parts)


def ema_decay_at(decay: float, num_updates: Int[ArrayLike, ""]) -> Float[Array, ""]:
    r"""EMA decay with warm-up: $\min(d, (1 + n) / (10 + n))$ after `n` updates, so the
    average is not dominated by the random initial weights."""
    n = jnp.asarray(num_updates, jnp.result_type(float))
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(
    ema: PyTree[Array], params: PyTree[Array], decay: Float[ArrayLike, ""]
) -> PyTree[Array]:
    r"""One step of the exponential moving average, leaf by leaf:
    $e \leftarrow d\, e + (1 - d)\, p$, with the decay $d$ (e.g. from
    [`ema_decay_at`][]) cast to each leaf's dtype.

    **Arguments:**

    - `ema`: the average so far (the inexact-array leaves of a model).
    - `params`: the new parameters, of the same structure.
    - `decay`: the decay $d$ in $[0, 1)$.

    **Returns:** the new average, of the structure and dtypes of `ema`.
    """

    def update(e, p):
        d = jnp.asarray(decay, e.dtype)
        return d * e + (1 - d) * p

    return jax.tree_util.tree_map(update, ema, params)
