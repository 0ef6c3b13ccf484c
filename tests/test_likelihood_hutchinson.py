"""Hutchinson's estimator in `log_likelihood`: forward and reverse mode agree, and on
thousands of points of an exact mixture its mean error is zero within its standard
error, with the spread of the paper's reverse-mode estimator."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import MIXTURES, SDES

import scoresde_diffrax as sd


EPS = 1e-5


def _points(n, key=0):
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    m_eps = mix.marginal(sde, EPS)
    x = m_eps.sample(jr.key(key), n)
    exact = np.asarray(jax.vmap(m_eps.log_prob)(x), np.float64)
    return sde, mix, x, exact, mix.marginal(sde, sde.T).log_prob


@pytest.mark.parametrize("num_probes", [1, 3])
def test_forward_and_reverse_mode_give_the_same_estimate(num_probes):
    fn = lambda z: jnp.tanh(z) * jnp.array([1.0, -2.0, 0.5]) + jnp.sin(z[::-1])
    x = jnp.array([0.3, -1.2, 0.7])
    fwd = sd.Hutchinson("gaussian", num_probes=num_probes)
    rev = sd.Hutchinson("gaussian", num_probes=num_probes, forward_mode=False)
    probes = fwd.init(jr.key(0), x)
    (out_f, div_f), (out_r, div_r) = fwd(fn, x, probes), rev(fn, x, probes)
    jac = jax.jacfwd(fn)(x)
    manual = jnp.mean(jnp.einsum("mi,ij,mj->m", probes, jac, probes))
    np.testing.assert_allclose(out_f, fn(x), rtol=1e-6)
    np.testing.assert_allclose(out_r, fn(x), rtol=1e-6)
    np.testing.assert_allclose(div_f, manual, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(div_r, manual, rtol=1e-5, atol=1e-6)


def test_forward_mode_must_be_a_bool():
    # A ValueError naming the field (the run-time type hook, when on, raises first).
    with pytest.raises(Exception, match="forward_mode"):
        sd.Hutchinson(forward_mode="yes")


def test_hutchinson_mean_error_is_zero_on_4096_points():
    # Probes drawn once per example (fold_in(key, i)) and fixed along the path: the
    # integrated estimate is unbiased, so over 4096 points the mean error against the
    # exact log-density is zero within two standard errors. The reference is the
    # paper's way: reverse-mode products, other probes, and one RMS error norm over
    # the whole state (SciPy's); its errors have the same spread.
    sde, mix, x, exact, log_pT = _points(4096)
    score = mix.score(sde)
    ours = sd.log_likelihood(jr.key(1), sde, score, x, prior_log_prob=log_pT)
    paper = sd.log_likelihood(
        jr.key(2),
        sde,
        score,
        x,
        divergence=sd.Hutchinson("rademacher", forward_mode=False),
        stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-5),
        prior_log_prob=log_pT,
    )
    err = np.asarray(ours.log_prob, np.float64) - exact
    ref = np.asarray(paper.log_prob, np.float64) - exact
    for e in (err, ref):
        se = e.std(ddof=1) / np.sqrt(e.size)
        assert abs(e.mean()) < 2 * se, (e.mean(), se)
    # The test has power: the estimator's noise is far above the solver's error.
    assert err.std() > 0.1, err.std()
    # The same estimator: the spreads agree within their sampling error.
    mae, mae_ref = np.mean(np.abs(err)), np.mean(np.abs(ref))
    assert 0.9 < mae / mae_ref < 1.1, (mae, mae_ref)
    assert 0.8 < err.var() / ref.var() < 1.25, (err.var(), ref.var())
