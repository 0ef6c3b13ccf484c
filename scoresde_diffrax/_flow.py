"""Encoding and decoding through the probability-flow ODE, and interpolation
between latents."""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._checks import check_batch, check_eps, check_fits_score, check_sde_score
from ._clock import FORWARD, REVERSED
from ._errors import check_solve
from ._plan import plan_solve, solve_batch
from ._sde import AbstractSDE
from ._sharding import batch_sharding, constrain, place
from ._solve_plan import SolvePlan
from ._term import probability_flow_term


_TSIT5 = dfx.Tsit5()
_CHECKPOINT = dfx.RecursiveCheckpointAdjoint()
_NOT_FINITE = "the probability-flow ODE produced NaN or inf"


def _flow(
    name: str,
    sde,
    score,
    y,
    *,
    decode: bool,
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
    """`encode` (eps -> T) or `decode` (T -> eps): one probability-flow ODE solve."""
    # Checks
    check_sde_score(sde, score)
    y = check_batch(name, y)
    check_eps(eps, sde)
    batch_sh = batch_sharding(sharding, y.shape, y)
    y = place(y, batch_sh)

    # Plan: decoding runs on the reversed clock r = -t, from -T up to -eps.
    plan = plan_solve(
        solver,
        method="ode",
        shape=y.shape,
        start=sde.T if decode else eps,
        end=eps if decode else sde.T,
        clock=REVERSED if decode else FORWARD,
        num_steps=num_steps,
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        dt0=dt0,
        rtol=rtol,
        atol=atol,
    )

    # Solve
    problem = _Flow(
        sde=sde,
        score=score,
        name=name,
        decode=decode,
        solver=solver,
        plan=plan,
        adjoint=adjoint,
        per_example=bool(per_example),
        sharding=batch_sh,
    )
    out, result = _solve(problem, y)
    return check_solve(
        "decode" if decode else "encode",
        out,
        result,
        throw=throw,
        max_steps=plan.max_steps,
        not_finite=_NOT_FINITE,
        in_program=batch_sh is None,
    )


class _Flow(eqx.Module):
    """Everything one jitted encode/decode solve needs."""

    sde: AbstractSDE
    score: Callable
    name: str = eqx.field(static=True)
    decode: bool = eqx.field(static=True)
    solver: dfx.AbstractSolver
    plan: SolvePlan
    adjoint: dfx.AbstractAdjoint
    per_example: bool = eqx.field(static=True)
    sharding: jax.sharding.NamedSharding | None = eqx.field(static=True)


@eqx.filter_jit
def _solve(p: _Flow, y: Array):
    check_fits_score(p.name, y, p.score)
    y = constrain(y, p.sharding)
    y1, _, result = solve_batch(
        p.per_example,
        probability_flow_term(p.sde, p.score, reverse_time=p.plan.clock.reversed),
        y,
        None,
        solver=p.solver,
        plan=p.plan,
        adjoint=p.adjoint,
        throw=False,  # checked after the call: `check_solve`
    )
    return constrain(y1, p.sharding), result


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
    max_steps: int = 4096,
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
    max_steps: int = 4096,
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
