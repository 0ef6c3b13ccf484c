"""Solver comparison: problems x samplers x budgets of score evaluations -> records.

A *problem* is an SDE with a score and something to compare samples with: an exact
Gaussian mixture ([`MixtureProblem`][scoresde_diffrax.bench.MixtureProblem]), or a
trained model with held-out data ([`DataProblem`][scoresde_diffrax.bench.DataProblem]).
A *sampler* ([`Sampler`][scoresde_diffrax.bench.Sampler]) is a solver object with the
terms it solves and how a budget of score evaluations becomes its steps.
[`run`][scoresde_diffrax.bench.run] samples every problem with every sampler at every
budget and returns one [`BenchRecord`][scoresde_diffrax.bench.BenchRecord] per solve:
the score evaluations spent, compile and run time, and each metric with its standard
error and its floor (the same metric for true samples of the same size).
[`to_markdown`][scoresde_diffrax.bench.to_markdown],
[`to_json_lines`][scoresde_diffrax.bench.to_json_lines] and
[`plot`][scoresde_diffrax.bench.plot] write them out. `scoresde bench` is this
module from the shell.

```python
import diffrax as dfx, jax.random as jr, scoresde_diffrax as sd

problem = sd.bench.MixtureProblem(sd.bench.mixture_preset(64, 4), sd.VPSDE())
samplers = [
    sd.bench.Sampler("euler-maruyama", dfx.Euler(), "sde"),
    sd.bench.Sampler("dpm-solver++2m", sd.DPMSolverPP2M(), "ode", grid="logsnr"),
]
records = sd.bench.run(jr.key(0), [problem], samplers, [10, 50], num_samples=2000)
print(sd.bench.to_markdown(records))
```
"""

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from ._exact import GaussianMixture
from ._grid import learn_time_grid
from ._plan import count_score_evals, pad_grid, PaddedStepTo, uniform_grid
from ._sample import sample
from ._sde import AbstractSDE
from ._solver import time_grid
from .metrics import fd_digits_with_se, mixture_report


MIXTURE_METRICS = ("sliced_w2", "variance_ratio", "weight_error", "log_prob_gap")
DATA_METRICS = ("sliced_w2", "fd_digits")
_DIGITS_SHAPES = ((8, 8), (1, 8, 8), (1, 16, 16))
_NUM_PROJECTIONS = 256
_NUM_RESAMPLES = 50
# The metrics a verdict ranks on (lower is better, true samples give the floor): the
# first of these that a problem measures.
VERDICT_METRICS = ("sliced_w2", "fd_digits")
VERDICT_TEST = "two-sided z-test on independent draws, 5% level"
_Z = 1.959963984540054


# --------------------------------------------------------------------------- problems


def mixture_preset(
    dim: int, num_components: int, *, seed: int = 1234
) -> GaussianMixture:
    """The benchmark mixture of `num_components` diagonal Gaussians in `dim`
    dimensions (what `--problem mixture:D=dim,K=num_components` names): means
    `3 N(0, I)`, standard deviations uniform in `[0.4, 1.0]` per coordinate, weights
    proportional to `1, 2, ..., K`, all drawn from `jr.key(seed)`.

    **Arguments:**

    - `dim`: the dimension $D \\geq 1$.
    - `num_components`: the number of components $K \\geq 1$.
    - `seed`: the seed of the means and standard deviations (default 1234, the
        64-D mixture of `benchmarks/bench_samplers.py` for `K = 4`).

    **Returns:** a [`GaussianMixture`][scoresde_diffrax.GaussianMixture].
    """
    if dim < 1 or num_components < 1:
        raise ValueError(
            f"`dim` and `num_components` must be >= 1, got {dim}, {num_components}."
        )
    km, ks = jr.split(jr.key(seed))
    means = 3.0 * jr.normal(km, (num_components, dim))
    stds = jr.uniform(ks, (num_components, dim), minval=0.4, maxval=1.0)
    weights = jnp.arange(1, num_components + 1, dtype=means.dtype)
    return GaussianMixture(means, stds, weights / jnp.sum(weights))


@dataclasses.dataclass(frozen=True)
class MixtureProblem:
    """An exact Gaussian mixture pushed through `sde`: the score is exact, and the
    metrics compare samples with the mixture itself (`MIXTURE_METRICS`).

    **Fields:**

    - `mixture`: a [`GaussianMixture`][scoresde_diffrax.GaussianMixture].
    - `sde`: the forward SDE.
    - `name`: the label in the records (default `"mixture D=..,K=.."`).
    """

    mixture: GaussianMixture
    sde: AbstractSDE
    name: str = ""

    @property
    def label(self) -> str:
        """The problem's name in the records."""
        m = self.mixture
        return self.name or f"mixture D={m.dim},K={m.num_components}"

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example, `(D,)`."""
        return (self.mixture.dim,)

    def score(self) -> Callable:
        """The exact score of the mixture's marginals under `sde`."""
        return self.mixture.score(self.sde)


@dataclasses.dataclass(frozen=True)
class DataProblem:
    """A score model (e.g. a trained checkpoint's) with held-out data. The metrics
    (`DATA_METRICS`): `sliced_w2`, the sliced Wasserstein-2 distance to the held
    data; and for 8x8 digits (examples of shape `(8, 8)`, `(1, 8, 8)` or
    `(1, 16, 16)` padded, as `sd.data.digits` makes them) `fd_digits`, the Fréchet
    distance in the features of the FD-digits classifier
    ([`fd_digits_with_se`][scoresde_diffrax.metrics.fd_digits_with_se]: its standard
    error is a bootstrap over the samples), with the samples mapped to `[0, 1]`
    images by `data_range`.

    **Fields:**

    - `sde`: the forward SDE the model was trained with.
    - `score`: the score model, `score(t, x)` on one example.
    - `data`: held-out examples in model units, shape `(n, *data_shape)`. The first
        `num_samples` are the reference; the next `num_samples` (if there are as many)
        give the floor.
    - `name`: the label in the records.
    - `data_range`: the model units of the images' black and white, `(lo, hi)`
        (a checkpoint's `(shift, shift + scale)`; `(-1, 1)` for `sd.data.digits`'s
        default scaling): samples become images `(x - lo) / (hi - lo)`, clipped to
        `[0, 1]`, for `fd_digits`.
    """

    sde: AbstractSDE
    score: Callable
    data: Any
    name: str = "data"
    data_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics that apply: `sliced_w2`, and `fd_digits` for 8x8 digits."""
        if self.shape in _DIGITS_SHAPES:
            return DATA_METRICS
        return ("sliced_w2",)

    def to_images(self, x: Any) -> np.ndarray:
        """Examples in model units -> images in `[0, 1]` (by `data_range`)."""
        lo, hi = self.data_range
        x = np.asarray(x, np.float64).reshape(len(x), *self.shape)
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)

    @property
    def label(self) -> str:
        """The problem's name in the records."""
        return self.name

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one example, `data_shape`."""
        return tuple(np.shape(self.data)[1:])


# --------------------------------------------------------------------------- samplers


DEFAULT_RTOL = 1e-5
DEFAULT_ATOL = 1e-5
DEFAULT_MAX_STEPS = 4096


class BenchArgumentError(ValueError):
    """A `ValueError` from [`run`][scoresde_diffrax.bench.run] or a
    [`Sampler`][scoresde_diffrax.bench.Sampler] that names the argument at fault in
    `argument` (`"nfe_budgets"`, `"metrics"`, `"num_samples"`, `"evals_per_step"`),
    so a front end can name its own flag without reading the message."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


@dataclasses.dataclass(frozen=True)
class LearnGrid:
    """How a [`Sampler`][scoresde_diffrax.bench.Sampler] learns its grid (the CLI's
    `NAME@learned`): [`learn_time_grid`][scoresde_diffrax.learn_time_grid] per problem
    and budget, from the sampler's fixed `grid`, on `num_train` training prior draws
    (and as many held-out ones) drawn from a key of their own, never the draws the
    samples are scored on. The learning's wall time is recorded
    (`BenchRecord.learn_s`).

    **Fields:**

    - `num_train`: training prior draws (default 256).
    - `num_iters`: the most optimiser steps (default 200).
    - `learn_end`: learn the grid's end time too (default False).
    """

    num_train: int = 256
    num_iters: int = 200
    learn_end: bool = False


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One sampler specification: a solver object, the terms it solves, how a budget
    of score evaluations (or a number of steps) becomes its `sample` arguments, and
    what a table of samplers says about it. `sd.bench.run` samples with it; the
    CLI's solver names (`scoresde solvers`, `--solver`, `--solvers`) map onto
    `Sampler`s (`scoresde_diffrax.cli.SOLVERS`).

    **Fields:**

    - `name`: the label in the records and tables.
    - `solver`: a diffrax solver (or one of this package's samplers).
    - `method`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE); the
        default when `methods` lists both.
    - `grid`: for fixed steps, the [`time_grid`][scoresde_diffrax.time_grid] kind
        (`"uniform"`, `"quadratic"`, `"logsnr"`, `"edm"`).
    - `evals_per_step`: score evaluations per step. Default None: measured by
        counting the score's calls in one step of `solver` (what `sample` counts);
        if given it must equal that count (kept for older code).
    - `adaptive`: a PID step-size controller with `rtol`/`atol` and at most
        `max_steps` steps; budgets do not apply (one solve, its evaluations
        recorded).
    - `rtol`, `atol`: the adaptive solve's tolerances, default `1e-5` (`DEFAULT_RTOL`,
        `DEFAULT_ATOL`: the same as [`sample`][scoresde_diffrax.sample]'s and the
        CLI's `--rtol`/`--atol`).
    - `max_steps`: the adaptive solve's most steps (default 4096).
    - `stepsize_controller`: for an adaptive sampler, a controller to use instead of
        `diffrax.PIDController(rtol=rtol, atol=atol)` (e.g. with `dcoeff=0` for SDEs).
    - `plan`: for a sampler whose budget is not `nfe // evals_per_step` steps of one
        grid: `plan(sde, nfe)` (with `eps=` when an end time is given) returns the
        `(solver, stepsize_controller)` that spend exactly `nfe` evaluations (e.g.
        [`restart_schedule`][scoresde_diffrax.restart_schedule]); `solver` is then its
        inner solver, whose evaluations per step on the probability-flow ODE count.
    - `min_nfe`: the least budget (default `min_steps` steps).
    - `help`, `order`, `reference`: one line for `--help`, the order (text) and where
        the method comes from, for `scoresde solvers`.
    - `methods`: every method it serves (default: `method` only).
    - `min_steps`: the fewest fixed steps it takes (default 1).
    - `learn_grid`: a [`LearnGrid`][scoresde_diffrax.bench.LearnGrid] to learn the
        grid for each problem and budget with
        [`learn_time_grid`][scoresde_diffrax.learn_time_grid] (starting from `grid`),
        on prior draws independent of those it is scored on (a fixed-step solver of
        the probability-flow ODE only); None (default): the fixed `grid`.

    **Example:**

    ```python
    em = sd.bench.Sampler("euler-maruyama", diffrax.Euler(), "sde")
    dpm = sd.bench.Sampler("dpm-solver++2m", sd.DPMSolverPP2M(), "ode", grid="logsnr")
    dpm.sample_kwargs(sd.VPSDE(), 20)  # solver, method and a 20-step log-SNR grid
    unipc = sd.bench.Sampler("unipc@learned", sd.UniPC(), "ode", grid="logsnr",
                             learn_grid=sd.bench.LearnGrid())
    ```
    """

    name: str
    solver: dfx.AbstractSolver
    method: Literal["sde", "ode"]
    grid: str = "uniform"
    evals_per_step: int | None = None
    adaptive: bool = False
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    max_steps: int = DEFAULT_MAX_STEPS
    stepsize_controller: dfx.AbstractStepSizeController | None = None
    plan: Callable[..., tuple] | None = None
    min_nfe: int | None = None
    help: str = ""
    order: str = ""
    reference: str = ""
    methods: tuple[str, ...] = ()
    min_steps: int = 1
    learn_grid: LearnGrid | None = None

    def __post_init__(self):
        if self.method not in ("sde", "ode"):
            raise ValueError(
                f"`method` must be 'sde' or 'ode', got {self.method!r} ({self.name})."
            )
        if self.learn_grid is not None and (
            self.method != "ode" or self.adaptive or self.plan is not None
        ):
            raise ValueError(
                f"`learn_grid`: {self.name} is not a fixed-step sampler of the "
                "probability-flow ODE with a grid of its own; a grid is learned for "
                "those only."
            )

    @property
    def all_methods(self) -> tuple[str, ...]:
        """Every method it serves (`methods`, or `method` alone)."""
        return self.methods or (self.method,)

    def score_evals_per_step(self) -> int:
        """Score evaluations per step of `solver` on `method`'s terms: counted once
        per solver by the probe `sample` uses (cached), or `evals_per_step` when
        given (checked against the count)."""
        # A plan's budget counts steps of its inner (ODE) solver.
        method = "ode" if self.plan is not None else self.method
        counted = count_score_evals(self.solver, method).per_step
        if counted < 1:
            if self.evals_per_step is None:
                raise BenchArgumentError(
                    "evals_per_step",
                    f"{self.name}: the score evaluations per step of "
                    f"{type(self.solver).__name__} are not constant; give "
                    "`evals_per_step`.",
                )
            return self.evals_per_step
        if self.evals_per_step is not None and self.evals_per_step != counted:
            raise BenchArgumentError(
                "evals_per_step",
                f"{self.name}: `evals_per_step` = {self.evals_per_step}, but "
                f"{type(self.solver).__name__} evaluates the score {counted} times "
                "per step; leave it out (it is counted).",
            )
        return counted

    @property
    def least_nfe(self) -> int:
        """The least budget: `min_nfe`, or `min_steps` steps."""
        if self.min_nfe is not None:
            return self.min_nfe
        return self.min_steps * self.score_evals_per_step()

    def check_budget(self, nfe: int | None) -> None:
        """Raise a `BenchArgumentError` (a `ValueError`, argument `"nfe_budgets"`) if
        a fixed-step sampler's budget of `nfe` score evaluations (an int, or None)
        buys too few steps; nothing for an adaptive one."""
        if self.adaptive:
            return
        least = self.least_nfe
        if nfe is None or nfe < least:
            raise BenchArgumentError(
                "nfe_budgets",
                f"an NFE budget of {nfe} is below what {self.name} needs: "
                f"{self.score_evals_per_step()} score evaluations per step, and at "
                f"least {least}.",
            )

    def sample_kwargs(
        self,
        sde: AbstractSDE,
        nfe: int | None,
        *,
        eps: float | None = None,
        pad_to: int | None = None,
    ) -> dict:
        """The [`sample`][scoresde_diffrax.sample] arguments (`solver`, `method` and
        the steps) of a budget of `nfe` score evaluations for `sde`: `nfe //
        evals_per_step` steps on the sampler's grid ending at `eps` (None: the
        SDE's default); `nfe` is ignored (may be None) for an adaptive sampler.
        With `pad_to` (a number of steps, at least the budget's) the grid is padded
        with its end time to `pad_to` steps: the same steps, in one compiled program
        for every budget padded to the same length ([`run`][scoresde_diffrax.bench.run]
        pads a sampler's budgets to the largest). `BenchArgumentError` if the budget
        buys too few steps."""
        self.check_budget(nfe)
        if self.adaptive or self.plan is not None:
            return self._kwargs(sde, None, nfe, eps)
        steps = nfe // self.score_evals_per_step()
        kwargs = self._kwargs(sde, steps, nfe, eps)
        if pad_to is None:
            return kwargs
        if pad_to < steps:
            raise BenchArgumentError(
                "pad_to", f"`pad_to` = {pad_to} is below the budget's {steps} steps."
            )
        if "num_steps" in kwargs:
            T, end = float(sde.T), float(sde.default_eps if eps is None else eps)
            ts = uniform_grid(T, end, kwargs.pop("num_steps"), T, end)
        else:
            ts = np.asarray(kwargs.pop("stepsize_controller").ts)
        return kwargs | dict(stepsize_controller=PaddedStepTo(pad_grid(ts, pad_to + 1)))

    def fixed_steps(self, nfe: int) -> int | None:
        """The fixed steps a budget of `nfe` buys (None for an adaptive sampler or a
        `plan`, whose grids are not padded)."""
        if self.adaptive or self.plan is not None:
            return None
        return nfe // self.score_evals_per_step()

    def step_kwargs(
        self, sde: AbstractSDE, num_steps: int | None, *, eps: float | None = None
    ) -> dict:
        """The [`sample`][scoresde_diffrax.sample] arguments of `num_steps` fixed
        steps (the CLI's `--steps`; for a `plan`, a budget of `num_steps` times the
        evaluations per step); `num_steps` is ignored for an adaptive sampler."""
        if self.adaptive:
            return self._kwargs(sde, None, None, eps)
        if num_steps is None or num_steps < self.min_steps:
            raise BenchArgumentError(
                "num_steps",
                f"{num_steps} steps is below what {self.name} needs: at least "
                f"{self.min_steps}.",
            )
        nfe = None
        if self.plan is not None:
            nfe = num_steps * self.score_evals_per_step()
        return self._kwargs(sde, num_steps, nfe, eps)

    def _kwargs(self, sde, steps, nfe, eps) -> dict:
        kwargs: dict = dict(solver=self.solver, method=self.method)
        if self.adaptive:
            controller = self.stepsize_controller
            if controller is None:
                controller = dfx.PIDController(rtol=self.rtol, atol=self.atol)
            return kwargs | dict(
                stepsize_controller=controller, max_steps=self.max_steps
            )
        if self.plan is not None:
            extra = {} if eps is None else dict(eps=eps)
            solver, controller = self.plan(sde, nfe, **extra)
            return kwargs | dict(solver=solver, stepsize_controller=controller)
        if self.grid == "uniform":
            return kwargs | dict(num_steps=steps)
        ts = time_grid(sde, steps, kind=self.grid, eps=eps)
        return kwargs | dict(stepsize_controller=dfx.StepTo(ts))


def _learned_kwargs(s: Sampler, problem, score, budget: int, key) -> tuple[dict, float]:
    """`s.sample_kwargs` with the grid learned for `problem` and `budget` on prior
    draws of `key` (a key the scored samples do not use), and the learning's
    seconds."""
    lg = s.learn_grid
    grid = learn_time_grid(
        key,
        problem.sde,
        score,
        (lg.num_train, *problem.shape),
        solver=s.solver,
        num_evals=budget,
        init=s.grid,
        learn_end=lg.learn_end,
        num_iters=lg.num_iters,
    )
    kwargs = dict(solver=s.solver, method="ode") | grid.sample_kwargs()
    return kwargs, grid.seconds


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class BenchRecord:
    """One solve of one problem by one sampler at one budget.

    **Fields:**

    - `problem`, `sampler`: their labels.
    - `nfe_budget`: the budget asked for (None for an adaptive sampler).
    - `nfe`: the score evaluations each sample took; `steps`: solver steps.
    - `compile_s`: the first call's time minus the second's (compilation and
        tracing); `run_s`: the second call's time (the same key: the same samples).
    - `metrics`: name -> `(value, standard error)`.
    - `floor`: name -> `(value, standard error)` of the same metric, computed the
        same way, for true samples of the same size drawn independently of the
        reference set (for data: a second held set beside the reference; NaN where
        there are not enough held data).
    - `learn_s`: for a sampler with a learned grid, the seconds its learning took
        (None otherwise).
    - `verdict`: how it compares at its budget (see
        [`verdicts`][scoresde_diffrax.bench.verdicts]): `"best"`, `"tied with
        best"` or `"worse than best"`, with `", at the floor"` when its figure is
        within noise of the floor's (or below it); empty when nothing was ranked.
    """

    problem: str
    sampler: str
    nfe_budget: int | None
    nfe: int
    steps: int
    compile_s: float
    run_s: float
    metrics: dict
    floor: dict
    verdict: str = ""
    learn_s: float | None = None

    def as_dict(self) -> dict:
        """A JSON-able dict (one line of `to_json_lines`)."""
        return dict(
            problem=self.problem,
            sampler=self.sampler,
            nfe_budget=self.nfe_budget,
            nfe=self.nfe,
            steps=self.steps,
            compile_s=self.compile_s,
            run_s=self.run_s,
            metrics={
                k: dict(
                    value=_num(v[0]),
                    se=_num(v[1]),
                    floor=_num(self.floor[k][0]),
                    floor_se=_num(self.floor[k][1]),
                )
                for k, v in self.metrics.items()
            },
            verdict=self.verdict,
            verdict_test=VERDICT_TEST if self.verdict else None,
        ) | ({} if self.learn_s is None else dict(learn_s=self.learn_s))


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


# --------------------------------------------------------------------------- metrics


def _sw2_parts(theta, x, y):
    """Per-projection squared 1-D W2 of point clouds `x` and `y` (quantiles matched
    when their sizes differ)."""
    px, py = jnp.sort(x @ theta.T, axis=0), jnp.sort(y @ theta.T, axis=0)
    if px.shape[0] != py.shape[0]:
        n_q = max(px.shape[0], py.shape[0])
        q = (jnp.arange(n_q) + 0.5) / n_q
        px = px[jnp.clip((q * px.shape[0]).astype(jnp.int32), 0, px.shape[0] - 1)]
        py = py[jnp.clip((q * py.shape[0]).astype(jnp.int32), 0, py.shape[0] - 1)]
    return jnp.mean((px - py) ** 2, axis=0)


def _sw2_and_se(key, x, y, num_projections: int, num_resamples: int):
    """`sliced_w2_with_se` in JAX (vmappable): the distance, the projections' standard
    error, and the bootstrap's standard deviation (0 without resamples)."""
    theta = jr.normal(key, (num_projections, x.shape[1]), dtype=x.dtype)
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    per = _sw2_parts(theta, x, y)
    sw = jnp.sqrt(jnp.mean(per))
    proj = jnp.std(per, ddof=1) / math.sqrt(num_projections) / (2 * sw)
    proj = jnp.where(sw > 0, proj, 0.0)
    if not num_resamples:
        return sw, proj, jnp.zeros_like(sw)
    kx, ky = jr.split(jr.fold_in(key, 1))
    ix = jr.randint(kx, (num_resamples, x.shape[0]), 0, x.shape[0])
    iy = jr.randint(ky, (num_resamples, y.shape[0]), 0, y.shape[0])
    boot = jax.vmap(lambda i, j: jnp.sqrt(jnp.mean(_sw2_parts(theta, x[i], y[j]))))(
        ix, iy
    )
    return sw, proj, jnp.std(boot, ddof=1)


_sw2_jit = jax.jit(_sw2_and_se, static_argnums=(3, 4))


def sliced_w2_with_se(
    key: PRNGKeyArray,
    x: Float[ArrayLike, "n D"],
    y: Float[ArrayLike, "m D"],
    num_projections: int = _NUM_PROJECTIONS,
    num_resamples: int = 0,
) -> tuple[float, float]:
    """The sliced Wasserstein-2 distance of
    [`sliced_wasserstein`][scoresde_diffrax.metrics.sliced_wasserstein] (the same
    projections for the same `key`) and its standard error.

    With `num_resamples = 0` the standard error covers the random projections only
    (delta method on the mean of the per-projection squared distances): it leaves
    out the sampling noise of `x` and `y`, usually the larger part. With
    `num_resamples = B > 1` it also covers the sampling noise: the standard
    deviation of the distance over `B` bootstrap resamples of both point clouds (the
    rows of each drawn with replacement), combined with the projections' part. This
    is what [`run`][scoresde_diffrax.bench.run] reports.

    **Arguments:**

    - `key`: the key of the projection directions (and of the resamples).
    - `x`, `y`: the two point clouds, shapes `(n, D)` and `(m, D)`.
    - `num_projections`: the number of directions (default 256).
    - `num_resamples`: bootstrap resamples (0: projections only; else at least 2).

    **Returns:** `(distance, standard error)`.
    """
    if isinstance(num_resamples, bool) or not isinstance(num_resamples, int):
        raise ValueError(f"`num_resamples` must be an int, got {num_resamples!r}.")
    if num_resamples == 1 or num_resamples < 0:
        raise ValueError(
            f"`num_resamples` must be 0 or at least 2, got {num_resamples}."
        )
    x, y = jnp.asarray(x), jnp.asarray(y)
    sw, proj, boot = (
        float(v) for v in _sw2_jit(key, x, y, num_projections, num_resamples)
    )
    return sw, math.hypot(proj, boot)


def _mixture_metrics(
    mix: GaussianMixture,
    x: np.ndarray,
    ref: np.ndarray,
    ref_logp: tuple | None,
    key,
    names: Sequence[str],
) -> dict:
    out = {}
    if "sliced_w2" in names:
        out["sliced_w2"] = sliced_w2_with_se(key, x, ref, num_resamples=_NUM_RESAMPLES)
    if not set(names) - {"sliced_w2"}:
        return out
    rep = mixture_report(mix, x)
    w = np.asarray(mix.weights, np.float64)
    k = int(np.argmax(np.abs(rep.mode_weights - w)))
    out["variance_ratio"] = (rep.variance_ratio, rep.variance_ratio_se)
    out["weight_error"] = (
        float(np.abs(rep.mode_weights - w)[k]),
        float(rep.mode_weights_se[k]),
    )
    if ref_logp is not None:
        out["log_prob_gap"] = (
            rep.mean_log_prob - ref_logp[0],
            math.hypot(rep.mean_log_prob_se, ref_logp[1]),
        )
    return out


def _flat(x: Any) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x.reshape(len(x), -1)


class _Target:
    """What one problem's samples are compared with, and its floor."""

    def __init__(self, key, problem, n: int, metrics: Sequence[str]):
        kref, kfloor, self.kproj = jr.split(key, 3)
        self.problem, self.metrics = problem, tuple(metrics)
        is_mix = isinstance(problem, MixtureProblem)
        allowed = MIXTURE_METRICS if is_mix else problem.metrics
        bad = [m for m in self.metrics if m not in allowed]
        if bad:
            raise BenchArgumentError(
                "metrics",
                f"metric(s) {', '.join(bad)} do not apply to {problem.label}; "
                f"choose from {', '.join(allowed)}.",
            )
        if is_mix:
            mix = problem.mixture
            self.ref = np.asarray(mix.sample(kref, n), np.float64)
            self.ref_logp = None
            if "log_prob_gap" in self.metrics:
                r = mixture_report(mix, self.ref)
                self.ref_logp = (r.mean_log_prob, r.mean_log_prob_se)
            # The floor: the same figures for true samples of their own, independent
            # of the reference set (never the reference set itself: it would
            # compare the reference with itself).
            floor = self.of(np.asarray(mix.sample(kfloor, n)))
        else:
            data = _flat(problem.data)
            if len(data) < n:
                raise BenchArgumentError(
                    "num_samples",
                    f"`num_samples` = {n} exceeds the {len(data)} held examples of "
                    f"{problem.label}: lower it.",
                )
            self.ref = data[:n]
            if "fd_digits" in self.metrics:
                self.ref_images = problem.to_images(self.ref)
            floor = None
            if len(data) >= 2 * n:
                floor = self.of(data[n : 2 * n])
        nan = (math.nan, math.nan)
        self.floor = floor if floor is not None else {m: nan for m in self.metrics}

    def of(self, x: Any) -> dict:
        x = _flat(x)
        if isinstance(self.problem, MixtureProblem):
            m = _mixture_metrics(
                self.problem.mixture,
                x,
                self.ref,
                self.ref_logp,
                self.kproj,
                self.metrics,
            )
        else:
            m = {}
            if "sliced_w2" in self.metrics:
                m["sliced_w2"] = sliced_w2_with_se(
                    self.kproj, x, self.ref, num_resamples=_NUM_RESAMPLES
                )
            if "fd_digits" in self.metrics:
                m["fd_digits"] = fd_digits_with_se(
                    self.problem.to_images(x), self.ref_images
                )
        return {k: (float(m[k][0]), float(m[k][1])) for k in self.metrics}


# --------------------------------------------------------------------------- runner


def run(
    key: PRNGKeyArray,
    problems: Sequence[MixtureProblem | DataProblem],
    samplers: Sequence[Sampler],
    nfe_budgets: Sequence[int],
    *,
    num_samples: int = 1000,
    metrics: Sequence[str] | None = None,
    callback: Callable[[BenchRecord], None] | None = None,
    share_programs: bool = True,
) -> list[BenchRecord]:
    """Sample every problem with every sampler at every budget of score evaluations
    and measure the samples.

    Each solve runs twice with the same key: the first call's time minus the
    second's is the compile time, the second's the run time. A fixed-step sampler's
    budgets share one compiled program (their grids padded to the largest budget's
    steps: the same steps and samples), so its first budget carries the compile time. Each sampler draws its
    own prior samples and noise (its budgets share them), independent of the other
    samplers', of the reference set and of the floor's true samples, so the standard
    errors (which include the sampling noise) compare figures honestly; every metric
    uses the same reference set and projections. Per budget the records get a
    verdict ([`verdicts`][scoresde_diffrax.bench.verdicts]): the best sampler, the
    ones not distinguishable from it, and which are at the floor.

    **Arguments:**

    - `key`: a JAX PRNG key (samples, reference samples, projections).
    - `problems`: [`MixtureProblem`][scoresde_diffrax.bench.MixtureProblem]s and
        [`DataProblem`][scoresde_diffrax.bench.DataProblem]s.
    - `samplers`: [`Sampler`][scoresde_diffrax.bench.Sampler]s.
    - `nfe_budgets`: budgets of score evaluations per sample (ints >= 1); an
        adaptive sampler runs once whatever the budgets.
    - `num_samples`: samples per solve, and the size of the reference and floor
        samples (default 1000).
    - `metrics`: the names to measure (default all that apply: `MIXTURE_METRICS` =
        `sliced_w2` (to true samples), `variance_ratio` (within-mode variance / true),
        `weight_error` (largest |mode weight - true|), `log_prob_gap` (mean exact
        log p0 of the samples minus that of true samples: the likelihood error) for
        mixtures; `DATA_METRICS` = `sliced_w2` (to the held data) and, for 8x8
        digits, `fd_digits` (FD-digits to the held digits, its floor from as many
        held digits, its standard error a bootstrap over the samples) for data).
    - `callback`: called with each record as it is made (e.g. to print progress).
    - `share_programs`: pad each fixed-step sampler's grids to one length, so that
        its budgets share one compiled program (default True); False compiles one
        program per budget (to measure what sharing saves).

    **Returns:** a list of [`BenchRecord`][scoresde_diffrax.bench.BenchRecord], in
    the order problem, sampler, budget.

    **Raises:** [`BenchArgumentError`][scoresde_diffrax.bench.BenchArgumentError] (a
    `ValueError` naming the argument) for a metric that does not apply to a problem, a
    budget below a sampler's evaluations per step, or more samples than held data;
    [`SolveError`][scoresde_diffrax.SolveError] for a failed solve.
    """
    budgets = [int(b) for b in nfe_budgets]
    if not budgets or min(budgets) < 1:
        raise BenchArgumentError(
            "nfe_budgets", f"`nfe_budgets` must be ints >= 1, got {list(nfe_budgets)}."
        )
    for s in samplers:  # before any solve
        s.check_budget(min(budgets))
    targets, sample_keys = [], []
    for i, problem in enumerate(problems):  # every check before any solve
        ktarget, ksample = jr.split(jr.fold_in(key, i))
        names = metrics
        if names is None:
            is_mix = isinstance(problem, MixtureProblem)
            names = MIXTURE_METRICS if is_mix else problem.metrics
        targets.append(_Target(ktarget, problem, num_samples, names))
        sample_keys.append(ksample)
    records = []
    for problem, target, ksample in zip(problems, targets, sample_keys, strict=True):
        score = (
            problem.score() if isinstance(problem, MixtureProblem) else problem.score
        )
        shape = (num_samples, *problem.shape)
        for j, s in enumerate(samplers):
            # Independent draws per sampler (its budgets share them).
            kj = jr.fold_in(ksample, j)
            # Every budget's grid padded to the largest: one compiled program.
            steps = [s.fixed_steps(b) for b in budgets]
            pad = None if None in steps or not share_programs else max(steps)
            for budget in [None] if s.adaptive else budgets:
                learn_s = None
                if s.learn_grid is None:
                    kwargs = s.sample_kwargs(problem.sde, budget, pad_to=pad)
                else:  # on draws of their own: another key than kj's
                    klearn = jr.fold_in(jr.fold_in(ksample, 2**20 + j), budget)
                    kwargs, learn_s = _learned_kwargs(s, problem, score, budget, klearn)
                times = []
                for _ in range(2):
                    t = time.perf_counter()
                    res = sample(kj, problem.sde, score, shape, **kwargs)
                    res.samples.block_until_ready()
                    times.append(time.perf_counter() - t)
                record = BenchRecord(
                    problem=problem.label,
                    sampler=s.name,
                    nfe_budget=budget,
                    nfe=int(res.stats["num_score_evals"]),
                    steps=int(res.stats["num_steps"]),
                    compile_s=max(times[0] - times[1], 0.0),
                    run_s=times[1],
                    metrics=target.of(res.samples),
                    floor=target.floor,
                    learn_s=learn_s,
                )
                records.append(record)
                if callback is not None:
                    callback(record)
    return verdicts(records)


def _verdict_metric(record: BenchRecord) -> str | None:
    return next((m for m in VERDICT_METRICS if m in record.metrics), None)


def verdicts(records: Sequence[BenchRecord], z: float = _Z) -> list[BenchRecord]:
    """The records with their `verdict`: per problem and budget (the adaptive
    samplers, without a budget, form one group), on the first of `VERDICT_METRICS`
    measured (lower is better). The best is the lowest figure; another is `tied
    with best` when the difference is within `z` standard errors of the two
    (`VERDICT_TEST`: a two-sided z-test, the samplers' draws being independent), else
    `worse than best`. A figure at most `z` standard errors (its own and the floor's)
    above the floor is `at the floor`: true samples of the same size do as well, and
    a figure below the floor is noise, never better than true samples.

    **Arguments:**

    - `records`: what [`run`][scoresde_diffrax.bench.run] made.
    - `z`: the critical value (default 1.96: the 5% level).

    **Returns:** the records, in the same order, with `verdict` set.
    """
    out = list(records)
    groups: dict = {}
    for i, r in enumerate(out):
        if _verdict_metric(r) is not None:
            groups.setdefault((r.problem, r.nfe_budget), []).append(i)
    for idx in groups.values():
        m = _verdict_metric(out[idx[0]])
        vals = [out[i].metrics[m] for i in idx]
        finite = [k for k, (v, _) in enumerate(vals) if math.isfinite(v)]
        if not finite:
            continue
        b = min(finite, key=lambda k: vals[k][0])
        for k, i in enumerate(idx):
            (v, se), (vb, seb) = vals[k], vals[b]
            if not math.isfinite(v):
                text = "failed"
            elif k == b:
                text = "best"
            else:
                tied = v - vb <= z * math.hypot(se, seb)
                text = "tied with best" if tied else "worse than best"
            f, fse = out[i].floor[m]
            if math.isfinite(v) and math.isfinite(f):
                if v - f <= z * math.hypot(se, fse if math.isfinite(fse) else 0.0):
                    text += ", at the floor"
            out[i] = dataclasses.replace(out[i], verdict=text)
    return out


# --------------------------------------------------------------------------- output


def to_json_lines(records: Sequence[BenchRecord]) -> str:
    """The records as JSON lines (one object per record, `BenchRecord.as_dict`).

    **Arguments:**

    - `records`: what [`run`][scoresde_diffrax.bench.run] returned.

    **Returns:** the text, one line per record.
    """
    return "".join(json.dumps(r.as_dict()) + "\n" for r in records)


def _fmt(v: float, se: float) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.4g} ± {se:.2g}" if math.isfinite(se) else f"{v:.4g}"


def to_markdown(records: Sequence[BenchRecord]) -> str:
    """A markdown table per problem: a row per record (sampler, NFE, each metric
    `value ± standard error`, the verdict, compile and run seconds) and a first row
    `true samples` with the floors; under it the metric and test of the verdicts.

    **Arguments:**

    - `records`: what [`run`][scoresde_diffrax.bench.run] returned.

    **Returns:** the markdown text.
    """
    out = []
    for problem in dict.fromkeys(r.problem for r in records):
        rows = [r for r in records if r.problem == problem]
        names = list(rows[0].metrics)
        out.append(f"### {problem}\n")
        out.append(
            "| sampler | NFE | "
            + " | ".join(names)
            + " | verdict | compile s | run s |"
        )
        out.append("|---|---:|" + "---:|" * len(names) + "---|---:|---:|")
        floor = rows[0].floor
        out.append(
            "| true samples | - | "
            + " | ".join(_fmt(*floor[m]) for m in names)
            + " | floor | - | - |"
        )
        for r in rows:
            out.append(
                f"| {r.sampler} | {r.nfe} | "
                + " | ".join(_fmt(*r.metrics[m]) for m in names)
                + f" | {r.verdict or '-'} | {r.compile_s:.2f} | {r.run_s:.3f} |"
            )
        metric = _verdict_metric(rows[0])
        if any(r.verdict for r in rows) and metric is not None:
            out.append(
                f"\nVerdicts per budget on {metric} (± one standard error, sampling "
                f"noise included): {VERDICT_TEST}; at the floor = within noise of "
                "true samples."
            )
        out.append("")
    return "\n".join(out)


def _nfe_ticks(nfes: Sequence[int], most: int = 8) -> list[int]:
    """Where a plot against NFE (log scale) puts its ticks, labelled as plain numbers:
    at the NFEs themselves (leaving out one within 25% of the tick before, whose label
    would overlap) if there are at most `most`, else at 1, 2, 5, 10, 20, 50, ...
    within their range."""
    values = sorted(set(int(n) for n in nfes))
    if len(values) <= most:
        kept = values[:1]
        for v in values[1:]:
            if v >= 1.25 * kept[-1]:
                kept.append(v)
        return kept
    lo, hi = values[0], values[-1]
    nice = [m * 10**e for e in range(len(str(hi)) + 1) for m in (1, 2, 5)]
    return [t for t in nice if lo <= t <= hi] or [lo, hi]


def plot(records: Sequence[BenchRecord], path: str) -> None:
    """A PNG of each metric against the score evaluations (log scale, its ticks
    plain numbers such as 5, 10, 20, 50), a line per
    sampler with standard-error bars, the floor of true samples dashed; a column per
    metric, a row per problem. Needs matplotlib (drawn with its Agg backend).

    **Arguments:**

    - `records`: what [`run`][scoresde_diffrax.bench.run] returned.
    - `path`: the PNG file to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    problems = list(dict.fromkeys(r.problem for r in records))
    names = list(records[0].metrics)
    fig, axes = plt.subplots(
        len(problems),
        len(names),
        figsize=(4.2 * len(names), 3.4 * len(problems)),
        squeeze=False,
    )
    for i, problem in enumerate(problems):
        rows = [r for r in records if r.problem == problem]
        for j, m in enumerate(names):
            ax = axes[i, j]
            for sampler in dict.fromkeys(r.sampler for r in rows):
                pts = sorted(
                    (r.nfe, *r.metrics[m]) for r in rows if r.sampler == sampler
                )
                nfe, val, se = (np.array(c, float) for c in zip(*pts, strict=True))
                ax.errorbar(
                    nfe, val, yerr=se, marker="o", ms=3, capsize=2, label=sampler
                )
            fv = rows[0].floor[m][0]
            if math.isfinite(fv):
                ax.axhline(fv, color="k", ls="--", lw=1, label="true samples")
            ax.set_xscale("log")
            ticks = _nfe_ticks([r.nfe for r in rows])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlabel("score evaluations (NFE)")
            ax.set_title(f"{problem}: {m}", fontsize=9)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
