"""Argument rules shared by every entry point.

Each check raises a `ValueError` or `TypeError` naming the argument and saying what is
allowed. Values that are traced (an entry point called inside an outer `jax.jit`) cannot
be checked at trace time and are let through; the solves check what they can at run
time. This module sits below every driver (`sample`, `log_likelihood`, `encode`,
`decode`, `train`, the solvers): it imports nothing from them.
"""

import math
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._clock import Clock
from ._conditioning import example, has_per_example
from ._custom_types import Method
from ._divergence import AbstractDivergence
from ._planned_solver import grid_steps
from ._scalars import (
    check_int as check_int,
    check_nonnegative as check_nonnegative,
    check_nonzero as check_nonzero,
    check_positive as check_positive,
    check_unit_interval as check_unit_interval,
    concrete_float as concrete_float,
    is_concrete as is_concrete,
)
from ._sde import AbstractSDE


# --------------------------------------------------------------------------------------
# Scalars (the rules on plain numbers live in `_scalars`, re-exported above)
# --------------------------------------------------------------------------------------


def check_isinstance(name: str, value, cls: type | tuple[type, ...], what: str) -> None:
    """A `TypeError` naming `name` unless `value` is a `cls` (described as `what`)."""
    if not isinstance(value, cls):
        raise TypeError(f"`{name}` must be {what}, got {type(value).__name__}.")


def check_eps(eps, sde: AbstractSDE) -> float | None:
    """The end time of a solve: `0 < eps < T` (None if traced)."""
    e = concrete_float(eps, "eps")
    if e is not None and not (0 < e < float(sde.T)):
        raise ValueError(f"`eps` must satisfy 0 < eps < T = {sde.T}, got {eps!r}.")
    return e


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def check_shape(shape) -> tuple[int, ...]:
    """`(num_samples, *data_shape)`, every size an int >= 1, at least one data axis."""
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
    if shape[0] > MAX_BATCH:
        raise ValueError(
            f"`shape`: at most {MAX_BATCH} samples per call (example i draws its noise "
            f"from fold_in(key, i), a 32-bit index), got {shape[0]}. Sample in chunks, "
            "each with its own key."
        )
    return shape


# The largest batch: example i is driven by `fold_in(key, i)` with a 32-bit `i`, and
# XLA indexes with int32 unless x64 is on.
MAX_BATCH = 2**31 - 1


def check_floating(name: str, x) -> None:
    """The one rule for data, in training, likelihoods and encoding alike: examples are
    floating point. Integer (quantised) data is refused with the same message
    everywhere: dequantise and scale it first."""
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be a floating-point array, got dtype {dtype}. For "
            "integer (e.g. 8-bit) data, dequantise it first (sd.dequantize) and scale "
            "it as the model expects."
        )


@jax.jit
def _count_not_finite(x) -> jax.Array:
    return jnp.sum(~jnp.isfinite(x))


def check_batch(name: str, x) -> jax.Array:
    """`x` as a finite floating array of shape `(batch, *data_shape)`.

    Integer data is refused everywhere with the same message (the models and the
    likelihood work on continuous data): dequantise and scale it first."""
    x = jnp.asarray(x)
    check_floating(name, x)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(
            f"`{name}` must have shape (batch, *data_shape) with at least one data "
            f"axis, got {x.shape}. For one example use x[None]."
        )
    if is_concrete(x):
        # Eager even under an outer `jax.jit` that closes over a concrete `x`.
        with jax.ensure_compile_time_eval():
            bad = int(_count_not_finite(x))
        if bad:
            raise ValueError(
                f"`{name}` must be finite; it has {bad} NaN or inf entries (shape "
                f"{x.shape})."
            )
    return x


def check_mask(mask, shapes, name: str = "mask"):
    """`mask` as a boolean array of one of the allowed `shapes` (a tuple of shapes, or
    one shape), with every entry 0 or 1 (bools, or numbers equal to 0 or 1).
    Concrete masks come back as a NumPy array, traced ones as a jax array
    (`mask != 0`; the values cannot be checked). A `ValueError` names `name`."""
    if shapes and isinstance(shapes[0], int):
        shapes = (tuple(shapes),)
    shapes = tuple(tuple(int(v) for v in s) for s in shapes)
    if not is_concrete(mask):
        if tuple(mask.shape) not in shapes:
            raise ValueError(
                f"`{name}` must have shape {' or '.join(map(str, shapes))} (the "
                f"data's), got {tuple(mask.shape)}."
            )
        return mask != 0
    m = np.asarray(mask)
    if m.shape not in shapes:
        raise ValueError(
            f"`{name}` must have shape {' or '.join(map(str, shapes))} (the data's), "
            f"got {m.shape}."
        )
    if m.dtype != np.bool_:
        if not (np.issubdtype(m.dtype, np.number) and np.all((m == 0) | (m == 1))):
            bad = m[~((m == 0) | (m == 1))].ravel()[:3] if m.dtype != object else m
            raise ValueError(
                f"`{name}` must be binary (booleans, or numbers 0 and 1 where 1 marks "
                f"an observed entry), got values such as {bad.tolist()}."
            )
        m = m != 0
    return m


# --------------------------------------------------------------------------------------
# The three arguments every solve takes
# --------------------------------------------------------------------------------------


def check_sde_score(sde, score) -> None:
    """The types of `sde` and `score`, each error naming its argument."""
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"`sde` must be an AbstractSDE (VPSDE, ...), got {type(sde)}.")
    if not callable(score):
        raise TypeError(f"`score` must be callable as score(t, x), got {type(score)}.")


def check_solver(solver, method: Method | None) -> Method:
    """The type of `solver`, and the terms it integrates ([`resolve_method`][]);
    the solve plan checks it (`method="ode"` for likelihoods, encoding, decoding)."""
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"`solver` must be a diffrax solver, got {type(solver)}.")
    return resolve_method(solver, method)


def check_divergence(divergence) -> None:
    """`divergence` must be an `AbstractDivergence`."""
    if not isinstance(divergence, AbstractDivergence):
        raise TypeError(
            "`divergence` must be an AbstractDivergence (sd.Hutchinson(...), "
            f"sd.ExactDivergence(), or your own), got {type(divergence)}."
        )


def solver_kinds(solver: dfx.AbstractSolver) -> tuple[bool, bool]:
    """Whether `solver` can integrate (an ODE, the reverse SDE), read from its type: a
    solver taking one term integrates ODEs; one marked Ito/Stratonovich, or taking
    several terms, SDEs."""
    ts = solver.term_structure
    takes_one_term = isinstance(ts, type) and issubclass(ts, dfx.AbstractTerm)
    is_sde = (
        isinstance(solver, (dfx.AbstractItoSolver, dfx.AbstractStratonovichSolver))
        or not takes_one_term
    )
    return takes_one_term, is_sde


def resolve_method(solver: dfx.AbstractSolver, method: Method | None) -> Method:
    """The terms `solver` integrates: `method` if given and possible; inferred from the
    solver's type when it serves only one of the ODE and the SDE."""
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
            "probability-flow ODE. Use an ODE solver: diffrax.Euler, Heun, Midpoint, "
            "Ralston, Bosh3, Tsit5, Dopri5, Dopri8 (or method='sde' where sampling)."
        )
    return method


def check_score_shape(
    score: Callable, data_shape: tuple[int, ...], dtype, source: str = "`shape`"
) -> None:
    """Raise a `ValueError` naming both shapes unless `score(t, x)` maps an example of
    `data_shape` (taken from the argument `source`) to an array of the same shape
    (traced once, nothing is computed)."""
    x = jax.ShapeDtypeStruct(data_shape, dtype)
    t = jax.ShapeDtypeStruct((), dtype)
    if has_per_example(score):
        # One example sees its own entry of the per-example data.
        full = score
        score = lambda t, x: example(full, 0)(t, x)  # noqa: E731
    try:
        out = eqx.filter_eval_shape(score, t, x)
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"`score` failed on one example of shape {data_shape} (the data shape, "
            f"from {source}): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != data_shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"`score` returned shape {got} for one example of shape {data_shape}; "
            f"a score must return an array of its input's shape. Check {source} "
            "against the model."
        )


def check_fits_score(name: str, x, score: Callable) -> None:
    """`check_score_shape` for a batch `x`, naming `x` too."""
    try:
        check_score_shape(score, tuple(x.shape[1:]), x.dtype, f"`{name}`")
    except ValueError as e:
        raise ValueError(
            f"`{name}` of shape {x.shape} does not fit the score: one example has "
            f"shape {tuple(x.shape[1:])}. {e}"
        ) from e


# --------------------------------------------------------------------------------------
# Times: StepTo grids and SaveAt
# --------------------------------------------------------------------------------------

# One tolerance for a grid's endpoints, everywhere.
_REL_TOL, _ABS_TOL = 1e-5, 1e-12


def check_time_grid(
    name: str,
    ts,
    start: float | None,
    end: float | None,
    clock: Clock,
    padded: bool = False,
) -> None:
    """Concrete times `ts` must run strictly monotonically from `start` to `end` (in
    the user's clock: `T -> eps` to sample or decode, `eps -> T` to encode), i.e.
    forwards on the solve's `clock`, each endpoint within a relative 1e-5 (a traced
    endpoint, None, is not checked). The error names the first offending pair.
    `padded`: the end time may repeat after its first occurrence (a `PaddedStepTo`
    grid); the times up to it are checked."""
    if isinstance(ts, jax.core.Tracer):  # traced: checked by the solve itself
        return
    ts = np.asarray(ts, dtype=np.float64)
    if padded and ts.ndim == 1 and ts.size:
        ts = ts[: grid_steps(ts) + 1]
    direction = "decreasing" if clock.reversed else "increasing"
    span = f"from {start} to {end}" if end is not None else f"from {start}"
    if ts.ndim != 1 or ts.size < 2:
        raise ValueError(
            f"`{name}`: times must be a 1-D array of at least 2 points {direction} "
            f"{span}, got shape {ts.shape}."
        )
    steps = clock.to_solver(np.diff(ts))
    bad = np.flatnonzero(~(steps > 0))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"`{name}`: times must be strictly {direction} {span}; ts[{i}] = "
            f"{ts[i]} and ts[{i + 1}] = {ts[i + 1]} are not."
        )
    for which, got, want in (("first", ts[0], start), ("last", ts[-1], end)):
        if want is not None and not math.isclose(
            got, want, rel_tol=_REL_TOL, abs_tol=_ABS_TOL
        ):
            raise ValueError(
                f"`{name}`: times must run {span}; the {which} time is {got}."
            )


def check_saveat(saveat, T: float, eps: float | None) -> None:
    """A `SaveAt` for sampling: concrete `ts` in `[eps, T]`, decreasing (sampling runs
    backwards in time). Dense output is refused (ask for `ts` instead)."""
    if not isinstance(saveat, dfx.SaveAt):
        raise TypeError(f"`saveat` must be a diffrax.SaveAt, got {type(saveat)}.")
    if saveat.dense:
        raise ValueError(
            "`saveat`: dense output (SaveAt(dense=True)) is not supported by sampling "
            "(the solve runs on the reversed clock r = -t); save the times you need "
            "with SaveAt(ts=...) instead."
        )
    subs = jax.tree_util.tree_leaves(
        saveat.subs, is_leaf=lambda x: isinstance(x, dfx.SubSaveAt)
    )
    lo = 0.0 if eps is None else eps
    for sub in subs:
        if sub.ts is None or not is_concrete(sub.ts):
            continue
        ts = np.asarray(sub.ts, dtype=np.float64)
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
