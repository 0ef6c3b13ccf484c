"""Inverse problems with an unconditional score: imputation (inpainting) and
colorization, as a diffrax solver wrapper around any fixed-step sampler."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree

from ._checks import check_mask, is_concrete
from ._conditioning import PerExample
from ._planned_solver import (
    AbstractPlannedSolver,
    check_grid,
    inner_solves,
    InnerSolves,
    min_grid_steps,
)
from ._solver._common import dense_info, unpack_ode, unpack_sde


class ImputeState(eqx.Module):
    """State of [`Impute`][]: the wrapped solver's state, the standard normal `z0`
    behind the prior draw (in the decoupled coordinates), and whether the next step is
    the first."""

    inner: PyTree
    z0: Array
    first: Bool[Array, ""]


def _channel_mix(matrix: Array | None, x: Array) -> Array:
    """Apply a `(C, C)` matrix to the channel axis (axis 1) of a batch `(B, C, ...)`."""
    if matrix is None:
        return x
    return jnp.einsum(
        "ij,bj...->bi...",
        matrix.astype(x.dtype),
        x,
        precision=jax.lax.Precision.HIGHEST,
    )


class AbstractStateWrapper(AbstractPlannedSolver, dfx.AbstractWrappedSolver):
    """A solver wrapper that changes the state after each step of `solver` (the
    inverse-problem wrappers [`Impute`][], [`Project`][], [`DPS`][]): the inner
    solver's terms and their arguments, linear interpolation between the changed
    states, and no order claimed (the change is not a smooth function of the step)."""

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return dfx.LocalLinearInterpolation

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return None

    def strong_order(self, terms):
        return None

    def min_grid_steps(self) -> int:
        return min_grid_steps(self.solver)

    def check_grid(self, ts, start: float, end: float, arg: str) -> None:
        check_grid(self.solver, ts, start, end, arg)

    def inner_solves(self) -> tuple[InnerSolves, ...]:
        return inner_solves(self.solver)


class Impute(AbstractStateWrapper):
    r"""Imputation (inpainting) with an unconditional score, the method of Song et al.
    (2021, appendix I.2), as a diffrax solver that wraps a fixed-step sampler: after
    every step of `solver` from $t$ to $t'$, the observed coordinates are replaced by
    a forward-noised copy of the observation,

    $$x_{t'}[\Omega] \leftarrow a(t')\, y + s(t')\, z,$$

    so the sampler fills in the rest consistently with what is known. The known
    coordinates of the initial state are set the same way before the first step
    ($a(T) y + s(T) z_0$ with $z_0$ the standard normal behind the prior draw): a
    consistent initialisation, for VE too. The final step (recognised as the one that
    ends the Brownian path, which [`sample`][] sets to `eps`) puts the observation
    itself, so the known region of the result is $y$ exactly.

    With a `decoupling` $M$ (an invertible `(C, C)` matrix over the channel axis of
    each example) the replacement happens in the coordinates $x' = M x$: $y$ and the
    mask are given there, and the noise is $M$ applied to isotropic noise, as the
    forward SDE would make it. Colorization is the case where the grey direction is
    known ([`colorization`][]).

    Which samplers: every fixed-step sampler of the reverse SDE (`method="sde"`),
    with fresh noise $z$ from the solve's Brownian path at each step:
    [`PredictorCorrector`][] (the paper's choice), [`ReverseDiffusion`][],
    [`AncestralSampling`][], `diffrax.Euler()` (Euler-Maruyama),
    [`StochasticDDIM`][], [`StochasticEDMHeun`][]. Fixed-step samplers of the
    probability-flow ODE (`method="ode"`: [`DDIM`][], [`DPMSolverPP2M`][],
    [`EDMHeun`][], `diffrax.Euler`/`Heun`/...) work deterministically, with the
    noise held fixed at $z_0$ along the path; their final state keeps
    $a(\epsilon) y + s(\epsilon) z_0$ on the known coordinates (an ODE solve has no
    path end to recognise). Adaptive steps are refused (the replacement makes the
    error estimate meaningless). The replacement is an approximation of sampling
    the posterior (the known coordinates at time $t$ are drawn independently of the
    unknown ones); README ("Controllable generation") gives its measured error
    against an exact posterior.

    The noise $z$ is independent of everything the wrapped solver draws from the
    step's Brownian increment, for any diffrax Brownian path: it is the normalised
    difference of the increments over the last two sub-intervals at dyadic level
    `noise_level` (the step cut into $2^L$), orthogonal to every increment over the
    coarser dyadic sub-intervals a solver uses ([`PredictorCorrector`][]'s corrector
    uses $2^m \ge$ its `num_steps` + 1 of them).

    **Arguments:**

    - `solver`: a fixed-step sampler (see above).
    - `observation`: $y$, shape `(num_samples, *data_shape)`; entries outside the
        mask are ignored. In the model's units (e.g. `[-1, 1]` images), and in the
        decoupled coordinates if `decoupling` is given.
    - `mask`: which entries are observed: shape `data_shape` (the same for every
        sample) or `(num_samples, *data_shape)`, boolean or 0/1.
    - `decoupling`: an invertible `(C, C)` matrix over the channel axis (axis 0 of
        each example), or None (default: the identity).
    - `noise_level`: $L$ above, an int in `2..12` (default 6: independent of up to
        31 corrector steps).

    **Raises:** `ValueError` naming `observation`, `mask`, `decoupling` or
    `noise_level`; [`sample`][] raises one naming `observation` if its shape is not
    `(num_samples, *data_shape)`.

    **Example:**

    ```python
    pc = sd.PredictorCorrector(sd.ReverseDiffusion(), sd.Langevin(snr=0.16))
    x = sd.sample(key, sde, score, y.shape, solver=sd.Impute(pc, y, mask),
                  num_steps=1000).samples
    ```

    **Reference:** Song et al., *Score-Based Generative Modeling through Stochastic
    Differential Equations*, ICLR 2021, sec. 5 and appendix I.2.
    """

    solver: dfx.AbstractSolver
    observation: PerExample
    mask: PerExample
    decoupling: Float[Array, "C C"] | None
    inverse: Float[Array, "C C"] | None
    noise_level: int = eqx.field(static=True)

    def __init__(
        self,
        solver: dfx.AbstractSolver,
        observation: Float[ArrayLike, " num_samples *shape"],
        mask: ArrayLike,
        *,
        decoupling: Float[ArrayLike, "C C"] | None = None,
        noise_level: int = 6,
    ):
        if not isinstance(solver, dfx.AbstractSolver):
            raise ValueError(
                "`solver` must be a diffrax solver (a fixed-step sampler such as "
                f"sd.PredictorCorrector()), got {type(solver).__name__}."
            )
        obs = jnp.asarray(observation)
        if not jnp.issubdtype(obs.dtype, jnp.floating):
            obs = obs.astype(jnp.result_type(float))
        if obs.ndim < 2:
            raise ValueError(
                "`observation` must have shape (num_samples, *data_shape), got "
                f"{obs.shape}; for one example use y[None]."
            )
        if is_concrete(obs) and not bool(jnp.all(jnp.isfinite(obs))):
            raise ValueError("`observation` must be finite (it has NaN or inf).")
        m = check_mask(mask, (obs.shape[1:], obs.shape), "mask")
        m = jnp.broadcast_to(jnp.asarray(m), obs.shape)
        if decoupling is not None:
            dec = jnp.asarray(decoupling, dtype=obs.dtype)
            c = obs.shape[1]
            if dec.shape != (c, c):
                raise ValueError(
                    f"`decoupling` must be a ({c}, {c}) matrix over the channel axis "
                    f"of the examples {obs.shape[1:]}, got shape {dec.shape}."
                )
            dec64 = np.asarray(dec, np.float64) if is_concrete(dec) else None
            if dec64 is not None and not (
                np.all(np.isfinite(dec64)) and np.linalg.cond(dec64) < 1e6
            ):
                raise ValueError(
                    "`decoupling` must be an invertible matrix (finite, condition "
                    "number < 1e6)."
                )
            inv = jnp.linalg.inv(dec)
        else:
            dec = inv = None
        check_noise_level(noise_level)
        self.solver = solver
        self.observation = PerExample(obs, name="observation", data_shaped=True)
        self.mask = PerExample(m, name="mask", data_shaped=True)
        self.decoupling = dec
        self.inverse = inv
        self.noise_level = noise_level

    # ------------------------------------------------------------------ helpers

    def _replace(self, y: Array, known: Array) -> Array:
        """`y` with its observed coordinates (in the decoupled coordinates) set to
        `known`; unobserved ones unchanged."""
        m = self.mask.value
        if self.decoupling is None:
            return jnp.where(m, known, y)
        yd = _channel_mix(self.decoupling, y)
        delta = jnp.where(m, known - yd, 0.0)
        return (y + _channel_mix(self.inverse, delta)).astype(y.dtype)

    def _fresh_normal(self, noise: dfx.AbstractTerm, t0, t1, y: Array) -> Array:
        """A standard normal of `y`'s shape from the increments over the last two
        sub-intervals of the step at dyadic level `noise_level` (see the class)."""
        return fresh_normal(noise, t0, t1, y, self.noise_level)

    # ------------------------------------------------------------------ solver

    def init(self, terms, t0, t1, y0, args):
        p = problem(terms)
        inner = self.solver.init(terms, t0, t1, y0, args)
        z0 = _channel_mix(self.decoupling, y0) / p.sde.prior_std
        return ImputeState(inner, z0.astype(y0.dtype), jnp.asarray(True))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        p = problem(terms)
        sde = p.sde
        obs = self.observation.value.astype(y0.dtype)
        t, t_next = p.time(t0), p.time(t1)

        # Consistent initialisation of the known region, before the first step.
        start = sde.mean_coeff(t) * obs + sde.std(t) * solver_state.z0
        y0 = jnp.where(solver_state.first, self._replace(y0, start), y0)

        y1, _, _, inner, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state.inner, made_jump
        )

        # Replace the known coordinates by a forward-noised copy of the observation.
        if p.noise is None:  # probability-flow ODE: the noise stays z0
            z = solver_state.z0
            known = sde.mean_coeff(t_next) * obs + sde.std(t_next) * z
        else:
            z = _channel_mix(self.decoupling, self._fresh_normal(p.noise, t0, t1, y1))
            known = sde.mean_coeff(t_next) * obs + sde.std(t_next) * z
            known = jnp.where(p.is_last(t0, t1), obs, known)
        y1 = self._replace(y1, known.astype(y1.dtype))
        state = ImputeState(inner, solver_state.z0, jnp.asarray(False))
        return y1, None, dense_info(y0, y1), state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def fresh_normal(noise: dfx.AbstractTerm, t0, t1, y: Array, level: int) -> Array:
    """A standard normal of `y`'s shape from the increments over the last two
    sub-intervals of the step `[t0, t1]` at dyadic level `level` (see [`Impute`][]):
    independent of every increment over the coarser dyadic sub-intervals."""
    a = t0
    for _ in range(level - 1):
        a = (a + t1) * 0.5
    b = (a + t1) * 0.5
    wa, wb = noise.contr(a, b), noise.contr(b, t1)
    var = jnp.abs(b - a) + jnp.abs(t1 - b)
    return ((wa - wb) / jnp.sqrt(var)).astype(y.dtype)


def check_noise_level(noise_level) -> None:
    """`noise_level` is an int in 2..12, else a `ValueError` naming it."""
    if (
        isinstance(noise_level, bool)
        or not isinstance(noise_level, int)
        or not 2 <= noise_level <= 12
    ):
        raise ValueError(f"`noise_level` must be an int in 2..12, got {noise_level!r}.")


def problem(terms):
    """The sampling problem behind the terms (reverse SDE or probability-flow ODE)."""
    if isinstance(terms, dfx.MultiTerm):
        return unpack_sde(terms, "Impute")
    return unpack_ode(terms, "Impute")


def grey_decoupling(channels: int = 3) -> Float[Array, "C C"]:
    r"""The paper's orthogonal decoupling of colour channels for colorization: an
    orthonormal `(C, C)` matrix whose first row is the grey direction
    $(1, \dots, 1)/\sqrt{C}$ (for 3 channels, the matrix of Song et al.'s code up
    to the signs of the colour rows). Its first coordinate is the grey level times
    $\sqrt{C}$; the others span the colours.

    **Reference:** Song et al., ICLR 2021, appendix I.3.
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
        raise ValueError(f"`channels` must be an int >= 2, got {channels!r}.")
    # Gram-Schmidt (QR) of [ones | the first C - 1 unit vectors]: the first row is
    # the grey direction, the others orthonormal colour directions.
    basis = np.concatenate(
        [np.ones((channels, 1)), np.eye(channels)[:, : channels - 1]], axis=1
    )
    q, r = np.linalg.qr(basis)
    q = q * np.sign(np.diag(r))[None, :]
    return jnp.asarray(q.T, dtype=jnp.result_type(float))


def colorization(
    solver: dfx.AbstractSolver,
    grey: Float[ArrayLike, " num_samples *hw"],
    *,
    channels: int = 3,
    decoupling: Float[ArrayLike, "C C"] | None = None,
    noise_level: int = 6,
) -> Impute:
    r"""Colorization (Song et al. 2021, appendix I.3) as an [`Impute`][] solver:
    the grey level of each pixel is known, the colours are sampled. In decoupled
    coordinates $x' = M x$ whose first channel is the grey direction, the first
    channel is observed and the others are imputed.

    The grey level is the mean of the channels, $g = \tfrac1C \sum_c x_c$ (in the
    model's units), so for every result the mean of its channels equals `grey`
    (exactly with a reverse-SDE sampler, whose final step puts the observation).

    **Arguments:**

    - `solver`: a fixed-step sampler (see [`Impute`][]).
    - `grey`: the grey images, shape `(num_samples, H, W)` or
        `(num_samples, 1, H, W)`, in the model's units.
    - `channels`: the number of colour channels $C$ (default 3).
    - `decoupling`: an invertible `(C, C)` matrix whose first row is the grey
        direction (proportional to all ones); default [`grey_decoupling`][]`(C)`,
        the paper's orthogonal one.
    - `noise_level`: as for [`Impute`][].

    **Returns:** the [`Impute`][] solver; sample `(num_samples, C, H, W)` with it.

    **Reference:** Song et al., ICLR 2021, appendix I.3.
    """
    g = jnp.asarray(grey)
    if not jnp.issubdtype(g.dtype, jnp.floating):
        g = g.astype(jnp.result_type(float))
    if g.ndim == 4 and g.shape[1] == 1:
        g = g[:, 0]
    if g.ndim != 3:
        raise ValueError(
            "`grey` must have shape (num_samples, H, W) or (num_samples, 1, H, W), "
            f"got {jnp.shape(grey)}."
        )
    if decoupling is None:
        dec = grey_decoupling(channels)
    else:
        dec = jnp.asarray(decoupling, dtype=g.dtype)
        if dec.shape != (channels, channels):
            raise ValueError(
                f"`decoupling` must be a ({channels}, {channels}) matrix, got shape "
                f"{dec.shape}."
            )
        if is_concrete(dec):
            row = np.asarray(dec[0], np.float64)
            if not (abs(row[0]) > 0 and np.allclose(row, row[0], rtol=1e-5, atol=0)):
                raise ValueError(
                    "`decoupling`: its first row must be the grey direction (all "
                    f"entries equal and non-zero), got {row.tolist()}."
                )
    # The first decoupled coordinate is dec[0, 0] * sum_c x_c = dec[0, 0] * C * g.
    first = dec[0, 0] * channels * g
    obs = jnp.concatenate(
        [first[:, None], jnp.zeros((g.shape[0], channels - 1, *g.shape[1:]), g.dtype)],
        axis=1,
    )
    mask = np.zeros((channels, *g.shape[1:]), bool)
    mask[0] = True
    return Impute(solver, obs, mask, decoupling=dec, noise_level=noise_level)
