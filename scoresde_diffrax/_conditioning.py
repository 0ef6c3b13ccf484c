"""Per-example conditioning: data that travels with each sample of a batch (a class
label, a mask and an observation) inside a score or a solver.

A score acts on ONE example, `score(t, x)`, and the batch comes from one `jax.vmap`
at the edge ([`batched_score`][]). A conditioned score (e.g. [`ClassifierGuidance`][])
is an Equinox module that holds its per-example arrays wrapped in [`PerExample`][]:
the edge vmaps those arrays alongside the state, so inside the call the score sees
the label (or mask, or observation) of its own example. Every solver, corrector and
denoising step already goes through that edge, so every sampler works with a
conditioned score unchanged; `sample` checks the leading axes against the number of
samples and shards them like the samples.

This module sits below every driver and every adapter: it imports only JAX,
Equinox, jaxtyping and the batch-sharding helper of `_sharding`.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

from ._sharding import constrain_leading


class PerExample(eqx.Module):
    """Marks per-example data inside a score or a solver: every array in `value` has a
    leading axis over the samples of the batch (example `i` owns entry `i`).

    Inside a batched call the score is vmapped over these arrays together with the
    state, so in `score(t, x)` a `PerExample` holds the entry of `x`'s example (its
    leading axis removed).

    **Arguments:**

    - `value`: an array or a pytree of arrays, each of shape `(num_samples, ...)`.
    - `name`: the argument it came from, for error messages (e.g. `"labels"`).
    - `data_shaped`: whether each array has shape `(num_samples, *data_shape)` (an
        observation, a per-example mask); [`sample`][] then checks the data shape too.
    """

    value: PyTree[Array]
    name: str = eqx.field(static=True, default="condition")
    data_shaped: bool = eqx.field(static=True, default=False)


def _is_per_example(x) -> bool:
    return isinstance(x, PerExample)


def _per_examples(tree: PyTree) -> list[PerExample]:
    leaves = jax.tree_util.tree_leaves(tree, is_leaf=_is_per_example)
    return [x for x in leaves if _is_per_example(x)]


def has_per_example(tree: PyTree) -> bool:
    """Whether `tree` (a score, a solver) holds any [`PerExample`][] data."""
    return bool(_per_examples(tree))


def _map_per_example(fn, tree: PyTree) -> PyTree:
    """`tree` with the `value` of every `PerExample` replaced by `fn(pe)`."""

    def one(x):
        if _is_per_example(x):
            return PerExample(fn(x), x.name, x.data_shaped)
        return x

    return jax.tree_util.tree_map(one, tree, is_leaf=_is_per_example)


def batched_call(score, t, y: Array) -> Array:
    """`score(t, x)` for every example `x` of the batch `y`: one `jax.vmap`, over the
    state and over the score's per-example data."""
    if not has_per_example(score):
        return jax.vmap(score, in_axes=(None, 0))(t, y)
    axes = jax.tree_util.tree_map(
        lambda x: 0 if _is_per_example(x) else None, score, is_leaf=_is_per_example
    )
    return eqx.filter_vmap(lambda s, x: s(t, x), in_axes=(axes, 0))(score, y)


def example(tree: PyTree, index) -> PyTree:
    """`tree` with each per-example array indexed by `index` (an int: one example's
    data; a slice: a smaller batch)."""
    return _map_per_example(
        lambda pe: jax.tree_util.tree_map(lambda v: v[index], pe.value), tree
    )


def check_per_example(tree: PyTree, shape: tuple[int, ...], owner: str) -> None:
    """Every per-example array in `tree` (the argument `owner`) must have a leading
    axis of `shape[0]` (the number of samples) and, if data-shaped, the shape
    `(num_samples, *data_shape)`; else a `ValueError` naming the array's argument."""
    n, data_shape = shape[0], tuple(shape[1:])
    for pe in _per_examples(tree):
        for v in jax.tree_util.tree_leaves(pe.value):
            vshape = tuple(jnp.shape(v))
            if not vshape or vshape[0] != n:
                got = vshape[0] if vshape else "no"
                raise ValueError(
                    f"`{pe.name}` (in `{owner}`) has {got} entries along its leading "
                    f"axis, but `shape` asks for {n} samples: give one per sample "
                    f"(shape {(n,) + vshape[1:]})."
                )
            if pe.data_shaped and vshape[1:] != data_shape:
                raise ValueError(
                    f"`{pe.name}` (in `{owner}`) must have shape (num_samples, "
                    f"*data_shape) = {(n,) + data_shape}, got {vshape}: its examples "
                    "do not match the data."
                )


def constrain_per_example(tree: PyTree, sharding) -> PyTree:
    """Shard every per-example array of `tree` over its leading axis like the batch
    (`sharding` as for the samples; None: nothing)."""
    if sharding is None or not has_per_example(tree):
        return tree
    return _map_per_example(lambda pe: constrain_leading(pe.value, sharding), tree)
