"""What a solve plan asks a solver, answered by the solver itself (as diffrax's
`order` and `term_structure` are): the fewest steps of a fixed grid, whether it can
take a given grid, the solves it runs once per solve besides its steps, and its
score evaluations per step.

This package's solvers (and the wrappers, which answer for the solver they wrap)
subclass [`AbstractPlannedSolver`][]; a plain diffrax solver gets the defaults from
the functions below. Score evaluations (diffrax reports steps, not vector-field
evaluations) are a fixed property of a solver's structure (stages, FSAL), so they are
measured once per solver on a one-example problem whose score counts its calls
through a host callback; the real solve never leaves the device: its count is
`first + per_step * (num_steps - 1) + extra`, from diffrax's step statistics.

[`ask_solver`][] is the plan's one question: everything the plan learns of a solver,
in one call, after the solver's argument checks. It imports only the clock, so the
plan hands the solver down once and never comes back up for it.
"""

import threading
from collections.abc import Mapping
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ._clock import REVERSED


# --------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------


class InnerSolves(NamedTuple):
    """Solves that a solver runs once per solve besides its steps (e.g. the ODE
    segments of `Restart`): `count` solves of `num_steps` steps each, of `solver` on
    the probability-flow ODE. The plan counts their score evaluations."""

    solver: dfx.AbstractSolver
    count: int
    num_steps: int


class AbstractPlannedSolver(dfx.AbstractSolver):
    """A solver of this package (or a wrapper of one) that answers for itself what a
    solve plan needs to know of a fixed grid, as diffrax's `order` answers for the
    solver's accuracy. Defaults: any grid of at least one step, no inner solves.
    Wrappers delegate to the solver they wrap (through [`min_grid_steps`][],
    [`check_grid`][] and [`inner_solves`][], so a plain diffrax solver inside gets
    the defaults)."""

    def min_grid_steps(self) -> int:
        """The fewest steps of a fixed grid this solver can take (a multistep solver:
        the number of stored evaluations a full-order step interpolates)."""
        return 1

    def check_grid(self, ts, start: float, end: float, arg: str) -> None:
        """Raise `ValueError` naming `arg` for a fixed grid it cannot take: `ts` in
        the user's clock (None if traced) from `start` to `end`. Default: nothing
        beyond [`min_grid_steps`][], which the plan checks."""
        del ts, start, end, arg

    def inner_solves(self) -> tuple[InnerSolves, ...]:
        """The solves it runs once per solve besides its steps, whose score
        evaluations the plan adds to the steps' (e.g. `Restart`'s segments).
        Default: none."""
        return ()


def min_grid_steps(solver: dfx.AbstractSolver) -> int:
    """`solver.min_grid_steps()` for this package's solvers, 1 for others."""
    if isinstance(solver, AbstractPlannedSolver):
        return solver.min_grid_steps()
    return 1


def check_grid(
    solver: dfx.AbstractSolver, ts, start: float, end: float, arg: str
) -> None:
    """`solver.check_grid(...)` for this package's solvers; others take any grid."""
    if isinstance(solver, AbstractPlannedSolver):
        solver.check_grid(ts, start, end, arg)


def inner_solves(solver: dfx.AbstractSolver) -> tuple[InnerSolves, ...]:
    """`solver.inner_solves()` for this package's solvers, none for others."""
    if isinstance(solver, AbstractPlannedSolver):
        return solver.inner_solves()
    return ()


# --------------------------------------------------------------------------------------
# Counting score evaluations
# --------------------------------------------------------------------------------------


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


def count_evals(
    solver: dfx.AbstractSolver,
    terms: Mapping[str, object],
    method: str,
    shape: tuple[int, ...],
) -> SolverProbe:
    """The score evaluations of `solver` on `terms[method]` (the terms of a
    one-example sampling solve of `shape`, built around a [`CountingScore`][]): by
    its first step and by each later one, probed once per solver, `method` and
    `shape` (cached; `terms` is only indexed on a miss)."""
    key = (method, shape)
    found = cached_probe(solver, key)
    if found is None:
        found = probe_solver(solver, terms[method], key, shape)
    return found


# --------------------------------------------------------------------------------------
# The plan's one question
# --------------------------------------------------------------------------------------


def grid_steps(ts) -> int:
    """The number of steps of a concrete grid, its padding (the end time repeated)
    not counted."""
    ts = np.asarray(ts)
    return int(np.flatnonzero(ts == ts[-1])[0])


class FixedGrid(NamedTuple):
    """A solve's fixed grid as the plan knows it: `num_steps` its steps (padding not
    counted); `ts` its times in the user's clock (None if traced); `start`, `end`
    the solve's endpoints in user time (None if traced); `arg` the argument the
    grid came from."""

    num_steps: int
    ts: np.ndarray | None
    start: float | None
    end: float | None
    arg: str


class SolverAnswers(NamedTuple):
    """What a solve plan learns of a solver ([`ask_solver`][]).

    - `first`, `per_step`: score evaluations of `init` plus the first step, and of
      each later step (-1 if not constant).
    - `has_error_estimate`: whether it can take adaptive steps.
    - `extra`: score evaluations once per solve beyond the steps' (its
      [`inner_solves`][]; -1 if not constant).
    """

    first: int
    per_step: int
    has_error_estimate: bool
    extra: int


def check_solver_grid(solver: dfx.AbstractSolver, grid: FixedGrid) -> None:
    """What `solver` needs of a fixed grid, asked of the solver itself: at least
    [`min_grid_steps`][] steps (a multistep solver: as many as it stores
    predictions, else it never reaches its order), and whatever its
    [`check_grid`][] checks (e.g. `Restart`'s `t_min` on the grid). The error names
    `grid.arg`."""
    need = min_grid_steps(solver)
    if grid.num_steps < need:
        raise ValueError(
            f"`{grid.arg}`: {type(solver).__name__} interpolates its last {need} score "
            f"evaluations (it or the solver it wraps), so a grid needs at least "
            f"{need} steps to reach its order; got {grid.num_steps}. Use more steps "
            "or a lower `order`."
        )
    if grid.start is not None and grid.end is not None:
        check_grid(solver, grid.ts, grid.start, grid.end, grid.arg)


def ask_solver(
    solver: dfx.AbstractSolver,
    method: str,
    terms: Mapping[str, object],
    shape: tuple[int, ...],
    grid: FixedGrid | None,
) -> SolverAnswers:
    """Everything a solve plan learns of `solver` integrating `method`'s terms:
    whether it takes `grid` (None: not a fixed grid, or one whose steps are not
    known before the solve), and its score evaluations, its inner solves' included
    (counted on `terms["ode"]`: they integrate the probability-flow ODE). `terms`
    maps a method to the terms of a one-example problem of `shape` around a
    [`CountingScore`][] (see [`count_evals`][])."""
    if grid is not None:
        check_solver_grid(solver, grid)
    counted = count_evals(solver, terms, method, shape)
    extra = 0
    for inner in inner_solves(solver):
        found = count_evals(inner.solver, terms, "ode", shape)
        if found.first < 0:
            extra = -1
            break
        extra += inner.count * (found.first + found.per_step * (inner.num_steps - 1))
    return SolverAnswers(
        counted.first, counted.per_step, counted.has_error_estimate, extra
    )
