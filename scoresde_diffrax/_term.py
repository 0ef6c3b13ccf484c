from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from ._brownian import per_sample_keys, PerSampleBrownianPath
from ._clock import Clock
from ._conditioning import batched_call
from ._custom_types import ScalarLike
from ._sde import AbstractSDE
from ._sharding import constrain_leading


def batched_score(
    score: Callable, t: ScalarLike, y: Float[Array, " batch *shape"]
) -> Float[Array, " batch *shape"]:
    """Apply a per-example score to a batch (the one place the batch is vmapped; a
    score's [`PerExample`][] data is vmapped alongside the state)."""
    return batched_call(score, t, y)


class ScoreDrift(eqx.Module):
    r"""The drift $f(t)\,x - w\, g(t)^2\, s(t, x)$ as a diffrax vector field.

    $w = 1$ gives the reverse-time SDE drift, $w = \tfrac12$ the probability-flow ODE.
    Build it through [`reverse_sde_terms`][] or [`probability_flow_term`][].

    **Fields:**

    - `sde`: the forward SDE.
    - `score`: a per-example score `score(t, x)`.
    - `score_weight`: $w$.
    - `batched`: if True (default) the state has a leading batch axis and the score is
        vmapped over it; if False the state is one example.
    - `reverse_time`: if True the vector field runs on the reversed clock $r = -t$
        (integrate $r$ from $-T$ up to $-\epsilon$): it is called with $r$ and returns
        $-(f(t)x - w g^2 s)$ at $t = -r$.
    """

    sde: AbstractSDE
    score: Callable
    score_weight: float
    batched: bool = eqx.field(static=True, default=True)
    reverse_time: bool = eqx.field(static=True, default=False)

    @property
    def clock(self) -> Clock:
        """The clock the vector field is called on."""
        return Clock.running(not self.reverse_time)

    def __call__(self, r: ScalarLike, y: Array, args: PyTree = None) -> Array:
        del args
        t = self.clock.to_user(r)
        s = batched_score(self.score, t, y) if self.batched else self.score(t, y)
        g = self.sde.diffusion(t)
        out = self.sde.drift_coeff(t) * y - self.score_weight * g**2 * s
        return self.clock.to_solver_rate(out).astype(y.dtype)


class ForwardDrift(eqx.Module):
    r"""The forward drift $f(t)\,x$ as a diffrax vector field."""

    sde: AbstractSDE

    def __call__(self, t: ScalarLike, y: Array, args: PyTree = None) -> Array:
        del args
        return (self.sde.drift_coeff(t) * y).astype(y.dtype)


class Diffusion(eqx.Module):
    r"""The isotropic diffusion $g(t)\,I$ as a diagonal lineax operator, for a
    `diffrax.ControlTerm` against a Brownian path of the state's shape. With
    `reverse_time=True` it is called with the reversed clock $r = -t$."""

    sde: AbstractSDE
    reverse_time: bool = eqx.field(static=True, default=False)

    @property
    def clock(self) -> Clock:
        """The clock the diffusion is called on."""
        return Clock.running(not self.reverse_time)

    def __call__(
        self, r: ScalarLike, y: Float[ArrayLike, "..."], args: PyTree = None
    ) -> lx.DiagonalLinearOperator:
        del args
        y = jnp.asarray(y)
        g = self.sde.diffusion(self.clock.to_user(r))
        return lx.DiagonalLinearOperator((g * jnp.ones_like(y)).astype(y.dtype))


def probability_flow_term(
    sde: AbstractSDE,
    score: Callable,
    *,
    batched: bool = True,
    reverse_time: bool = False,
) -> dfx.ODETerm:
    r"""The probability-flow ODE $\dot x = f(t) x - \tfrac12 g(t)^2 s(t, x)$ as a
    `diffrax.ODETerm`.

    **Arguments:**

    - `sde`: the forward SDE.
    - `score`: a per-example score `score(t, x)`.
    - `batched`: whether the state carries a leading batch axis (default True).
    - `reverse_time`: False (default): in $t$; integrate from `eps` up to `T` to
        encode, or from `T` down to `eps` to sample. True: on the reversed clock
        $r = -t$, integrated from $-T$ up to $-\epsilon$ to sample (what
        [`sample`][] does).
    """
    return dfx.ODETerm(ScoreDrift(sde, score, 0.5, batched, reverse_time))


def reverse_sde_terms(
    sde: AbstractSDE,
    score: Callable,
    brownian: dfx.AbstractBrownianPath,
    *,
    batched: bool = True,
) -> dfx.MultiTerm:
    r"""The reverse-time SDE $\mathrm{d}x = [f(t) x - g(t)^2 s(t, x)]\,\mathrm{d}t
    + g(t)\,\mathrm{d}\bar w$ as `diffrax.MultiTerm(ODETerm, ControlTerm)`, on the
    reversed clock $r = -t$:

    $$\mathrm{d}x = -[f(t) x - g(t)^2 s(t, x)]_{t=-r}\,\mathrm{d}r
    + g(-r)\,\mathrm{d}W_r,$$

    with $W$ a standard (forward) Brownian motion in $r$. Integrate it with
    `t0=-sde.T < t1=-eps`; the Brownian path is defined on `[-T, -eps]` and has the
    state's shape. (Why not `t0=T > t1=eps`: diffrax's stochastic Runge-Kutta solvers,
    `SRA1`, `ShARK`, `SEA`, `SPaRK`, ignore the time direction in the drift's control
    and negate the Lévy area when `t1 < t0`, and then diverge. On a forward clock every
    diffrax SDE solver is correct.)

    **Arguments:**

    - `sde`: the forward SDE.
    - `score`: a per-example score `score(t, x)`.
    - `brownian`: a diffrax Brownian path of the state's shape.
    - `batched`: whether the state carries a leading batch axis (default True).
    """
    return dfx.MultiTerm(
        dfx.ODETerm(ScoreDrift(sde, score, 1.0, batched, reverse_time=True)),
        dfx.ControlTerm(Diffusion(sde, reverse_time=True), brownian),
    )


def forward_sde_terms(
    sde: AbstractSDE, brownian: dfx.AbstractBrownianPath
) -> dfx.MultiTerm:
    r"""The forward SDE $\mathrm{d}x = f(t) x\,\mathrm{d}t + g(t)\,\mathrm{d}w$ as
    `diffrax.MultiTerm(ODETerm, ControlTerm)`, to noise data from 0 to `t`."""
    return dfx.MultiTerm(
        dfx.ODETerm(ForwardDrift(sde)), dfx.ControlTerm(Diffusion(sde), brownian)
    )


def sampling_terms(
    sde: AbstractSDE,
    score: Callable,
    method: str,
    shape: tuple[int, ...],
    key: PRNGKeyArray,
    r0,
    r1,
    brownian: str,
    tol=None,
    sharding=None,
):
    """The terms of a sampling solve of a batch of `shape`, on the reversed clock
    (integrated from `r0 = -T` up to `r1 = -eps`): the probability-flow ODE term
    (`method="ode"`), or the reverse-SDE terms (`"sde"`) whose noise is a
    `PerSampleBrownianPath` on the keys `per_sample_keys(key, batch)`, from a
    `diffrax.VirtualBrownianTree` of tolerance `tol` (`brownian="tree"`) or a
    `diffrax.UnsafeBrownianPath` (`"fast"`)."""
    if method == "ode":
        return probability_flow_term(sde, score, reverse_time=True)
    keys = constrain_leading(per_sample_keys(key, shape[0]), sharding)
    one = jax.ShapeDtypeStruct(shape[1:], jnp.result_type(float))
    if brownian == "tree":
        template = dfx.VirtualBrownianTree(
            r0, r1, tol=tol, shape=one, key=keys[0], levy_area=dfx.SpaceTimeLevyArea
        )
    else:
        template = dfx.UnsafeBrownianPath(
            shape=one, key=keys[0], levy_area=dfx.SpaceTimeLevyArea
        )
    # The path reports the solve's interval, so samplers can recognise the last step.
    path = PerSampleBrownianPath(template, keys, r0, r1)
    return reverse_sde_terms(sde, score, path)
