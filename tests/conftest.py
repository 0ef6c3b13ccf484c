import jax
import jax.numpy as jnp
import pytest

import scoresde_diffrax as sd


# Make shape bugs loud: no silent rank promotion inside the package.
jax.config.update("jax_numpy_rank_promotion", "raise")


SDES = {
    "vp": sd.VPSDE(),
    "subvp": sd.SubVPSDE(),
    "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0),
}


@pytest.fixture(params=list(SDES), ids=list(SDES))
def sde(request):
    return SDES[request.param]


def mixture_2d() -> sd.GaussianMixture:
    """Three well-separated modes, unequal isotropic widths and weights."""
    means = jnp.array([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]])
    stds = jnp.array([0.5, 0.8, 0.6])
    return sd.GaussianMixture(means, stds, jnp.array([0.2, 0.5, 0.3]))


def mixture_16d() -> sd.GaussianMixture:
    """Four modes in 16-D with diagonal (per-dimension) standard deviations."""
    key = jax.random.key(1234)
    km, ks = jax.random.split(key)
    means = 3.0 * jax.random.normal(km, (4, 16))
    stds = jax.random.uniform(ks, (4, 16), minval=0.4, maxval=1.0)
    return sd.GaussianMixture(means, stds, jnp.array([0.1, 0.2, 0.3, 0.4]))


MIXTURES = {"2d": mixture_2d, "16d": mixture_16d}
