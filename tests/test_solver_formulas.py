"""Each sampler's step against its paper's formula, written out by hand in float64.

- One step of every predictor on Gaussian data, whose score is known in closed form
  and depends on the time it is evaluated at, with the noise the step drew: the
  update, the time of each score evaluation (a check that the formula with the score
  at the next time differs by far more than the tolerance makes that sharp) and the
  noise (standard normal, different for two examples started from the same point).
- One step of each corrector against the paper's Langevin step and step size.
- Multistep solvers on a data (or noise) prediction that is a polynomial of the
  solver's order in its time variable, whatever the state: every full-order step
  is then the exact solution of the probability-flow ODE (or of the SDE family, with
  the drawn noise), so it must agree to round-off.
- `sd.sample`: distinct examples get distinct prior draws and Brownian increments,
  independent of each other.
- The inverse-problem wrappers noise the observation to the SDE's marginal at the
  step's end (and at the start).
"""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import GAUSS_MEAN, GAUSS_STD, SDES

import scoresde_diffrax as sd
from scoresde_diffrax._solver._common import unpack_sde
from scoresde_diffrax._term import sampling_terms as _terms


B, D = 256, 3  # examples and dimension of the one-step checks


@eqx.filter_jit
def _one_step(solver, terms, r0, r1, x, num_normals: int):
    """One step of `solver` from `x`, and the noise it drew: the standard normal of
    the step's Brownian increment, and `num_normals` more from its sub-increments
    (what a corrector uses); None for an ODE."""
    state = solver.init(terms, r0, r1, x, None)
    y = solver.step(terms, r0, r1, x, None, state, False)[0]
    if not isinstance(terms, dfx.MultiTerm):
        return y, None, None
    p = unpack_sde(terms, "test")
    more = p.normals(r0, r1, x, num_normals) if num_normals else None
    return y, p.normal(r0, r1, x), more


def _ac(sde, t) -> tuple[float, float]:
    """`a(t)`, `s(t)` as Python floats."""
    return float(sde.mean_coeff(t)), float(sde.std(t))


def _gauss_score(sde, t, x):
    """The exact score of N(mu, s0^2 I) pushed to time t, in float64:
    -(x - a mu) / (a^2 s0^2 + s^2)."""
    a, s = _ac(sde, t)
    mu = np.asarray(GAUSS_MEAN, np.float64)
    return -(x - a * mu) / (a**2 * GAUSS_STD**2 + s**2)


def _gauss(sde):
    """The exact score of the Gaussian data (the package's mixture score)."""
    return sd.GaussianMixture(GAUSS_MEAN[None], jnp.array([GAUSS_STD])).score(sde)


def _start(sde, t, n=B, seed=0):
    """`n` draws of p_t (Gaussian data), float32; examples 0 and 1 equal."""
    a, s = _ac(sde, t)
    sd_t = np.sqrt(a**2 * GAUSS_STD**2 + s**2)
    x = a * GAUSS_MEAN[None] + sd_t * jr.normal(jr.key(seed), (n, D))
    return x.at[1].set(x[0])


def _moved(score, t_next, k):
    """`score` with its `k`-th evaluation moved to `t_next` (the bug to catch: a
    predictor evaluating the score at the next time instead of the current one)."""
    calls = []

    def moved(tt, x):
        calls.append(tt)
        return score(t_next if len(calls) == k + 1 else tt, x)

    return moved, calls


# --------------------------------------------------------------------------------------
# The formulas, from the papers (x, z float64 arrays; g(t, x) the score)
# --------------------------------------------------------------------------------------


def _reverse_diffusion(sde, t, tn, x, z, g):
    # Song et al. (2021), eq. 46: x_i = x_{i+1} - f_{i+1}(x_{i+1}) + G^2 s(x_{i+1},
    # t_{i+1}) + G z, with the forward step over [t', t] as x_t = r x_t' + sqrt(v) z.
    (a, s), (an, sn) = _ac(sde, t), _ac(sde, tn)
    r = a / an
    v = s**2 - r**2 * sn**2
    return (2 - r) * x + v * g(t, x) + np.sqrt(v) * z


def _ancestral(upper):
    # Song et al. (2021), eq. 47 / Ho et al. (2020): mean (x + v s(t, x)) / r;
    # variance v s(t')^2 / s(t)^2 (the posterior's), or v (upper).
    def formula(sde, t, tn, x, z, g):
        (a, s), (an, sn) = _ac(sde, t), _ac(sde, tn)
        r = a / an
        v = s**2 - r**2 * sn**2
        var = v if upper else v * sn**2 / s**2
        return (x + v * g(t, x)) / r + np.sqrt(var) * z

    return formula


def _euler_maruyama(sde, t, tn, x, z, g):
    # The reverse SDE dx = [f x - g^2 s] dt + g dw, a step of length dt = t - t' back.
    dt = t - tn
    f, gg = float(sde.drift_coeff(t)), float(sde.diffusion(t))
    return x - (f * x - gg**2 * g(t, x)) * dt + gg * np.sqrt(dt) * z


def _ddim(eta):
    # Song, Meng, Ermon (2021), eq. 12, in a(t), s(t): x0 = (x + s^2 s_theta) / a,
    # eps = -s s_theta, x' = a' x0 + sqrt(s'^2 - c^2) eps + c z,
    # c = eta sqrt(v) s' / s.
    def formula(sde, t, tn, x, z, g):
        (a, s), (an, sn) = _ac(sde, t), _ac(sde, tn)
        score = g(t, x)
        x0, eps = (x + s**2 * score) / a, -s * score
        v = s**2 - (a / an) ** 2 * sn**2
        c = eta * np.sqrt(v) * sn / s
        return an * x0 + np.sqrt(sn**2 - c**2) * eps + c * z

    return formula


def _dpm_solver_pp_first(sde, t, tn, x, z, g):
    # Lu et al. (2022), DPM-Solver++(1): x' = (s'/s) x - a' (e^{-h} - 1) x0.
    (a, s), (an, sn) = _ac(sde, t), _ac(sde, tn)
    h = np.log(an / sn) - np.log(a / s)
    return (sn / s) * x - an * np.expm1(-h) * (x + s**2 * g(t, x)) / a


def _sde_dpm_solver_pp_first(eta):
    # Lu et al. (2022), SDE-DPM-Solver++(1), with eta: x' = (s'/s) e^{-eta h} x +
    # a' (1 - e^{-(1 + eta) h}) x0 + s' sqrt(1 - e^{-2 eta h}) z.
    def formula(sde, t, tn, x, z, g):
        (a, s), (an, sn) = _ac(sde, t), _ac(sde, tn)
        h = np.log(an / sn) - np.log(a / s)
        x0 = (x + s**2 * g(t, x)) / a
        return (
            (sn / s) * np.exp(-eta * h) * x
            - an * np.expm1(-(1 + eta) * h) * x0
            + sn * np.sqrt(-np.expm1(-2 * eta * h)) * z
        )

    return formula


def _edm_heun(churn):
    # Karras et al. (2022), Algorithm 2, in x_hat = x / a and sigma = s / a:
    # dx_hat/dsigma = (x_hat - D(x_hat; sigma)) / sigma with D the data prediction;
    # churn first raises sigma to sigma (1 + churn) with fresh noise.
    def formula(sde, t, tn, x, z, g):
        (a, s), (an, sn) = _ac(sde, t), _ac(sde, tn)
        sig, sig_n = s / a, sn / an
        xh, th, sh = x / a, t, sig
        if churn:
            sh = sig * (1 + churn)
            th = float(sde.t_from_log_snr(-2 * np.log(np.float32(sh))))
            xh = xh + np.sqrt(sh**2 - sig**2) * z

        def slope(tt, y):
            at, st = _ac(sde, tt)
            denoised = (at * y + st**2 * g(tt, at * y)) / at
            return (y - denoised) / (st / at)

        d = slope(th, xh)
        x_euler = xh + (sig_n - sh) * d
        d2 = slope(tn, x_euler)
        return an * (xh + (sig_n - sh) * 0.5 * (d + d2))

    return formula


def _pc(snr):
    # Song et al. (2021), Algorithms 1 and 5: the Langevin corrector at t (step
    # 2 alpha (snr s(t))^2 with the default norms of the noise), then the
    # reverse-diffusion predictor from t to t'.
    def formula(sde, t, tn, x, zs, g):
        z_corr, z = zs
        a, s = _ac(sde, t)
        an, _ = _ac(sde, tn)
        eps = 2 * (a / an) ** 2 * (snr * s) ** 2
        x = x + eps * g(t, x) + np.sqrt(2 * eps) * z_corr
        return _reverse_diffusion(sde, t, tn, x, z, g)

    return formula


# name: (solver, method, sde, the formula)
PREDICTORS = {
    "reverse_diffusion": (sd.ReverseDiffusion(), "sde", "vp", _reverse_diffusion),
    "ancestral": (sd.AncestralSampling(), "sde", "subvp", _ancestral(False)),
    "ancestral_upper": (
        sd.AncestralSampling(upper_variance=True),
        "sde",
        "ve",
        _ancestral(True),
    ),
    "euler_maruyama": (dfx.Euler(), "sde", "vp", _euler_maruyama),
    "ddim": (sd.DDIM(), "ode", "ve", _ddim(0.0)),
    "ddim_eta": (sd.StochasticDDIM(eta=0.5), "sde", "vp", _ddim(0.5)),
    "dpm_solver_pp_2m": (sd.DPMSolverPP2M(), "ode", "vp", _dpm_solver_pp_first),
    "sde_dpm_solver_pp": (
        sd.StochasticDPMSolverPP(2, eta=0.7),
        "sde",
        "subvp",
        _sde_dpm_solver_pp_first(0.7),
    ),
    "edm_heun": (sd.EDMHeun(), "ode", "vp", _edm_heun(0.0)),
    "edm_churn": (sd.StochasticEDMHeun(churn=0.3), "sde", "ve", _edm_heun(0.3)),
    "pc": (sd.PredictorCorrector(), "sde", "vp", _pc(0.16)),
}


@pytest.mark.parametrize("name", list(PREDICTORS))
def test_one_step_is_the_papers_formula(name):
    solver, method, sde_name, formula = PREDICTORS[name]
    sde = SDES[sde_name]
    t, tn = 0.6, 0.35
    x = _start(sde, t)
    terms = _terms(sde, _gauss(sde), method, x.shape, jr.key(1), -sde.T, -1e-3, "fast")
    r0, r1 = jnp.float32(-t), jnp.float32(-tn)
    more = 1 if name == "pc" else 0
    y, z, z_more = _one_step(solver, terms, r0, r1, x, more)
    y, x64 = np.asarray(y, np.float64), np.asarray(x, np.float64)
    if z is None:
        z = np.zeros_like(x64)
    else:
        # Standard normal noise, different for every example (0 and 1 start equal).
        z = np.asarray(z, np.float64)
        assert abs(z.std() - 1) < 0.1 and abs(z.mean()) < 0.1, (z.mean(), z.std())
        assert np.all(np.abs(y[0] - y[1]) > 1e-3), y[:2]
    if more:
        # The corrector's noise: standard normal, independent of the predictor's.
        z_corr = np.asarray(z_more[0], np.float64)
        assert abs(z_corr.std() - 1) < 0.1
        assert abs(np.corrcoef(z.ravel(), z_corr.ravel())[0, 1]) < 0.1
        z = (z_corr, z)

    def g(tt, u):
        return _gauss_score(sde, tt, u)

    want = formula(sde, t, tn, x64, z, g)
    tol = 2e-6 * np.max(np.abs(want))  # measured: 0.8-2.8e-7
    np.testing.assert_allclose(y, want, rtol=0, atol=tol)
    # Sharp in the time of each score evaluation: moved to t', it gives a result
    # far outside the tolerance (evaluations already at t' are not moved).
    probe, calls = _moved(g, tn, -1)
    formula(sde, t, tn, x64, z, probe)
    for k, tt in enumerate(calls):
        if tt != tn:
            moved = formula(sde, t, tn, x64, z, _moved(g, tn, k)[0])
            assert np.max(np.abs(moved - want)) > 100 * tol, (k, tt)


# --------------------------------------------------------------------------------------
# Correctors
# --------------------------------------------------------------------------------------


def _norms(u, batch: bool):
    n = np.sqrt(np.sum(u**2, axis=1))
    return np.full_like(n, n.mean()) if batch else n


# Song et al. (2021), Algorithm 5: eps = 2 alpha (snr ||z|| / ||s_theta||)^2 with
# alpha = a(t)^2 / a(t')^2; the default ("noise") takes the noise's norms,
# ||z||^2 -> d and ||s_theta||^2 -> d / s(t)^2, as AnnealedLangevin does.
CORRECTORS = {
    "langevin": (sd.Langevin(snr=0.16), lambda z, g, s: s),
    "langevin_batch": (
        sd.Langevin(snr=0.16, norms="batch"),
        lambda z, g, s: _norms(z, True) / _norms(g, True),
    ),
    "langevin_example": (
        sd.Langevin(snr=0.16, norms="example"),
        lambda z, g, s: _norms(z, False) / _norms(g, False),
    ),
    "annealed": (sd.AnnealedLangevin(snr=0.16), lambda z, g, s: s),
}


@pytest.mark.parametrize("name", list(CORRECTORS))
def test_corrector_step_is_the_papers_langevin_step(name):
    corrector, ratio = CORRECTORS[name]
    sde, t, tn = SDES["vp"], 0.5, 0.4
    x = _start(sde, t, n=64)
    z = jr.normal(jr.key(2), (1, 64, D))
    y = eqx.filter_jit(corrector.correct)(sde, _gauss(sde), t, tn, x, z)
    x64, z64 = np.asarray(x, np.float64), np.asarray(z[0], np.float64)
    g = _gauss_score(sde, t, x64)
    (a, s), (an, _) = _ac(sde, t), _ac(sde, tn)
    eps = 2 * (a / an) ** 2 * (0.16 * ratio(z64, g, s)) ** 2
    eps = np.reshape(eps, (-1, 1)) if np.ndim(eps) else eps
    want = x64 + eps * g + np.sqrt(2 * eps) * z64
    np.testing.assert_allclose(y, want, rtol=0, atol=2e-6 * np.max(np.abs(want)))


# --------------------------------------------------------------------------------------
# Multistep solvers: exact on polynomial predictions of their order
# --------------------------------------------------------------------------------------


class _Polynomial(eqx.Module):
    """A prediction that is a polynomial in a time variable, whatever the state:
    `sum_k coefs[k] * u(t)^k`, with `u` = lambda = log(a/s) (`sigma=False`), or the
    noise level sigma = s/a divided by `unit` (`sigma=True`)."""

    sde: sd.VPSDE
    coefs: jax.Array  # (K, D)
    sigma: bool = eqx.field(static=True)
    unit: float = 1.0

    def __call__(self, t, x):
        a, s = self.sde.mean_coeff(t), self.sde.std(t)
        u = s / a / self.unit if self.sigma else jnp.log(a / s)
        powers = u ** jnp.arange(self.coefs.shape[0], dtype=x.dtype)
        return (powers @ self.coefs).astype(x.dtype)


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(40)


def _exp_integral(coefs, lam, h, rate):
    """int_0^h rate e^{-rate (h - v)} P(lam + v) dv in float64 (Gauss-Legendre, exact
    to round-off for these smooth integrands), P(u) = sum_k coefs[k] u^k."""
    v = 0.5 * h * (_NODES + 1)
    p = np.stack([(lam + v) ** k for k in range(len(coefs))], 1) @ coefs
    f = rate * np.exp(-rate * (h - v))[:, None] * p
    return 0.5 * h * (_WEIGHTS @ f)


# name: (solver, degree of the polynomial, first full-order step, checks): the
# checks are "pred" (the step's result) and "corr" (UniC's corrected state).
# DPM-Solver++(2M) (Lu et al.'s Algorithm 2) weighs its difference term by
# (e^{-h} - 1) / 2 instead of integrating it: exact for constants only, so its
# second step is checked against that formula (below).
MULTISTEP = {
    "dpm_solver_pp_3m": (sd.DPMSolverPP3M(), 2, 2, ("pred",)),
    "sde_dpm_solver_pp_3m": (sd.StochasticDPMSolverPP(3, eta=0.5), 2, 2, ("pred",)),
    # UniP-3 interpolates exactly (degree 2) and UniC of order p uses p + 1
    # predictions (degree p); UniP-2's B(h) weights are exact for constants only.
    "unipc3": (sd.UniPC(3), 2, 2, ("pred", "corr")),
    "unipc3_deg3": (sd.UniPC(3), 3, 3, ("corr",)),
    "unipc2": (sd.UniPC(2, "bh1"), 2, 2, ("corr",)),
    "deis3": (sd.DEIS(3), 2, 2, ("pred",)),
}


@pytest.mark.parametrize("name", list(MULTISTEP))
def test_multistep_exact_on_polynomial_predictions(name):
    """A data prediction x0(t) polynomial in lambda (for DEIS a noise prediction
    polynomial in sigma) of the solver's order: every full-order step is the exact
    exponential-integrator solution of the probability-flow ODE, x' = (s'/s) x +
    a' int_0^h e^{-(h-v)} x0(lambda + v) dv (the SDE family: (s'/s) e^{-eta h} x +
    a' int_0^h (1+eta) e^{-(1+eta)(h-v)} x0 dv + s' sqrt(1 - e^{-2 eta h}) z), or
    for DEIS x'/a' = x/a + int eps(sigma) dsigma."""
    solver, degree, first, checks = MULTISTEP[name]
    sde = SDES["vp"]
    is_deis, eta = isinstance(solver, sd.DEIS), getattr(solver, "eta", 0.0)
    coefs = np.array([[0.3, -0.5, 0.8], [0.4, 0.2, -0.3], [0.2, -0.15, 0.1]])
    coefs = np.concatenate([coefs, [[0.01, 0.02, -0.01]]])[: degree + 1]
    sig_top = float(sde.std(sde.T) / sde.mean_coeff(sde.T))
    model = _Polynomial(sde, jnp.asarray(coefs, jnp.float32), is_deis, sig_top)
    score = sd.EpsScore(model, sde) if is_deis else sd.X0Score(model, sde)
    method = "sde" if eta else "ode"
    x = sde.prior_std * jr.normal(jr.key(3), (8, D))
    ts = np.asarray(sd.time_grid(sde, 10, "edm"))  # steps of unequal h
    terms = _terms(sde, score, method, x.shape, jr.key(4), -sde.T, -1e-3, "fast")
    state = solver.init(terms, -ts[0], -ts[1], x, None)
    corrected = None
    for i in range(len(ts) - 1):
        r0, r1 = jnp.float32(-ts[i]), jnp.float32(-ts[i + 1])
        y, state, z = _multistep(solver, terms, r0, r1, x, state)
        (a, s), (an, sn) = _ac(sde, ts[i]), _ac(sde, ts[i + 1])
        lam, lam_n = np.log(a / s), np.log(an / sn)
        x64 = np.asarray(x, np.float64)
        x_corr = None
        if "corr" in checks:  # UniPC's corrected state at ts[i]
            x_corr = np.asarray(state.x, np.float64) * s
        if is_deis:
            c = coefs / sig_top ** np.arange(degree + 1)[:, None]
            powers = [
                (sn / an) ** (k + 1) - (s / a) ** (k + 1) for k in range(degree + 1)
            ]
            want = an * (x64 / a + (np.array(powers) / np.arange(1, degree + 2)) @ c)
        else:
            start = x_corr if "corr" in checks else x64
            h = lam_n - lam
            want = (sn / s) * np.exp(-eta * h) * start
            want = want + an * _exp_integral(coefs, lam, h, 1 + eta)
            if eta:
                z = np.asarray(z, np.float64)
                want = want + sn * np.sqrt(-np.expm1(-2 * eta * h)) * z
        tol = 5e-6 * max(np.max(np.abs(want)), 1.0)  # measured: up to 7e-7
        if i >= first and "pred" in checks:
            np.testing.assert_allclose(y, want, rtol=0, atol=tol, err_msg=f"step {i}")
        if i > first and "corr" in checks:
            np.testing.assert_allclose(
                x_corr, corrected, rtol=0, atol=tol, err_msg=f"step {i}"
            )
        corrected = want  # the exact step from this step's corrected state
        x = y


@eqx.filter_jit
def _multistep(solver, terms, r0, r1, x, state):
    """One step, and the standard normal it drew (None for an ODE)."""
    y, _, _, state, _ = solver.step(terms, r0, r1, x, None, state, False)
    if not isinstance(terms, dfx.MultiTerm):
        return y, state, None
    return y, state, unpack_sde(terms, "test").normal(r0, r1, x)


def test_dpm_solver_pp_2m_second_step_is_algorithm_2():
    """Lu et al. (2022), Algorithm 2: x_i = (s_i/s_{i-1}) x_{i-1} - a_i (e^{-h_i} - 1)
    [(1 + 1/(2 r_i)) x0_{i-1} - 1/(2 r_i) x0_{i-2}], r_i = h_{i-1} / h_i, with the
    data predictions x0 of the Gaussian score at the step's start."""
    sde, solver, ts = SDES["subvp"], sd.DPMSolverPP2M(), [0.8, 0.5, 0.3]
    x = _start(sde, ts[0])
    terms = _terms(sde, _gauss(sde), "ode", x.shape, jr.key(0), -1.0, -1e-3, "fast")
    state = solver.init(terms, -ts[0], -ts[1], x, None)
    xs = [np.asarray(x, np.float64)]
    for i in range(2):
        r0, r1 = jnp.float32(-ts[i]), jnp.float32(-ts[i + 1])
        x, state, _ = _multistep(solver, terms, r0, r1, x, state)
        xs.append(np.asarray(x, np.float64))
    (a0, s0), (a1, s1), (a2, s2) = (_ac(sde, t) for t in ts)
    lam = [np.log(a0 / s0), np.log(a1 / s1), np.log(a2 / s2)]
    x0_prev = (xs[0] + s0**2 * _gauss_score(sde, ts[0], xs[0])) / a0
    x0 = (xs[1] + s1**2 * _gauss_score(sde, ts[1], xs[1])) / a1
    h, h_prev = lam[2] - lam[1], lam[1] - lam[0]
    c = 0.5 * h / h_prev  # 1 / (2 r)
    want = (s2 / s1) * xs[1] - a2 * np.expm1(-h) * ((1 + c) * x0 - c * x0_prev)
    np.testing.assert_allclose(xs[2], want, rtol=0, atol=2e-6 * np.max(np.abs(want)))


# --------------------------------------------------------------------------------------
# Distinct examples get distinct noise
# --------------------------------------------------------------------------------------


def test_sample_draws_each_example_its_own_prior_and_noise():
    """VE (no drift) with a zero score and one Euler-Maruyama step: the sample is the
    prior draw plus g(T) times the Brownian increment, so `sd.sample`'s prior draws
    and increments are seen directly. Each is standard normal over the examples
    (shared keys would make every example equal), and the two are independent."""
    sde, n = SDES["ve"], 512
    out = sd.sample(
        jr.key(0),
        sde,
        lambda t, x: jnp.zeros_like(x),
        (n, 2),
        solver=dfx.Euler(),
        method="sde",
        num_steps=1,
        saveat=dfx.SaveAt(t0=True),
    )
    x0 = np.asarray(out.trajectory[0], np.float64)
    step = float(sde.diffusion(sde.T)) * np.sqrt(sde.T - sde.default_eps)
    prior = x0 / sde.prior_std
    noise = (np.asarray(out.samples, np.float64) - x0) / step
    se = 1 / np.sqrt(2 * n)
    for u in (prior, noise):
        assert len(np.unique(u, axis=0)) == n
        assert abs(u.mean()) < 4 * se and abs(u.std() - 1) < 4 * se, u.std()
    assert abs(np.corrcoef(prior.ravel(), noise.ravel())[0, 1]) < 4 * se


# --------------------------------------------------------------------------------------
# Inverse problems: the observation noised to the marginal
# --------------------------------------------------------------------------------------


@eqx.filter_jit
def _wrapped_step(solver, terms, r0, r1, x):
    state = solver.init(terms, r0, r1, x, None)
    _, _, dense, _, _ = solver.step(terms, r0, r1, x, None, state, False)
    return dense["y0"], dense["y1"]


def test_inverse_wrappers_noise_the_observation_to_the_marginal():
    """Song et al. (2021, appendix I.2; 2022): the known part of the state is the
    observation pushed through the forward SDE, a(t) y + s(t) A z, both at the
    start (t = T, from the prior draw) and after each step (t = t'): in the
    observed coordinates the residual from a(t) y is N(0, s(t)^2). Under VE,
    s(T) = 50 and s(0.1) = 0.023, so a noise level off by a square root (or
    squared) is far out. (`Project` on a mask equals `Impute`: test_inverse_linear.)"""
    sde, n, t, tn = SDES["ve"], 2048, SDES["ve"].T, 0.1
    mask = np.array([True, False, True])
    op = np.array([[1.0, 0.5, -0.3], [0.2, -1.0, 0.8]])
    u, sv, vt = np.linalg.svd(op, full_matrices=False)
    obs = np.asarray(jr.normal(jr.key(5), (n, D)), np.float64)
    meas = obs @ op.T
    inner = sd.ReverseDiffusion()
    cases = {
        "impute": (sd.Impute(inner, obs, mask), lambda x: x[:, mask], obs[:, mask]),
        # In the coordinates V^T x of A = U S V^T, the known part is S^-1 U^T y.
        "project_operator": (
            sd.Project(inner, meas, operator=op),
            lambda x: x @ vt.T,
            meas @ u / sv,
        ),
    }
    x = sde.prior_std * jr.normal(jr.key(6), (n, D))
    terms = _terms(sde, _gauss(sde), "sde", x.shape, jr.key(7), -sde.T, -1e-3, "fast")
    for name, (solver, known, y) in cases.items():
        start, end = _wrapped_step(solver, terms, jnp.float32(-t), jnp.float32(-tn), x)
        for tt, state in ((t, start), (tn, end)):
            a, s = _ac(sde, tt)
            resid = (known(np.asarray(state, np.float64)) - a * y) / s
            what = (
                f"{name} at t = {tt}: residual mean {resid.mean()}, std {resid.std()}"
            )
            assert abs(resid.mean()) < 0.1 and abs(resid.std() - 1) < 0.05, what
