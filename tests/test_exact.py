import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import MIXTURES

import scoresde_diffrax as sd


@pytest.mark.parametrize("name", list(MIXTURES))
def test_score_is_gradient_of_marginal_log_prob(sde, name):
    mix = MIXTURES[name]()
    score = mix.score(sde)
    x = mix.sample(jr.key(0), 16)
    for t in [1e-3, 0.1, 0.5, 1.0]:
        marg = mix.marginal(sde, t)
        xt = sde.mean_coeff(t) * x + sde.std(t) * jr.normal(jr.key(1), x.shape)
        auto = jax.vmap(jax.grad(marg.log_prob))(xt)
        exact = jax.vmap(score, in_axes=(None, 0))(jnp.asarray(t), xt)
        np.testing.assert_allclose(exact, auto, rtol=2e-4, atol=2e-4)


def test_float64_precision():
    with jax.enable_x64(True):
        mix = sd.GaussianMixture(
            jnp.array([[0.0, 1.0], [2.0, -1.0]], dtype=jnp.float64),
            jnp.array([0.3, 0.7], dtype=jnp.float64),
        )
        sde = sd.VPSDE()
        x = jnp.array([0.4, 0.2], dtype=jnp.float64)
        s = mix.score(sde)(jnp.asarray(0.3, jnp.float64), x)
        assert s.dtype == jnp.float64
        auto = jax.grad(mix.marginal(sde, 0.3).log_prob)(x)
        np.testing.assert_allclose(s, auto, rtol=1e-12)


def test_log_prob_normalised_and_stable():
    mix = MIXTURES["2d"]()
    g = jnp.linspace(-8.0, 8.0, 801)
    xx, yy = jnp.meshgrid(g, g, indexing="ij")
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    p = np.exp(np.asarray(jax.vmap(mix.log_prob)(pts), np.float64)).reshape(xx.shape)
    gn = np.asarray(g, np.float64)
    total = np.trapezoid(np.trapezoid(p, gn, axis=1), gn)
    np.testing.assert_allclose(total, 1.0, rtol=1e-4)
    # Far from every mode: finite log-density and score (logsumexp, no underflow).
    far = jnp.array([200.0, -300.0])
    assert bool(jnp.isfinite(mix.log_prob(far)))
    assert bool(jnp.all(jnp.isfinite(mix.score(sd.VPSDE())(0.01, far))))


def test_sample_moments():
    mix = MIXTURES["16d"]()
    x = mix.sample(jr.key(3), 40000)
    se = jnp.sqrt(jnp.diag(mix.covariance()) / x.shape[0])
    assert bool(jnp.all(jnp.abs(x.mean(0) - mix.mean()) < 4.5 * se))
    np.testing.assert_allclose(jnp.cov(x.T), mix.covariance(), atol=0.25)
    report = sd.metrics.mixture_report(mix, x)
    assert abs(report.variance_ratio - 1) < 3 * report.variance_ratio_se
    assert report.weight_z(mix) < 3.5


def test_marginal_is_mixture_of_pushed_components(sde):
    mix = MIXTURES["2d"]()
    t = 0.4
    m = mix.marginal(sde, t)
    a, s = sde.mean_coeff(t), sde.std(t)
    np.testing.assert_allclose(m.means, a * mix.means, rtol=1e-6)
    np.testing.assert_allclose(m.stds**2, a**2 * mix.stds**2 + s**2, rtol=1e-5)
    np.testing.assert_allclose(m.weights, mix.weights)


@pytest.mark.parametrize(
    "means, stds, weights, match",
    [
        (jnp.zeros((2,)), jnp.ones((2,)), None, "means"),
        (jnp.zeros((2, 3)), jnp.ones((3,)), None, "stds"),
        (jnp.zeros((2, 3)), -jnp.ones((2,)), None, "stds"),
        (jnp.zeros((2, 3)), jnp.ones((2,)), jnp.array([1.0, 0.0]), "weights"),
        (jnp.zeros((2, 3)), jnp.ones((2,)), jnp.array([1.0, 1.0, 1.0]), "weights"),
        (jnp.full((2, 3), jnp.nan), jnp.ones((2,)), None, "means"),
    ],
)
def test_invalid_mixture(means, stds, weights, match):
    with pytest.raises(ValueError, match=match):
        sd.GaussianMixture(means, stds, weights)


def test_weights_normalised():
    mix = sd.GaussianMixture(jnp.zeros((2, 1)), jnp.ones((2,)), jnp.array([1.0, 3.0]))
    np.testing.assert_allclose(mix.weights, [0.25, 0.75])
