import math
from typing import ClassVar

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._planned_solver import AbstractPlannedSolver, InnerSolves, min_grid_steps
from .._sde import AbstractSDE
from .._term import ScoreDrift
from ._common import check_decreasing, dense_info, SDETerms, unpack_sde


def _check_time(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"Restart: `{name}` must be a number, got {value!r}.") from e
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"Restart: `{name}` must be a finite time > 0, got {value!r}.")
    return v


class Restart(AbstractPlannedSolver, dfx.AbstractItoSolver):
    r"""Restart sampling (Xu et al. 2023): an ODE sampler whose path, on reaching
    `t_min`, jumps forward to `t_max` with fresh noise of the forward SDE and runs the
    ODE back down, `num_restarts` times, before going on. Each jump
    $x_{t_\max} = \frac{a(t_\max)}{a(t_\min)} x_{t_\min} + \sqrt{v}\, z$ (the exact
    forward transition, `sde.transition`) adds noise that contracts the errors
    accumulated so far, and the ODE segments add little error of their own.

    Composed of existing pieces: `solver` (any ODE sampler of this package or of
    diffrax) integrates the probability-flow ODE on the main grid and on each restart
    segment (`num_steps` steps uniform in log-SNR from `t_max` to `t_min`, a fresh
    solver state each time; the main grid goes on with the state of the last
    segment); the noise $z$ comes from the terms' Brownian path like every sampler
    here (independent normals over the step ending at `t_min`, see
    [`PredictorCorrector`][]). So it is a diffrax solver of the reverse-time SDE terms
    (`method="sde"`, inferred), and the same key gives the same samples.

    `t_min` must be a time of the main grid (its interior), and
    `t_min < t_max <= sde.T`; [`sample`][] checks both (`ValueError` naming the
    argument). Score evaluations: the main grid's, plus
    `num_restarts * (solver's evaluations for num_steps steps)`, all counted by
    [`sample`][].

    **Arguments:**

    - `solver`: the ODE solver, e.g. [`DPMSolverPP2M`][], [`UniPC`][],
        [`EDMHeun`][], `diffrax.Heun()`.
    - `t_min`, `t_max`: the restart interval (times, `0 < t_min < t_max`).
    - `num_restarts`: $K$, jumps per solve (>= 1).
    - `num_steps`: ODE steps per restart segment (>= 1; at least the solver's order
        for a multistep solver).

    **Reference:** Xu, Deng, Zhou, Tao, Jaakkola, *Restart Sampling for Improving
    Generative Processes*, NeurIPS 2023.
    """

    solver: dfx.AbstractSolver
    t_min: float = eqx.field(static=True)
    t_max: float = eqx.field(static=True)
    num_restarts: int = eqx.field(static=True, default=1)
    num_steps: int = eqx.field(static=True, default=4)

    term_structure: ClassVar = SDETerms
    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    def __check_init__(self):
        if not isinstance(self.solver, dfx.AbstractSolver):
            raise ValueError(
                "Restart: `solver` must be a diffrax ODE solver (sd.DPMSolverPP2M(), "
                f"sd.UniPC(), diffrax.Heun(), ...), got {type(self.solver).__name__}."
            )
        ts = self.solver.term_structure
        if not (isinstance(ts, type) and issubclass(ts, dfx.AbstractTerm)) or (
            isinstance(self.solver, (dfx.AbstractItoSolver, Restart))
        ):
            raise ValueError(
                f"Restart: `solver` must integrate the probability-flow ODE; "
                f"{type(self.solver).__name__} is an SDE solver."
            )
        t_min = _check_time("t_min", self.t_min)
        t_max = _check_time("t_max", self.t_max)
        if not t_min < t_max:
            raise ValueError(
                f"Restart: `t_min` must be < `t_max`, got t_min={self.t_min}, "
                f"t_max={self.t_max}."
            )
        for name, v in (
            ("num_restarts", self.num_restarts),
            ("num_steps", self.num_steps),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Restart: `{name}` must be an int >= 1, got {v!r}.")
        need = min_grid_steps(self.solver)
        if self.num_steps < need:
            raise ValueError(
                f"Restart: `num_steps` must be >= {need} for "
                f"{type(self.solver).__name__} (its order), got {self.num_steps}."
            )

    def order(self, terms):
        return None

    def strong_order(self, terms):
        return None

    def min_grid_steps(self) -> int:
        """The main grid is stepped by `solver`: its minimum."""
        return min_grid_steps(self.solver)

    def check_grid(self, ts, start: float, end: float, arg: str) -> None:
        """Called by [`sample`][] with the main grid `ts` (user clock, from `start` =
        T down to `end` = eps): `t_max` within the time range, `t_min` one of the
        grid's interior times."""
        if self.t_max > start * (1 + 1e-6):
            raise ValueError(
                f"Restart: `t_max` = {self.t_max} is outside the time range "
                f"[eps, T] = [{end}, {start}]."
            )
        if self.t_min <= end:
            raise ValueError(
                f"Restart: `t_min` = {self.t_min} is outside the time range: it must "
                f"be > eps = {end} (a time of the grid before its end)."
            )
        if ts is None:
            return
        ts = np.asarray(ts, np.float64)
        close = np.isclose(ts[1:-1], self.t_min, rtol=1e-5, atol=0.0)
        if not close.any():
            raise ValueError(
                f"`{arg}`: Restart(t_min={self.t_min}) restarts when the grid reaches "
                "t_min, so t_min must be one of its interior times; it is not. Build "
                "the grid with t_min in it (e.g. two sd.time_grid pieces joined)."
            )

    def inner_solves(self) -> tuple[InnerSolves, ...]:
        """The ODE segments, once per solve (the main grid's steps are counted by
        the plan): `num_restarts` solves of `num_steps` steps of `solver`."""
        return (InnerSolves(self.solver, self.num_restarts, self.num_steps),)

    def inner_term(self, terms) -> dfx.ODETerm:
        """The probability-flow ODE term (on the reversed clock $r = -t$) of the
        reverse-SDE `terms`, for `solver`."""
        p = unpack_sde(terms, "Restart")
        drift = ScoreDrift(p.sde, p.score, 0.5, p.batched, reverse_time=True)
        return dfx.ODETerm(drift)

    def init(self, terms, t0, t1, y0, args):
        p = unpack_sde(terms, "Restart")
        ode = self.inner_term(terms)
        clock = ode.vector_field.clock
        r0, r1 = clock.to_solver(p.time(t0)), clock.to_solver(p.time(t1))
        return self.solver.init(ode, r0, r1, y0, args)

    def _segment(self, ode, y, args):
        """One ODE solve from t_max down to t_min (reversed clock), fresh state."""
        sde = ode.vector_field.sde
        lam = jnp.linspace(
            sde.log_snr(self.t_max), sde.log_snr(self.t_min), self.num_steps + 1
        )
        ts = sde.t_from_log_snr(lam).astype(y.dtype)
        ts = ts.at[0].set(self.t_max).at[-1].set(self.t_min)
        rs = ode.vector_field.clock.to_solver(ts)
        state = self.solver.init(ode, rs[0], rs[1], y, args)

        def body(i, carry):
            y, state = carry
            y, _, _, state, _ = self.solver.step(
                ode, rs[i], rs[i + 1], y, args, state, False
            )
            return y, state

        return jax.lax.fori_loop(0, self.num_steps, body, (y, state))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        p = unpack_sde(terms, "Restart")
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, "Restart")
        ode = self.inner_term(terms)
        clock = ode.vector_field.clock
        y1, _, _, state, result = self.solver.step(
            ode,
            clock.to_solver(t),
            clock.to_solver(t_next),
            y0,
            args,
            solver_state,
            made_jump,
        )
        r, v = p.sde.transition(self.t_min, self.t_max)

        def restart(operand):
            # Drawn only on the restart step (inside the branch).
            z = p.normals(t0, t1, y0, self.num_restarts)

            def one(k, carry):
                y = (r * carry[0] + jnp.sqrt(v) * z[k]).astype(y0.dtype)
                return self._segment(ode, y, args)

            return jax.lax.fori_loop(0, self.num_restarts, one, operand)

        hit = jnp.abs(t_next - self.t_min) <= 1e-5 * self.t_min
        y1, state = jax.lax.cond(hit, restart, lambda o: o, (y1, state))
        return y1, None, dense_info(y0, y1), state, result

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


def restart_schedule(
    sde: AbstractSDE,
    num_evals: int,
    *,
    solver: dfx.AbstractSolver | None = None,
    evals_per_step: int = 1,
    eps: float | None = None,
    sigma_min: float = 0.3,
    sigma_max: float = 1.5,
    num_steps: int = 3,
) -> tuple[Restart, dfx.StepTo]:
    r"""A [`Restart`][] sampler and its grid that spend exactly `num_evals` score
    evaluations: the budget of `scoresde sample --solver restart --steps K` and of
    `scoresde bench --solvers restart`.

    The budget buys `N = num_evals // evals_per_step` ODE steps of `solver`, shared
    between `K = max(1, N // 10)` restart segments of `num_steps` steps each and a
    main grid of the `N - K * num_steps` others, uniform in log-SNR from `sde.T` to
    `eps` in two pieces joined at `t_min` (split in proportion to their log-SNR
    spans, at least one step each). `t_min` and `t_max` are the times where the noise
    level $s(t)/a(t)$ is `sigma_min` and `sigma_max` (`t_max` at most `sde.T`): the
    interval of Xu et al.'s experiments, as in `benchmarks/bench_fewstep.py`. With
    DPM-Solver++(2M) inside: 10 evaluations = 7 main steps + one restart of 3, 20 =
    14 + 2 x 3, 50 = 35 + 5 x 3.

    **Arguments:**

    - `sde`: the SDE (its log-SNR places the grid).
    - `num_evals`: the budget, at least `evals_per_step * (num_steps + 2)`.
    - `solver`: the inner ODE solver (default [`DPMSolverPP2M`][]).
    - `evals_per_step`: its score evaluations per step (1 for the default; 2 for
        `diffrax.Heun()` or [`EDMHeun`][]).
    - `eps`: where the main grid ends (default `sde.default_eps`); below `t_min`.
    - `sigma_min`, `sigma_max`: the restart interval, as noise levels.
    - `num_steps`: ODE steps per restart segment.

    **Returns:** `(Restart(...), diffrax.StepTo(ts))`: pass them to
    [`sample`][] as `solver` and `stepsize_controller`.

    **Raises:** `ValueError` for a budget below the least one, or `eps` not below
    `t_min`.

    ```python
    solver, grid = sd.restart_schedule(sde, 20)
    out = sd.sample(key, sde, score, (1000, 2), solver=solver, stepsize_controller=grid)
    # out.stats["num_score_evals"] == 20
    ```

    **Reference:** Xu, Deng, Zhou, Tao, Jaakkola, *Restart Sampling for Improving
    Generative Processes*, NeurIPS 2023.
    """
    from .dpm_solver import DPMSolverPP2M
    from .time_grid import time_grid

    solver = DPMSolverPP2M() if solver is None else solver
    if isinstance(evals_per_step, bool) or not (
        isinstance(evals_per_step, int) and evals_per_step >= 1
    ):
        raise ValueError(
            f"restart_schedule: `evals_per_step` must be an int >= 1, got "
            f"{evals_per_step!r}."
        )
    least = evals_per_step * (num_steps + 2)
    if isinstance(num_evals, bool) or not isinstance(num_evals, int | np.integer):
        raise ValueError(
            f"restart_schedule: `num_evals` must be an int, got {num_evals!r}."
        )
    if num_evals < least:
        raise ValueError(
            f"a budget of {num_evals} score evaluations is below what restart needs: "
            f"at least {least} ({num_steps} steps of one restart segment and 2 of "
            f"the main grid, {evals_per_step} evaluation(s) each)."
        )
    steps = int(num_evals) // evals_per_step
    k = max(1, steps // 10)
    main = steps - k * num_steps
    t_of = lambda sigma: float(sde.t_from_log_snr(-2.0 * math.log(sigma)))  # noqa: E731
    t_min, t_max = t_of(sigma_min), min(t_of(sigma_max), float(sde.T))
    eps = float(sde.default_eps) if eps is None else float(eps)
    if not eps < t_min:
        raise ValueError(
            f"restart_schedule: `eps` = {eps} must be below t_min = {t_min:.4g} (the "
            f"time of the noise level sigma_min = {sigma_min})."
        )
    lam = lambda t: float(sde.log_snr(t))  # noqa: E731
    frac = (lam(t_min) - lam(sde.T)) / (lam(eps) - lam(sde.T))
    n1 = min(max(1, round(main * frac)), main - 1)
    ts = jnp.concatenate(
        [
            time_grid(sde, n1, "logsnr", eps=t_min),
            time_grid(sde, main - n1, "logsnr", eps=eps, start=t_min)[1:],
        ]
    )
    restart = Restart(solver, t_min, t_max, num_restarts=k, num_steps=num_steps)
    return restart, dfx.StepTo(ts)
