"""Imputation (inpainting) and colorization with `sd.Impute`, against the exact
posterior of an 8-D mixture observed on four coordinates, against a hand-written loop
of the paper's algorithm, and colorization round trips."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import inverse_mixture

import scoresde_diffrax as sd


# The problem of benchmarks/bench_inverse.py: well separated in the unobserved
# coordinates 4-7; on the observed 0-3, components 0 and 1 overlap around the
# observation and component 2 is far. Exact posterior weights 0.473 / 0.527 / 0
# (prior 0.3 / 0.3 / 0.4).
MASK = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
X_OBS = jnp.array([0.3, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0])
N = 1500
SDES = {"vp": sd.VPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=20.0)}


def _problem():
    mix = inverse_mixture()
    return mix, mix.condition_on_coordinates(MASK, X_OBS)


def _errors(post, x):
    """Sample weights, their total variation from the exact ones, and for the
    components of weight >= 0.05 the largest |mean error| / std and the mean
    within-component variance ratio."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(jax.vmap(post.classify)(jnp.asarray(x, jnp.float32)))
    w_true = np.asarray(post.weights, np.float64)
    w = np.bincount(labels, minlength=w_true.size) / len(x)
    mean_err, ratios = 0.0, []
    for c in np.flatnonzero(w_true >= 0.05):
        xc = x[labels == c]
        s = np.asarray(post.stds[c], np.float64)
        mean_err = max(mean_err, float(np.max(np.abs(xc.mean(0) - post.means[c]) / s)))
        ratios.append(xc.var(0, ddof=1) / s**2)
    return w, 0.5 * float(np.abs(w - w_true).sum()), mean_err, float(np.mean(ratios))


def _pc():
    return sd.PredictorCorrector(
        sd.ReverseDiffusion(), sd.Langevin(snr=0.16, batch_norm=True)
    )


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_impute_against_exact_posterior(sde_name):
    """The paper's PC sampler with replacement, 100 steps: the known coordinates are
    the observation; the within-component means and variances are those of the exact
    posterior; the component weights carry the replacement method's bias, measured
    (benchmarks/bench_inverse.py, README) at total variation 0.02-0.06 for PC
    (ignoring the observation: 0.40)."""
    sde = SDES[sde_name]
    mix, post = _problem()
    obs = jnp.broadcast_to(X_OBS, (N, 8))
    out = sd.sample(
        jr.key(0),
        sde,
        mix.score(sde),
        (N, 8),
        solver=sd.Impute(_pc(), obs, MASK),
        num_steps=100,
    )
    x = np.asarray(out.samples)
    np.testing.assert_array_equal(x[:, MASK], np.broadcast_to(X_OBS[MASK], (N, 4)))
    assert int(out.stats["num_score_evals"]) == 200
    w, tv, mean_err, var_ratio = _errors(post, x[:, ~MASK])
    assert tv < 0.09, (w, tv)
    assert w[2] < 0.07, w
    assert mean_err < 0.15, mean_err
    assert abs(var_ratio - 1) < 0.06, var_ratio


def _paper_loop(key, sde, score, obs, mask, num_steps):
    """Song et al.'s imputation written out: the reverse-diffusion predictor, then the
    known coordinates replaced by a(t') y + s(t') z; noise-free last step."""
    ts = np.linspace(float(sde.T), sde.default_eps, num_steps + 1)
    k0, key = jr.split(key)
    z0 = jr.normal(k0, obs.shape)
    x = sde.prior_std * z0
    x = jnp.where(mask, sde.mean_coeff(ts[0]) * obs + sde.std(ts[0]) * z0, x)

    def step(x, inp):
        t, t_next, k, last = inp
        kp, kr = jr.split(k)
        r, v = sde.transition(t_next, t)
        s = jax.vmap(score, in_axes=(None, 0))(t, x)
        noise = jnp.where(last, 0.0, jnp.sqrt(v)) * jr.normal(kp, x.shape)
        x = (2 - r) * x + v * s + noise
        fresh = sde.mean_coeff(t_next) * obs + sde.std(t_next) * jr.normal(kr, x.shape)
        return jnp.where(mask, jnp.where(last, obs, fresh), x), None

    last = np.arange(num_steps) == num_steps - 1
    keys = jr.split(key, num_steps)
    x, _ = jax.lax.scan(step, x, (ts[:-1], ts[1:], keys, last))
    return x


def test_impute_matches_the_papers_algorithm_written_out():
    """Impute(ReverseDiffusion()) samples what a hand-written loop of the algorithm
    samples (component weights within sampling error; both far from the prior's)."""
    sde = SDES["vp"]
    mix, post = _problem()
    obs = jnp.broadcast_to(X_OBS, (N, 8))
    x = sd.sample(
        jr.key(1),
        sde,
        mix.score(sde),
        (N, 8),
        solver=sd.Impute(sd.ReverseDiffusion(), obs, MASK),
        num_steps=100,
    ).samples
    score = mix.score(sde)
    ref = jax.jit(lambda k: _paper_loop(k, sde, score, obs, jnp.asarray(MASK), 100))(
        jr.key(2)
    )
    w, *_ = _errors(post, np.asarray(x)[:, ~MASK])
    w_ref, *_ = _errors(post, np.asarray(ref)[:, ~MASK])
    se = np.sqrt(2 * np.maximum(w_ref * (1 - w_ref), 0.01) / N)
    assert np.all(np.abs(w - w_ref) < 4 * se), (w, w_ref)


def test_impute_with_an_ode_sampler_holds_the_noise_fixed():
    """DDIM (probability-flow ODE): deterministic; the known coordinates end at
    a(eps) y + s(eps) z0; the far component gets less than its prior weight"""
    sde = SDES["vp"]
    mix, post = _problem()
    n = 500
    obs = jnp.broadcast_to(X_OBS, (n, 8))
    run = lambda: (
        sd.sample(  # noqa: E731
            jr.key(3),
            sde,
            mix.score(sde),
            (n, 8),
            solver=sd.Impute(sd.DDIM(), obs, MASK),
            num_steps=50,
        ).samples
    )
    x = np.asarray(run())
    np.testing.assert_array_equal(x, np.asarray(run()))
    eps = sde.default_eps
    dev = np.abs(x[:, MASK] - float(sde.mean_coeff(eps)) * np.asarray(X_OBS[MASK]))
    assert dev.max() < 5 * float(sde.std(eps))
    w, *_ = _errors(post, x[:, ~MASK])
    assert w[2] < 0.3, w  # measured 0.23 (prior weight 0.4, exact 0)


def _image_mixture(shape):
    """A 2-component mixture over images of `shape`, as a score on images."""
    d = int(np.prod(shape))
    means = jnp.stack([jnp.linspace(-0.8, 0.8, d), jnp.linspace(0.8, -0.8, d)])
    return sd.GaussianMixture(means, jnp.array([0.3, 0.4]))


def test_colorization_round_trip():
    """The grey level (mean of the channels) of every result is the observation's,
    with the paper's orthogonal decoupling and with another invertible one."""
    shape = (3, 4, 4)
    sde = SDES["vp"]
    mix = _image_mixture(shape)
    flat = mix.score(sde)
    score = lambda t, x: flat(t, x.reshape(-1)).reshape(x.shape)  # noqa: E731
    truth = mix.sample(jr.key(4), 6).reshape(6, *shape)
    grey = truth.mean(1)
    M = sd.grey_decoupling(3)
    np.testing.assert_allclose(M @ M.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(M[0], np.full(3, 1 / np.sqrt(3)), atol=1e-6)
    other = jnp.array([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [0.5, 0.5, -2.0]])
    for dec in (None, other):
        solver = sd.colorization(sd.ReverseDiffusion(), grey, decoupling=dec)
        x = sd.sample(jr.key(5), sde, score, (6, *shape), solver=solver, num_steps=30)
        np.testing.assert_allclose(x.samples.mean(1), grey, atol=1e-5)
        assert float(jnp.std(x.samples - x.samples.mean(1, keepdims=True))) > 0.05


def test_bad_inverse_input_names_the_argument():
    sde = SDES["vp"]
    mix, _ = _problem()
    obs = jnp.zeros((4, 8))
    with pytest.raises(ValueError, match="`mask`.*shape"):
        sd.Impute(sd.ReverseDiffusion(), obs, np.ones(7, bool))
    with pytest.raises(ValueError, match="`mask`.*binary"):
        sd.Impute(sd.ReverseDiffusion(), obs, np.full(8, 0.5))
    with pytest.raises(ValueError, match="`observation`"):
        sd.Impute(sd.ReverseDiffusion(), jnp.zeros(8), MASK)
    with pytest.raises(ValueError, match="`decoupling`"):
        sd.Impute(
            sd.ReverseDiffusion(),
            jnp.zeros((4, 2, 3)),
            np.ones((2, 3), bool),
            decoupling=jnp.eye(3),
        )
    with pytest.raises(ValueError, match="`decoupling`.*invertible"):
        sd.Impute(
            sd.ReverseDiffusion(),
            jnp.zeros((4, 2, 3)),
            np.ones((2, 3), bool),
            decoupling=jnp.ones((2, 2)),
        )
    with pytest.raises(ValueError, match="`decoupling`.*grey"):
        sd.colorization(
            sd.ReverseDiffusion(), jnp.zeros((2, 4, 4)), decoupling=jnp.eye(3)
        )
    kw = dict(solver=sd.Impute(sd.ReverseDiffusion(), obs, MASK), num_steps=2)
    with pytest.raises(ValueError, match="`observation`.*4 entries.*5 samples"):
        sd.sample(jr.key(0), sde, mix.score(sde), (5, 8), **kw)
    solver = sd.Impute(sd.ReverseDiffusion(), jnp.zeros((4, 6)), np.ones(6, bool))
    with pytest.raises(ValueError, match="`observation`.*\\(4, 8\\)"):
        sd.sample(jr.key(0), sde, mix.score(sde), (4, 8), solver=solver, num_steps=2)
    with pytest.raises(ValueError, match="`solver`"):
        sd.sample(
            jr.key(0),
            sde,
            mix.score(sde),
            (4, 8),
            solver=sd.Impute(dfx.Tsit5(), obs, MASK),
            stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3),
        )
