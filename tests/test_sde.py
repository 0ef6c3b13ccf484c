import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import scoresde_diffrax as sd


def test_marginals_satisfy_their_odes(sde):
    # a' = f a and (s^2)' = 2 f s^2 + g^2 (the moment equations of a linear SDE).
    for t in [0.05, 0.3, 0.7, 0.95]:
        t = jnp.asarray(t)
        da = jax.grad(sde.mean_coeff)(t)
        dvar = jax.grad(lambda u: sde.std(u) ** 2)(t)
        f, g = sde.drift_coeff(t), sde.diffusion(t)
        np.testing.assert_allclose(da, f * sde.mean_coeff(t), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(
            dvar, 2 * f * sde.std(t) ** 2 + g**2, rtol=1e-3, atol=1e-5
        )
    np.testing.assert_allclose(sde.mean_coeff(0.0), 1.0)
    np.testing.assert_allclose(sde.std(0.0), 0.0, atol=1e-7)


def test_prior_matches_marginal_at_T(sde):
    # p_T of data near the origin is (close to) the prior N(0, prior_std^2): for data
    # of mean m and variance v per dimension, p_T = N(a m, a^2 v + s^2) per dimension,
    # and its KL divergence from the prior is small for unit-scale data (VP, sub-VP:
    # a(T)^2 / 2 = 2e-5 from the mean; VE: m^2 / (2 sigma_max^2) = 2e-4).
    s, a = float(sde.std(sde.T)), float(sde.mean_coeff(sde.T))
    np.testing.assert_allclose(s, sde.prior_std, rtol=1e-3)
    p2 = float(sde.prior_std) ** 2
    for m, v in [(0.0, 1.0), (1.0, 1.0), (1.0, 0.1), (-1.0, 2.0)]:
        r = (a**2 * v + s**2) / p2
        kl = 0.5 * (r - 1 - np.log(r) + (a * m) ** 2 / p2)
        assert kl < 1e-3, (m, v, a, s, kl)


def test_forward_sde_marginal_matches_monte_carlo(sde):
    # Solve the forward SDE with diffrax from a point mass; compare mean and variance
    # with the closed form, within 4 standard errors of the Monte-Carlo estimate.
    n, t1, x0 = 20000, 0.6, 1.5
    bm = dfx.UnsafeBrownianPath(shape=(n, 1), key=jr.key(0))
    terms = sd.forward_sde_terms(sde, bm)
    sol = dfx.diffeqsolve(
        terms,
        dfx.Euler(),
        0.0,
        t1,
        t1 / 1000,
        jnp.full((n, 1), x0),
        adjoint=dfx.ForwardMode(),
        max_steps=1001,
    )
    x = np.asarray(sol.ys[-1, :, 0], dtype=np.float64)
    mean, var = sde.marginal(t1, x0)
    var = float(var) ** 2
    se_mean = np.sqrt(var / n)
    se_var = var * np.sqrt(2 / (n - 1))
    assert abs(x.mean() - float(mean)) < 4 * se_mean
    assert abs(x.var(ddof=1) - var) < 4 * se_var + 2e-3 * var  # + Euler's O(dt) bias


def test_prior_log_prob_normalised(sde):
    # 1-D: integrate exp(prior_log_prob) on a fine grid.
    s = sde.prior_std
    x = jnp.linspace(-10 * s, 10 * s, 20001)[:, None]
    p = np.exp(np.asarray(jax.vmap(sde.prior_log_prob)(x), np.float64))
    np.testing.assert_allclose(np.trapezoid(p, np.asarray(x[:, 0])), 1.0, rtol=1e-4)
    z = sde.prior_sample(jr.key(0), (50000,))
    np.testing.assert_allclose(np.std(z), s, rtol=0.02)


def test_log_snr_decreasing(sde):
    ts = jnp.linspace(1e-3, 1.0, 50)
    lam = jax.vmap(sde.log_snr)(ts)
    assert bool(jnp.all(jnp.diff(lam) < 0))


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: sd.VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: sd.VPSDE(beta_max=float("nan")), "beta_max"),
        (lambda: sd.VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: sd.SubVPSDE(beta_min=0.0), "beta_min"),
        (lambda: sd.SubVPSDE(T=-1.0), "T"),
        (lambda: sd.VESDE(sigma_min=1.0, sigma_max=0.5), "sigma_min"),
        (lambda: sd.VESDE(sigma_min=float("inf")), "sigma_min"),
        (lambda: sd.VESDE(sigma_max=-3.0), "sigma_max"),
    ],
)
def test_invalid_parameters_name_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


@settings(max_examples=25, deadline=None)
@given(
    beta_min=st.floats(0.01, 2.0),
    span=st.floats(0.0, 30.0),
    t=st.floats(0.01, 1.0),
)
def test_property_vp_variance_preserving(beta_min, span, t):
    # VP: a^2 + s^2 = 1; sub-VP: s <= s_VP; both share a(t).
    vp = sd.VPSDE(beta_min=beta_min, beta_max=beta_min + span)
    sub = sd.SubVPSDE(beta_min=beta_min, beta_max=beta_min + span)
    a, s = float(vp.mean_coeff(t)), float(vp.std(t))
    assert abs(a**2 + s**2 - 1) < 1e-5
    assert float(sub.std(t)) <= s + 1e-7
    assert abs(float(sub.mean_coeff(t)) - a) < 1e-7


@settings(max_examples=25, deadline=None)
@given(
    sigma_min=st.floats(1e-3, 1.0),
    ratio=st.floats(1.5, 1e4),
    t=st.floats(0.0, 1.0),
)
def test_property_ve_std(sigma_min, ratio, t):
    ve = sd.VESDE(sigma_min=sigma_min, sigma_max=sigma_min * ratio)
    sigma = sigma_min * ratio**t
    expected = np.sqrt(max(sigma**2 - sigma_min**2, 0.0))
    np.testing.assert_allclose(float(ve.std(t)), expected, rtol=2e-4, atol=1e-6)


def test_t_from_log_snr_inverts_log_snr(sde):
    ts = jnp.array([1e-5, 1e-3, 0.1, 0.5, 0.9, 1.0])
    back = sde.t_from_log_snr(jax.vmap(sde.log_snr)(ts))
    np.testing.assert_allclose(back, ts, rtol=2e-3)
