"""Property-based tests (hypothesis) of the SDE and mixture identities, for random
VP / sub-VP / VE parameters, times, points and mixtures:

- the closed-form marginals (`mean_coeff`, `std`) solve the moment ODEs of the SDE's
  own `drift_coeff` and `diffusion`: da/dt = f a, dVar/dt = 2 f Var + g^2;
- `prior_log_prob` is a normalised Gaussian density of std `prior_std`;
- `t_from_log_snr` inverts `log_snr`;
- a mixture's exact score is `jax.grad` of its marginal's log-density;
- a mixture's marginal at t has the moments of samples pushed through the transition.
"""

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.integrate
import scipy.stats
from hypothesis import given, settings

import scoresde_diffrax as sd


SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)


@st.composite
def sdes(draw):
    kind = draw(st.sampled_from(["vp", "subvp", "ve"]))
    T = draw(st.floats(0.5, 2.0))
    if kind == "ve":
        sigma_min = draw(st.floats(1e-3, 0.2))
        ratio = draw(st.floats(2.0, 1e4))
        return sd.VESDE(sigma_min=sigma_min, sigma_max=sigma_min * ratio, T=T)
    beta_min = draw(st.floats(0.01, 2.0))
    beta_max = beta_min + draw(st.floats(0.0, 25.0))
    cls = sd.VPSDE if kind == "vp" else sd.SubVPSDE
    return cls(beta_min=beta_min, beta_max=beta_max, T=T)


@SETTINGS
@given(sde=sdes(), frac=st.floats(0.02, 1.0))
def test_marginals_solve_the_moment_odes(sde, frac):
    t1 = frac * sde.T
    f = lambda t: float(sde.drift_coeff(t))
    g2 = lambda t: float(sde.diffusion(t)) ** 2

    def rhs(t, y):
        a, var = y
        return [f(t) * a, 2 * f(t) * var + g2(t)]

    sol = scipy.integrate.solve_ivp(
        rhs, (0.0, t1), [1.0, 0.0], method="LSODA", rtol=1e-8, atol=1e-12
    )
    a, var = sol.y[:, -1]
    np.testing.assert_allclose(float(sde.mean_coeff(t1)), a, rtol=1e-4)
    np.testing.assert_allclose(float(sde.std(t1)) ** 2, var, rtol=2e-4, atol=1e-10)
    # The transition over [t0, t1] composes to the marginal from 0.
    t0 = 0.5 * t1
    r, v = sde.transition(t0, t1)
    np.testing.assert_allclose(
        float(r * sde.mean_coeff(t0)), float(sde.mean_coeff(t1)), rtol=1e-5
    )
    np.testing.assert_allclose(
        float(v + r**2 * sde.std(t0) ** 2), float(sde.std(t1) ** 2), rtol=1e-4
    )


@SETTINGS
@given(sde=sdes(), seed=st.integers(0, 2**16))
def test_prior_log_prob_is_a_normalised_gaussian(sde, seed):
    s = float(sde.prior_std)
    # 2-D: the density integrates to one on a grid over +-8 prior stds.
    u = np.linspace(-8 * s, 8 * s, 401)
    grid = jnp.asarray(np.stack(np.meshgrid(u, u), -1).reshape(-1, 2), jnp.float32)
    dens = np.exp(np.asarray(jax.vmap(sde.prior_log_prob)(grid), np.float64))
    mass = scipy.integrate.trapezoid(
        scipy.integrate.trapezoid(dens.reshape(401, 401), u), u
    )
    np.testing.assert_allclose(mass, 1.0, rtol=1e-3)
    # Any shape: the sum of independent normal log-densities.
    x = np.random.default_rng(seed).normal(scale=s, size=(3, 2)).astype(np.float32)
    want = scipy.stats.norm(scale=s).logpdf(x.astype(np.float64)).sum()
    np.testing.assert_allclose(float(sde.prior_log_prob(x)), want, rtol=1e-5)


@SETTINGS
@given(sde=sdes(), frac=st.floats(0.01, 1.0))
def test_t_from_log_snr_inverts_log_snr(sde, frac):
    t = jnp.asarray(frac * sde.T, jnp.float32)
    back = float(sde.t_from_log_snr(sde.log_snr(t)))
    np.testing.assert_allclose(back, float(t), rtol=2e-3, atol=1e-5 * sde.T)
    # And log_snr is decreasing.
    assert float(sde.log_snr(0.5 * t)) > float(sde.log_snr(t))


@st.composite
def mixtures(draw):
    k = draw(st.integers(1, 3))
    d = draw(st.integers(1, 3))
    floats = lambda lo, hi, n: np.array(
        draw(st.lists(st.floats(lo, hi), min_size=n, max_size=n)), np.float32
    )
    means = floats(-3.0, 3.0, k * d).reshape(k, d)
    stds = floats(0.2, 2.0, k * d).reshape(k, d)
    weights = floats(0.1, 1.0, k)
    return sd.GaussianMixture(means, stds, weights)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(sde=sdes(), mix=mixtures(), frac=st.floats(0.0, 1.0), seed=st.integers(0, 999))
def test_mixture_score_is_grad_log_prob(sde, mix, frac, seed):
    t = frac * sde.T
    x = jr.normal(jr.key(seed), (4, mix.dim)) * 2.0
    score = jax.vmap(mix.score(sde), in_axes=(None, 0))(t, x)
    marg = mix.marginal(sde, t)
    grad = jax.vmap(jax.grad(marg.log_prob))(x)
    scale = 1.0 + float(jnp.max(jnp.abs(grad)))
    np.testing.assert_allclose(score, grad, rtol=1e-3, atol=1e-4 * scale)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(sde=sdes(), frac=st.floats(0.05, 1.0), seed=st.integers(0, 999))
def test_mixture_marginal_matches_transition_of_samples(sde, frac, seed):
    means = jnp.array([[-2.0, 0.5], [1.0, -1.0], [2.5, 2.0]])
    mix = sd.GaussianMixture(means, jnp.array([0.3, 0.6, 0.9]), jnp.array([1, 2, 3.0]))
    t = frac * sde.T
    n = 20_000
    k0, k1 = jr.split(jr.key(seed))
    x0 = mix.sample(k0, n)
    mean_t, std_t = sde.marginal(t, x0)
    xt = np.asarray(mean_t + std_t * jr.normal(k1, x0.shape), np.float64)
    marg = mix.marginal(sde, t)
    cov = np.asarray(marg.covariance(), np.float64)
    sd_ = np.sqrt(np.diag(cov))
    # Means within 5 standard errors; (co)variances within 5 standard errors.
    se_mean = sd_ / math.sqrt(n)
    np.testing.assert_array_less(
        np.abs(xt.mean(0) - np.asarray(marg.mean())), 5 * se_mean
    )
    emp = np.cov(xt.T)
    se_cov = np.sqrt((np.outer(sd_, sd_) ** 2 + cov**2) / n) * 2.0  # heavy-ish tails
    np.testing.assert_array_less(np.abs(emp - cov), 5 * se_cov)
