import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import linalg as scipy_linalg

import scoresde_diffrax as sd


def test_sliced_wasserstein_gaussian_shift():
    # For N(0, I) vs N(m, I), every 1-D projection is a shift by theta.m, so
    # SW_2^2 = E[(theta.m)^2] = |m|^2 / D exactly; estimate with large samples.
    d, n = 4, 5000
    m = jnp.array([1.0, -2.0, 0.5, 0.0])
    x = jr.normal(jr.key(0), (n, d))
    y = jr.normal(jr.key(1), (n, d)) + m[None, :]
    sw = sd.metrics.sliced_wasserstein(jr.key(2), x, y, num_projections=2000)
    # Monte-Carlo error of 2000 projections: about 2.6% (1 SE) here.
    np.testing.assert_allclose(float(sw) ** 2, float(m @ m) / d, rtol=0.08)
    floor = sd.metrics.sliced_wasserstein(jr.key(2), x, jr.normal(jr.key(3), (n, d)))
    assert float(floor) < 0.05 * float(sw)


def test_sliced_wasserstein_bad_input():
    x = jnp.zeros((10, 2))
    with pytest.raises(ValueError, match="shapes"):
        sd.metrics.sliced_wasserstein(jr.key(0), x, jnp.zeros((10, 3)))
    with pytest.raises(ValueError, match="num_projections"):
        sd.metrics.sliced_wasserstein(jr.key(0), x, x, num_projections=0)


def _with_moments(x, mean, cov):
    """`x` moved to have exactly this sample mean and (ddof=1) covariance."""
    x = x - x.mean(0)
    white = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T
    return mean + white @ np.linalg.cholesky(cov).T


def test_frechet_distance_non_commuting_covariances():
    # Covariances that do not commute: tr((S_a S_b)^(1/2)) differs from
    # tr(S_a^(1/2) S_b^(1/2)) and from elementwise square roots. Samples with exactly
    # these moments make the distance exact; scipy's sqrtm is the reference.
    rs = np.random.RandomState(1)
    d = 5
    m_a, m_b = rs.randn(2, d)
    g_a, g_b = rs.randn(2, d, d)
    s_a, s_b = g_a @ g_a.T + 0.5 * np.eye(d), g_b @ g_b.T + 0.5 * np.eye(d)
    assert np.abs(s_a @ s_b - s_b @ s_a).max() > 1.0
    a = _with_moments(rs.randn(300, d), m_a, s_a)
    b = _with_moments(rs.randn(500, d), m_b, s_b)
    cross = np.real(np.trace(scipy_linalg.sqrtm(s_a @ s_b)))
    exact = np.sum((m_a - m_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * cross
    assert sd.metrics.frechet_distance(a, b) == pytest.approx(exact, rel=1e-8)
    assert sd.metrics.frechet_distance(b, a) == pytest.approx(exact, rel=1e-8)
    assert sd.metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-7)
