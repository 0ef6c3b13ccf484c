"""Multistep exponential integrators of the probability-flow ODE (and of the reverse
SDE): DPM-Solver++(3M), UniPC, DEIS, and DPM-Solver++(2M/3M) SDE.

They share one idea. Along the sampling path, the data prediction
$\\hat x_0(t) = (x + s(t)^2 s_\\theta(t, x)) / a(t)$ (or the noise prediction
$\\hat\\epsilon = -s(t)\\, s_\\theta$) is a smooth function of a well-chosen time
variable; interpolate the last few predictions by a polynomial in that variable, and
integrate the rest of the ODE exactly. With $\\lambda = \\log(a/s)$ (half the log-SNR),
$h = \\lambda_{t'} - \\lambda_t$ and $\\rho = (\\lambda - \\lambda_t) / h$, the
probability-flow ODE gives

$$x_{t'} = \\frac{s(t')}{s(t)}\\, x_t + a(t') \\int_0^h e^{-(h-u)}
\\hat x_0(\\lambda_t + u)\\, \\mathrm{d}u,$$

and a polynomial $\\sum_n c_n \\rho^n$ for $\\hat x_0$ integrates to
$\\sum_n c_n\\, \\psi_n(h)$ with $\\psi_n(h) = h \\int_0^1 e^{-h(1-\\rho)} \\rho^n
\\mathrm{d}\\rho$. Every solver here is such a weighted sum of stored predictions; the
weights come from `_interp_weights` on the nodes $\\rho_j$ of the stored
predictions (in units of the step), so any grid works.
"""

import abc
import math
from typing import ClassVar, Literal

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Int

from ._common import (
    AbstractPlannedSolver,
    check_decreasing,
    dense_info,
    Problem,
    SDETerms,
    unpack_ode,
    unpack_sde,
)


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------


def _psi(h: Array, n: int) -> Array:
    r"""$\psi_n(h) = h \int_0^1 e^{-h(1-\rho)} \rho^n\,\mathrm{d}\rho$, stable for small
    $h$ (a series below $|h| = 0.1$, the closed-form recursion
    $\psi_0 = 1 - e^{-h}$, $\psi_{n} = 1 - n \psi_{n-1} / h$ above)."""
    # Series: h * sum_k (-h)^k n! / (n + k + 1)!
    series = jnp.zeros_like(h)
    for k in range(8):
        coef = math.factorial(n) / math.factorial(n + k + 1)
        series = series + coef * (-h) ** k
    series = h * series
    safe = jnp.where(jnp.abs(h) < 0.1, 1.0, h)
    closed = -jnp.expm1(-safe)
    for m in range(1, n + 1):
        closed = 1.0 - m * closed / safe
    return jnp.where(jnp.abs(h) < 0.1, series, closed)


def _interp_weights(nodes: list, moments: list) -> list:
    """Weights $w_j$ with $\\sum_j w_j m_j = \\sum_n c_n\\, \\mu_n$, where
    $\\sum_n c_n \\rho^n$ interpolates the values $m_j$ at `nodes` $\\rho_j$ and
    $\\mu_n$ = `moments[n]` is the integral functional applied to $\\rho^n$. Newton's
    divided differences, so nearby nodes stay well conditioned. Python lists of
    scalars (the number of nodes is static)."""
    n = len(nodes)
    zero = jnp.zeros_like(nodes[0])
    one = jnp.ones_like(nodes[0])

    def unit(j):
        return [one if i == j else zero for i in range(n)]

    level = [unit(j) for j in range(n)]  # divided differences, as weights on m_j
    newton = [level[0]]
    for d in range(1, n):
        level = [
            [
                (b - a) / (nodes[j + d] - nodes[j])
                for a, b in zip(level[j], level[j + 1], strict=True)
            ]
            for j in range(n - d)
        ]
        newton.append(level[0])
    # Newton basis N_k(rho) = prod_{i<k} (rho - nodes[i]) in monomials; L(N_k).
    weights = [zero] * n
    poly = [one]  # monomial coefficients of N_k
    for k in range(n):
        lk = sum((c * moments[m] for m, c in enumerate(poly)), zero)
        weights = [w + lk * c for w, c in zip(weights, newton[k], strict=True)]
        poly = [zero] + poly  # times rho
        poly = [p - nodes[k] * q for p, q in zip(poly, poly[1:] + [zero], strict=True)]
    return weights


def _select(order: Array, options: list[list]) -> list:
    """`options[k - 1]` (a list of scalars, padded with zeros to the longest) for the
    traced `order` k."""
    width = max(len(o) for o in options)
    out = []
    for j in range(width):
        value = jnp.zeros(())
        for k, opt in enumerate(options, start=1):
            if j < len(opt):
                value = jnp.where(order == k, opt[j], value)
        out.append(value)
    return out


def _combine(weights: list, ms: Array) -> Array:
    """`sum_j weights[j] * ms[j]`."""
    out = weights[0] * ms[0]
    for j in range(1, len(weights)):
        out = out + weights[j] * ms[j]
    return out


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------


class MultistepState(eqx.Module):
    """The state of the multistep solvers ([`DPMSolverPP3M`][], [`UniPC`][],
    [`DEIS`][], [`StochasticDPMSolverPP`][]).

    - `x`: the state at the newest stored prediction divided by $s(t)$ there (for
        [`UniPC`][], the corrected state, which its corrector restarts from; the state
        diffrax carries is the uncorrected prediction).
    - `preds`: the stored predictions, newest first, shape `(K, *y.shape)`.
    - `times`: their time variable ($\\lambda$ or $\\sigma$), shape `(K,)`.
    - `count`: how many are stored (0 to `K`).
    - `order`: the order of the last prediction (UniPC's corrector uses it).
    """

    x: Array
    preds: Array
    times: Array
    count: Int[Array, ""]
    order: Int[Array, ""]


def _init_state(y0: Array, size: int) -> MultistepState:
    dtype = jnp.result_type(y0)
    return MultistepState(
        x=jnp.zeros_like(y0),
        preds=jnp.zeros((size,) + y0.shape, dtype),
        times=jnp.zeros((size,), dtype),
        count=jnp.zeros((), jnp.int32),
        order=jnp.zeros((), jnp.int32),
    )


def _push(state: MultistepState, x, pred, time, order) -> MultistepState:
    """Store `pred` (at time variable `time`, state `x`) as the newest prediction."""
    preds = jnp.concatenate([pred[None].astype(state.preds.dtype), state.preds[:-1]])
    time = jnp.reshape(time, (1,)).astype(state.times.dtype)
    times = jnp.concatenate([time, state.times[:-1]])
    count = jnp.minimum(state.count + 1, state.preds.shape[0])
    order = jnp.asarray(order, jnp.int32)
    return MultistepState(x.astype(state.x.dtype), preds, times, count, order)


def _forget_if(state: MultistepState, made_jump) -> MultistepState:
    """After a jump in the solution the stored predictions are stale: drop them."""
    count = jnp.where(made_jump, 0, state.count).astype(jnp.int32)
    return eqx.tree_at(lambda s: s.count, state, count)


def _nodes(state: MultistepState, origin, unit, size: int) -> list:
    """The stored time variables, relative to `origin` in units of `unit`, newest
    first; slots not yet filled get distinct dummy nodes (-j) so that no weight
    divides by zero (their weights are never selected)."""
    out = [jnp.zeros_like(unit)]
    for j in range(1, size):
        rel = (state.times[j] - origin) / unit
        out.append(jnp.where(j < state.count, rel, -float(j)).astype(unit.dtype))
    return out


def _lam(sde, t) -> Array:
    """$\\lambda(t) = \\log(a(t) / s(t))$, half the log-SNR."""
    return 0.5 * sde.log_snr(t)


def _data_prediction(p: Problem, t, y) -> Array:
    a, s = p.sde.mean_coeff(t), p.sde.std(t)
    return (y + s**2 * p.score_at(t, y)) / a


def _check_order(name: str, order, maximum: int) -> int:
    if (
        isinstance(order, bool)
        or not isinstance(order, int)
        or not 1 <= order <= maximum
    ):
        raise ValueError(
            f"{name}: `order` must be an int in 1..{maximum}, got {order!r}."
        )
    return order


def _check_eta(name: str, eta) -> float:
    try:
        value = float(eta)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"{name}: `eta` must be a number in (0, 1], got {eta!r}."
        ) from e
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name}: `eta` must be in (0, 1], got {eta!r}.")
    return value


def _dpm_multistep(p: Problem, state, y0, t, t_next, max_order: int, eta: float):
    """Store the data prediction at `(t, y0)`, then step to `t_next` interpolating the
    newest `min(max_order, stored)` predictions in lambda; `eta` > 0 is the SDE
    family (its noise is added by the caller). Returns the deterministic part of the
    new state, `s(t') sqrt(1 - e^{-2 eta h})` and the new solver state."""
    sde = p.sde
    lam0 = _lam(sde, t)
    state = _push(state, y0 / sde.std(t), _data_prediction(p, t, y0), lam0, 0)
    order = jnp.minimum(max_order, state.count)
    h = _lam(sde, t_next) - lam0
    big = (1.0 + eta) * h
    moments = [_psi(big, n) for n in range(max_order)]
    nodes = _nodes(state, lam0, h, max_order)
    w = _select(
        order,
        [_interp_weights(nodes[:k], moments[:k]) for k in range(1, max_order + 1)],
    )
    s0 = sde.std(t)
    a1, s1 = sde.mean_coeff(t_next), sde.std(t_next)
    decay = jnp.exp(-eta * h)
    y1 = (s1 / s0) * decay * y0 + a1 * _combine(w, state.preds)
    noise_scale = s1 * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)) if eta > 0 else None
    state = eqx.tree_at(lambda s: s.order, state, order.astype(jnp.int32))
    return y1, noise_scale, state


# --------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------


class AbstractMultistepSolver(AbstractPlannedSolver):
    """A multistep sampler of this package. Its first steps run at lower order while it
    stores predictions (warm-up), so a grid needs at least
    [`multistep_order`][scoresde_diffrax.AbstractMultistepSolver.multistep_order]
    steps to reach the solver's order: [`sample`][] refuses shorter grids with a
    `ValueError` naming `num_steps` or `stepsize_controller`. Fixed steps only.
    """

    interpolation_cls: ClassVar = dfx.LocalLinearInterpolation

    @abc.abstractmethod
    def multistep_order(self) -> int:
        """The number of stored predictions a full-order step interpolates: the fewest
        steps a grid must have."""

    def min_grid_steps(self) -> int:
        return self.multistep_order()

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


class DPMSolverPP3M(AbstractMultistepSolver):
    r"""DPM-Solver++(3M) (Lu et al. 2022): the third-order multistep solver of the
    probability-flow ODE in $\lambda = \log(a/s)$ with the data prediction
    $\hat x_0$, for any linear SDE (VP, sub-VP, VE). With $h = \lambda_{t'} -
    \lambda_t$,

    $$x_{t'} = \frac{s(t')}{s(t)}\, x_t + a(t') \left[\psi_0(h)\, \hat x_0 + \psi_1(h)\,
    D_1 + \psi_2(h)\, D_2\right],$$

    where $\hat x_0 + D_1 \rho + D_2 \rho^2$ interpolates the last three data
    predictions in $\rho = (\lambda - \lambda_t)/h$ and $\psi_n(h) = h \int_0^1
    e^{-h(1-\rho)} \rho^n \mathrm{d}\rho$ (so any grid works; the quadratic term is
    integrated exactly, i.e. with twice the weight $-\varphi_3$ of the reference code,
    which we measured to be second order only). The first two steps are
    DPM-Solver++(1) (= DDIM) and (2M). One score evaluation per step; the predictions
    are carried in a [`MultistepState`][]. Order 3; fixed steps only (pair it with
    `sd.time_grid(sde, n, kind="logsnr")`), at least 3 of them. Takes the
    probability-flow ODE term (`method="ode"`, inferred).

    **Reference:** Lu, Zhou, Bao, Chen, Li, Zhu, *DPM-Solver++: Fast Solver for Guided
    Sampling of Diffusion Probabilistic Models*, 2022 (arXiv:2211.01095), Appendix B.
    """

    term_structure: ClassVar = dfx.AbstractTerm

    def order(self, terms):
        return 3

    def multistep_order(self) -> int:
        return 3

    def init(self, terms, t0, t1, y0, args):
        return _init_state(y0, 3)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del args
        p = unpack_ode(terms, "DPMSolverPP3M")
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, "DPMSolverPP3M")
        state = _forget_if(solver_state, made_jump)
        y1, _, state = _dpm_multistep(p, state, y0, t, t_next, 3, 0.0)
        y1 = y1.astype(y0.dtype)
        return y1, None, dense_info(y0, y1), state, dfx.RESULTS.successful


class StochasticDPMSolverPP(AbstractMultistepSolver, dfx.AbstractItoSolver):
    r"""SDE-DPM-Solver++(2M) and (3M) (Lu et al. 2022): multistep solvers of the
    reverse-time SDE family that shares the probability-flow ODE's marginals, in
    $\lambda = \log(a/s)$ with the data prediction, for any linear SDE. With
    $h = \lambda_{t'} - \lambda_t$ and $H = (1 + \eta) h$,

    $$x_{t'} = \frac{s(t')}{s(t)} e^{-\eta h} x_t + a(t') \sum_n \psi_n(H)\, D_n
    + s(t') \sqrt{1 - e^{-2\eta h}}\; z,$$

    with $\sum_n D_n \rho^n$ interpolating the last `order` data predictions in
    $\rho = (\lambda - \lambda_t)/h$ and $\psi_n$ as for [`DPMSolverPP3M`][];
    $\eta = 1$ is the reverse-time SDE itself, $\eta \to 0$ the ODE. The noise $z$ is
    the step's normalised Brownian increment, from the terms' Brownian path like every
    sampler here. A diffrax solver of the reverse-time SDE terms (`method="sde"`,
    inferred); one score evaluation per step; fixed steps only (at least `order`).

    **Arguments:**

    - `order`: 1, 2 (default; SDE-DPM-Solver++(2M)) or 3 (3M SDE). Warm-up steps run
        at lower order.
    - `eta`: in `(0, 1]` (default 1).

    **Reference:** Lu et al., *DPM-Solver++*, 2022 (arXiv:2211.01095), Section 5 and
    Appendix; the 3M SDE variant as in k-diffusion (Crowson), with the quadratic term
    integrated exactly.
    """

    solver_order: int = eqx.field(static=True)
    eta: float = eqx.field(static=True)

    term_structure: ClassVar = SDETerms

    def __init__(self, order: int = 2, eta: float = 1.0):
        self.solver_order = _check_order("StochasticDPMSolverPP", order, 3)
        self.eta = _check_eta("StochasticDPMSolverPP", eta)

    def order(self, terms):
        return None

    def strong_order(self, terms):
        return None

    def multistep_order(self) -> int:
        return self.solver_order

    def init(self, terms, t0, t1, y0, args):
        return _init_state(y0, self.solver_order)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del args
        name = f"StochasticDPMSolverPP(order={self.solver_order})"
        p = unpack_sde(terms, name)
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, name)
        state = _forget_if(solver_state, made_jump)
        y1, scale, state = _dpm_multistep(
            p, state, y0, t, t_next, self.solver_order, self.eta
        )
        y1 = (y1 + scale * p.normal(t0, t1, y0)).astype(y0.dtype)
        return y1, None, dense_info(y0, y1), state, dfx.RESULTS.successful


def _b_h(h, variant: str):
    """UniPC's $B(h)$ for the data prediction ($h_h = -h$): `bh1` $-h$, `bh2`
    $e^{-h} - 1$."""
    return -h if variant == "bh1" else jnp.expm1(-h)


class UniPC(AbstractMultistepSolver):
    r"""UniPC (Zhao et al. 2023): the multistep predictor UniP-$p$ with the corrector
    UniC, in $\lambda = \log(a/s)$ with the data prediction, for any linear SDE.

    Each step predicts $x_{t'}$ from the last $p$ data predictions (UniP-$p$: the
    exponential integrator of their interpolating polynomial, as in
    [`DPMSolverPP3M`][]; for $p = 2$ the reference's $B(h)$ form), then evaluates the
    score at the prediction; that evaluation both corrects the prediction (UniC: the
    same integral through the $p$ old predictions and the new one, raising the order
    by one) and serves as the newest stored prediction of the next step, so UniC costs
    no extra evaluation. Here the correction is applied at the start of the next step,
    which is the same arithmetic: diffrax's state between steps (and the final sample,
    as in the reference, whose last step is not corrected) is the prediction.

    One score evaluation per step; fixed steps only (pair it with
    `sd.time_grid(sde, n, kind="logsnr")`), at least `order` of them; warm-up steps
    run at lower order. Takes the probability-flow ODE term (`method="ode"`,
    inferred).

    **Arguments:**

    - `order`: $p$, 1, 2 or 3 (default 3). With the corrector the order of
        convergence is $p + 1$ (measured on Gaussian data: 3.0 for $p = 2$, 3.7 to
        4.2 for $p = 3$); without it, $p$.
    - `variant`: $B(h)$, `"bh1"` ($h$) or `"bh2"` ($e^h - 1$, default), which sets the
        coefficients of the first-order corrector and second-order predictor.
    - `corrector`: whether to apply UniC (default True); False gives UniP alone.

    **Reference:** Zhao, Bai, Rao, Zhou, Lu, *UniPC: A Unified Predictor-Corrector
    Framework for Fast Sampling of Diffusion Models*, NeurIPS 2023.
    """

    solver_order: int = eqx.field(static=True)
    variant: Literal["bh1", "bh2"] = eqx.field(static=True)
    corrector: bool = eqx.field(static=True)

    term_structure: ClassVar = dfx.AbstractTerm

    def __init__(
        self,
        order: int = 3,
        variant: str = "bh2",
        corrector: bool = True,
    ):
        self.solver_order = _check_order("UniPC", order, 3)
        if variant not in ("bh1", "bh2"):
            raise ValueError(
                f"UniPC: `variant` must be 'bh1' or 'bh2', got {variant!r}."
            )
        if not isinstance(corrector, bool):
            raise ValueError(
                f"UniPC: `corrector` must be True or False, got {corrector!r}."
            )
        self.variant = variant
        self.corrector = corrector

    def order(self, terms):
        return self.solver_order + int(self.corrector)

    def multistep_order(self) -> int:
        return self.solver_order

    def init(self, terms, t0, t1, y0, args):
        return _init_state(y0, self.solver_order)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del args
        p = unpack_ode(terms, "UniPC")
        sde, k_max = p.sde, self.solver_order
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, "UniPC")
        state = _forget_if(solver_state, made_jump)
        lam0 = _lam(sde, t)
        m = _data_prediction(p, t, y0)

        # Correct the previous step (UniC) with the new evaluation.
        y = y0
        if self.corrector:
            lam_prev = state.times[0]
            hp = lam0 - lam_prev
            nodes = _nodes(state, lam_prev, hp, k_max)
            moments = [_psi(hp, n) for n in range(k_max + 1)]
            bh = _b_h(hp, self.variant)
            options = [[_psi(hp, 0) + 0.5 * bh] + [0.0] * (k_max - 1) + [-0.5 * bh]]
            for k in range(2, k_max + 1):
                w = _interp_weights(nodes[:k] + [jnp.ones_like(hp)], moments[: k + 1])
                options.append(w[:k] + [0.0] * (k_max - k) + [w[k]])
            w = _select(state.order, options)
            values = jnp.concatenate([state.preds, m[None]])
            a0 = sde.mean_coeff(t)
            corrected = sde.std(t) * state.x + a0 * _combine(w, values)
            y = jnp.where(state.count > 0, corrected, y0).astype(y0.dtype)

        # Predict (UniP) from the corrected state.
        state = _push(state, y / sde.std(t), m, lam0, 0)
        order = jnp.minimum(k_max, state.count)
        h = _lam(sde, t_next) - lam0
        nodes = _nodes(state, lam0, h, k_max)
        moments = [_psi(h, n) for n in range(k_max)]
        bh = _b_h(h, self.variant)
        options = [[moments[0]]]
        if k_max >= 2:
            r1 = nodes[1]
            options.append([moments[0] + 0.5 * bh / r1, -0.5 * bh / r1])
        for k in range(3, k_max + 1):
            options.append(_interp_weights(nodes[:k], moments[:k]))
        w = _select(order, options)
        a1, s1 = sde.mean_coeff(t_next), sde.std(t_next)
        y1 = (s1 / sde.std(t)) * y + a1 * _combine(w, state.preds)
        y1 = y1.astype(y0.dtype)
        state = eqx.tree_at(lambda s: s.order, state, order.astype(jnp.int32))
        return y1, None, dense_info(y0, y1), state, dfx.RESULTS.successful


class DEIS(AbstractMultistepSolver):
    r"""DEIS with the $\rho$AB scheme (Zhang & Chen 2023): a variable-step
    Adams-Bashforth method for the noise prediction in the noise level
    $\sigma = s/a$, for any linear SDE. In $\hat x = x / a$ the probability-flow ODE is
    $\mathrm{d}\hat x / \mathrm{d}\sigma = \hat\epsilon(\hat x, \sigma)$ with
    $\hat\epsilon = -s(t)\, s_\theta(t, x)$; each step integrates exactly the
    polynomial in $\sigma$ through the last `order` noise predictions:

    $$\hat x_{t'} = \hat x_t + \int_{\sigma_t}^{\sigma_{t'}} P(\sigma)\,
    \mathrm{d}\sigma.$$

    Order 1 is DDIM. One score evaluation per step; fixed steps only (pair it with
    `sd.time_grid(sde, n, kind="edm")` or `"logsnr"`), at least `order` of them;
    warm-up steps run at lower order. Takes the probability-flow ODE term
    (`method="ode"`, inferred).

    **Arguments:**

    - `order`: 1 to 4 (default 3).

    **Reference:** Zhang, Chen, *Fast Sampling of Diffusion Models with Exponential
    Integrator*, ICLR 2023 ($\rho$AB-DEIS).
    """

    solver_order: int = eqx.field(static=True)

    term_structure: ClassVar = dfx.AbstractTerm

    def __init__(self, order: int = 3):
        self.solver_order = _check_order("DEIS", order, 4)

    def order(self, terms):
        return self.solver_order

    def multistep_order(self) -> int:
        return self.solver_order

    def init(self, terms, t0, t1, y0, args):
        return _init_state(y0, self.solver_order)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del args
        p = unpack_ode(terms, "DEIS")
        sde, k_max = p.sde, self.solver_order
        t, t_next = p.time(t0), p.time(t1)
        y0 = check_decreasing(y0, t, t_next, "DEIS")
        state = _forget_if(solver_state, made_jump)
        a0, s0 = sde.mean_coeff(t), sde.std(t)
        a1, s1 = sde.mean_coeff(t_next), sde.std(t_next)
        sig0, sig1 = s0 / a0, s1 / a1
        eps_hat = -s0 * p.score_at(t, y0)
        state = _push(state, y0 / s0, eps_hat, sig0, 0)
        order = jnp.minimum(k_max, state.count)
        big = sig1 - sig0
        nodes = _nodes(state, sig0, big, k_max)
        moments = [big / (n + 1) for n in range(k_max)]
        w = _select(
            order,
            [_interp_weights(nodes[:k], moments[:k]) for k in range(1, k_max + 1)],
        )
        y1 = (a1 * (y0 / a0 + _combine(w, state.preds))).astype(y0.dtype)
        state = eqx.tree_at(lambda s: s.order, state, order.astype(jnp.int32))
        return y1, None, dense_info(y0, y1), state, dfx.RESULTS.successful
