"""Learning a sampler's time grid by differentiating through [`sample`][] (LD3-style):
a few parameters (the grid's log-SNR increments, optionally its end) fitted so that
a cheap fixed-step probability-flow solve lands where an accurate solve from the same
prior draws does."""

import functools
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checkpoint import describe_sde
from .._checks import (
    check_eps,
    check_int,
    check_positive,
    check_shape,
    resolve_method,
)
from .._norm import batch_max_rms_norm
from .._plan import count_score_evals
from .._planned_solver import min_grid_steps
from .._sample import sample
from .._sde import AbstractSDE
from .._solver import time_grid
from .result import LearnedGrid


_KINDS = ("uniform", "quadratic", "logsnr", "edm")
_TEACHER_TOL = 1e-6


# --------------------------------------------------------------------------- the grid


class _Params(NamedTuple):
    """What is learned: softmax logits of the log-SNR increments, and the shift of the
    end's log-SNR (kept at 0 unless the end is learned)."""

    logits: Float[Array, " n"]
    end_shift: Float[Array, ""]


class _Student(eqx.Module):
    """Everything a student solve needs besides the parameters (arrays traced, the
    rest static): the grid runs in log-SNR from `lam_start = lambda(T)` to
    `lam_end = lambda(eps)` (+ the learned shift)."""

    sde: AbstractSDE
    score: Callable
    solver: dfx.AbstractSolver
    shape: tuple[int, ...] = eqx.field(static=True)
    T: float = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    lam_start: float = eqx.field(static=True)
    lam_end: float = eqx.field(static=True)
    learn_end: bool = eqx.field(static=True)
    denoise: bool = eqx.field(static=True)
    squared: bool = eqx.field(static=True)

    def times(self, p: _Params) -> Float[Array, " n"]:
        """The grid: strictly decreasing from `T` to the (learned) end, whatever the
        parameters (positive increments of the log-SNR, summing to the span)."""
        lam_end = self.lam_end + (p.end_shift if self.learn_end else 0.0)
        lam_end = jnp.maximum(lam_end, self.lam_start + 1.0)
        w = jax.nn.softmax(p.logits)
        frac = jnp.concatenate([jnp.zeros(1, w.dtype), jnp.cumsum(w)])
        ts = self.sde.t_from_log_snr(self.lam_start + (lam_end - self.lam_start) * frac)
        end = ts[-1] if self.learn_end else self.eps
        return ts.at[0].set(self.T).at[-1].set(end)

    def samples(self, p: _Params, key: PRNGKeyArray) -> Float[Array, " batch *shape"]:
        ts = self.times(p)
        return sample(
            key,
            self.sde,
            self.score,
            self.shape,
            solver=self.solver,
            method="ode",
            stepsize_controller=dfx.StepTo(ts),
            eps=ts[-1] if self.learn_end else self.eps,
            denoise=self.denoise,
        ).samples

    def loss(self, p: _Params, key: PRNGKeyArray, target: Array) -> Float[Array, ""]:
        """The mean over examples of the root-mean-square distance to the teacher's
        sample from the same prior draw (or its square, `loss="squared"`)."""
        x = self.samples(p, key)
        d2 = jnp.mean(((x - target) ** 2).reshape(x.shape[0], -1), axis=1)
        if self.squared:
            return jnp.mean(d2)
        return jnp.mean(jnp.sqrt(d2 + 1e-12))

    def params_from_times(self, ts: Array) -> _Params:
        lam = np.asarray(jax.vmap(self.sde.log_snr)(jnp.asarray(ts)), np.float64)
        shift = lam[-1] - self.lam_end if self.learn_end else 0.0
        lam[0], lam[-1] = self.lam_start, self.lam_end + shift
        inc = np.diff(lam)
        dtype = jnp.result_type(float)
        return _Params(
            jnp.asarray(np.log(inc / inc.sum()), dtype), jnp.asarray(shift, dtype)
        )


@eqx.filter_jit
def _loss_and_grad(student: _Student, p: _Params, key, target):
    # One compiled program for training steps and held-out checks alike (a held-out
    # check discards the gradient: cheaper than compiling the loss alone as well).
    return jax.value_and_grad(student.loss)(p, key, target)


@eqx.filter_jit
def _update(optimiser, grad: _Params, state, p: _Params):
    updates, state = optimiser.update(grad, state, p)
    return optax.apply_updates(p, updates), state


@functools.lru_cache(maxsize=8)
def _adam(learning_rate: float) -> optax.GradientTransformation:
    # One object per rate, so that repeated calls reuse the compiled step.
    return optax.adam(learning_rate)


# --------------------------------------------------------------------------- checks


def _steps_for(solver, num_evals: int, denoise: bool) -> tuple[int, int]:
    """The most steps of `solver` on the probability-flow ODE within `num_evals`
    score evaluations (counted as `sample` counts them: the first step, then the
    later ones, plus one for `denoise`), and the evaluations they take."""
    probe = count_score_evals(solver, "ode")
    name = type(solver).__name__
    if probe.first < 1 or probe.per_step < 1:
        raise ValueError(
            f"`solver`: the score evaluations per step of {name} are not constant "
            "(e.g. an implicit solver), so a budget of `num_evals` does not fix its "
            "steps; use an explicit solver."
        )
    spare = num_evals - int(denoise) - probe.first
    steps = 1 + spare // probe.per_step if spare >= 0 else 0
    need = max(1, min_grid_steps(solver))
    if steps < need:
        least = probe.first + probe.per_step * (need - 1) + int(denoise)
        raise ValueError(
            f"`num_evals` = {num_evals} is below what {name} needs: {probe.first} "
            f"score evaluations for the first step, {probe.per_step} per later step"
            + (", one for the denoising step" if denoise else "")
            + f", and at least {need} step(s): num_evals >= {least}."
        )
    used = probe.first + probe.per_step * (steps - 1) + int(denoise)
    return steps, used


def _describe(sde: AbstractSDE) -> dict | None:
    try:
        return describe_sde(sde)
    except ValueError:
        return None


# --------------------------------------------------------------------------- driver


def learn_time_grid(
    key: PRNGKeyArray,
    sde: AbstractSDE,
    score: Callable,
    shape: tuple[int, ...],
    *,
    solver: dfx.AbstractSolver,
    num_evals: int,
    eps: float | None = None,
    denoise: bool = False,
    init: str | Float[ArrayLike, " n"] = "best",
    learn_end: bool = False,
    loss: str = "distance",
    num_iters: int = 200,
    learning_rate: float = 0.05,
    optimiser: optax.GradientTransformation | None = None,
    validate_every: int = 10,
    patience: int = 5,
    teacher_solver: dfx.AbstractSolver | None = None,
    teacher_controller: dfx.AbstractStepSizeController | None = None,
    progress: bool = False,
) -> LearnedGrid:
    r"""Learn the time grid of a fixed-step probability-flow sampler for a given score,
    solver and budget of score evaluations, by gradient descent through [`sample`][].

    The teacher is an accurate solve of the same probability-flow ODE (adaptive
    `Tsit5` by default) from the same prior draws; the student is `solver` on a grid
    of `num_evals` evaluations. The grid is parametrised by the softmax of its
    log-SNR increments between $\lambda(T)$ and $\lambda(\epsilon)$, so it stays
    strictly decreasing from `T` to `eps` whatever the parameters; it starts from
    the best fixed grid ([`time_grid`][]'s kinds, ranked on the training draws) and
    Adam fits it to the teacher through `jax.grad` of `sample`. The grid kept is the
    one with the lowest loss on held-out prior draws (checked every
    `validate_every` steps, the initial grid included), and learning stops after
    `patience` checks without improvement.

    The loss is the mean over examples of the root-mean-square distance between the
    student's sample and the teacher's from the same prior draw: it bounds the
    Wasserstein-1 distance between what the student and the teacher sample (per
    coordinate), and an example that the student sends to another mode than the
    teacher (a prior draw near the boundary between two modes, where no grid of a
    few steps follows the teacher) weighs in linearly, not squared, so a handful of
    such examples do not decide the grid. (LD3's soft teacher forcing, which lets
    each student start from a point near its prior draw, addresses the same examples;
    `sample` draws its own priors from the key, so it is not used here.)

    Works for any fixed-step probability-flow solver of this package or diffrax
    ([`DDIM`][], [`DPMSolverPP2M`][], [`DPMSolverPP3M`][], [`UniPC`][], [`DEIS`][],
    [`EDMHeun`][], `diffrax.Heun`, `Midpoint`, ...), any score (exact, a trained
    network, a guidance wrapper with per-example conditioning for `shape[0]`
    examples), and with `denoise`.

    **Arguments:**

    - `key`: a JAX PRNG key: the training prior draws, and independent held-out ones.
    - `sde`: the forward SDE.
    - `score`: `score(t, x)` on one example, as for [`sample`][].
    - `shape`: `(num_samples, *data_shape)`: `num_samples` training prior draws (and
        as many held-out ones).
    - `solver`: the fixed-step ODE solver whose grid is learned (it must integrate
        the probability-flow ODE).
    - `num_evals`: the budget of score evaluations per example, the denoising step's
        included: the grid has as many steps as fit (as [`sample`][] counts them:
        the solver's first step, then its later ones, e.g. 1 per step for DDIM and
        the multistep solvers, 2 for Heun).
    - `eps`: the end time of the teacher's solve (and of the grid unless
        `learn_end`). Default `sde.default_eps`.
    - `denoise`: learn for a solve that ends with Tweedie's denoising step (one of
        the `num_evals`); the teacher ends with it too.
    - `init`: the initial grid: `"best"` (default: the best of `"uniform"`,
        `"quadratic"`, `"logsnr"` and `"edm"` on the training draws), one of those
        kinds, or times (strictly decreasing from `T` to `eps`, or to any end if
        `learn_end`) of the right number of steps.
    - `learn_end`: learn the grid's end too (its log-SNR), decoupled from the
        teacher's `eps`: the student may stop earlier or later than the teacher.
    - `loss`: `"distance"` (default; see above) or `"squared"` (the mean squared
        distance per coordinate).
    - `num_iters`: the most optimiser steps (an int >= 1); default 200.
    - `learning_rate`: Adam's step size (default 0.05, in softmax logits).
    - `optimiser`: an optax transformation to use instead of Adam.
    - `validate_every`: optimiser steps between held-out checks (default 10).
    - `patience`: held-out checks without improvement before stopping (default 5).
    - `teacher_solver`: the teacher's solver (default `diffrax.Tsit5()`).
    - `teacher_controller`: the teacher's step-size controller (default
        `diffrax.PIDController(rtol=1e-6, atol=1e-6, norm=sd.batch_max_rms_norm)`;
        `diffrax.StepTo(ts)` for a teacher of many fixed steps).
    - `progress`: print a line per held-out check to stderr.

    **Returns:** a [`LearnedGrid`][]: the times `ts`, the loss histories (training
    and held-out) and the cost (teacher evaluations, optimiser steps, seconds).

    **Raises:** `ValueError` naming the argument: a `solver` that cannot integrate
    the probability-flow ODE or whose evaluations per step are not constant,
    a `num_evals` too small for the solver (its first step, its steps per
    evaluation, a multistep solver's least number of steps, `denoise`'s
    evaluation), a bad `shape`, `eps`, `init`, `loss`, `num_iters`,
    `learning_rate`, `validate_every` or `patience`.

    **Example:**

    ```python
    sde = sd.VPSDE()
    score = sd.GaussianMixture(means, stds).score(sde)
    grid = sd.learn_time_grid(jr.key(0), sde, score, (256, 2), solver=sd.UniPC(),
                              num_evals=10)
    x = sd.sample(jr.key(1), sde, score, (10_000, 2), solver=sd.UniPC(),
                  **grid.sample_kwargs()).samples
    ```

    **Reference:** Tong, Nguyen-Tang, Tran, Phung, Nguyen, *Learning to Discretize
    Denoising Diffusion ODEs* (LD3), ICLR 2025; Sabour, Fidler, Kreis, *Align Your
    Steps*, ICML 2024.
    """
    # Checks
    start = time.perf_counter()
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"`sde` must be an AbstractSDE, got {type(sde).__name__}.")
    shape = check_shape(shape)
    resolve_method(solver, "ode")  # a ValueError naming `solver` if it cannot
    num_evals = check_int("num_evals", num_evals)
    num_iters = check_int("num_iters", num_iters)
    validate_every = check_int("validate_every", validate_every)
    patience = check_int("patience", patience)
    check_positive("learning_rate", learning_rate)
    if loss not in ("distance", "squared"):
        raise ValueError(f"`loss` must be 'distance' or 'squared', got {loss!r}.")
    T = float(sde.T)
    eps = float(check_eps(sde.default_eps if eps is None else eps, sde))
    denoise, learn_end = bool(denoise), bool(learn_end)
    num_steps, used_evals = _steps_for(solver, num_evals, denoise)
    student = _Student(
        sde=sde,
        score=score,
        solver=solver,
        shape=shape,
        T=T,
        eps=eps,
        lam_start=float(sde.log_snr(T)),
        lam_end=float(sde.log_snr(eps)),
        learn_end=learn_end,
        denoise=denoise,
        squared=loss == "squared",
    )
    candidates = _initial_grids(init, sde, num_steps, eps, learn_end)
    if optimiser is None:
        optimiser = _adam(float(learning_rate))
    key_train, key_held = jr.split(key)

    # The teacher
    targets, teacher_evals = _teacher(
        (key_train, key_held),
        sde,
        score,
        shape,
        eps,
        denoise,
        teacher_solver,
        teacher_controller,
    )
    target_train, target_held = targets
    teacher_seconds = time.perf_counter() - start

    # The initial grid: the best candidate on the training draws
    def held_out(p):
        return float(_loss_and_grad(student, p, key_held, target_held)[0])

    initial, p0 = _best_initial(student, candidates, key_train, target_train)

    # Main loop
    best, best_iter, losses, checks, check_losses, it = _fit(
        student,
        optimiser,
        p0,
        (key_train, target_train),
        held_out,
        num_iters,
        validate_every,
        patience,
        progress,
        start,
    )

    # Finish up
    dtype = jnp.result_type(float)
    return LearnedGrid(
        ts=jnp.asarray(student.times(best), dtype),
        solver=type(solver).__name__,
        num_evals=used_evals,
        denoise=denoise,
        initial=initial,
        losses=jnp.asarray(losses, dtype),
        held_out_iterations=jnp.asarray(checks, int),
        held_out_losses=jnp.asarray(check_losses, dtype),
        best_iteration=best_iter,
        teacher_evals=teacher_evals,
        optimiser_steps=it,
        seconds=time.perf_counter() - start,
        teacher_seconds=teacher_seconds,
        sde=_describe(sde),
    )


def _best_initial(student, candidates: dict, key, target):
    """The candidate grid with the least training loss: its name and parameters."""
    params = {name: student.params_from_times(ts) for name, ts in candidates.items()}
    if len(params) == 1:
        ((name, p),) = params.items()
        return name, p
    loss = {
        name: float(_loss_and_grad(student, p, key, target)[0])
        for name, p in params.items()
    }
    name = min(loss, key=loss.__getitem__)
    return name, params[name]


def _teacher(keys, sde, score, shape, eps, denoise, solver, controller):
    """The teacher's samples from each key's prior draws (an accurate solve of the
    same probability-flow ODE: adaptive Tsit5 at 1e-6 unless given), and its score
    evaluations in all."""
    kwargs = dict(
        solver=dfx.Tsit5() if solver is None else solver,
        method="ode",
        stepsize_controller=dfx.PIDController(
            rtol=_TEACHER_TOL, atol=_TEACHER_TOL, norm=batch_max_rms_norm
        )
        if controller is None
        else controller,
        eps=eps,
        denoise=denoise,
    )
    targets, evals = [], 0
    for k in keys:
        out = sample(k, sde, score, shape, **kwargs)
        targets.append(out.samples)
        evals += int(out.stats["num_score_evals"]) * shape[0]
    return jax.block_until_ready(targets), evals


def _fit(
    student,
    optimiser,
    p,
    train,
    held_out,
    num_iters,
    validate_every,
    patience,
    progress,
    start,
):
    """Adam (or `optimiser`) on the training draws from `p`, a held-out check every
    `validate_every` steps, stopping after `patience` checks without improvement:
    the best parameters seen, their iteration, the training losses, and the checks'
    iterations and losses, and the steps taken."""
    key_train, target_train = train
    best, best_loss, best_iter = p, held_out(p), 0
    checks, check_losses = [0], [best_loss]
    _report(progress, 0, num_iters, None, best_loss, best_loss, start)
    state = optimiser.init(p)
    losses, since_best, it = [], 0, 0
    for it in range(1, num_iters + 1):
        value, grad = _loss_and_grad(student, p, key_train, target_train)
        p, state = _update(optimiser, grad, state, p)
        losses.append(float(value))
        if it % validate_every and it != num_iters:
            continue
        v = held_out(p)
        checks.append(it)
        check_losses.append(v)
        if v < best_loss:
            best, best_loss, best_iter, since_best = p, v, it, 0
        else:
            since_best += 1
        _report(progress, it, num_iters, losses[-1], v, best_loss, start)
        if since_best >= patience:
            break
    return best, best_iter, losses, checks, check_losses, it


def _initial_grids(init, sde, num_steps: int, eps: float, learn_end: bool) -> dict:
    """The candidate initial grids, by name."""
    if isinstance(init, str):
        if init == "best":
            kinds = _KINDS
        elif init in _KINDS:
            kinds = (init,)
        else:
            raise ValueError(
                "`init` must be 'best', 'uniform', 'quadratic', 'logsnr', 'edm' or "
                f"an array of times, got {init!r}."
            )
        return {k: time_grid(sde, num_steps, k, eps=eps) for k in kinds}
    ts = np.asarray(init, np.float64)
    T = float(sde.T)
    if ts.shape != (num_steps + 1,):
        raise ValueError(
            f"`init`: times for {num_steps} steps (the budget's) must have shape "
            f"({num_steps + 1},), got {ts.shape}."
        )
    if not np.all(np.diff(ts) < 0) or not np.isclose(ts[0], T, rtol=1e-5):
        raise ValueError(
            f"`init`: times must decrease strictly from T = {T}, got {ts.tolist()}."
        )
    if not learn_end and not np.isclose(ts[-1], eps, rtol=1e-5):
        raise ValueError(
            f"`init`: times must end at eps = {eps} (or pass learn_end=True), got "
            f"{ts[-1]}."
        )
    if ts[-1] <= 0:
        raise ValueError(f"`init`: times must be > 0, got {ts[-1]}.")
    return {"given": ts}


def _report(enabled, it, total, train, held, best, start):
    if not enabled:
        return
    train = "-" if train is None else f"{train:.5g}"
    print(
        f"learn_time_grid: step {it}/{total}, loss {train}, held-out {held:.5g} "
        f"(best {best:.5g}), {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
        flush=True,
    )
