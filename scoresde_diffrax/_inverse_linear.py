"""Inverse problems y = A(x) + noise with an unconditional score, as diffrax solver
wrappers around any fixed-step sampler: measurement-consistent projection (Song et al.
2022) for a mask or a linear operator, and diffusion posterior sampling (Chung et al.
2023) for any differentiable operator."""

import math
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._checks import check_mask, concrete_float, is_concrete
from ._conditioning import PerExample
from ._inverse import (
    AbstractStateWrapper,
    check_noise_level,
    fresh_normal,
    ImputeState,
    problem,
)
from ._solver._common import dense_info


def _check_solver(solver) -> None:
    if not isinstance(solver, dfx.AbstractSolver):
        raise ValueError(
            "`solver` must be a diffrax solver (a fixed-step sampler such as "
            f"sd.PredictorCorrector()), got {type(solver).__name__}."
        )


def _observation(observation, min_ndim: int = 2) -> Array:
    obs = jnp.asarray(observation)
    if not jnp.issubdtype(obs.dtype, jnp.floating):
        obs = obs.astype(jnp.result_type(float))
    if obs.ndim < min_ndim:
        raise ValueError(
            "`observation` must have shape (num_samples, *measurement_shape), one "
            f"measurement per sample, got {obs.shape}; for one example use y[None]."
        )
    if is_concrete(obs) and not bool(jnp.all(jnp.isfinite(obs))):
        raise ValueError("`observation` must be finite (it has NaN or inf).")
    return obs


def _as_matrix(operator, name: str = "operator") -> np.ndarray:
    """A dense `(M, D)` matrix (NumPy, float64) of a matrix or a lineax operator."""
    if isinstance(operator, lx.AbstractLinearOperator):
        mat = operator.as_matrix()
    else:
        mat = operator
    if not is_concrete(mat):
        raise ValueError(f"`{name}` must be concrete (not traced): it is decomposed.")
    m = np.asarray(mat, np.float64)
    if m.ndim != 2 or not np.all(np.isfinite(m)):
        raise ValueError(
            f"`{name}` must be a finite matrix of shape (M, D) or a lineax operator, "
            f"got shape {m.shape}."
        )
    return m


class Project(AbstractStateWrapper):
    r"""Measurement-consistent projection for a linear inverse problem $y = A x$
    (Song, Shen, Xing, Ermon, ICLR 2022), as a diffrax solver that wraps a fixed-step
    sampler. After every step of `solver` from $t$ to $t'$ the state is moved onto
    the noised measurement $y_{t'} = a(t')\, y + s(t')\, A z$:

    $$x_{t'} \leftarrow x_{t'} + \lambda\, A^+ (y_{t'} - A x_{t'}),$$

    with $A^+$ the pseudo-inverse and $\lambda \in (0, 1]$ the `weight`; in the
    coordinates $V^\top x$ of the SVD $A = U \Sigma V^\top$ this replaces the
    observed coordinates $V_r^\top x$ by $a(t')\, \Sigma_r^{-1} U_r^\top y +
    s(t')\, V_r^\top z$ (at $\lambda = 1$) and keeps the others. The structure of
    $A$ is used as the paper does: a **mask** replaces the observed entries (the
    same steps, initialisation and noise as [`Impute`][]; with `weight=1` the samples
    are bitwise those of `Impute`); a **matrix** or lineax operator is decomposed
    once (SVD, in NumPy at construction, so `D` up to a few thousand). The known
    directions of the initial state are set the same way before the first step
    ($z_0$ the standard normal behind the prior draw), and the final step of a
    reverse-SDE sampler puts the measurement itself, so at `weight=1`
    $A x = A A^+ y$ (= $y$ for $A$ of full row rank) to round-off.

    The measurement is treated as exact: noise in $y$ is not modelled (a `weight`
    below 1 softens the projection, as in the paper; [`DPS`][] takes noisy
    measurements). With a noisy $y$ and small singular values (a blur) the noise is
    divided by them and the result is the pseudo-inverse $A^+ y$: use `DPS` there
    (measured on digits in `benchmarks/README.md`). Which samplers: as for [`Impute`][] (every fixed-step sampler;
    with probability-flow ODE samplers the noise stays $z_0$ along the path). It adds
    no score evaluations. Its error against an exact posterior: README ("Inverse
    problems").

    **Arguments:**

    - `solver`: a fixed-step sampler.
    - `observation`: $y$, one per sample: shape `(num_samples, M)` with `operator`,
        `(num_samples, *data_shape)` with `mask` (entries outside the mask ignored).
        In the model's units.
    - `operator`: the matrix $A$, shape `(M, D)` with `D` the size of one example
        (flattened, C order), or a `lineax.AbstractLinearOperator` (its
        `as_matrix()`). Give `operator` or `mask`, not both.
    - `mask`: which entries are observed ($A$ a selection): shape `data_shape` or
        `(num_samples, *data_shape)`, boolean or 0/1.
    - `weight`: $\lambda \in (0, 1]$. Default 1 (the hard projection).
    - `noise_level`: as for [`Impute`][] (the dyadic level of the fresh noise).

    **Raises:** `ValueError` naming `operator` (not a finite matrix, or its output
    size does not match `observation`), `mask`, `observation`, `weight`,
    `noise_level` or `solver`.

    **Example:**

    ```python
    A = jr.normal(key, (4, 8))                                  # random projection
    solver = sd.Project(sd.PredictorCorrector(), y, operator=A)   # y: (n, 4)
    x = sd.sample(key, sde, score, (n, 8), solver=solver, num_steps=500).samples
    ```

    **Reference:** Song, Shen, Xing, Ermon, *Solving Inverse Problems in Medical
    Imaging with Score-Based Generative Models*, ICLR 2022.
    """

    solver: dfx.AbstractSolver
    observation: PerExample
    mask: PerExample | None
    basis: Float[Array, "D r"] | None
    gain: Float[Array, "r M"] | None
    weight: float = eqx.field(static=True)
    noise_level: int = eqx.field(static=True)

    def __init__(
        self,
        solver: dfx.AbstractSolver,
        observation: Float[ArrayLike, " num_samples *measurement"],
        *,
        operator: Float[ArrayLike, "M D"] | lx.AbstractLinearOperator | None = None,
        mask: ArrayLike | None = None,
        weight: float = 1.0,
        noise_level: int = 6,
    ):
        _check_solver(solver)
        obs = _observation(observation)
        if (operator is None) == (mask is None):
            raise ValueError(
                "`operator`: give exactly one of `operator` (a matrix or a lineax "
                "operator) and `mask`."
            )
        w = concrete_float(weight, "weight")
        if w is None or not (0 < w <= 1):
            raise ValueError(f"`weight` must be a number in (0, 1], got {weight!r}.")
        check_noise_level(noise_level)
        self.solver = solver
        self.weight = float(w)
        self.noise_level = noise_level
        if mask is not None:
            m = check_mask(mask, (obs.shape[1:], obs.shape), "mask")
            m = jnp.broadcast_to(jnp.asarray(m), obs.shape)
            self.observation = PerExample(obs, name="observation", data_shaped=True)
            self.mask = PerExample(m, name="mask", data_shaped=True)
            self.basis = self.gain = None
            return
        A = _as_matrix(operator)
        if obs.ndim != 2 or obs.shape[1] != A.shape[0]:
            raise ValueError(
                f"`operator` maps an example to {A.shape[0]} measurements, but "
                f"`observation` has shape {obs.shape}: it must be (num_samples, "
                f"{A.shape[0]})."
            )
        u, sv, vt = np.linalg.svd(A, full_matrices=False)
        if sv.size == 0 or sv[0] == 0:
            raise ValueError("`operator` must not be zero.")
        r = int(np.sum(sv > sv[0] * 1e-6))
        dtype = obs.dtype
        self.observation = PerExample(obs, name="observation")
        self.mask = None
        self.basis = jnp.asarray(vt[:r].T, dtype)  # V_r, (D, r)
        self.gain = jnp.asarray(u[:, :r].T / sv[:r, None], dtype)  # S_r^-1 U_r^T

    # ------------------------------------------------------------------ helpers

    def _coords(self, x: Array) -> Array:
        """`V_r^T x` for every example of the batch `x`: shape `(n, r)`."""
        assert self.basis is not None
        flat = x.reshape(x.shape[0], -1)
        return jnp.matmul(flat, self.basis, precision=jax.lax.Precision.HIGHEST)

    def _known(self, y: Array, a, s, z: Array) -> tuple[Array, Array]:
        """The noised measurement `a y + s (noise)` where the state is known, and the
        measurement itself (for the final step); in the mask's entries or in the
        coordinates `V_r^T x`."""
        obs = self.observation.value.astype(y.dtype)
        if self.mask is not None:
            return a * obs + s * z, obs
        assert self.gain is not None
        c = jnp.einsum(
            "rm,nm->nr", self.gain, obs, precision=jax.lax.Precision.HIGHEST
        ).astype(y.dtype)
        return a * c + s * self._coords(z), c

    def _put(self, y: Array, known: Array) -> Array:
        if self.mask is not None:
            m = self.mask.value
            if self.weight == 1.0:
                return jnp.where(m, known, y)
            return jnp.where(m, y + self.weight * (known - y), y)
        assert self.basis is not None
        delta = self.weight * (known - self._coords(y))
        back = jnp.matmul(delta, self.basis.T, precision=jax.lax.Precision.HIGHEST)
        return (y + back.reshape(y.shape)).astype(y.dtype)

    # ------------------------------------------------------------------ solver

    def init(self, terms, t0, t1, y0, args):
        p = problem(terms)
        inner = self.solver.init(terms, t0, t1, y0, args)
        z0 = y0 / p.sde.prior_std
        return ImputeState(inner, z0.astype(y0.dtype), jnp.asarray(True))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        p = problem(terms)
        sde = p.sde
        t, t_next = p.time(t0), p.time(t1)

        # Consistent initialisation of the known directions, before the first step.
        start, _ = self._known(y0, sde.mean_coeff(t), sde.std(t), solver_state.z0)
        y0 = jnp.where(solver_state.first, self._put(y0, start), y0)

        y1, _, _, inner, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state.inner, made_jump
        )

        # Project onto the noised measurement.
        a, s = sde.mean_coeff(t_next), sde.std(t_next)
        if p.noise is None:  # probability-flow ODE: the noise stays z0
            known, _ = self._known(y1, a, s, solver_state.z0)
        else:
            z = fresh_normal(p.noise, t0, t1, y1, self.noise_level)
            known, exact = self._known(y1, a, s, z)
            known = jnp.where(p.is_last(t0, t1), exact, known)
        y1 = self._put(y1, known.astype(y1.dtype))
        state = ImputeState(inner, solver_state.z0, jnp.asarray(False))
        return y1, None, dense_info(y0, y1), state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


# --------------------------------------------------------------------------- DPS


def _apply(operator, x: Array) -> Array:
    """`A(x)` on one example: a matrix on the flattened example, a lineax operator
    (on the example, or on it flattened if that is its input), or a callable."""
    if isinstance(operator, lx.AbstractLinearOperator):
        shape = tuple(operator.in_structure().shape)
        return operator.mv(x if shape == x.shape else x.reshape(-1))
    if callable(operator):
        return jnp.asarray(operator(x))
    return jnp.matmul(operator, x.reshape(-1), precision=jax.lax.Precision.HIGHEST)


class DPS(AbstractStateWrapper):
    r"""Diffusion posterior sampling (Chung, Kim, Mccann, Klasky, Ye, ICLR 2023) for
    $y = \mathcal{A}(x_0) + \text{noise}$ with any differentiable $\mathcal{A}$
    (linear or not), as a diffrax solver that wraps a fixed-step sampler. After each
    step of `solver` from $x_t$ to $x'_{t'}$:

    $$x_{t'} = x'_{t'} - \zeta\, \nabla_{x_t} \big\| y - \mathcal{A}(\hat x_0(x_t))
    \big\|_2, \qquad \hat x_0(x_t) = \frac{x_t + s(t)^2\, s_\theta(t, x_t)}{a(t)}$$

    (Tweedie's posterior mean), the gradient taken through the score.

    **Step-size convention** (that of the reference code): the step is `step_size`
    $\zeta$ times the gradient of the *norm* of the residual, per example, which is
    the paper's $\zeta_i \nabla \|y - \mathcal{A}(\hat x_0)\|^2$ with
    $\zeta_i = \zeta / (2 \|y - \mathcal{A}(\hat x_0)\|)$; $y$, $\mathcal{A}$ and
    $\zeta$ are in the model's (data) units, and the measurement noise level
    $\sigma_y$ does not enter (the paper tunes $\zeta$ per task: 1 for inpainting,
    0.3-1 for super-resolution and deblurring in its code). Near the end
    ($\hat x_0 \approx x$) each correction has a length of about $\zeta$ times the
    operator's gain whatever the residual, so the final residual is of order
    $\zeta$ (measured on an 8-D problem: RMS residual $\approx 0.86\,\zeta$ at 200
    and 1000 steps): scale $\zeta$ to the noise in the measurement, which is small
    for low-dimensional problems and about 1 for images of thousands of pixels.

    DPS is **approximate**: $p(y \mid x_t)$ is replaced by
    $p(y \mid \hat x_0(x_t))$ and the step by a normalised gradient step; it is
    biased even with the exact score and many steps. Its measured error against an
    exact posterior (weights, means, variances of an 8-D mixture): README ("Inverse
    problems"). Each step costs one more score evaluation and its vector-Jacobian
    product (counted in `num_score_evals`). Which samplers: every fixed-step
    sampler (the paper uses ancestral sampling, [`AncestralSampling`][] /
    [`ReverseDiffusion`][]).

    **Arguments:**

    - `solver`: a fixed-step sampler.
    - `operator`: $\mathcal{A}$ on ONE example: a callable `A(x) -> measurement`
        (differentiable; JAX-traceable), a `lineax.AbstractLinearOperator` (input the
        example or the flattened example), or a matrix `(M, D)` acting on the
        flattened example.
    - `observation`: $y$, one per sample, shape `(num_samples, *measurement_shape)`,
        in the model's units.
    - `step_size`: $\zeta \ge 0$. Default 1.

    **Raises:** `ValueError` naming `operator` (its output shape does not match
    the observation's: at construction for matrices and lineax operators, when
    [`sample`][] traces the solve for callables), `observation`, `step_size` or
    `solver`.

    **Example:**

    ```python
    down = lambda x: x.reshape(C, H // 2, 2, W // 2, 2).mean((2, 4))   # 2x downsampling
    solver = sd.DPS(sd.AncestralSampling(), down, y, step_size=1.0)
    x = sd.sample(key, sde, score, (n, C, H, W), solver=solver, num_steps=1000).samples
    ```

    **Reference:** Chung, Kim, Mccann, Klasky, Ye, *Diffusion Posterior Sampling for
    General Noisy Inverse Problems*, ICLR 2023.
    """

    solver: dfx.AbstractSolver
    operator: PyTree
    observation: PerExample
    step_size: Array

    def __init__(
        self,
        solver: dfx.AbstractSolver,
        operator: Callable | lx.AbstractLinearOperator | Float[ArrayLike, "M D"],
        observation: Float[ArrayLike, " num_samples *measurement"],
        *,
        step_size: float = 1.0,
    ):
        _check_solver(solver)
        obs = _observation(observation)
        v = concrete_float(step_size, "step_size")
        if v is not None and not (math.isfinite(v) and v >= 0):
            raise ValueError(
                f"`step_size` (zeta) must be a finite number >= 0, got {step_size!r}."
            )
        if isinstance(operator, lx.AbstractLinearOperator):
            out = tuple(operator.out_structure().shape)
        elif callable(operator):
            out = None  # checked when the solve is traced
        else:
            operator = jnp.asarray(operator, obs.dtype)
            if operator.ndim != 2:
                raise ValueError(
                    "`operator` must be a callable, a lineax operator or a matrix "
                    f"(M, D), got an array of shape {operator.shape}."
                )
            out = (operator.shape[0],)
        if out is not None and out != tuple(obs.shape[1:]):
            raise ValueError(
                f"`operator` gives measurements of shape {out}, but `observation` has "
                f"shape {obs.shape}: it must be (num_samples, *{out})."
            )
        self.solver = solver
        self.operator = operator
        self.observation = PerExample(obs, name="observation")
        self.step_size = jnp.asarray(step_size, dtype=jnp.result_type(float))

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def _check_operator(self, y: Array) -> None:
        one = jax.ShapeDtypeStruct(y.shape[1:], y.dtype)
        try:
            out = jax.eval_shape(lambda x: _apply(self.operator, x), one)
        except Exception as e:  # noqa: BLE001
            raise ValueError(
                f"`operator` cannot be applied to one example of shape {y.shape[1:]} "
                f"({type(e).__name__}: {e})."
            ) from e
        want = tuple(self.observation.value.shape[1:])
        if tuple(out.shape) != want:
            raise ValueError(
                f"`operator` maps an example of shape {y.shape[1:]} to shape "
                f"{tuple(out.shape)}, but `observation` has measurements of shape "
                f"{want}."
            )

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        self._check_operator(y0)  # at trace time
        p = problem(terms)
        sde = p.sde
        t = p.time(t0)
        a, s = sde.mean_coeff(t), sde.std(t)
        obs = self.observation.value.astype(y0.dtype)

        def residual_norms(x):
            x0_hat = (x + s**2 * p.score_at(t, x)) / a
            r = obs - jax.vmap(lambda u: _apply(self.operator, u))(x0_hat)
            sq = jnp.sum(r.reshape(r.shape[0], -1) ** 2, axis=1)
            return jnp.sqrt(jnp.maximum(sq, jnp.finfo(x.dtype).tiny))

        norms, vjp = jax.vjp(residual_norms, y0)
        (grad,) = vjp(jnp.ones_like(norms))

        y1, _, _, inner, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        y1 = (y1 - self.step_size.astype(y1.dtype) * grad).astype(y1.dtype)
        return y1, None, dense_info(y0, y1), inner, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)
