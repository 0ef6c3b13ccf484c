import dataclasses
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from ._brownian import per_sample_keys
from ._checks import (
    check_eps,
    check_positive,
    check_saveat,
    check_score_shape,
    check_sde_score,
    check_shape,
)
from ._clock import REVERSED
from ._conditioning import check_per_example, constrain_per_example
from ._custom_types import Method
from ._errors import check_solve, OutOfMemoryError
from ._memory import (
    compiled_bytes,
    gib,
    is_out_of_memory,
    largest_batch,
    round_down,
)
from ._plan import plan_solve
from ._sde import AbstractSDE
from ._sharding import batch_sharding, constrain, constrain_leading
from ._solve_plan import SolvePlan
from ._term import batched_score, sampling_terms


_NOT_FINITE = "the solve produced non-finite samples (NaN or inf)"


class SampleResult(eqx.Module):
    """What [`sample`][] returns.

    **Fields:**

    - `samples`: the final states, shape `(num_samples, *data_shape)` (after the optional
        denoising step).
    - `stats`: a dict with `num_steps` (attempted steps), `num_accepted_steps`,
        `num_rejected_steps` and `num_score_evals` (score evaluations per example,
        including any denoising step; `-1` if the solver's count is not constant, e.g.
        an implicit solver).
    - `ts`: the times of the saved trajectory (`None` without `saveat`).
    - `trajectory`: the states saved at `saveat`, of the structure the `saveat` gives
        (`None` without `saveat`).
    - `result`: the diffrax `RESULTS` of the solve.
    """

    samples: Float[Array, " batch *shape"]
    stats: dict[str, Int[Array, ""]]
    ts: PyTree | None
    trajectory: PyTree | None
    result: dfx.RESULTS


def sample(
    key: PRNGKeyArray,
    sde: AbstractSDE,
    score: Callable,
    shape: tuple[int, ...],
    *,
    solver: dfx.AbstractSolver,
    method: Method | None = None,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    eps: float | Float[ArrayLike, ""] | None = None,
    dt0: float | None = None,
    denoise: bool = False,
    saveat: dfx.SaveAt | None = None,
    adjoint: dfx.AbstractAdjoint | None = None,
    brownian_tol: float | None = None,
    max_steps: int | None = 4096,
    progress_meter: dfx.AbstractProgressMeter | None = None,
    throw: bool = True,
    sharding: jax.sharding.Mesh | jax.sharding.NamedSharding | None = None,
) -> SampleResult:
    r"""Draw samples by integrating the reverse-time SDE or the probability-flow ODE
    from `sde.T` down to `eps`, with any diffrax solver, in one jit-compiled
    `diffrax.diffeqsolve` (nothing leaves the device during the solve).

    The state is the whole batch `(num_samples, *data_shape)`: one step size for the
    batch, as in the paper's code. For per-example adaptive steps, `jax.vmap` over calls
    with `num_samples=1`. Example `i` is driven by `fold_in(key, i)` alone (its prior
    draw and its Brownian path), so with fixed steps it does not depend on the batch
    size or the other examples.

    **Arguments:**

    - `key`: a JAX PRNG key; the same key gives the same samples.
    - `sde`: the forward SDE ([`VPSDE`][], [`SubVPSDE`][], [`VESDE`][], ...).
    - `score`: called as `score(t, x)` on ONE example (`t` a scalar, `x` of shape
        `data_shape`), returning an array of `x`'s shape: an exact
        `GaussianMixture.score(sde)`, an Equinox network, an [`EpsScore`][] /
        [`X0Score`][] adapter, or any callable.
    - `shape`: `(num_samples, *data_shape)`.
    - `solver`: any diffrax solver (or one of this package's). SDE solvers (e.g.
        `diffrax.Euler()` = Euler-Maruyama, `EulerHeun`, `ReversibleHeun`, `SRA1`,
        `ShARK`) integrate the reverse SDE; ODE solvers (`Euler`, `Heun`, `Tsit5`,
        `Dopri5`, ...) the probability-flow ODE.
    - `method`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE). May be
        omitted when the solver serves only one of them (e.g. `Tsit5` -> ODE,
        `ShARK` -> SDE); required when it serves both (`Euler`, `Heun`,
        `ReversibleHeun`, ...).
    - `num_steps`: fixed steps, uniform in `t` from `T` to `eps`. Give at most one of
        `num_steps` and `stepsize_controller`; with neither, the solve is adaptive with
        `diffrax.PIDController(rtol=1e-5, atol=1e-5, norm=sd.batch_max_rms_norm)`
        (the solver must then estimate its error).
    - `stepsize_controller`: a diffrax controller: adaptive
        (`diffrax.PIDController(rtol, atol)`) or fixed (`diffrax.StepTo(ts)` with `ts`
        strictly decreasing from `T` to `eps`, e.g. from [`time_grid`][]).
    - `eps`: end time, `0 < eps < T`. Default `sde.default_eps` (the paper's: 1e-3 for
        VP/sub-VP, 1e-5 for VE).
    - `dt0`: initial step size magnitude for adaptive solves (its sign is taken care
        of). Default: chosen by diffrax for ODEs; `(T - eps) / 64` for SDEs.
    - `denoise`: if True, finish with Tweedie's denoising step
        $x \mapsto (x + s(\epsilon)^2\, s_\theta(\epsilon, x)) / a(\epsilon)$, the
        posterior mean $\mathbb{E}[x_0 | x_\epsilon]$ (one more score evaluation).
    - `saveat`: a `diffrax.SaveAt` for the trajectory: `SaveAt(ts=...)` with times
        decreasing from `T` towards `eps`, or `SaveAt(steps=True)`; dense output is
        refused. The final samples are always returned too.
    - `adjoint`: how `jax.grad` goes through the solve. Default
        `diffrax.RecursiveCheckpointAdjoint()` (reverse mode) for the probability-flow
        ODE and for adaptive SDE solves, so gradients work out of the box; for
        fixed-step SDE solves `diffrax.ForwardMode()` with the fast
        `diffrax.UnsafeBrownianPath` (no reverse-mode gradients). Passing any other
        adjoint to a fixed-step SDE solve (e.g. `RecursiveCheckpointAdjoint()`)
        switches its noise to a per-example `diffrax.VirtualBrownianTree` on the same
        per-example keys, which can be differentiated (the samples then differ from
        the fast path's: other draws of the same distribution).
    - `brownian_tol`: tolerance of the `diffrax.VirtualBrownianTree` (adaptive SDE
        solves, and differentiable fixed-step ones). Default `(T - eps) * 2**-12`,
        and for a fixed grid at most a sixteenth of its smallest step.
    - `max_steps`: maximum number of steps (an int >= 1) of a solve that is not a
        fixed grid (fixed solves take exactly their grid's steps).
    - `progress_meter`: a diffrax progress meter (e.g. `diffrax.TqdmProgressMeter()`);
        default none. A progress meter reports to the host during the solve.
    - `throw`: raise if the solve fails (diffrax's `throw`), as a [`SolveError`][]
        whose message says what to change (e.g. `max_steps` reached: raise it or
        loosen the controller's `rtol`). Non-finite samples always raise. With `throw=False` a failed solve (e.g. an adaptive solve whose steps
        are all rejected because the score is NaN somewhere, until `max_steps`) returns
        the finite state it reached, with `result != diffrax.RESULTS.successful`:
        check `result`.
    - `sharding`: shard the batch over several devices: a `jax.sharding.Mesh` (the
        batch axis over ALL its axes) or a `jax.sharding.NamedSharding` for the
        `(num_samples, *data_shape)` array; `num_samples` must be a multiple of the
        number of devices it is split over. Example `i` is driven by `fold_in(key, i)`
        alone, so the samples are those of one device (to float32 round-off; bitwise
        for fixed steps when the score's arithmetic does not depend on the batch
        size, as with the exact mixture scores: a network's batched matrix products
        may be summed in another order for a shard than for the whole batch). What is checked when, and how meshes
        from `jax.make_mesh` are used: README, "Several devices and hosts". Default
        None: one device.

    **Returns:** a [`SampleResult`][] with `.samples` and `.stats`.

    **Raises:** `ValueError` naming the argument for inconsistent input (shapes,
    `eps`, `num_steps`/`stepsize_controller`/`max_steps`, a solver that cannot
    integrate the chosen terms, a batch that does not divide over `sharding`); `TypeError` for a `sharding` that is neither a
    `Mesh` nor a `NamedSharding`; [`OutOfMemoryError`][] (a `MemoryError`) if the
    samples do not fit in memory (it says how many would, also in `.largest`: sample
    in chunks); a run-time error if the score
    produces NaN or inf during the solve.

    **Example:**

    ```python
    sde = sd.VPSDE()
    score = sd.GaussianMixture(means, stds).score(sde)
    x = sd.sample(jr.key(0), sde, score, (1000, 2), solver=diffrax.Euler(),
                  method="sde", num_steps=1000).samples                    # Euler-Maruyama
    x = sd.sample(jr.key(0), sde, score, (1000, 2), solver=diffrax.Tsit5(),
                  stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-5)
                  ).samples                                                # PF-ODE
    ```

    **Reference:** Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, *Score-Based
    Generative Modeling through Stochastic Differential Equations*, ICLR 2021.
    """
    # Checks
    check_sde_score(sde, score)
    shape = check_shape(shape)
    T = float(sde.T)
    eps = sde.default_eps if eps is None else eps
    eps_f = check_eps(eps, sde)
    if brownian_tol is not None:
        check_positive("brownian_tol", brownian_tol)
    if saveat is not None:
        check_saveat(saveat, T, eps_f)
    check_per_example(score, shape, "score")
    batch_sh = batch_sharding(sharding, shape)

    # Plan: the solver, its terms and its steps, checked once; the solve runs
    # forwards on the reversed clock r = -t, from -T up to -eps.
    plan = plan_solve(
        solver,
        method=method,
        shape=shape,
        start=T,
        end=eps,
        clock=REVERSED,
        num_steps=num_steps,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        dt0=dt0,
    )
    adjoint, brownian, brownian_tol = plan.sampling_noise(
        adjoint, brownian_tol, T - eps
    )
    # Only the Brownian tree's tolerance depends on the grid's values: with the
    # fast path or the ODE, grids of one length (or one padded length) share one
    # compiled program.
    plan = dataclasses.replace(plan, min_step=None)
    if brownian != "tree":
        brownian_tol = 0.0

    # Solve
    problem = _Sampling(
        sde=sde,
        score=score,
        shape=shape,
        solver=solver,
        plan=plan,
        eps=eps,
        denoise=bool(denoise),
        saveat=saveat,
        adjoint=adjoint,
        brownian=brownian,
        brownian_tol=brownian_tol,
        progress_meter=dfx.NoProgressMeter()
        if progress_meter is None
        else progress_meter,
        sharding=batch_sh,
    )
    try:
        samples, ts, trajectory, result, stats = _solve(problem, key)
    except jax.errors.JaxRuntimeError as e:
        if not is_out_of_memory(e):
            raise
        msg, largest = _out_of_memory(problem, key)
        raise OutOfMemoryError(msg, largest=largest) from e
    samples = check_solve(
        "sample",
        samples,
        result,
        throw=throw,
        max_steps=plan.max_steps,
        not_finite=_NOT_FINITE,
        in_program=batch_sh is None,
    )

    # Report
    nfe = plan.num_score_evals(stats["num_steps"])
    if denoise and plan.first_evals >= 0:
        nfe = nfe + 1
    stats = dict(stats, num_score_evals=jnp.asarray(nfe))
    return SampleResult(
        samples=samples, stats=stats, ts=ts, trajectory=trajectory, result=result
    )


def _out_of_memory(problem: "_Sampling", key: PRNGKeyArray) -> tuple[str, int | None]:
    """What to say when the solve for `problem` did not fit in memory, and how many
    samples would (read from the programs compiled for small batches; None if
    unknown)."""
    n, data_shape = problem.shape[0], problem.shape[1:]
    msg = f"`shape`: {n} samples of shape {data_shape} do not fit in memory"
    fit = None
    if problem.sharding is None:

        def bytes_at(m: int) -> int:
            small = dataclasses.replace(problem, shape=(m, *data_shape))
            return compiled_bytes(_solve.lower(small, key).compile())

        fit = largest_batch(bytes_at, probe=256)
    if fit is None:
        return (
            f"{msg}; sample fewer at a time (in chunks, each with its own key).",
            None,
        )
    largest, per = fit
    largest = round_down(largest)
    return (
        f"{msg} (they need {gib(per * n)}, {gib(per)} per sample); about {largest} "
        "fit at once: sample at most that many per call (in chunks, each with its own "
        "key).",
        largest,
    )


class _Sampling(eqx.Module):
    """Everything one jitted sampling solve needs (arrays traced, the rest static)."""

    sde: AbstractSDE
    score: Callable
    shape: tuple[int, ...] = eqx.field(static=True)
    solver: dfx.AbstractSolver
    plan: SolvePlan
    eps: float | Array
    denoise: bool = eqx.field(static=True)
    saveat: dfx.SaveAt | None
    adjoint: dfx.AbstractAdjoint
    brownian: str = eqx.field(static=True)  # "none" | "fast" | "tree"
    brownian_tol: float | Array
    progress_meter: dfx.AbstractProgressMeter
    sharding: jax.sharding.NamedSharding | None = eqx.field(static=True)


@eqx.filter_jit
def _solve(p: _Sampling, key: PRNGKeyArray):
    # Initial set-up
    dtype = jnp.result_type(float)
    check_score_shape(p.score, p.shape[1:], dtype)  # at trace time only
    score = constrain_per_example(p.score, p.sharding)
    solver = constrain_per_example(p.solver, p.sharding)
    keys = constrain_leading(per_sample_keys(key, p.shape[0]), p.sharding)
    prior_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    y0 = jax.vmap(lambda k: p.sde.prior_sample(k, p.shape[1:]))(prior_keys)
    y0 = constrain(y0.astype(dtype), p.sharding)
    terms = sampling_terms(
        p.sde,
        score,
        p.plan.method,
        p.shape,
        jax.random.fold_in(key, 1),
        p.plan.r0,
        p.plan.r1,
        p.brownian,
        p.brownian_tol,
        p.sharding,
    )
    subs = [dfx.SubSaveAt(t1=True)]
    if p.saveat is not None:
        subs.append(p.plan.clock.to_solver_saveat(p.saveat.subs))

    # Main loop
    sol = dfx.diffeqsolve(
        terms,
        solver,
        t0=p.plan.r0,
        t1=p.plan.r1,
        dt0=p.plan.dt0,
        y0=y0,
        saveat=dfx.SaveAt(subs=subs),
        stepsize_controller=p.plan.controller,
        adjoint=p.adjoint,
        max_steps=p.plan.max_steps,
        progress_meter=p.progress_meter,
        throw=False,  # checked after the call: `check_solve`
    )

    # Finish up
    samples = sol.ys[0][-1]
    if p.denoise:
        t = jnp.asarray(p.eps, dtype)
        s = batched_score(score, t, samples)
        samples = (samples + p.sde.std(t) ** 2 * s) / p.sde.mean_coeff(t)
        samples = samples.astype(dtype)
    samples = constrain(samples, p.sharding)
    ts = p.plan.clock.to_user(sol.ts[1]) if p.saveat is not None else None
    trajectory = sol.ys[1] if p.saveat is not None else None
    stats = {
        k: sol.stats[k]
        for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")
    }
    return samples, ts, trajectory, sol.result, stats
