"""What this package's solvers read from diffrax terms: the SDE, the score, the clock and
the noise.

`diffrax.diffeqsolve` hands a solver its terms wrapped (each in a term that carries the
direction of integration; our own noise gate wraps the noise inside
[`PredictorCorrector`][]); the solvers here look through the wrappers to the
[`ScoreDrift`][] they were built from, so they can step with the SDE's closed-form
marginals instead of only calling the vector field.
"""

import math
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

# What a solve plan asks a solver lives below the solvers (`_planned_solver`); the
# multistep solvers subclass it from here.
from .._planned_solver import AbstractPlannedSolver as AbstractPlannedSolver
from .._sde import AbstractSDE
from .._term import batched_score, Diffusion, ScoreDrift


# The reverse-time SDE terms: MultiTerm(ODETerm(ScoreDrift), ControlTerm(Diffusion, path)).
SDETerms = dfx.MultiTerm[tuple[dfx.AbstractTerm[Any, Any], dfx.AbstractTerm]]


class NoiseGate(dfx.AbstractTerm):
    """A diffusion term whose control is multiplied by `gate` (0 or 1): used to take
    the final step of a predictor without its noise (the paper's noise removal)."""

    term: dfx.AbstractTerm
    gate: Array

    def vf(self, t, y, args):
        return self.term.vf(t, y, args)

    def contr(self, t0, t1, **kwargs):
        c = self.term.contr(t0, t1, **kwargs)
        levy = (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea, dfx.SpaceTimeTimeLevyArea)
        if isinstance(c, levy):
            names = [n for n in ("W", "H", "K") if n in type(c).__dataclass_fields__]
            return eqx.tree_at(
                lambda x: [getattr(x, n) for n in names],
                c,
                [self.gate * getattr(c, n) for n in names],
            )
        return jax.tree_util.tree_map(lambda x: self.gate * x, c)

    def prod(self, vf, control):
        return self.term.prod(vf, control)


def _inner(term: dfx.AbstractTerm) -> dfx.AbstractTerm:
    """The ODETerm or ControlTerm inside the wrappers around `term`. diffrax's wrapper
    is private, so wrappers are recognised by what they are: terms holding a `term`."""
    while not isinstance(term, (dfx.ODETerm, dfx.ControlTerm)):
        inner = getattr(term, "term", None)
        if not isinstance(inner, dfx.AbstractTerm):
            break
        term = inner
    return term


def _direction(drift: dfx.AbstractTerm) -> Array:
    """+1 if the solver's clock is the terms' clock, -1 if diffeqsolve negated time
    (it does so when `t1 < t0`). The control of an ODE term over `[0, 1]` of the
    solver's clock is the time elapsed on the terms' clock: `+1` or `-1`."""
    return jnp.sign(drift.contr(0.0, 1.0)).astype(int)


class Problem(eqx.Module):
    """The sampling problem behind a solver's terms.

    - `sde`, `score`, `batched`: from the [`ScoreDrift`][].
    - `sign`: physical time is `t = sign * t_solver`: diffrax's direction (-1 where
      it negated time) times the sign of the terms' clock (`ScoreDrift.clock`).
    - `noise`: the (possibly wrapped) diffusion term, or None for an ODE term.
    - `path_end`: where the Brownian path ends, on the solver's clock (inf if unknown).
    """

    sde: AbstractSDE
    score: object
    batched: bool = eqx.field(static=True)
    sign: Array
    noise: dfx.AbstractTerm | None
    path_end: Array

    def time(self, t_solver) -> Array:
        return self.sign * t_solver

    def score_at(self, t, y: Array) -> Array:
        out = batched_score(self.score, t, y) if self.batched else self.score(t, y)
        return out.astype(y.dtype)

    def normal(self, t0, t1, y: Array) -> Array:
        """A standard normal of `y`'s shape: the Brownian increment over `[t0, t1]`
        divided by its standard deviation."""
        assert self.noise is not None
        w = self.noise.contr(t0, t1)
        return (w / jnp.sqrt(jnp.abs(t1 - t0))).astype(y.dtype)

    def normals(self, t0, t1, y: Array, k: int) -> Array:
        """`k` standard normals of `y`'s shape, independent of each other AND of the
        increment over `[t0, t1]` (which a predictor uses): Helmert contrasts of the
        increments over `2^m >= k + 1` equal (dyadic) sub-intervals. With a
        `diffrax.VirtualBrownianTree` the sub-increments sum to the increment over
        `[t0, t1]`, and contrasts are orthogonal to that sum; with
        `diffrax.UnsafeBrownianPath` every interval is a fresh draw anyway."""
        assert self.noise is not None
        # Dyadic midpoints (a + b) * 0.5 round the same in every program: the fast
        # Brownian path keys its draws on the endpoints' bits, and `t0 + h * c` may be
        # fused into an FMA under jit but not eagerly, which would change the noise.
        edges = [t0, t1]
        while len(edges) - 1 < k + 1:
            mids = [(a + b) * 0.5 for a, b in zip(edges[:-1], edges[1:], strict=True)]
            edges = [e for pair in zip(edges[:-1], mids, strict=True) for e in pair] + [
                t1
            ]
        n = len(edges) - 1
        std = jnp.sqrt(jnp.abs(t1 - t0) / n)
        # One vmapped evaluation of the path for all sub-intervals: unrolled, each
        # evaluation of a virtual Brownian tree is its own subprogram, and compiling
        # k = 100 of them (Restart with 100 restarts) took minutes.
        lo, hi = jnp.stack(edges[:-1]), jnp.stack(edges[1:])
        u = jax.vmap(self.noise.contr)(lo, hi) / std
        out, total = [], u[0]
        for j in range(1, k + 1):
            out.append((total - j * u[j]) / math.sqrt(j * (j + 1)))
            total = total + u[j]
        return jnp.stack(out).astype(y.dtype)

    def is_last(self, t0, t1) -> Array:
        """Whether the step `[t0, t1]` (solver clock) ends where the Brownian path
        ends (the final step of the solve)."""
        return t1 >= self.path_end - 1e-3 * jnp.abs(t1 - t0)


def _score_drift(term, solver: str, what: str, weight: float):
    inner = _inner(term)
    vf = inner.vector_field if isinstance(inner, dfx.ODETerm) else None
    if not isinstance(vf, ScoreDrift):
        raise ValueError(
            f"`terms`: {solver} needs {what} built by this package (it reads the SDE "
            "and the score from them), e.g. through `sd.sample`; got "
            f"{type(inner).__name__} with vector field {type(vf).__name__}."
        )
    try:
        w = float(vf.score_weight)
    except (TypeError, jax.errors.ConcretizationTypeError):
        w = weight
    if w != weight:
        kind = "probability-flow ODE" if weight == 0.5 else "reverse-time SDE"
        raise ValueError(
            f"`terms`: {solver} integrates the {kind} (score weight {weight}), but the "
            f"ScoreDrift it was handed has score_weight={w}."
        )
    sign = _direction(term) * vf.clock.sign
    return vf, sign


def unpack_ode(terms: PyTree, solver: str) -> Problem:
    """The problem behind a probability-flow ODE term (`sd.probability_flow_term`)."""
    if isinstance(terms, dfx.MultiTerm):
        raise ValueError(
            f"`terms`: {solver} is an ODE solver: it takes the probability-flow ODE term "
            "(`sd.probability_flow_term`, method='ode'), not the reverse-SDE MultiTerm."
        )
    vf, sign = _score_drift(terms, solver, "a probability-flow ODE term", 0.5)
    return Problem(vf.sde, vf.score, vf.batched, sign, None, jnp.asarray(jnp.inf))


def unpack_sde(terms: PyTree, solver: str) -> Problem:
    """The problem behind reverse-SDE terms (`sd.reverse_sde_terms`)."""
    if not (isinstance(terms, dfx.MultiTerm) and len(terms.terms) == 2):
        raise ValueError(
            f"`terms`: {solver} needs the reverse-time SDE terms "
            "`MultiTerm(ODETerm(ScoreDrift), ControlTerm(Diffusion, brownian))` "
            "(`sd.reverse_sde_terms`, method='sde'); got "
            f"{type(terms).__name__}."
        )
    drift, noise = terms.terms
    vf, sign = _score_drift(drift, solver, "reverse-SDE terms", 1.0)
    inner, direction = _inner(noise), _direction(drift)
    if not (
        isinstance(inner, dfx.ControlTerm)
        and isinstance(inner.vector_field, Diffusion)
        and isinstance(inner.control, dfx.AbstractBrownianPath)
    ):
        raise ValueError(
            f"`terms`: {solver} needs a diffusion term `ControlTerm(Diffusion(sde), "
            f"brownian_path)` as the second term; got {type(inner).__name__}."
        )
    path = inner.control
    # diffrax's own negation of time (t1 < t0), not this package's clock: the terms'
    # clock is `ScoreDrift.clock`, which diffeqsolve integrates forwards here.
    end = jnp.where(direction == 1, path.t1, -jnp.asarray(path.t0))
    return Problem(vf.sde, vf.score, vf.batched, sign, noise, end)


def check_decreasing(y: Array, t_from, t_to, solver: str) -> Array:
    """Run-time check that a step goes from larger to smaller physical time."""
    return eqx.error_if(
        y,
        t_to >= t_from,
        f"{solver} samples: each step must go from larger to smaller t (from T down "
        "to eps); this one goes up.",
    )


def per_example(c: Array, y: Array) -> Array:
    """Broadcast per-example values `c` (shape `(batch,)` or `()`) against `y`."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (y.ndim - c.ndim))


def dense_info(y0, y1) -> dict:
    return dict(y0=y0, y1=y1)
