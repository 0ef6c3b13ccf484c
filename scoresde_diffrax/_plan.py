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

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._checks import (
    check_int,
    check_nonzero,
    check_positive,
    check_solver,
    check_time_grid,
    is_concrete,
)
from ._clock import Clock, REVERSED
from ._conditioning import check_per_example, example, has_per_example
from ._custom_types import Method
from ._norm import batch_max_rms_norm
from ._planned_solver import (
    ask_solver,
    count_evals,
    CountingScore,
    FixedGrid,
    grid_steps,
    SolverProbe,
)
from ._sde import VPSDE
from ._solve_plan import SolvePlan
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


def pad_grid(ts, length: int):
    """`ts` padded with its end time to `length` entries (a `PaddedStepTo` grid)."""
    ts = np.asarray(ts)
    if length < len(ts):
        raise ValueError(f"cannot pad a grid of {len(ts)} times to {length}.")
    return np.concatenate([ts, np.full(length - len(ts), ts[-1], ts.dtype)])


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

    Each argument is handed down the layers once and never comes back up: the
    solver's type and terms (`_checks`), the step arguments (`_checks` for a user's
    grid), the solver's per-example data (`_conditioning`), then what the solver
    answers about the grid and its score evaluations, in one call
    (`_planned_solver.ask_solver`); `dt0` last, on the clock."""
    # The solver's type and the terms it integrates
    method = check_solver(solver, method)

    # The steps, on the solver clock
    arg = "num_steps" if num_steps is not None else "stepsize_controller"
    steps = _plan_steps(
        clock, start, end, num_steps, stepsize_controller, max_steps, rtol, atol, arg
    )
    adaptive = isinstance(steps.controller, dfx.AbstractAdaptiveStepSizeController)

    # What the solver answers, asked of one example: a solver with per-example data
    # (e.g. `Impute`) is probed on one example of the data's shape; others on a
    # (1, 1) problem.
    check_per_example(solver, shape, "solver")
    probe, probe_shape = solver, (1, 1)
    if has_per_example(solver):
        probe, probe_shape = example(solver, slice(0, 1)), (1, *shape[1:])
    answers = ask_solver(
        probe, method, _ProbeTerms(probe_shape), probe_shape, steps.grid
    )
    if adaptive and not answers.has_error_estimate:
        raise ValueError(
            f"`solver`: {type(solver).__name__} does not estimate its error, so it "
            "cannot take adaptive steps (the default when neither `num_steps` nor "
            "`stepsize_controller` is given). Pass num_steps=..., or use an adaptive "
            "solver: Tsit5, Dopri5, Dopri8, Bosh3, Heun (ODE); ShARK, SRA1, "
            "ReversibleHeun, HalfSolver(EulerHeun()) (SDE)."
        )

    # The first step, on the solver clock
    if dt0 is not None:
        check_nonzero("dt0", dt0)
        dt0 = clock.to_solver_step(dt0)
    elif adaptive and method == "sde":
        dt0 = (clock.to_solver(end) - clock.to_solver(start)) / 64
    if isinstance(steps.controller, dfx.ConstantStepSize) and dt0 is None:
        raise ValueError("`dt0` is required with diffrax.ConstantStepSize().")
    return SolvePlan(
        method=method,
        clock=clock,
        controller=steps.controller,
        adaptive=adaptive,
        max_steps=steps.max_steps,
        dt0=dt0,
        r0=clock.to_solver(start),
        r1=clock.to_solver(end),
        first_evals=answers.first,
        evals_per_step=answers.per_step,
        min_step=steps.min_step,
        extra_evals=answers.extra,
    )


class _Steps(NamedTuple):
    """The step arguments of a solve as a controller on the solver clock:
    `max_steps` for `diffrax.diffeqsolve` (a grid's length for a grid); for a fixed
    grid whose steps are known here, `grid` what the solver is asked of it (else
    None); for a concrete one, `min_step` its smallest step (else None)."""

    controller: dfx.AbstractStepSizeController
    max_steps: int
    grid: FixedGrid | None
    min_step: float | None


def _plan_steps(
    clock: Clock,
    start,
    end,
    num_steps,
    stepsize_controller,
    max_steps,
    rtol,
    atol,
    arg: str,
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
        check_time_grid("stepsize_controller", ts, start_f, end_f, clock, padded)
        controller = type(stepsize_controller)(ts=clock.to_solver(ts))
    elif stepsize_controller is None:
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        controller = dfx.PIDController(rtol=rtol, atol=atol, norm=batch_max_rms_norm)
    else:
        controller = stepsize_controller
    grid = min_step = None
    if isinstance(controller, (dfx.StepTo, PaddedStepTo)):
        max_steps = len(controller.ts) - 1
        n = max_steps  # a traced padded grid's steps are not known here
        ts = None
        if is_concrete(controller.ts):
            ts = np.asarray(controller.ts)
            n = grid_steps(ts)
            ts = ts[: n + 1]
            min_step = float(np.min(np.abs(np.diff(ts))))
            ts = clock.to_user(ts)
        if ts is not None or not isinstance(controller, PaddedStepTo):
            grid = FixedGrid(n, ts, start_f, end_f, arg)
    else:
        max_steps = check_int("max_steps", max_steps)
    return _Steps(controller, max_steps, grid, min_step)


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


class _ProbeTerms(Mapping):
    """The probe's terms of each method for `shape`, built when first asked for (a
    solver counted before is not probed again)."""

    def __init__(self, shape: tuple[int, ...]):
        self._shape = shape
        self._built: dict = {}

    def __getitem__(self, method: Method):
        if method not in ("ode", "sde"):
            raise KeyError(method)
        if method not in self._built:
            self._built[method] = _probe_terms(method, self._shape)
        return self._built[method]

    def __iter__(self) -> Iterator[str]:
        return iter(("ode", "sde"))

    def __len__(self) -> int:
        return 2


def count_score_evals(
    solver: dfx.AbstractSolver, method: Method, shape: tuple[int, ...] = (1, 1)
) -> SolverProbe:
    """The score evaluations of `solver` on `method`'s terms: by its first step and
    by each later one, measured once per solver, `method` and `shape` (cached), and
    whether it estimates its error. What `sample` counts, and what budgets are
    reckoned in (`sd.bench`, learned grids)."""
    return count_evals(solver, _ProbeTerms(shape), method, shape)


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
