"""Counting score evaluations (diffrax reports steps, not vector-field evaluations).

A solver's evaluations per step are a fixed property of its structure (stages, FSAL),
so they are measured once per solver on a one-element problem whose score counts its
calls through a host callback. The real solve never leaves the device: its count is
`first + per_step * num_steps (+ extras)`, computed from diffrax's step statistics.
"""

import threading
from collections.abc import Callable
from typing import NamedTuple

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np


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


def probe_solver(
    solver: dfx.AbstractSolver,
    make_terms: Callable,
    key,
    shape: tuple[int, ...] = (1, 1),
) -> SolverProbe:
    """Probe `solver` on the terms `make_terms(score)` builds: a one-example problem of
    `shape` (batched; default `(1, 1)`) around the given score. `key` names the term
    structure (and shape) for caching.
    """
    try:
        cache_key = (solver, key)
        hash(cache_key)
    except TypeError:
        cache_key = _structural_key(solver, key)
    if cache_key is not None and cache_key in _cache:
        return _cache[cache_key]

    with _lock:
        probe_id = next(_next_probe)
    found = {}

    def terms_counting(pid):
        def score(t, x):
            jax.debug.callback(_count, pid)
            return jnp.zeros_like(x)

        return make_terms(score)

    y0 = jnp.zeros(shape)
    ts = (-0.9, -0.8, -0.7)  # inside [-T, -eps] of the reversed clock

    @jax.jit
    def first(y0, pid):
        terms = terms_counting(pid)
        state = solver.init(terms, ts[0], ts[1], y0, None)
        y1, y_err, _, state, _ = solver.step(
            terms, ts[0], ts[1], y0, None, state, False
        )
        found["has_error_estimate"] = y_err is not None
        return y1, state

    @jax.jit
    def later(y1, state, pid):
        terms = terms_counting(pid)
        return solver.step(terms, ts[1], ts[2], y1, None, state, False)[0]

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
