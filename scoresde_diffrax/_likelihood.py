import math
from collections.abc import Callable, Sequence

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree, Real

from ._brownian import per_sample_keys
from ._divergence import AbstractDivergence, Hutchinson
from ._nfe import probe_solver
from ._sample import check_score_shape, check_sde_score_solver, solver_kinds
from ._sde import AbstractSDE
from ._sharding import (
    batch_sharding,
    constrain,
    constrain_leading,
    error_if,
    place,
    raise_if_failed,
)
from ._term import probability_flow_term


# Default arguments (module-level singletons; all immutable).
_HUTCHINSON = Hutchinson("rademacher")
_TSIT5 = dfx.Tsit5()
_CHECKPOINT = dfx.RecursiveCheckpointAdjoint()
_LL_NOT_FINITE = (
    "log_likelihood: the solve produced a non-finite log-density (NaN or inf); the "
    "score or the solver diverged. Check the score on [eps, T]."
)
_FLOW_NOT_FINITE = "encode/decode: the probability-flow ODE produced NaN or inf."


# --------------------------------------------------------------------------------------
# Error norm for a batched state
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_tol(name: str, value) -> None:
    try:
        v = float(value)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")


def _check_eps(eps, sde: AbstractSDE) -> None:
    try:
        e = float(eps)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return
    if not (0 < e < float(sde.T)):
        raise ValueError(f"`eps` must satisfy 0 < eps < T = {sde.T}, got {eps!r}.")


def _check_batch(name: str, x) -> Array:
    """`x` as a finite floating array of shape (batch, *data_shape)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be a floating-point array, got dtype {x.dtype}. For 8-bit "
            "data, dequantise it first (sd.dequantize) and scale it as the model "
            "expects."
        )
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            f"`{name}` must have shape (batch, *data_shape) with at least one data "
            f"axis, got {x.shape}. For one example use x[None]."
        )
    if _is_concrete(x):
        # Eager even under an outer `jax.jit` that closes over a concrete `x`.
        with jax.ensure_compile_time_eval():
            bad = int(jnp.sum(~jnp.isfinite(x)))
        if bad:
            raise ValueError(
                f"`{name}` must be finite; it has {bad} NaN or inf entries (shape "
                f"{x.shape})."
            )
    return x


def _check_fits_score(name: str, x, score: Callable) -> None:
    """Trace-time check (called inside the jitted functions, so it runs once per
    compilation) that the score maps one example of `x` to its shape."""
    try:
        check_score_shape(score, tuple(x.shape[1:]), x.dtype)
    except ValueError as e:
        raise ValueError(
            f"`{name}` of shape {x.shape} does not fit the score: one example has "
            f"shape {tuple(x.shape[1:])}. {e}"
        ) from e


def _check_common(sde, score, solver, divergence=None):
    check_sde_score_solver(sde, score, solver)
    if not solver_kinds(solver)[0]:
        raise ValueError(
            f"`solver`: {type(solver).__name__} integrates SDEs, not the "
            "probability-flow ODE. Use an ODE solver: diffrax.Tsit5, Dopri5, Dopri8, "
            "Heun, Bosh3, Euler, ..."
        )
    if divergence is not None and not isinstance(divergence, AbstractDivergence):
        raise TypeError(
            "`divergence` must be an AbstractDivergence (sd.Hutchinson(...), "
            f"sd.ExactDivergence(), or your own), got {type(divergence)}."
        )


def _check_step_to(controller, start: float, end: float) -> None:
    """Concrete `StepTo(ts)` times must run strictly monotonically from `start` to
    `end` (the user's clock: eps -> T to encode, T -> eps to decode)."""
    if not isinstance(controller, dfx.StepTo) or not _is_concrete(controller.ts):
        return
    ts = np.asarray(controller.ts, dtype=np.float64)
    sign = 1.0 if end > start else -1.0
    ok = (
        ts.ndim == 1
        and ts.size >= 2
        and bool(np.all(sign * np.diff(ts) > 0))
        and math.isclose(ts[0], start, rel_tol=1e-5, abs_tol=1e-12)
        and math.isclose(ts[-1], end, rel_tol=1e-5, abs_tol=1e-12)
    )
    if not ok:
        direction = "increasing" if sign > 0 else "decreasing"
        raise ValueError(
            f"`stepsize_controller`: StepTo(ts) needs ts strictly {direction} from "
            f"{start} to {end}, got ts from {ts.ravel()[:1]} to {ts.ravel()[-1:]} "
            f"({ts.size} points)."
        )


def _controller(
    solver,
    rtol,
    atol,
    num_steps,
    stepsize_controller,
    t0: float,
    t1: float,
):
    """The step-size controller on the integration clock [t0, t1] (t0 < t1), and
    whether it is adaptive."""
    _check_tol("rtol", rtol)
    _check_tol("atol", atol)
    if num_steps is not None and stepsize_controller is not None:
        raise ValueError(
            "Give at most one of `num_steps` (fixed steps) and `stepsize_controller`; "
            f"got num_steps={num_steps!r}, stepsize_controller={stepsize_controller!r}."
        )
    if num_steps is not None:
        if (
            isinstance(num_steps, bool)
            or not isinstance(num_steps, (int, np.integer))
            or num_steps < 1
        ):
            raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
        return dfx.StepTo(ts=jnp.linspace(t0, t1, int(num_steps) + 1)), False
    if stepsize_controller is None:
        stepsize_controller = dfx.PIDController(
            rtol=rtol, atol=atol, norm=batch_max_rms_norm
        )
    adaptive = isinstance(stepsize_controller, dfx.AbstractAdaptiveStepSizeController)
    if adaptive and not isinstance(solver, dfx.AbstractAdaptiveSolver):
        raise ValueError(
            f"`solver`: {type(solver).__name__} does not estimate its error, so it "
            "cannot take adaptive steps. Pass num_steps=..., or use Tsit5, Dopri5, "
            "Dopri8, Bosh3 or Heun."
        )
    return stepsize_controller, adaptive


def _max_steps(controller, max_steps):
    if isinstance(controller, dfx.StepTo):
        return len(controller.ts) - 1
    if (
        max_steps is None
        or (
            isinstance(max_steps, (int, np.integer)) and not isinstance(max_steps, bool)
        )
        and max_steps >= 1
    ):
        return max_steps
    raise ValueError(f"`max_steps` must be an int >= 1 or None, got {max_steps!r}.")


def _num_score_evals(solver, sde, adaptive, num_steps):
    probe = probe_solver(
        solver,
        lambda s: probability_flow_term(sde, s, reverse_time=True),
        ("ode", adaptive),
    )
    if probe.first < 0:
        return jnp.full_like(num_steps, -1)
    return probe.first + probe.per_step * jnp.maximum(num_steps - 1, 0)


# --------------------------------------------------------------------------------------
# One solve: a batched state, or a vmap of per-example solves
# --------------------------------------------------------------------------------------


_STAT_KEYS = ("num_steps", "num_accepted_steps", "num_rejected_steps")


def _solve(terms, y0, args, **kw):
    sol = dfx.diffeqsolve(terms, y0=y0, args=args, saveat=dfx.SaveAt(t1=True), **kw)
    y1 = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    return y1, {k: sol.stats[k] for k in _STAT_KEYS}, sol.result


def _solve_batch(per_example: bool, terms, y0, args, **kw):
    """Solve with the whole batch as one state, or (per_example) as a vmap of solves
    of one example each. Each per-example solve keeps a batch axis of size 1, so the
    same terms and error norm serve both. `kw` goes to `diffrax.diffeqsolve`."""
    if not per_example:
        return _solve(terms, y0, args, **kw)

    def one(y, a):
        y = jax.tree_util.tree_map(lambda u: u[None], y)
        a = jax.tree_util.tree_map(lambda u: u[None], a)
        y1, stats, result = _solve(terms, y, a, **kw)
        return jax.tree_util.tree_map(lambda u: u[0], y1), stats, result

    return jax.vmap(one)(y0, args)


# --------------------------------------------------------------------------------------
# Log-likelihood
# --------------------------------------------------------------------------------------


class _AugmentedFlow(eqx.Module):
    r"""The probability-flow ODE in natural time with its divergence, on a batch:
    $\dot x = f x - \tfrac12 g^2 s(t, x)$ and
    $\dot\ell = \nabla\cdot(f x - \tfrac12 g^2 s) = f D - \tfrac12 g^2 \nabla\cdot s$.
    The linear part of the divergence is exact; only the score's is estimated."""

    sde: AbstractSDE
    score: Callable
    divergence: AbstractDivergence

    def __call__(self, t, y, args):
        x, _ = y
        f = self.sde.drift_coeff(t)
        g2 = self.sde.diffusion(t) ** 2

        def one(xi, state):
            s, div_s = self.divergence(lambda z: self.score(t, z), xi, state)
            dx = f * xi - 0.5 * g2 * s
            dl = f * xi.size - 0.5 * g2 * div_s
            return dx.astype(xi.dtype), jnp.asarray(dl).astype(xi.dtype)

        return jax.vmap(one)(x, args)


class LikelihoodResult(eqx.Module):
    """What [`log_likelihood`][] returns.

    **Fields:**

    - `log_prob`: $\\log p_\\epsilon(x)$ in nats, shape `(batch,)`.
    - `latent`: the state at `T` (the encoding of `x`), shape `(batch, *data_shape)`.
    - `prior_log_prob`: the prior's log-density at `latent`, shape `(batch,)`;
        `log_prob - prior_log_prob` is the integrated divergence.
    - `stats`: a dict with `num_steps` (attempted steps), `num_accepted_steps`,
        `num_rejected_steps` and `num_score_evals` (evaluations of the vector field,
        i.e. VJPs of the score: one counts as one score evaluation; `-1` where the
        solver's count is not constant). Scalars for a batched solve, shape `(batch,)`
        with `per_example=True`.
    - `result`: the diffrax `RESULTS` of the solve.
    """

    log_prob: Float[Array, " batch"]
    latent: Float[Array, " batch *shape"]
    prior_log_prob: Float[Array, " batch"]
    stats: dict[str, Int[Array, "..."]]
    result: dfx.RESULTS


def log_likelihood(
    key: PRNGKeyArray,
    sde: AbstractSDE,
    score: Callable,
    x: Real[ArrayLike, " batch *shape"],
    *,
    divergence: AbstractDivergence = _HUTCHINSON,
    solver: dfx.AbstractSolver = _TSIT5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    adjoint: dfx.AbstractAdjoint = _CHECKPOINT,
    per_example: bool = False,
    prior_log_prob: Callable | None = None,
    max_steps: int | None = 4096,
    throw: bool = True,
    sharding: jax.sharding.Mesh | jax.sharding.NamedSharding | None = None,
) -> LikelihoodResult:
    r"""The log-density $\log p_\epsilon(x)$ of the model, through the probability-flow
    ODE, in one jit-compiled `diffrax.diffeqsolve`.

    The ODE $\dot x = f(t) x - \tfrac12 g(t)^2 s(t, x)$ is a bijection, so by the
    instantaneous change of variables
    $\frac{\mathrm{d}}{\mathrm{d}t} \log p_t(x(t)) = -\nabla \cdot \dot x$, and

    $$\log p_\epsilon(x) = \log p_T(x(T)) + \int_\epsilon^T \nabla\cdot\big(f(t) x(t) -
    \tfrac12 g(t)^2 s(t, x(t))\big)\, \mathrm{d}t,$$

    with $p_T$ replaced by the prior. The state $(x, \ell)$ is integrated forwards in
    natural time from `eps` to `T`. The divergence of the linear part is exactly
    $D f(t)$; only the score's divergence is estimated, by `divergence`, which returns
    the score and its divergence from ONE `jax.vjp` per evaluation.

    **Batched or per-example.** By default (`per_example=False`) the batch is one ODE
    state with one step size, as in the paper's code; the default controller's error
    norm is [`batch_max_rms_norm`][] (an RMS per example, then the maximum over the
    batch), so no example's accuracy is loosened by the others: every example meets
    `rtol`/`atol` on its own, and the batch takes the steps its hardest example needs.
    This is the default because one batched solve is cheaper than a vmap of solves
    (which runs all examples until the slowest is done anyway, with per-example
    bookkeeping on top). With `per_example=True` each example is its own solve (a
    `jax.vmap` of solves, each with its own steps), so an example's result does not
    depend on the rest of its batch at all.

    **Arguments:**

    - `key`: a JAX PRNG key for the divergence estimator's probes; example `i` uses
        `fold_in(key, i)`, so its estimate does not depend on the batch. Unused by
        [`ExactDivergence`][].
    - `sde`: the forward SDE.
    - `score`: `score(t, x)` on ONE example (an exact mixture score, an Equinox
        network, any callable).
    - `x`: the data, shape `(batch, *data_shape)`, floating point and finite, each
        example of the shape the score takes.
    - `divergence`: an [`AbstractDivergence`][]: [`Hutchinson`][]`("rademacher")`
        (default), `Hutchinson("gaussian", num_probes=4)`, [`ExactDivergence`][]`()`,
        or your own.
    - `solver`: a diffrax ODE solver. Default `diffrax.Tsit5()`.
    - `rtol`, `atol`: tolerances of the default adaptive controller, > 0.
    - `eps`: the start time, `0 < eps < T`. Default 1e-5 (the paper's for
        likelihoods).
    - `num_steps`: fixed steps, uniform in `t` from `eps` to `T` (instead of adaptive
        ones).
    - `stepsize_controller`: your own diffrax controller on `t` from `eps` to `T`
        (e.g. `diffrax.StepTo(ts)` with increasing `ts`); replaces `rtol`/`atol`.
    - `dt0`: initial step for adaptive solves. Default: chosen by diffrax.
    - `adjoint`: how `jax.grad` goes through the solve:
        `diffrax.RecursiveCheckpointAdjoint()` (default; exact gradients of the
        discretised solve) or `diffrax.BacksolveAdjoint()` (O(1) memory in the number
        of steps; approximate gradients from a backward solve).
    - `per_example`: see above. Default False.
    - `prior_log_prob`: the log-density used at `T`, called on one example. Default
        `sde.prior_log_prob`. Passing the exact $\log p_T$ (e.g.
        `mixture.marginal(sde, sde.T).log_prob`) isolates the error of the solve from
        the prior mismatch $\log p_T - \log \pi$.
    - `max_steps`: maximum number of steps of an adaptive solve.
    - `throw`: raise if the solve fails (diffrax's `throw`). Non-finite results always
        raise. With `throw=False` a failed solve (e.g. `max_steps` reached because the
        score is NaN somewhere and every step is rejected) returns the finite values
        it reached, with `result != diffrax.RESULTS.successful`: check `result`.
    - `sharding`: shard the batch over several devices (the solve then runs SPMD,
        one jit-compiled program over the mesh). A `jax.sharding.Mesh` shards the
        batch axis over ALL of the mesh's axes; a `jax.sharding.NamedSharding` is used
        as given for `x` (its spec's first entry names the batch's mesh axes). Meshes
        from `jax.make_mesh` (`Explicit` axes by default) are used with `Auto` axes
        over the same devices. The batch must be a multiple of the number of devices
        it is split over. Default None: if `x` is a jax.Array sharded by a
        `NamedSharding`, its sharding is kept; otherwise one device. Example `i`'s
        probes come from `fold_in(key, i)` and the default error norm is a maximum
        over the batch, so the results are those of one device up to float32
        round-off (the latents bitwise with fixed steps). `.log_prob`,
        `.latent` and `.prior_log_prob` come back sharded over the batch. When
        sharded, failures (non-finite results; with `throw`, a failed solve) are
        checked after the call and raise `RuntimeError` (inside an outer `jax.jit`
        they are not checked: read `.result`).

    **Returns:** a [`LikelihoodResult`][] with `.log_prob` (nats, shape `(batch,)`),
    `.latent` (shape of `x`) and `.stats` (`num_steps`, `num_score_evals`).

    **Raises:** `ValueError` naming the argument for an `x` that does not fit the
    score or is not finite, `rtol`/`atol <= 0`, a bad `eps` or `num_steps`, an SDE
    solver, or a batch that does not divide over `sharding`; `TypeError` for a
    `sharding` that is neither a `Mesh` nor a `NamedSharding`; a run-time error if the
    solve produces NaN or inf.

    **Example:**

    ```python
    sde = sd.VPSDE()
    score = mix.score(sde)
    out = sd.log_likelihood(jr.key(0), sde, score, x, divergence=sd.Hutchinson())
    out.log_prob, out.latent, out.stats["num_score_evals"]
    bpd = sd.bits_per_dim(out.log_prob, x, data_range=(-1.0, 1.0))
    ```

    **References:**

    - Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, *Score-Based Generative
      Modeling through Stochastic Differential Equations*, ICLR 2021 (appendix D).
    - Chen, Rubanova, Bettencourt, Duvenaud, *Neural Ordinary Differential
      Equations*, NeurIPS 2018; Grathwohl et al., *FFJORD*, ICLR 2019.
    """
    _check_common(sde, score, solver, divergence)
    x = _check_batch("x", x)
    batch_sh = batch_sharding(sharding, x.shape, x)
    x = place(x, batch_sh)
    _check_eps(eps, sde)
    T = float(sde.T)
    _check_step_to(stepsize_controller, eps, T)
    controller, adaptive = _controller(
        solver, rtol, atol, num_steps, stepsize_controller, eps, T
    )
    if prior_log_prob is None:
        prior_log_prob = sde.prior_log_prob
    elif not callable(prior_log_prob):
        raise TypeError(
            f"`prior_log_prob` must be callable on one example, got {prior_log_prob!r}."
        )
    latent, log_prob, prior_lp, stats, result = _log_likelihood_jit(
        key,
        sde,
        score,
        x,
        divergence,
        solver,
        controller,
        eps,
        dt0,
        adjoint,
        _max_steps(controller, max_steps),
        bool(per_example),
        prior_log_prob,
        throw,
        batch_sh,
    )
    if batch_sh is not None:
        raise_if_failed((latent, log_prob), result, throw=throw, msg=_LL_NOT_FINITE)
    stats = dict(
        stats,
        num_score_evals=_num_score_evals(solver, sde, adaptive, stats["num_steps"]),
    )
    return LikelihoodResult(
        log_prob=log_prob,
        latent=latent,
        prior_log_prob=prior_lp,
        stats=stats,
        result=result,
    )


@eqx.filter_jit
def _log_likelihood_jit(
    key,
    sde,
    score,
    x,
    divergence,
    solver,
    controller,
    eps,
    dt0,
    adjoint,
    max_steps,
    per_example,
    prior_log_prob,
    throw,
    sharding,
):
    _check_fits_score("x", x, score)
    x = constrain(x, sharding)
    x = error_if(
        x, ~jnp.all(jnp.isfinite(x)), "log_likelihood: `x` must be finite.", sharding
    )
    keys = constrain_leading(per_sample_keys(key, x.shape[0]), sharding)
    states = constrain_leading(jax.vmap(divergence.init)(keys, x), sharding)
    y0 = (x, constrain_leading(jnp.zeros(x.shape[:1], x.dtype), sharding))
    terms = dfx.ODETerm(_AugmentedFlow(sde, score, divergence))
    (latent, delta), stats, result = _solve_batch(
        per_example,
        terms,
        y0,
        states,
        solver=solver,
        t0=jnp.asarray(eps, x.dtype),
        t1=jnp.asarray(sde.T, x.dtype),
        dt0=dt0,
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw and sharding is None,  # sharded: raise_if_failed
    )
    prior = jax.vmap(prior_log_prob)(latent).astype(x.dtype)
    log_prob = error_if(
        prior + delta, ~jnp.all(jnp.isfinite(prior + delta)), _LL_NOT_FINITE, sharding
    )
    latent = constrain(latent, sharding)
    prior, log_prob = constrain_leading((prior, log_prob), sharding)
    return latent, log_prob, prior, stats, result


# --------------------------------------------------------------------------------------
# Encode / decode / interpolate
# --------------------------------------------------------------------------------------


@eqx.filter_jit
def _flow_jit(
    sde,
    score,
    y,
    reverse_time,
    solver,
    controller,
    t0,
    t1,
    dt0,
    adjoint,
    max_steps,
    per_example,
    throw,
    sharding,
):
    _check_fits_score("z" if reverse_time else "x", y, score)
    y = constrain(y, sharding)
    terms = probability_flow_term(sde, score, reverse_time=reverse_time)
    y1, stats, result = _solve_batch(
        per_example,
        terms,
        y,
        None,
        solver=solver,
        t0=jnp.asarray(t0, y.dtype),
        t1=jnp.asarray(t1, y.dtype),
        dt0=dt0,
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=throw and sharding is None,  # sharded: raise_if_failed
    )
    y1 = error_if(y1, ~jnp.all(jnp.isfinite(y1)), _FLOW_NOT_FINITE, sharding)
    return constrain(y1, sharding), stats, result


def _flow(
    name,
    sde,
    score,
    y,
    *,
    decode,
    solver,
    rtol,
    atol,
    eps,
    num_steps,
    stepsize_controller,
    dt0,
    adjoint,
    per_example,
    max_steps,
    throw,
    sharding,
):
    _check_common(sde, score, solver)
    y = _check_batch(name, y)
    batch_sh = batch_sharding(sharding, y.shape, y)
    y = place(y, batch_sh)
    _check_eps(eps, sde)
    T = float(sde.T)
    _check_step_to(stepsize_controller, *((T, eps) if decode else (eps, T)))
    if decode and isinstance(stepsize_controller, dfx.StepTo):
        # User times decrease from T to eps; the solve runs on r = -t.
        stepsize_controller = dfx.StepTo(ts=-jnp.asarray(stepsize_controller.ts))
    t0, t1 = (-T, -eps) if decode else (eps, T)
    controller, adaptive = _controller(
        solver, rtol, atol, num_steps, stepsize_controller, t0, t1
    )
    out, _, result = _flow_jit(
        sde,
        score,
        y,
        decode,
        solver,
        controller,
        t0,
        t1,
        dt0,
        adjoint,
        _max_steps(controller, max_steps),
        bool(per_example),
        throw,
        batch_sh,
    )
    if batch_sh is not None:
        raise_if_failed(out, result, throw=throw, msg=_FLOW_NOT_FINITE)
    return out


def encode(
    sde: AbstractSDE,
    score: Callable,
    x: Float[ArrayLike, " batch *shape"],
    *,
    solver: dfx.AbstractSolver = _TSIT5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    adjoint: dfx.AbstractAdjoint = _CHECKPOINT,
    per_example: bool = False,
    max_steps: int | None = 4096,
    throw: bool = True,
    sharding: jax.sharding.Mesh | jax.sharding.NamedSharding | None = None,
) -> Float[Array, " batch *shape"]:
    r"""Encode data into latents: integrate the probability-flow ODE
    $\dot x = f(t) x - \tfrac12 g(t)^2 s(t, x)$ from `eps` up to `T`. The map is a
    bijection (uniquely identifiable encoding); [`decode`][] inverts it.

    **Arguments:**

    - `sde`, `score`: as for [`log_likelihood`][].
    - `x`: data at time `eps`, shape `(batch, *data_shape)`, finite.
    - `solver`, `rtol`, `atol`, `eps`, `num_steps`, `stepsize_controller`, `dt0`,
        `adjoint`, `per_example`, `max_steps`, `throw`, `sharding`: as for
        [`log_likelihood`][] (`stepsize_controller` and fixed steps run on `t` from
        `eps` to `T`). NaN or inf latents always raise; as `encode` returns no
        `result`, `throw=False` hides a failed solve (the state reached is returned):
        keep `throw=True` unless you check the solve otherwise.

    **Returns:** the latents $x(T)$, of `x`'s shape (sharded as `x` is, or as
    `sharding` says).
    """
    return _flow(
        "x",
        sde,
        score,
        x,
        decode=False,
        solver=solver,
        rtol=rtol,
        atol=atol,
        eps=eps,
        num_steps=num_steps,
        stepsize_controller=stepsize_controller,
        dt0=dt0,
        adjoint=adjoint,
        per_example=per_example,
        max_steps=max_steps,
        throw=throw,
        sharding=sharding,
    )


def decode(
    sde: AbstractSDE,
    score: Callable,
    z: Float[ArrayLike, " batch *shape"],
    *,
    solver: dfx.AbstractSolver = _TSIT5,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float = 1e-5,
    num_steps: int | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    dt0: float | None = None,
    adjoint: dfx.AbstractAdjoint = _CHECKPOINT,
    per_example: bool = False,
    max_steps: int | None = 4096,
    throw: bool = True,
    sharding: jax.sharding.Mesh | jax.sharding.NamedSharding | None = None,
) -> Float[Array, " batch *shape"]:
    r"""Decode latents into data: integrate the probability-flow ODE from `T` down to
    `eps` (on the reversed clock $r = -t$, as [`sample`][] does). The inverse of
    [`encode`][]: `decode(encode(x))` is `x` up to the solver's tolerance.

    **Arguments:**

    - `sde`, `score`: as for [`log_likelihood`][].
    - `z`: latents at time `T`, shape `(batch, *data_shape)`, finite.
    - `solver`, `rtol`, `atol`, `eps`, `num_steps`, `stepsize_controller`, `dt0`,
        `adjoint`, `per_example`, `max_steps`, `throw`, `sharding`: as for
        [`log_likelihood`][] (a `diffrax.StepTo(ts)` takes `ts` decreasing from `T` to
        `eps`; as for [`encode`][], NaN or inf output always raises and `throw=False`
        hides a failed solve).

    **Returns:** the data $x(\epsilon)$, of `z`'s shape (sharded as `z` is, or as
    `sharding` says).
    """
    return _flow(
        "z",
        sde,
        score,
        z,
        decode=True,
        solver=solver,
        rtol=rtol,
        atol=atol,
        eps=eps,
        num_steps=num_steps,
        stepsize_controller=stepsize_controller,
        dt0=dt0,
        adjoint=adjoint,
        per_example=per_example,
        max_steps=max_steps,
        throw=throw,
        sharding=sharding,
    )


def interpolate_latents(
    z0: Float[ArrayLike, "*shape"],
    z1: Float[ArrayLike, "*shape"],
    alphas: Float[ArrayLike, " num"],
) -> Float[Array, " num *shape"]:
    r"""Spherical linear interpolation (slerp) between two latents, for interpolating
    in the latent space of [`encode`][] and decoding the path with [`decode`][].

    $$z(\alpha) = \frac{\sin((1-\alpha)\theta)}{\sin\theta} z_0 +
    \frac{\sin(\alpha\theta)}{\sin\theta} z_1, \qquad
    \cos\theta = \frac{\langle z_0, z_1\rangle}{\|z_0\|\,\|z_1\|}.$$

    Latents of a Gaussian prior concentrate near a sphere; slerp stays near it where a
    straight line would cut through the low-density interior. For (nearly) parallel
    latents it falls back to linear interpolation.

    **Arguments:**

    - `z0`, `z1`: two latents of the same shape (one example each).
    - `alphas`: interpolation weights, shape `(num,)`; 0 gives `z0`, 1 gives `z1`.

    **Returns:** the interpolated latents, shape `(num, *shape)`.

    **Example:**

    ```python
    z = sd.encode(sde, score, x[:2])
    path = sd.decode(sde, score, sd.interpolate_latents(z[0], z[1], jnp.linspace(0, 1, 9)))
    ```
    """
    z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
    if z0.shape != z1.shape:
        raise ValueError(
            f"`z1` must have the shape of `z0`, got {z1.shape} and {z0.shape}."
        )
    alphas = jnp.asarray(alphas, dtype=jnp.result_type(z0, z1, float))
    if alphas.ndim != 1:
        raise ValueError(f"`alphas` must be one-dimensional, got shape {alphas.shape}.")
    a, b = z0.reshape(-1), z1.reshape(-1)
    cos = jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))
    small = theta < 1e-4
    sin = jnp.where(small, 1.0, jnp.sin(theta))
    w0 = jnp.where(small, 1 - alphas, jnp.sin((1 - alphas) * theta) / sin)
    w1 = jnp.where(small, alphas, jnp.sin(alphas * theta) / sin)
    out = w0[:, None] * a[None, :] + w1[:, None] * b[None, :]
    return out.reshape((alphas.shape[0],) + z0.shape)


# --------------------------------------------------------------------------------------
# Dequantisation and bits per dimension
# --------------------------------------------------------------------------------------


def _check_range(data_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "`data_range` must be a pair (low, high) of numbers, e.g. (0.0, 1.0) or "
            f"(-1.0, 1.0), got {data_range!r}."
        ) from e
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"`data_range` must be (low, high) with low < high, got {data_range!r}."
        )
    return lo, hi


def _check_bits(num_bits) -> int:
    if (
        isinstance(num_bits, bool)
        or not isinstance(num_bits, (int, np.integer))
        or not 1 <= num_bits <= 16
    ):
        raise ValueError(f"`num_bits` must be an int in [1, 16], got {num_bits!r}.")
    return int(num_bits)


def dequantize(
    key: PRNGKeyArray,
    x: Int[ArrayLike, " batch *shape"] | Float[ArrayLike, " batch *shape"],
    *,
    num_bits: int = 8,
    data_range: Sequence[float] = (0.0, 1.0),
) -> Float[Array, " batch *shape"]:
    r"""Uniform dequantisation of integer data, scaled to `data_range`:

    $$y = \ell + (h - \ell)\,\frac{k + u}{2^n}, \qquad u \sim U[0, 1)^D,$$

    for integer pixels $k \in \{0, \dots, 2^n - 1\}$ and `data_range` $= (\ell, h)$.
    Example `i` draws its noise from `fold_in(key, i)`. A density model of $y$ then
    gives a bound on the discrete data's code length through [`bits_per_dim`][]
    (Theis, van den Oord, Bethge, *A note on the evaluation of generative models*, 2016).

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `x`: integer-valued data in $\{0, \dots, 2^n - 1\}$, shape
        `(batch, *data_shape)` (an integer dtype, or floats holding integers).
    - `num_bits`: $n$, default 8.
    - `data_range`: $(\ell, h)$ the dequantised data are scaled to, e.g. `(0.0, 1.0)`
        (default) or `(-1.0, 1.0)`.

    **Returns:** floating data in $[\ell, h)$, of `x`'s shape.
    """
    lo, hi = _check_range(data_range)
    n = _check_bits(num_bits)
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"`x` must have shape (batch, *data_shape), got {x.shape}. For one example "
            "use x[None]."
        )
    levels = 2**n
    if _is_concrete(x):
        xn = np.asarray(x)
        if not (
            np.all(np.isfinite(xn))
            and np.all(xn == np.round(xn))
            and np.all(xn >= 0)
            and np.all(xn <= levels - 1)
        ):
            raise ValueError(
                f"`x` must hold integers in [0, {levels - 1}] ({n}-bit data), got "
                f"values in [{xn.min()}, {xn.max()}]"
                + ("" if np.all(xn == np.round(xn)) else " that are not all integers")
                + "."
            )
    dtype = jnp.result_type(float)
    keys = per_sample_keys(key, x.shape[0])
    u = jax.vmap(lambda k: jr.uniform(k, x.shape[1:], dtype=dtype))(keys)
    z = (x.astype(dtype) + u) / levels
    return (lo + (hi - lo) * z).astype(dtype)


def bits_per_dim(
    log_prob: Float[ArrayLike, " batch"],
    x: Float[ArrayLike, " batch *shape"],
    *,
    data_range: Sequence[float] = (0.0, 1.0),
    num_bits: int = 8,
) -> Float[Array, " batch"]:
    r"""Bits per dimension of $n$-bit data from the log-density of its dequantised,
    scaled version.

    With $k$ the integer data, $z = k + u \in [0, 2^n)^D$ the dequantised data in
    pixel units, and $y = \ell + (h - \ell) z / 2^n$ the data the model sees (what
    [`dequantize`][] returns), the change of variables gives
    $\log p(z) = \log p(y) + D \log\frac{h - \ell}{2^n}$, and

    $$\mathrm{bpd} = -\frac{\log p(z)}{D \ln 2}
    = -\frac{\log p(y)}{D \ln 2} + n - \log_2(h - \ell),$$

    an upper bound, in expectation over $u$, on the discrete data's
    $-\log_2 P(k) / D$. (For 8 bits this is the paper's "+8" offset for $[0, 1]$ and
    "+7" for $[-1, 1]$; here the log-Jacobian of whatever `data_range` is counted.)

    **Arguments:**

    - `log_prob`: $\log p(y)$ in nats per example, shape `(batch,)` (e.g.
        `log_likelihood(...).log_prob`).
    - `x`: the dequantised, scaled data $y$ the log-densities are of, shape
        `(batch, *data_shape)`; gives $D$ and is checked to lie in `data_range`.
    - `data_range`: $(\ell, h)$ the data were scaled to. Default `(0.0, 1.0)`.
    - `num_bits`: $n$, the bit depth of the raw data. Default 8.

    **Returns:** bits per dimension per example, shape `(batch,)`; average it over the
    data set.

    **Raises:** `ValueError` if `x` lies outside `data_range` or the shapes disagree.
    """
    lo, hi = _check_range(data_range)
    n = _check_bits(num_bits)
    x = jnp.asarray(x)
    log_prob = jnp.asarray(log_prob)
    if x.ndim < 2:
        raise ValueError(f"`x` must have shape (batch, *data_shape), got {x.shape}.")
    if log_prob.shape != x.shape[:1]:
        raise ValueError(
            f"`log_prob` must have shape (batch,) = {x.shape[:1]} to match `x` "
            f"{x.shape}, got {log_prob.shape}."
        )
    if _is_concrete(x):
        xn = np.asarray(x)
        if not (np.all(np.isfinite(xn)) and xn.min() >= lo and xn.max() <= hi):
            raise ValueError(
                f"`x` must lie in `data_range` = [{lo}, {hi}] (dequantised data "
                f"scaled to it), got values in [{xn.min()}, {xn.max()}]. Pass the "
                "data_range your data were scaled to."
            )
    d = math.prod(x.shape[1:])
    dtype = jnp.result_type(log_prob, float)
    log_jac = d * (math.log(hi - lo) - n * math.log(2.0))
    return (-(log_prob.astype(dtype) + log_jac) / (d * math.log(2.0))).astype(dtype)
