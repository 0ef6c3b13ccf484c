from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, Real

from ._brownian import per_sample_keys
from ._checks import (
    check_batch,
    check_divergence,
    check_eps,
    check_fits_score,
    check_sde_score,
)
from ._clock import FORWARD
from ._divergence import AbstractDivergence, Hutchinson
from ._errors import check_solve
from ._plan import plan_solve, solve_batch
from ._sde import AbstractSDE
from ._sharding import batch_sharding, constrain, constrain_leading, error_if, place
from ._solve_plan import SolvePlan


# Default arguments (module-level singletons; all immutable).
_HUTCHINSON = Hutchinson("rademacher")
_TSIT5 = dfx.Tsit5()
_CHECKPOINT = dfx.RecursiveCheckpointAdjoint()
_NOT_FINITE = "the solve produced a non-finite log-density (NaN or inf)"


class _AugmentedFlow(eqx.Module):
    r"""The probability-flow ODE in natural time with its divergence, on a batch:
    $\dot x = f x - \tfrac12 g^2 s(t, x)$ and
    $\dot\ell = \nabla\cdot(f x - \tfrac12 g^2 s) = f D - \tfrac12 g^2 \nabla\cdot s$.
    The linear part of the divergence is exact; only the score's is estimated.

    The state's $\ell$ is the log-density change MINUS that of standard normal data,
    $\tfrac D2 \log v(t)$ with $v = \alpha(t)^2 + \sigma(t)^2$ the variance of its
    marginal (`_unit_gaussian_change` adds it back, exactly). Under VE, $\ell$ grows
    to about $D \log(\sigma_\max/\sigma_\min)$ (545 nats at D = 64), and float32's
    rounding of it stopped the error near 2e-4 nats however tight the tolerance; what
    is left to integrate is the data's departure from the standard normal, small for
    data of unit scale."""

    sde: AbstractSDE
    score: Callable
    divergence: AbstractDivergence

    def __call__(self, t, y, args):
        x, _ = y
        f = self.sde.drift_coeff(t)
        g2 = self.sde.diffusion(t) ** 2
        _, dlogv = jax.jvp(
            lambda s: _log_unit_variance(self.sde, s), (t,), (jnp.ones_like(t),)
        )

        def one(xi, state):
            s, div_s = self.divergence(lambda z: self.score(t, z), xi, state)
            dx = f * xi - 0.5 * g2 * s
            dl = f * xi.size - 0.5 * g2 * div_s - 0.5 * xi.size * dlogv
            return dx.astype(xi.dtype), jnp.asarray(dl).astype(xi.dtype)

        return jax.vmap(one)(x, args)


def _log_unit_variance(sde: AbstractSDE, t):
    r"""$\log v(t)$, $v = \alpha(t)^2 + \sigma(t)^2$: the log-variance of the marginal
    of standard normal data under `sde`."""
    return jnp.log(sde.mean_coeff(t) ** 2 + sde.std(t) ** 2)


def _unit_gaussian_change(sde: AbstractSDE, plan: SolvePlan, dim: int, dtype):
    r"""$\tfrac D2 (\log v(T) - \log v(\epsilon))$: the log-density change of
    standard normal data along its probability flow over the plan's interval, the
    part `_AugmentedFlow` leaves out of its integrand."""
    dt = jnp.result_type(float)
    log_v0 = _log_unit_variance(sde, jnp.asarray(plan.clock.to_user(plan.r0), dt))
    log_v1 = _log_unit_variance(sde, jnp.asarray(plan.clock.to_user(plan.r1), dt))
    return (0.5 * dim * (log_v1 - log_v0)).astype(dtype)


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
    max_steps: int = 4096,
    throw: bool = True,
    sharding: jax.sharding.Mesh | jax.sharding.NamedSharding | None = None,
    progress_meter: dfx.AbstractProgressMeter | None = None,
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

    **Precision.** The log-density change of standard normal data,
    $\tfrac D2 \log\big(v(T)/v(\epsilon)\big)$ with $v = \alpha^2 + \sigma^2$ the
    variance of its marginal, is added in closed form and only the rest is integrated.
    Under VE the float32 state would otherwise carry about
    $D \log(\sigma_\max/\sigma_\min)$ nats (545 at D = 64), whose rounding set a
    floor on the error: 64-D VE mixture, batch 256, Dopri8 at rtol = atol = 1e-7, mean
    error against the same probes' float64 solve 2.0e-4 nats before, 2.2e-5 after.

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
        ones). Give at most one of `num_steps` and `stepsize_controller`.
    - `stepsize_controller`: your own diffrax controller on `t` from `eps` to `T`
        (e.g. `diffrax.StepTo(ts)` with `ts` strictly increasing from `eps` to `T`);
        replaces `rtol`/`atol`.
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
    - `max_steps`: maximum number of steps (an int >= 1) of a solve that is not a
        fixed grid.
    - `throw`: raise if the solve fails (diffrax's `throw`), as a
        [`SolveError`][] whose message says what to change. Non-finite results always
        raise. With `throw=False` a failed solve (e.g. `max_steps` reached because the
        score is NaN somewhere and every step is rejected) returns the finite values
        it reached, with `result != diffrax.RESULTS.successful`: check `result`.
    - `sharding`: shard the batch over several devices, as for [`sample`][]
        (README, "Several devices and hosts"). Default None: if `x` is a jax.Array
        sharded by a `NamedSharding`, its sharding is kept; otherwise one device.
        Example `i`'s probes come from `fold_in(key, i)` and the default error norm
        is a maximum over the batch, so the results are those of one device up to
        float32 round-off (the latents bitwise with fixed steps); the outputs come
        back sharded over the batch.
    - `progress_meter`: a diffrax progress meter (e.g. `diffrax.TqdmProgressMeter()`)
        for the batched solve (`per_example=False`); default none.

    **Returns:** a [`LikelihoodResult`][] with `.log_prob` (nats, shape `(batch,)`),
    `.latent` (shape of `x`) and `.stats` (`num_steps`, `num_score_evals`).

    **Raises:** `ValueError` naming the argument for an `x` that does not fit the
    score or is not finite, `rtol`/`atol <= 0`, a bad `eps` or `num_steps`, an SDE
    solver, or a batch that does not divide over `sharding`; `TypeError` for a
    `sharding` that is neither a `Mesh` nor a `NamedSharding`; a [`SolveError`][]
    (a `RuntimeError`) if the solve reaches `max_steps`, gives up, or produces NaN or
    inf.

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
    # Checks
    check_sde_score(sde, score)
    check_divergence(divergence)
    x = check_batch("x", x)
    check_eps(eps, sde)
    if prior_log_prob is None:
        prior_log_prob = sde.prior_log_prob
    elif not callable(prior_log_prob):
        raise TypeError(
            f"`prior_log_prob` must be callable on one example, got {prior_log_prob!r}."
        )
    batch_sh = batch_sharding(sharding, x.shape, x)
    x = place(x, batch_sh)

    # Plan: forwards in t, from eps up to T.
    plan = plan_solve(
        solver,
        method="ode",
        shape=x.shape,
        start=eps,
        end=sde.T,
        clock=FORWARD,
        num_steps=num_steps,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        dt0=dt0,
        rtol=rtol,
        atol=atol,
    )

    # Solve
    problem = _Likelihood(
        sde=sde,
        score=score,
        divergence=divergence,
        solver=solver,
        plan=plan,
        adjoint=adjoint,
        per_example=bool(per_example),
        prior_log_prob=prior_log_prob,
        sharding=batch_sh,
        progress_meter=dfx.NoProgressMeter()
        if progress_meter is None
        else progress_meter,
    )
    latent, log_prob, prior_lp, stats, result = _solve(problem, key, x)
    latent, log_prob = check_solve(
        "log_likelihood",
        (latent, log_prob),
        result,
        throw=throw,
        max_steps=plan.max_steps,
        not_finite=_NOT_FINITE,
        in_program=batch_sh is None,
    )

    # Report
    stats = dict(stats, num_score_evals=plan.num_score_evals(stats["num_steps"]))
    return LikelihoodResult(
        log_prob=log_prob,
        latent=latent,
        prior_log_prob=prior_lp,
        stats=stats,
        result=result,
    )


class _Likelihood(eqx.Module):
    """Everything one jitted likelihood solve needs (arrays traced, the rest static)."""

    sde: AbstractSDE
    score: Callable
    divergence: AbstractDivergence
    solver: dfx.AbstractSolver
    plan: SolvePlan
    adjoint: dfx.AbstractAdjoint
    per_example: bool = eqx.field(static=True)
    prior_log_prob: Callable
    progress_meter: dfx.AbstractProgressMeter
    sharding: jax.sharding.NamedSharding | None = eqx.field(static=True)


@eqx.filter_jit
def _solve(p: _Likelihood, key: PRNGKeyArray, x: Array):
    # Initial set-up
    check_fits_score("x", x, p.score)
    x = constrain(x, p.sharding)
    x = error_if(
        x, ~jnp.all(jnp.isfinite(x)), "log_likelihood: `x` must be finite.", p.sharding
    )
    keys = constrain_leading(per_sample_keys(key, x.shape[0]), p.sharding)
    states = constrain_leading(jax.vmap(p.divergence.init)(keys, x), p.sharding)
    y0 = (x, constrain_leading(jnp.zeros(x.shape[:1], x.dtype), p.sharding))

    # Main loop
    (latent, delta), stats, result = solve_batch(
        p.per_example,
        dfx.ODETerm(_AugmentedFlow(p.sde, p.score, p.divergence)),
        y0,
        states,
        solver=p.solver,
        plan=p.plan,
        adjoint=p.adjoint,
        throw=False,  # checked after the call: `check_solve`
        progress_meter=p.progress_meter,
    )

    # Finish up
    prior = jax.vmap(p.prior_log_prob)(latent).astype(x.dtype)
    dim = x[0].size
    log_prob = prior + (delta + _unit_gaussian_change(p.sde, p.plan, dim, x.dtype))
    latent = constrain(latent, p.sharding)
    prior, log_prob = constrain_leading((prior, log_prob), p.sharding)
    return latent, log_prob, prior, stats, result
