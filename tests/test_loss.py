"""Losses at the exact score equal their closed form (Gaussian data).

Each check is a Monte Carlo mean within 4 standard errors of the closed form, with a
guard that the standard error is at most 1.25 % of the value: 4 standard errors are then
at most 5 %, so a weighting lambda(t) off by 10 % (at least 8 standard errors) fails.
Measured with N = 2^17: standard errors 0.4-1.1 % of the value (the largest for the
likelihood weighting without importance sampling); with 2^13 they were 1.5-4 %."""

import math

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import SDES
from scipy import integrate

import scoresde_diffrax as sd


N = 2**17
MAX_REL_SE = 0.0125
MEAN = jnp.array([0.5, -1.0])
STD = 0.7
GAUSS = sd.GaussianMixture(MEAN[None, :], jnp.array([STD]))
X0 = GAUSS.sample(jr.key(1), N)
KEYS = jr.split(jr.key(2), N)


def irreducible(sde, t):
    """E ||s(t) score + z||^2 / D at the exact score, for N(m, v I) data:
    a^2 v / (a^2 v + s^2)."""
    a2v = float(sde.mean_coeff(t)) ** 2 * STD**2
    return a2v / (a2v + float(sde.std(t)) ** 2)


def expected_dsm(sde, loss):
    def f(logt):
        t = math.exp(logt)
        w = 1.0
        if loss.likelihood_weighting:
            w = float(sde.diffusion(t)) ** 2 / float(sde.std(t)) ** 2
        return w * irreducible(sde, t) * t  # dt = t dlogt

    val, _ = integrate.quad(
        f, math.log(loss.eps), math.log(sde.T), limit=200, epsrel=1e-6
    )
    return val / (sde.T - loss.eps)


def per_example(loss, sde, score):
    return jax.vmap(loss.per_example, in_axes=(None, None, 0, 0))(score, sde, X0, KEYS)


LOSSES = {
    "sigma2": sd.DSMLoss(),
    "likelihood": sd.DSMLoss(likelihood_weighting=True, eps=1e-2),
    "likelihood-is": sd.DSMLoss(likelihood_weighting=True, importance_sampling=True),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_dsm_exact_score_matches_closed_form(sde, name):
    loss = LOSSES[name]
    per = np.asarray(per_example(loss, sde, GAUSS.score(sde)), np.float64)
    mean, se = per.mean(), per.std() / math.sqrt(N)
    exact = expected_dsm(sde, loss)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    assert se < MAX_REL_SE * exact  # the check has teeth


def test_importance_sampling_reduces_variance():
    sde = sd.VPSDE()
    plain = per_example(sd.DSMLoss(likelihood_weighting=True), sde, GAUSS.score(sde))
    imp = per_example(LOSSES["likelihood-is"], sde, GAUSS.score(sde))
    assert float(jnp.std(imp)) < 0.5 * float(jnp.std(plain))


def test_dsm_wrong_score_is_larger_and_sum_is_d_times_mean():
    sde = sd.VPSDE()
    exact = sd.DSMLoss()(GAUSS.score(sde), sde, X0, jr.key(3))
    wrong = sd.DSMLoss()(lambda t, x: 0.9 * GAUSS.score(sde)(t, x), sde, X0, jr.key(3))
    assert float(wrong) > float(exact)
    summed = sd.DSMLoss(reduce_mean=False)(GAUSS.score(sde), sde, X0, jr.key(3))
    np.testing.assert_allclose(float(summed), 2 * float(exact), rtol=1e-5)


def test_smld_exact_score():
    sde = SDES["ve"]
    loss = sd.SMLDLoss(num_scales=100)
    per = np.asarray(per_example(loss, sde, GAUSS.score(sde)), np.float64)
    sig = np.exp(np.linspace(np.log(sde.sigma_min), np.log(sde.sigma_max), 100))
    exact = np.mean(STD**2 / (STD**2 + sig**2))
    se = per.std() / math.sqrt(N)
    assert abs(per.mean() - exact) < 4 * se, (per.mean(), exact, se)
    assert se < MAX_REL_SE * exact


def test_ddpm_exact_score():
    sde = SDES["vp"]
    loss = sd.DDPMLoss(num_scales=100)
    per = np.asarray(per_example(loss, sde, GAUSS.score(sde)), np.float64)
    betas = np.linspace(sde.beta_min, sde.beta_max, 100) / 100
    abar = np.cumprod(1 - betas)
    exact = np.mean(abar * STD**2 / (abar * STD**2 + 1 - abar))
    se = per.std() / math.sqrt(N)
    assert abs(per.mean() - exact) < 4 * se, (per.mean(), exact, se)
    assert se < MAX_REL_SE * exact


def test_loss_bad_input():
    with pytest.raises(ValueError, match="importance_sampling"):
        sd.DSMLoss(importance_sampling=True)
    with pytest.raises(ValueError, match="eps"):
        sd.DSMLoss(eps=0.0)
    with pytest.raises(ValueError, match="VESDE"):
        sd.SMLDLoss()(GAUSS.score(SDES["vp"]), SDES["vp"], X0[:4], jr.key(0))
    with pytest.raises(ValueError, match="VPSDE"):
        sd.DDPMLoss()(GAUSS.score(SDES["ve"]), SDES["ve"], X0[:4], jr.key(0))
    with pytest.raises(ValueError, match="num_scales"):
        sd.DDPMLoss(num_scales=1)
