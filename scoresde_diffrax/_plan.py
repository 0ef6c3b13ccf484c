"""From the user's step arguments to a solve plan, one set of rules for every solve
(`sample`, `log_likelihood`, `encode`, `decode`).

The rules:

- Give at most one of `num_steps` (fixed steps, uniform in `t`) and
  `stepsize_controller`. With neither, the solve is adaptive with
  `diffrax.PIDController(rtol, atol, norm=batch_max_rms_norm)` (`rtol = atol = 1e-5`
  unless the entry point takes them as arguments).
- A solve is adaptive exactly when its controller is a
  `diffrax.AbstractAdaptiveStepSizeController`; the solver must then return an error
  estimate (found by running one step of it, so wrappers such as
  `diffrax.HalfSolver` count), else a `ValueError` names `solver`.
- `diffrax.StepTo(ts)` takes `ts` in the user's clock, strictly monotonic from the
  solve's start to its end (`T -> eps` to sample or decode, `eps -> T` to encode),
  each endpoint within a relative 1e-5.
- `max_steps` is an int >= 1 for every solve that is not a `StepTo` grid (whose number
  of steps is its length); None is refused.
- A `PaddedStepTo(ts)` is a `StepTo` grid whose end time may repeat: grids of
  different lengths padded to one length share one compiled program (the padding is
  never stepped on: the solve ends when it reaches the end).
- `dt0`, when given, is a finite non-zero number; only its magnitude is used.
  Default: None (diffrax chooses) except for adaptive solves of the reverse SDE:
  a 64th of the interval.
- Every solve runs forwards on its solver clock ([`Clock`][]): the reversed one
  `r = -t` where the user's time decreases (sampling, decoding).
- The score evaluations of a solve are `first + per_step * (num_steps - 1)`, with
  `first` (init and first step) and `per_step` measured once per solver (-1 where
  the count is not constant).
"""

from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._checks import (
    check_int,
    check_nonzero,
    check_positive,
    check_solver,
    check_time_grid,
    is_concrete,
    Method,
)
from ._clock import Clock, REVERSED
from ._conditioning import check_per_example, example, has_per_example
from ._nfe import cached_probe, CountingScore, probe_solver, SolverProbe
from ._norm import batch_max_rms_norm
from ._planned_solver import check_grid, inner_solves, min_grid_steps
from ._sde import VPSDE
from ._term import sampling_terms


class PaddedStepTo(dfx.AbstractStepSizeController):
    """`diffrax.StepTo` for a grid padded at its end: `ts` runs strictly
    monotonically to its end time, then repeats it. Grids of different numbers of
    steps padded to one length are arrays of one shape, so solves on them share one
    compiled program (what `sd.bench.run` does across budgets); the solve takes
    exactly the grid's steps (it ends on reaching the end time), the same steps as
    `diffrax.StepTo` on the unpadded grid.
    """

    ts: Float[Array, " times"] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        if self.ts.ndim != 1 or len(self.ts) < 2:
            raise ValueError("`ts` must be one-dimensional, of length at least 2.")

    def wrap(self, direction):
        ts = self.ts * direction
        padding = (ts[:-1] == ts[-1]) & (ts[1:] == ts[-1])
        ts = eqxi.error_if(
            ts,
            (ts[1:] <= ts[:-1]) & ~padding,
            "`PaddedStepTo(ts=...)` must be strictly monotonic up to its end time.",
        )
        return type(self)(ts=ts)

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        del terms, y0, args, func, error_order
        if dt0 is not None:
            raise ValueError("`dt0` should be `None` with a fixed grid.")
        ts = eqxi.error_if(
            self.ts,
            (t0 != self.ts[0]) | (t1 != self.ts[-1]),
            "Must have `t0==ts[0]` and `t1==ts[-1]`.",
        )
        return ts[1], jnp.asarray(2)

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        del t0, y0, y1_candidate, args, y_error, error_order
        next_t = self.ts[jnp.minimum(controller_state, len(self.ts) - 1)]
        return True, t1, next_t, False, controller_state + 1, dfx.RESULTS.successful


def grid_steps(ts) -> int:
    """The number of steps of a concrete grid, its padding (the end time repeated)
    not counted."""
    ts = np.asarray(ts)
    return int(np.flatnonzero(ts == ts[-1])[0])


def pad_grid(ts, length: int):
    """`ts` padded with its end time to `length` entries (a `PaddedStepTo` grid)."""
    ts = np.asarray(ts)
    if length < len(ts):
        raise ValueError(f"cannot pad a grid of {len(ts)} times to {length}.")
    return np.concatenate([ts, np.full(length - len(ts), ts[-1], ts.dtype)])


class SolvePlan(eqx.Module):
    """How one solve steps, on its solver clock `r = clock.to_solver(t)` (running
    from `r0` up to `r1`, so always forwards).

    - `method`: the terms the solver integrates, `"sde"` or `"ode"`.
    - `clock`: the solve's [`Clock`][].
    - `controller`: the diffrax controller on the solver clock.
    - `adaptive`: whether the controller adapts the steps.
    - `max_steps`: the bound handed to `diffrax.diffeqsolve`.
    - `dt0`: the initial step on the solver clock (positive) or None.
    - `r0`, `r1`: the integration interval on the solver clock.
    - `first_evals`, `evals_per_step`: score evaluations of `init` plus the first
      step, and of each later step (-1 if not constant).
    - `min_step`: the smallest step of a concrete `StepTo` grid, else None.
    - `extra_evals`: score evaluations once per solve beyond the steps' (the
      segments of `Restart`).
    """

    method: Method = eqx.field(static=True)
    clock: Clock = eqx.field(static=True)
    controller: dfx.AbstractStepSizeController
    adaptive: bool = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    dt0: float | Array | None
    r0: float | Array
    r1: float | Array
    first_evals: int = eqx.field(static=True)
    evals_per_step: int = eqx.field(static=True)
    min_step: float | None = eqx.field(static=True)
    extra_evals: int = eqx.field(static=True, default=0)

    def num_score_evals(self, num_steps: Int[Array, "*batch"]) -> Int[Array, "*batch"]:
        """Score evaluations per example of a solve that took `num_steps` steps."""
        if self.first_evals < 0 or self.extra_evals < 0:
            return jnp.full_like(num_steps, -1)
        steps = self.evals_per_step * jnp.maximum(num_steps - 1, 0)
        return self.first_evals + steps + self.extra_evals


def uniform_grid(start, end, num_steps: int, start_f, end_f):
    if start_f is None or end_f is None:  # a traced endpoint
        return jnp.linspace(start, end, num_steps + 1)
    # Built in NumPy so the grid (and noise keyed on its exact bits) is the same with
    # and without an outer `jax.jit`.
    return np.linspace(start_f, end_f, num_steps + 1).astype(jnp.result_type(float))


def plan_solve(
    solver: dfx.AbstractSolver,
    *,
    method: Method | None,
    shape: tuple[int, ...],
    start,
    end,
    clock: Clock,
    num_steps: int | None,
    stepsize_controller: dfx.AbstractStepSizeController | None,
    max_steps: int | None,
    dt0: float | None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> SolvePlan:
    """Apply the module's rules to a solve of `solver` on a batch of `shape`, from
    `start` to `end` in the user's clock (either may be traced), running forwards on
    `clock`; `method` names the terms (None: inferred from the solver, see
    `resolve_method`). Raises `ValueError` (or `TypeError`) naming the offending
    argument.

    Each argument is handed down once: first the solver's own checks (its type, its
    terms, its per-example data), then the step arguments, then what the solver
    answers about the grid (`_planned_solver`), then its score evaluations (`_nfe`)."""
    # The solver: its type, the terms it integrates, its per-example data. A solver
    # with per-example data (e.g. `Impute`) is probed on one example of the data's
    # shape; others on a (1, 1) problem.
    method = check_solver(solver, method)
    check_per_example(solver, shape, "solver")
    probe, probe_shape = solver, (1, 1)
    if has_per_example(solver):
        probe, probe_shape = example(solver, slice(0, 1)), (1, *shape[1:])

    # The steps, on the solver clock
    if dt0 is not None:
        check_nonzero("dt0", dt0)
        dt0 = clock.to_solver_step(dt0)
    steps = _plan_steps(
        clock, start, end, num_steps, stepsize_controller, max_steps, rtol, atol
    )
    adaptive = isinstance(steps.controller, dfx.AbstractAdaptiveStepSizeController)
    if dt0 is None and adaptive and method == "sde":
        dt0 = (clock.to_solver(end) - clock.to_solver(start)) / 64
    if isinstance(steps.controller, dfx.ConstantStepSize) and dt0 is None:
        raise ValueError("`dt0` is required with diffrax.ConstantStepSize().")

    # What the solver needs of a fixed grid, and its score evaluations
    arg = "num_steps" if num_steps is not None else "stepsize_controller"
    _check_solver_grid(probe, steps, clock, arg)
    counted = count_score_evals(probe, method, probe_shape)
    if adaptive and not counted.has_error_estimate:
        raise ValueError(
            f"`solver`: {type(solver).__name__} does not estimate its error, so it "
            "cannot take adaptive steps (the default when neither `num_steps` nor "
            "`stepsize_controller` is given). Pass num_steps=..., or use an adaptive "
            "solver: Tsit5, Dopri5, Dopri8, Bosh3, Heun (ODE); ShARK, SRA1, "
            "ReversibleHeun, HalfSolver(EulerHeun()) (SDE)."
        )
    return SolvePlan(
        method=method,
        clock=clock,
        controller=steps.controller,
        adaptive=adaptive,
        max_steps=steps.max_steps,
        dt0=dt0,
        r0=clock.to_solver(start),
        r1=clock.to_solver(end),
        first_evals=counted.first,
        evals_per_step=counted.per_step,
        min_step=steps.min_step,
        extra_evals=_inner_score_evals(probe, probe_shape),
    )


class _Steps(NamedTuple):
    """The step arguments of a solve as a controller on the solver clock:
    `max_steps` for `diffrax.diffeqsolve` (a grid's length for a grid); for a
    concrete fixed grid, `grid_len` its steps (padding not counted) and `min_step`
    its smallest step (else None); `start`, `end` the solve's endpoints in user time
    (None if traced)."""

    controller: dfx.AbstractStepSizeController
    max_steps: int
    grid_len: int | None
    min_step: float | None
    start: float | None
    end: float | None


def _plan_steps(
    clock: Clock,
    start,
    end,
    num_steps,
    stepsize_controller,
    max_steps,
    rtol,
    atol,
) -> _Steps:
    start_f = None if isinstance(start, jax.core.Tracer) else float(start)
    end_f = None if isinstance(end, jax.core.Tracer) else float(end)
    if num_steps is not None and stepsize_controller is not None:
        raise ValueError(
            "Give at most one of `num_steps` (fixed steps) and `stepsize_controller`; "
            f"got num_steps={num_steps!r}, stepsize_controller={stepsize_controller!r}."
        )
    if stepsize_controller is not None and not isinstance(
        stepsize_controller, dfx.AbstractStepSizeController
    ):
        raise TypeError(
            "`stepsize_controller` must be a diffrax step-size controller "
            "(diffrax.PIDController(rtol, atol), diffrax.StepTo(ts), ...), got "
            f"{type(stepsize_controller)}."
        )
    if num_steps is not None:
        n = check_int("num_steps", num_steps)
        ts = uniform_grid(start, end, n, start_f, end_f)
        controller = dfx.StepTo(ts=clock.to_solver(ts))
    elif isinstance(stepsize_controller, (dfx.StepTo, PaddedStepTo)):
        ts = stepsize_controller.ts
        if not isinstance(ts, (np.ndarray, jnp.ndarray)):
            ts = np.asarray(ts)
        padded = isinstance(stepsize_controller, PaddedStepTo)
        if padded and is_concrete(ts):
            valid = ts[: grid_steps(ts) + 1]
        else:
            valid = None if padded else ts
        if valid is not None:
            check_time_grid("stepsize_controller", valid, start_f, end_f, clock)
        controller = type(stepsize_controller)(ts=clock.to_solver(ts))
    elif stepsize_controller is None:
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        controller = dfx.PIDController(rtol=rtol, atol=atol, norm=batch_max_rms_norm)
    else:
        controller = stepsize_controller
    grid_len = min_step = None
    if isinstance(controller, (dfx.StepTo, PaddedStepTo)):
        max_steps = len(controller.ts) - 1
        if is_concrete(controller.ts):
            grid = np.asarray(controller.ts)
            grid_len = grid_steps(grid)
            min_step = float(np.min(np.abs(np.diff(grid[: grid_len + 1]))))
    else:
        max_steps = check_int("max_steps", max_steps)
    return _Steps(controller, max_steps, grid_len, min_step, start_f, end_f)


def _check_solver_grid(
    solver: dfx.AbstractSolver, steps: _Steps, clock: Clock, arg: str
) -> None:
    """What a solver needs of a fixed grid, asked of the solver itself: at least
    `min_grid_steps()` steps (a multistep solver: as many as it stores predictions,
    else it never reaches its order), and whatever its `check_grid` checks (e.g.
    `Restart`'s `t_min` on the grid). Wrappers answer for the solver they wrap.
    `arg` names the argument the grid came from."""
    controller = steps.controller
    if not isinstance(controller, (dfx.StepTo, PaddedStepTo)):
        return
    n = steps.max_steps
    if steps.grid_len is not None:
        n = steps.grid_len
    elif isinstance(controller, PaddedStepTo):
        return  # a traced padded grid: its number of steps is not known here
    need = min_grid_steps(solver)
    if n < need:
        raise ValueError(
            f"`{arg}`: {type(solver).__name__} interpolates its last {need} score "
            f"evaluations (it or the solver it wraps), so a grid needs at least "
            f"{need} steps to reach its order; got {n}. Use more steps or a "
            "lower `order`."
        )
    if steps.start is not None and steps.end is not None:
        ts = controller.ts
        ts = None if isinstance(ts, jax.core.Tracer) else clock.to_user(np.asarray(ts))
        if ts is not None:
            ts = ts[: n + 1]
        check_grid(solver, ts, steps.start, steps.end, arg)


# --------------------------------------------------------------------------------------
# Counting score evaluations
# --------------------------------------------------------------------------------------


def _probe_terms(method: Method, shape: tuple[int, ...]):
    """The terms of a one-example sampling solve of `shape` around a counting score,
    on which a solver's score evaluations per step are counted (they depend on
    neither the SDE nor the clock)."""
    sde = VPSDE()
    return sampling_terms(
        sde,
        CountingScore(),
        method,
        shape,
        jax.random.key(0),
        REVERSED.to_solver(float(sde.T)),
        REVERSED.to_solver(1e-3),
        "fast",
    )


def count_score_evals(
    solver: dfx.AbstractSolver, method: Method, shape: tuple[int, ...] = (1, 1)
) -> SolverProbe:
    """The score evaluations of `solver` on `method`'s terms: by its first step and
    by each later one, measured once per solver, `method` and `shape` (cached), and
    whether it estimates its error. What `sample` counts, and what budgets are
    reckoned in (`sd.bench`, learned grids)."""
    key = (method, shape)
    found = cached_probe(solver, key)
    if found is None:
        found = probe_solver(solver, _probe_terms(method, shape), key, shape)
    return found


def _inner_score_evals(solver: dfx.AbstractSolver, shape: tuple[int, ...]) -> int:
    """The score evaluations of the solves `solver` runs once per solve besides its
    steps (`inner_solves`, e.g. `Restart`'s segments); -1 if not constant."""
    total = 0
    for inner in inner_solves(solver):
        counted = count_score_evals(inner.solver, "ode", shape)
        if counted.first < 0:
            return -1
        total += inner.count * (
            counted.first + counted.per_step * (inner.num_steps - 1)
        )
    return total


# --------------------------------------------------------------------------------------
# One solve: a batched state, or a vmap of per-example solves
# --------------------------------------------------------------------------------------

_STAT_KEYS = ("num_steps", "num_accepted_steps", "num_rejected_steps")


def _solve_to_end(terms, y0, args, **kw):
    sol = dfx.diffeqsolve(terms, y0=y0, args=args, saveat=dfx.SaveAt(t1=True), **kw)
    y1 = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    return y1, {k: sol.stats[k] for k in _STAT_KEYS}, sol.result


def solve_batch(
    per_example: bool,
    terms,
    y0,
    args,
    *,
    solver: dfx.AbstractSolver,
    plan: SolvePlan,
    adjoint: dfx.AbstractAdjoint,
    throw: bool,
    progress_meter: dfx.AbstractProgressMeter | None = None,
):
    """Solve `plan`'s interval to its end with the whole batch as one state, or
    (`per_example`) as a vmap of solves of one example each. Each per-example solve
    keeps a batch axis of size 1, so the same terms and error norm serve both.
    Returns the final state, the step statistics and the result."""
    dtype = jax.tree_util.tree_leaves(y0)[0].dtype
    kw = dict(
        solver=solver,
        t0=jnp.asarray(plan.r0, dtype),
        t1=jnp.asarray(plan.r1, dtype),
        dt0=plan.dt0,
        stepsize_controller=plan.controller,
        adjoint=adjoint,
        max_steps=plan.max_steps,
        throw=throw,
    )
    if not per_example:
        if progress_meter is not None:
            kw["progress_meter"] = progress_meter
        return _solve_to_end(terms, y0, args, **kw)

    def one(y, a):
        y = jax.tree_util.tree_map(lambda u: u[None], y)
        a = jax.tree_util.tree_map(lambda u: u[None], a)
        y1, stats, result = _solve_to_end(terms, y, a, **kw)
        return jax.tree_util.tree_map(lambda u: u[0], y1), stats, result

    return jax.vmap(one)(y0, args)
