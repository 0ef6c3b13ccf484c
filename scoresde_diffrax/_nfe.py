"""Counting score evaluations (diffrax reports steps, not vector-field evaluations).

A solver's evaluations per step are a fixed property of its structure (stages, FSAL),
so they are measured once per solver on a one-element problem whose score counts its
calls through a host callback. The real solve never leaves the device: its count is
`first + per_step * num_steps (+ extras)`, computed from diffrax's step statistics.
"""

import threading
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._clock import REVERSED


_cache: dict = {}
_lock = threading.Lock()


# Calls counted per probe. The host callback is this one module-level function and the
# probe's number reaches it as a traced argument, so a compiled probe that JAX reuses
# from any cache still counts into the probe that runs it (a callback closing over a
# per-probe counter could count into a stale one, leaving the new probe at 0).
_counts: dict[int, int] = {}
_next_probe = iter(range(1, 2**30 - 1))


def _count(probe_id) -> None:
    i = int(probe_id)
    with _lock:
        _counts[i] = _counts.get(i, 0) + 1


class SolverProbe(NamedTuple):
    """What one probe of a solver found.

    - `first`: score evaluations made by `solver.init` plus the first step (-1 if not
      constant, e.g. an implicit solver).
    - `per_step`: score evaluations made by every later step (-1 likewise).
    - `has_error_estimate`: whether `solver.step` returns an error estimate, i.e. whether
      the solver can take adaptive steps.
    """

    first: int
    per_step: int
    has_error_estimate: bool


def _structural_key(solver, key):
    """A cache key for a solver holding arrays (e.g. the per-example data of
    `sd.Impute`): its structure, the shapes and dtypes of its arrays and its other
    leaves, which is what its score evaluations per step depend on. None if a leaf
    is neither an array nor hashable."""
    leaves, treedef = jax.tree_util.tree_flatten(solver)
    parts = []
    for leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray)):
            parts.append(("array", tuple(leaf.shape), str(leaf.dtype)))
        else:
            try:
                hash(leaf)
            except TypeError:
                return None
            parts.append(leaf)
    return (treedef, tuple(parts), key)


class CountingScore(eqx.Module):
    """A zero score that counts its calls on the host: build a probe's terms around
    `CountingScore()`, and [`probe_solver`][] numbers it for each probe."""

    probe_id: int | Array = 0

    def __call__(self, t, x):
        jax.debug.callback(_count, self.probe_id)
        return jnp.zeros_like(x)


def _numbered(terms, probe_id):
    """`terms` with every `CountingScore` counting into `probe_id`."""
    return jax.tree_util.tree_map(
        lambda x: CountingScore(probe_id) if isinstance(x, CountingScore) else x,
        terms,
        is_leaf=lambda x: isinstance(x, CountingScore),
    )


def _cache_key(solver, key):
    try:
        cache_key = (solver, key)
        hash(cache_key)
    except TypeError:
        cache_key = _structural_key(solver, key)
    return cache_key


def cached_probe(solver: dfx.AbstractSolver, key) -> SolverProbe | None:
    """What an earlier [`probe_solver`][] of `solver` on the terms named `key`
    found, or None."""
    cache_key = _cache_key(solver, key)
    return None if cache_key is None else _cache.get(cache_key)


# The probe's steps, in user time inside (eps, T) of every SDE, on the clock of the
# sampling terms it is run on (the reversed one).
_TIMES = tuple(REVERSED.to_solver(t) for t in (0.9, 0.8, 0.7))


def probe_solver(
    solver: dfx.AbstractSolver,
    terms,
    key,
    shape: tuple[int, ...] = (1, 1),
) -> SolverProbe:
    """Probe `solver` on `terms`: the terms of a one-example sampling solve (on the
    reversed clock) of `shape` (batched; default `(1, 1)`) built around a
    [`CountingScore`][]. `key` names the term structure (and shape) for caching.
    """
    cache_key = _cache_key(solver, key)
    if cache_key is not None and cache_key in _cache:
        return _cache[cache_key]

    with _lock:
        probe_id = next(_next_probe)
    found = {}
    y0 = jnp.zeros(shape)
    ts = _TIMES

    @jax.jit
    def first(y0, pid):
        numbered = _numbered(terms, pid)
        state = solver.init(numbered, ts[0], ts[1], y0, None)
        y1, y_err, _, state, _ = solver.step(
            numbered, ts[0], ts[1], y0, None, state, False
        )
        found["has_error_estimate"] = y_err is not None
        return y1, state

    @jax.jit
    def later(y1, state, pid):
        numbered = _numbered(terms, pid)
        return solver.step(numbered, ts[1], ts[2], y1, None, state, False)[0]

    first_id, later_id = 2 * probe_id, 2 * probe_id + 1
    try:
        y1, state = first(y0, jnp.int32(first_id))
        jax.block_until_ready(y1)
        jax.effects_barrier()
        later_y = later(y1, state, jnp.int32(later_id))
        jax.block_until_ready(later_y)
        jax.effects_barrier()
        with _lock:
            n_first, n_later = _counts.pop(first_id, 0), _counts.pop(later_id, 0)
        out = SolverProbe(n_first, n_later, found["has_error_estimate"])
    except Exception:  # noqa: BLE001 - e.g. implicit solvers: count not constant
        out = SolverProbe(-1, -1, isinstance(solver, dfx.AbstractAdaptiveSolver))
    # A count of 0 is never a solver's (every step evaluates the score): the probe ran
    # staged into an outer trace (`sample` under `jit`/`vmap`) and counted nothing.
    # It is not cached, so later calls outside that trace probe again.
    if cache_key is not None and out.first != 0:
        with _lock:
            _cache[cache_key] = out
    return out
