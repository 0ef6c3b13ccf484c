import math
import warnings
from collections.abc import Callable
from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from ._brownian import per_sample_keys, PerSampleBrownianPath
from ._nfe import probe_solver
from ._sde import AbstractSDE
from ._sharding import (
    batch_sharding,
    constrain,
    constrain_leading,
    error_if,
    raise_if_failed,
)
from ._term import batched_score, probability_flow_term, reverse_sde_terms


Method = Literal["sde", "ode"]
_NOT_FINITE = (
    "sample: the solve produced non-finite samples (NaN or inf); the score or the "
    "solver diverged. Check the score on the whole time range, or use more steps."
)


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


def check_sde_score_solver(sde, score, solver) -> None:
    """The types of the three arguments every solve takes, each error naming its
    argument (shared by `sample`, `log_likelihood`, `encode` and `decode`)."""
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"`sde` must be an AbstractSDE (VPSDE, ...), got {type(sde)}.")
    if not callable(score):
        raise TypeError(f"`score` must be callable as score(t, x), got {type(score)}.")
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"`solver` must be a diffrax solver, got {type(solver)}.")


def solver_kinds(solver: dfx.AbstractSolver) -> tuple[bool, bool]:
    """Whether `solver` can integrate (an ODE, the reverse SDE): a solver taking one
    term integrates ODEs; one marked Ito/Stratonovich, or taking several terms, SDEs."""
    ts = solver.term_structure
    takes_one_term = isinstance(ts, type) and issubclass(ts, dfx.AbstractTerm)
    is_sde = (
        isinstance(solver, (dfx.AbstractItoSolver, dfx.AbstractStratonovichSolver))
        or not takes_one_term
    )
    return takes_one_term, is_sde


def _resolve_method(solver: dfx.AbstractSolver, method: Method | None) -> Method:
    can_ode, can_sde = solver_kinds(solver)
    name = type(solver).__name__
    if method is None:
        if can_ode and can_sde:
            raise ValueError(
                f"`method`: the solver {name} integrates both the reverse-time SDE and "
                "the probability-flow ODE; pass method='sde' (e.g. Euler-Maruyama) or "
                "method='ode'."
            )
        return "ode" if can_ode else "sde"
    if method not in ("sde", "ode"):
        raise ValueError(f"`method` must be 'sde' or 'ode' (or None), got {method!r}.")
    if method == "sde" and not can_sde:
        raise ValueError(
            f"`solver`: {name} is an ODE solver and cannot integrate the reverse-time "
            "SDE. Use method='ode' (the probability-flow ODE), or an SDE solver: "
            "diffrax.Euler (Euler-Maruyama), EulerHeun, Heun, ReversibleHeun, "
            "Milstein, SRA1, ShARK, SEA, SPaRK."
        )
    if method == "ode" and not can_ode:
        raise ValueError(
            f"`solver`: {name} is an SDE-only solver and cannot integrate the "
            "probability-flow ODE. Use method='sde', or an ODE solver: diffrax.Euler, "
            "Heun, Midpoint, Ralston, Bosh3, Tsit5, Dopri5, Dopri8."
        )
    return method


def _concrete_float(x, name: str) -> float | None:
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return None
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"`{name}` must be a real scalar, got {x!r}.") from e


def check_score_shape(score: Callable, data_shape: tuple[int, ...], dtype) -> None:
    """Raise a `ValueError` naming both shapes unless `score(t, x)` maps an example of
    `data_shape` to an array of the same shape."""
    x = jax.ShapeDtypeStruct(data_shape, dtype)
    t = jax.ShapeDtypeStruct((), dtype)
    try:
        out = eqx.filter_eval_shape(score, t, x)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"`score` failed on one example of shape {data_shape} (the data shape, "
            f"from `shape`): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != data_shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"`score` returned shape {got} for one example of shape {data_shape}; "
            "a score must return an array of its input's shape. Check `shape` "
            "(num_samples, *data_shape) against the model."
        )


def _check_shape(shape) -> tuple[int, ...]:
    if isinstance(shape, int) or not all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape
    ):
        raise ValueError(
            f"`shape` must be a tuple of ints (num_samples, *data_shape), got {shape!r}."
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ValueError(
            "`shape` must be (num_samples, *data_shape) with at least one data axis and "
            f"every size >= 1, got {shape}. For scalar data use (num_samples, 1)."
        )
    return shape


def _check_saveat(saveat: dfx.SaveAt, T: float, eps: float | None) -> None:
    """Concrete `SaveAt(ts=...)` times must decrease from `T` towards `eps`."""
    subs = jax.tree_util.tree_leaves(
        saveat.subs, is_leaf=lambda x: isinstance(x, dfx.SubSaveAt)
    )
    for sub in subs:
        if sub.ts is None or isinstance(sub.ts, jax.core.Tracer):
            continue
        ts = np.asarray(sub.ts, dtype=np.float64)
        lo = 0.0 if eps is None else eps
        if (
            ts.ndim != 1
            or np.any(np.diff(ts) > 0)
            or ts.size
            and (ts.max() > T * (1 + 1e-6) or ts.min() < lo * (1 - 1e-6))
        ):
            raise ValueError(
                "`saveat`: SaveAt(ts=...) times must decrease from T = "
                f"{T} towards eps = {eps} (sampling runs backwards in time), got "
                f"{ts}."
            )


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
    eps: float | None = None,
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
    - `num_steps`: fixed steps, uniform in `t` from `T` to `eps`. Give exactly one of
        `num_steps` and `stepsize_controller`.
    - `stepsize_controller`: a diffrax controller: adaptive
        (`diffrax.PIDController(rtol, atol)`) or fixed (`diffrax.StepTo(ts)` with `ts`
        decreasing from `T` to `eps`, e.g. from a non-uniform time grid).
    - `eps`: end time, `0 < eps < T`. Default `sde.default_eps` (the paper's: 1e-3 for
        VP/sub-VP, 1e-5 for VE).
    - `dt0`: initial step size magnitude for adaptive solves (its sign is taken care
        of). Default: chosen by diffrax for ODEs; `(T - eps) / 64` for SDEs.
    - `denoise`: if True, finish with Tweedie's denoising step
        $x \mapsto (x + s(\epsilon)^2\, s_\theta(\epsilon, x)) / a(\epsilon)$, the
        posterior mean $\mathbb{E}[x_0 | x_\epsilon]$ (one more score evaluation).
    - `saveat`: a `diffrax.SaveAt` for the trajectory (times must decrease from `T`
        towards `eps`); the final samples are always returned too.
    - `adjoint`: a diffrax adjoint for differentiating through the solve. Default:
        `diffrax.ForwardMode()` for fixed steps (fastest; needed by the fast Brownian
        path), `diffrax.RecursiveCheckpointAdjoint()` for adaptive ones.
    - `brownian_tol`: tolerance of the `diffrax.VirtualBrownianTree` used with adaptive
        SDE solves. Default `(T - eps) * 2**-12`.
    - `max_steps`: maximum number of steps of an adaptive solve (fixed solves take
        exactly `num_steps`).
    - `progress_meter`: a diffrax progress meter (e.g. `diffrax.TqdmProgressMeter()`);
        default none. A progress meter reports to the host during the solve.
    - `throw`: raise if the solve fails (diffrax's `throw`). Non-finite samples always
        raise. With `throw=False` a failed solve (e.g. an adaptive solve whose steps
        are all rejected because the score is NaN somewhere, until `max_steps`) returns
        the finite state it reached, with `result != diffrax.RESULTS.successful`:
        check `result`.
    - `sharding`: shard the batch over several devices (the solve then runs SPMD,
        one jit-compiled program over the mesh). A `jax.sharding.Mesh` shards the
        batch axis over ALL of the mesh's axes (e.g. 8 devices for a 4x2 mesh); a
        `jax.sharding.NamedSharding` is used as given for the `(num_samples,
        *data_shape)` array (its spec's first entry names the batch's mesh axes).
        Meshes from `jax.make_mesh` (`Explicit` axes by default) are used with
        `Auto` axes over the same devices. `num_samples` must be a multiple of the
        number of devices the batch is split over. Example `i` is driven by
        `fold_in(key, i)` alone, so the samples are those of `sharding=None`
        (bitwise for fixed steps; to float32 round-off for adaptive steps, whose
        error norm sums over the batch). `.samples` come back sharded over the
        batch. Failures (non-finite samples; with `throw`, a failed solve) are
        checked after the call and raise `RuntimeError` (inside an outer `jax.jit`
        they are not checked: read `.result`). Default None: one device.

    **Returns:** a [`SampleResult`][] with `.samples` and `.stats`.

    **Raises:** `ValueError` naming the argument for inconsistent input (shapes,
    `eps`, `num_steps`, a solver that cannot integrate the chosen terms, a batch that
    does not divide over `sharding`); `TypeError` for a `sharding` that is neither a
    `Mesh` nor a `NamedSharding`; a run-time error if the score produces NaN or inf
    during the solve.

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
    check_sde_score_solver(sde, score, solver)
    shape = _check_shape(shape)
    batch_sh = batch_sharding(sharding, shape)
    method = _resolve_method(solver, method)
    T = float(sde.T)
    eps = sde.default_eps if eps is None else eps
    eps_f = _concrete_float(eps, "eps")
    if eps_f is not None and not (0 < eps_f < T):
        raise ValueError(f"`eps` must satisfy 0 < eps < T = {T}, got {eps}.")

    if (num_steps is None) == (stepsize_controller is None):
        raise ValueError(
            "Give exactly one of `num_steps` (fixed steps) and `stepsize_controller` "
            "(e.g. diffrax.PIDController(rtol=1e-5, atol=1e-5) or diffrax.StepTo(ts)); "
            f"got num_steps={num_steps!r}, stepsize_controller={stepsize_controller!r}."
        )
    if num_steps is not None:
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
        if num_steps < 1:
            raise ValueError(f"`num_steps` must be >= 1, got {num_steps}.")
        if eps_f is None:  # traced eps
            grid = jnp.linspace(T, eps, int(num_steps) + 1)
        else:
            # Built in NumPy so the grid (and the noise keyed on its exact bits) is the
            # same with and without an outer `jax.jit`.
            grid = np.linspace(T, eps_f, int(num_steps) + 1).astype(
                jnp.result_type(float)
            )
        stepsize_controller = dfx.StepTo(ts=grid)
    if dt0 is not None:
        dt0_f = _concrete_float(dt0, "dt0")
        if dt0_f is not None and not (math.isfinite(dt0_f) and dt0_f != 0):
            raise ValueError(f"`dt0` must be a finite non-zero number, got {dt0!r}.")
    if brownian_tol is not None:
        tol_f = _concrete_float(brownian_tol, "brownian_tol")
        if tol_f is not None and not (math.isfinite(tol_f) and tol_f > 0):
            raise ValueError(
                f"`brownian_tol` must be a finite number > 0, got {brownian_tol!r}."
            )
    if saveat is not None:
        _check_saveat(saveat, T, eps_f)
    adaptive = isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController)

    def make_terms(s):
        return _terms(
            sde, s, method, adaptive, (1, 1), jax.random.key(0), 1e-3, T, 1e-3
        )

    probe = probe_solver(solver, make_terms, (method, adaptive))
    if isinstance(stepsize_controller, dfx.StepTo):
        ts = stepsize_controller.ts
        if not isinstance(ts, jax.core.Tracer):
            ts_np = np.asarray(ts, dtype=np.float64)
            ok = (
                ts_np.ndim == 1
                and ts_np.size >= 2
                and np.all(np.diff(ts_np) < 0)
                and math.isclose(ts_np[0], T, rel_tol=1e-6)
                and (eps_f is None or math.isclose(ts_np[-1], eps_f, rel_tol=1e-5))
            )
            if not ok:
                raise ValueError(
                    "`stepsize_controller`: StepTo(ts) needs ts strictly decreasing "
                    f"from T = {T} to eps = {eps}, got ts from {ts_np[:1]} to "
                    f"{ts_np[-1:]} ({ts_np.size} points)."
                )
        steps = len(ts) - 1
    elif adaptive:
        if not probe.has_error_estimate:
            raise ValueError(
                f"`solver`: {type(solver).__name__} does not estimate its error, so it "
                "cannot take adaptive steps. Use num_steps=..., or an adaptive solver: "
                "Tsit5, Dopri5, Dopri8, Bosh3, Heun (ode); ReversibleHeun, ShARK, SRA1, "
                "HalfSolver(EulerHeun()) (sde)."
            )
        steps = max_steps
    elif isinstance(stepsize_controller, dfx.ConstantStepSize):
        if dt0 is None:
            raise ValueError("`dt0` is required with diffrax.ConstantStepSize().")
        steps = max_steps
    else:
        steps = max_steps
    if adaptive and (max_steps is None or max_steps < 1):
        raise ValueError(f"`max_steps` must be an int >= 1, got {max_steps!r}.")

    if dt0 is None and (adaptive and method == "sde"):
        dt0 = (T - eps) / 64
    if dt0 is not None:
        dt0 = abs(dt0)  # the solve runs forward on the reversed clock r = -t
    if brownian_tol is None:
        brownian_tol = (T - eps) * 2.0**-12
    if progress_meter is None:
        progress_meter = dfx.NoProgressMeter()
    if adjoint is None:
        adjoint = dfx.RecursiveCheckpointAdjoint() if adaptive else dfx.ForwardMode()

    if isinstance(stepsize_controller, dfx.StepTo):
        # The solve runs on the reversed clock r = -t, from -T up to -eps.
        ts = stepsize_controller.ts
        neg = -ts if isinstance(ts, (np.ndarray, jax.Array)) else -np.asarray(ts)
        stepsize_controller = dfx.StepTo(ts=neg)
    out = _sample_jit(
        key,
        sde,
        score,
        shape,
        solver,
        method,
        stepsize_controller,
        adaptive,
        eps,
        dt0,
        denoise,
        saveat,
        adjoint,
        brownian_tol,
        steps,
        progress_meter,
        throw,
        batch_sh,
    )
    samples, ts_out, traj, result, stats = out
    if batch_sh is not None:
        raise_if_failed(samples, result, throw=throw, msg=_NOT_FINITE)

    n = stats["num_steps"]
    if probe.first < 0:
        nfe = jnp.asarray(-1)
    else:
        nfe = probe.first + probe.per_step * jnp.maximum(n - 1, 0)
        if denoise:
            nfe = nfe + 1
    stats = dict(stats, num_score_evals=jnp.asarray(nfe))
    return SampleResult(
        samples=samples, stats=stats, ts=ts_out, trajectory=traj, result=result
    )


def _terms(sde, score, method, adaptive, shape, key, eps, T, tol, sharding=None):
    """Terms on the reversed clock r = -t, integrated from -T up to -eps."""
    if method == "ode":
        return probability_flow_term(sde, score, reverse_time=True)
    keys = constrain_leading(per_sample_keys(key, shape[0]), sharding)
    one = jax.ShapeDtypeStruct(shape[1:], jnp.result_type(float))
    if adaptive:
        template = dfx.VirtualBrownianTree(
            -T, -eps, tol=tol, shape=one, key=keys[0], levy_area=dfx.SpaceTimeLevyArea
        )
    else:
        template = dfx.UnsafeBrownianPath(
            shape=one, key=keys[0], levy_area=dfx.SpaceTimeLevyArea
        )
    # The path reports the solve's interval, so samplers can recognise the last step.
    path = PerSampleBrownianPath(template, keys, -T, -eps)
    return reverse_sde_terms(sde, score, path)


def _to_reversed_clock(subs: PyTree) -> PyTree:
    """Map the user's SubSaveAt (times t, decreasing) to the reversed clock r = -t."""

    def one(sub):
        if sub.ts is not None:
            sub = eqx.tree_at(lambda x: x.ts, sub, -jnp.asarray(sub.ts))
        fn = sub.fn
        return eqx.tree_at(lambda x: x.fn, sub, lambda r, y, args: fn(-r, y, args))

    return jax.tree_util.tree_map(
        one, subs, is_leaf=lambda x: isinstance(x, dfx.SubSaveAt)
    )


@eqx.filter_jit
def _sample_jit(
    key,
    sde,
    score,
    shape,
    solver,
    method,
    controller,
    adaptive,
    eps,
    dt0,
    denoise,
    saveat,
    adjoint,
    brownian_tol,
    max_steps,
    progress_meter,
    throw,
    sharding,
):
    T = sde.T
    dtype = jnp.result_type(float)
    keys = constrain_leading(per_sample_keys(key, shape[0]), sharding)
    prior_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)
    noise_key = jax.random.fold_in(key, 1)
    y0 = jax.vmap(lambda k: sde.prior_sample(k, shape[1:]))(prior_keys).astype(dtype)
    y0 = constrain(y0, sharding)
    check_score_shape(score, shape[1:], dtype)  # at trace time only
    terms = _terms(
        sde, score, method, adaptive, shape, noise_key, eps, T, brownian_tol, sharding
    )
    subs = [dfx.SubSaveAt(t1=True)]
    if saveat is not None:
        subs.append(_to_reversed_clock(saveat.subs))
    with warnings.catch_warnings():
        # DDIM(eta > 0) and EDMHeun(churn > 0) take the reverse-SDE terms only for their
        # additive noise (Ito = Stratonovich) and serve the ODE without it, so they
        # cannot carry diffrax's class marker; silence diffrax's warning about it here.
        warnings.filterwarnings(
            "ignore",
            message=r"`(DDIM|EDMHeun)` is not marked as converging",
            category=UserWarning,
        )
        sol = dfx.diffeqsolve(
            terms,
            solver,
            t0=-T,
            t1=-eps,
            dt0=dt0,
            y0=y0,
            saveat=dfx.SaveAt(
                subs=subs, dense=False if saveat is None else saveat.dense
            ),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=max_steps,
            progress_meter=progress_meter,
            throw=throw and sharding is None,  # sharded: raise_if_failed
        )
    samples = sol.ys[0][-1]
    if denoise:
        t = jnp.asarray(eps, dtype)
        s = batched_score(score, t, samples)
        samples = (samples + sde.std(t) ** 2 * s) / sde.mean_coeff(t)
        samples = samples.astype(dtype)
    samples = error_if(samples, ~jnp.all(jnp.isfinite(samples)), _NOT_FINITE, sharding)
    samples = constrain(samples, sharding)
    ts_out = -sol.ts[1] if saveat is not None else None
    traj = sol.ys[1] if saveat is not None else None
    stats = {
        k: sol.stats[k]
        for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")
    }
    return samples, ts_out, traj, sol.result, stats
