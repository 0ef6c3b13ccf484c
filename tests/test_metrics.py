import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

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
