"""An error norm for adaptive steps on a batched state."""

import math

import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Float, PyTree


def batch_max_rms_norm(tree: PyTree) -> Float[Array, ""]:
    r"""An error norm for adaptive step-size control of a batched state: the RMS over
    each example's components (over every leaf of the state), then the maximum over
    the batch.

    diffrax's default norm is one RMS over the whole state, so in a batched solve an
    example with a large error can hide behind many with small ones; with this norm a
    step is accepted only if every example's own RMS error is within tolerance. Pass it
    as `diffrax.PIDController(rtol, atol, norm=sd.batch_max_rms_norm)`.

    The batch size is the leading axis of the first leaf. Leaves without that leading
    axis (e.g. the parameter cotangents in the backward solve of
    `diffrax.BacksolveAdjoint`) are shared by all examples: their squares count in every
    example's RMS.

    **Arguments:**

    - `tree`: a pytree of arrays, the first of shape `(batch, ...)`.

    **Returns:** a scalar, $\max_i \sqrt{\frac{1}{n}\sum_j e_{ij}^2}$ over examples
    $i$ and the $n$ components $j$ of one example (shared components included).
    """
    leaves = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    if not leaves or leaves[0].ndim == 0:
        return optx.rms_norm(tree)
    batch = leaves[0].shape[0]
    per_example = jnp.zeros((batch,), jnp.result_type(*leaves, float))
    shared = jnp.zeros((), per_example.dtype)
    n = 0
    for x in leaves:
        if x.ndim >= 1 and x.shape[0] == batch:
            per_example = per_example + jnp.sum(
                jnp.abs(x.reshape(batch, -1)) ** 2, axis=1
            )
            n += math.prod(x.shape[1:])
        else:
            shared = shared + jnp.sum(jnp.abs(x) ** 2)
            n += x.size
    return jnp.sqrt((jnp.max(per_example) + shared) / max(n, 1))
