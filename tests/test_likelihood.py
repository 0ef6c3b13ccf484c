import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import MIXTURES, SDES
from jax.flatten_util import ravel_pytree

import scoresde_diffrax as sd


EPS = 1e-5
EXACT = sd.ExactDivergence()


def _case(sde_name, mix_name, n, key=0):
    """Points from the exact p_eps, their exact log-density, and the exact log p_T."""
    sde, mix = SDES[sde_name], MIXTURES[mix_name]()
    m_eps = mix.marginal(sde, EPS)
    x = m_eps.sample(jr.key(key), n)
    exact = jax.vmap(m_eps.log_prob)(x)
    return sde, mix, x, exact, mix.marginal(sde, sde.T).log_prob


# --------------------------------------------------------------------------------------
# Accuracy against the exact log-density
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mix_name", list(MIXTURES))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_exact_divergence_matches_exact_log_density(sde_name, mix_name):
    sde, mix, x, exact, log_pT = _case(sde_name, mix_name, 64)
    # The exact log p_T at T isolates the solve's error from the prior mismatch.
    out = sd.log_likelihood(
        jr.key(1), sde, mix.score(sde), x, divergence=EXACT, prior_log_prob=log_pT
    )
    assert out.log_prob.shape == (64,) and out.latent.shape == x.shape
    err_per_dim = float(jnp.mean(jnp.abs(out.log_prob - exact))) / mix.dim
    assert err_per_dim <= 1e-3, err_per_dim  # the target (measured ~1e-6)
    assert err_per_dim <= 5e-5, err_per_dim  # what Tsit5 at 1e-5 actually gives
    # The prior's term is reported, and the default prior only changes that term.
    np.testing.assert_allclose(
        out.prior_log_prob, jax.vmap(log_pT)(out.latent), rtol=1e-6
    )
    assert int(out.stats["num_score_evals"]) > 6 * int(out.stats["num_steps"]) - 6


@pytest.mark.parametrize("sde_name", list(SDES))
def test_float32_exact_divergence_is_precise(sde_name):
    # Narrow, close modes (stds 0.2-0.5) and a batch of 512: a vmapped forward-mode
    # trace returned, on XLA:CPU in float32, traces off by up to 10 % for examples at
    # the end of large batches (4e-4 nats per dimension on average, 7e-5 here); the
    # looped JVPs are exact to round-off (measured 1.6e-6 VP, 1.1e-6 sub-VP, 1.0e-5 VE
    # per dimension, the solve's own error at rtol = atol = 1e-5 as in float64).
    sde = SDES[sde_name]
    km, ks, kw = jr.split(jr.key(77), 3)
    mix = sd.GaussianMixture(
        3.0 * jr.normal(km, (5, 16)),
        jr.uniform(ks, (5, 16), minval=0.2, maxval=0.5),
        jr.uniform(kw, (5,), minval=0.5, maxval=1.5),
    )
    m_eps = mix.marginal(sde, EPS)
    x = m_eps.sample(jr.key(0), 512)
    assert x.dtype == jnp.float32
    out = sd.log_likelihood(
        jr.key(1),
        sde,
        mix.score(sde),
        x,
        divergence=EXACT,
        prior_log_prob=mix.marginal(sde, sde.T).log_prob,
    )
    err = jnp.abs(out.log_prob - jax.vmap(m_eps.log_prob)(x)) / mix.dim
    assert float(jnp.mean(err)) <= 2e-5, float(jnp.mean(err))
    assert float(jnp.max(err)) <= 2e-4, float(jnp.max(err))


def test_ve_default_prior_is_the_exact_gaussian():
    # VE's default prior is the paper's N(0, sigma_max^2 I) (the exact p_T of data at
    # the origin has variance sigma_max^2 - sigma_min^2: take sigma_min large enough to
    # tell them apart), with its normalising constant over every pixel of an image.
    from scipy import stats as scipy_stats

    sde = sd.VESDE(sigma_min=0.5, sigma_max=5.0)
    x = 7.0 * jr.normal(jr.key(0), (6, 1, 3, 4))
    want = scipy_stats.norm.logpdf(np.asarray(x, np.float64), scale=5.0)
    got = jax.vmap(sde.prior_log_prob)(x)
    np.testing.assert_allclose(got, want.sum((1, 2, 3)), rtol=1e-6)
    # The samples it draws are the same Gaussian's.
    z = np.asarray(
        jax.vmap(lambda k: sde.prior_sample(k, (4,)))(jr.split(jr.key(1), 5000))
    )
    assert scipy_stats.kstest(z.ravel(), scipy_stats.norm(scale=5.0).cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    "divergence",
    [sd.Hutchinson("rademacher"), sd.Hutchinson("gaussian", num_probes=2)],
    ids=["rademacher", "gaussian-2probes"],
)
def test_hutchinson_is_unbiased(divergence):
    sde, mix, x, exact, log_pT = _case("vp", "16d", 256, key=3)
    out = sd.log_likelihood(
        jr.key(4), sde, mix.score(sde), x, divergence=divergence, prior_log_prob=log_pT
    )
    err = np.asarray(out.log_prob - exact, dtype=np.float64)
    se = err.std(ddof=1) / math.sqrt(err.size)
    assert abs(err.mean()) < 3 * se, (err.mean(), se)
    # The test has power: the estimator's noise is far above the solver's error.
    assert err.std() > 0.05, err.std()


def test_divergence_estimators_on_a_linear_map():
    a = jr.normal(jr.key(0), (2, 3, 2, 3))
    fn = lambda x: jnp.einsum("ijkl,kl->ij", a, x)
    x = jr.normal(jr.key(1), (2, 3))
    out, div = EXACT(fn, x, EXACT.init(jr.key(2), x))
    np.testing.assert_allclose(out, fn(x), rtol=1e-6)
    np.testing.assert_allclose(div, jnp.trace(a.reshape(6, 6)), rtol=1e-5)
    for dist in ("rademacher", "gaussian"):
        est = sd.Hutchinson(dist, num_probes=5)
        probes = est.init(jr.key(3), x)
        assert probes.shape == (5, 2, 3)
        out, div = est(fn, x, probes)
        v = probes.reshape(5, 6)
        manual = jnp.mean(jnp.einsum("mi,ij,mj->m", v, a.reshape(6, 6), v))
        np.testing.assert_allclose(div, manual, rtol=1e-5)
        np.testing.assert_allclose(out, fn(x), rtol=1e-6)
    # Rademacher with one probe is exact on a diagonal map.
    diag = lambda x: jnp.array([2.0, -3.0, 0.5]) * x
    x3 = jnp.ones(3)
    _, div = sd.Hutchinson()(diag, x3, sd.Hutchinson().init(jr.key(5), x3))
    np.testing.assert_allclose(div, -0.5, rtol=1e-6)


# --------------------------------------------------------------------------------------
# Batched and per-example solves; counts; no retracing
# --------------------------------------------------------------------------------------


def test_batch_max_rms_norm():
    err = (jnp.zeros((4, 3)).at[2].set(1.0), jnp.zeros(4).at[2].set(1.0))
    # Example 2 has RMS 1; the others 0. The whole-state RMS would be 0.5.
    np.testing.assert_allclose(sd.batch_max_rms_norm(err), 1.0, rtol=1e-6)
    np.testing.assert_allclose(
        dfx.PIDController(rtol=1.0, atol=1.0).norm(err), 0.5, rtol=1e-6
    )
    # A leaf without the batch axis is shared by every example: 3 own components
    # (zero error) and 2 shared ones (error 1) give sqrt(2 / 5).
    np.testing.assert_allclose(
        sd.batch_max_rms_norm((jnp.zeros((4, 3)), jnp.ones(2))), 0.4**0.5, rtol=1e-6
    )


def test_per_example_solves_do_not_depend_on_the_batch():
    sde, mix, x, exact, _ = _case("vp", "2d", 16)
    score = mix.score(sde)
    div = sd.Hutchinson("rademacher")
    a = sd.log_likelihood(jr.key(0), sde, score, x, divergence=div, per_example=True)
    b = sd.log_likelihood(
        jr.key(0), sde, score, x[:4], divergence=div, per_example=True
    )
    # Float32 round-off only (reductions may fuse differently for another batch size,
    # e.g. on GPU).
    np.testing.assert_allclose(a.log_prob[:4], b.log_prob, rtol=1e-5, atol=1e-5)
    assert a.stats["num_steps"].shape == (16,)
    assert a.stats["num_score_evals"].shape == (16,)
    assert len(np.unique(np.asarray(a.stats["num_steps"]))) > 1  # own step sizes
    # The batched solve (max-norm control) agrees within the tolerance; the probes of
    # example i come from fold_in(key, i) in both.
    c = sd.log_likelihood(jr.key(0), sde, score, x, divergence=div)
    assert c.stats["num_steps"].shape == ()
    assert int(c.stats["num_steps"]) >= int(jnp.max(a.stats["num_steps"])) - 2
    np.testing.assert_allclose(c.log_prob, a.log_prob, atol=2e-3)


class _CountingCalls(eqx.Module):
    inner: sd.MixtureScore
    counter: list = eqx.field(static=True)

    def __call__(self, t, x):
        jax.debug.callback(lambda: self.counter.append(1))
        return self.inner(t, x)


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(solver=dfx.Heun(), num_steps=7),
        dict(divergence=sd.Hutchinson("gaussian", num_probes=3)),
        dict(divergence=EXACT, solver=dfx.Dopri5()),
    ],
    ids=["tsit5-adaptive", "heun-fixed", "hutchinson-3probes", "exact-dopri5"],
)
def test_num_score_evals_is_exact(kw):
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    counter = []
    score = _CountingCalls(mix.score(sde), counter)
    out = sd.log_likelihood(jr.key(0), sde, score, mix.sample(jr.key(1), 1), **kw)
    jax.effects_barrier()
    # One VJP (forward pass + vectorised backward passes) = one score evaluation.
    assert int(out.stats["num_score_evals"]) == len(counter), out.stats


class _CountingTraces(eqx.Module):
    inner: sd.MixtureScore
    log: list = eqx.field(static=True)

    def __call__(self, t, x):
        self.log.append(1)
        return self.inner(t, x)


def test_no_retrace_on_repeated_calls():
    sde, mix, x, _, _ = _case("subvp", "2d", 8)
    score = _CountingTraces(mix.score(sde), [])
    sd.log_likelihood(jr.key(0), sde, score, x)
    traced = len(score.log)
    sd.log_likelihood(jr.key(1), sde, score, x + 0.1)
    other = eqx.tree_at(lambda s: s.inner.mixture.means, score, mix.means + 1.0)
    sd.log_likelihood(jr.key(2), sde, other, x)
    assert len(score.log) == traced


# --------------------------------------------------------------------------------------
# Gradients through the solve
# --------------------------------------------------------------------------------------


class _TinyScore(eqx.Module):
    mlp: eqx.nn.MLP

    def __call__(self, t, x):
        return self.mlp(jnp.concatenate([jnp.reshape(t, (1,)), x])) - x


@pytest.mark.parametrize(
    "adjoint",
    [dfx.RecursiveCheckpointAdjoint(), dfx.BacksolveAdjoint()],
    ids=["checkpoint", "backsolve"],
)
def test_gradient_matches_finite_differences(adjoint):
    with jax.enable_x64(True):
        sde = sd.VPSDE()
        net = _TinyScore(eqx.nn.MLP(3, 2, 8, 1, activation=jnp.tanh, key=jr.key(0)))
        x = jr.normal(jr.key(1), (4, 2), dtype=jnp.float64)
        params, static = eqx.partition(net, eqx.is_inexact_array)
        flat, unravel = ravel_pytree(params)

        def loss(theta):
            return sd.log_likelihood(
                jr.key(0),
                sde,
                eqx.combine(unravel(theta), static),
                x,
                divergence=EXACT,
                rtol=1e-9,
                atol=1e-9,
                adjoint=adjoint,
            ).log_prob.mean()

        direction = jr.normal(jr.key(3), flat.shape, flat.dtype)
        directional = jnp.vdot(jax.grad(loss)(flat), direction)
        h = 1e-4
        fd = (loss(flat + h * direction) - loss(flat - h * direction)) / (2 * h)
        # Measured: relative differences ~4e-7 for both adjoints (FD error ~h^2).
        np.testing.assert_allclose(directional, fd, rtol=1e-5)


# --------------------------------------------------------------------------------------
# Encode / decode / interpolate
# --------------------------------------------------------------------------------------


def test_encode_decode_round_trip_and_interpolation():
    sde, mix, x, _, _ = _case("vp", "2d", 64)
    score = mix.score(sde)
    z = sd.encode(sde, score, x)
    assert z.shape == x.shape
    # Latents are prior-like: VP's prior is N(0, I).
    assert 0.7 < float(jnp.std(z)) < 1.3
    np.testing.assert_allclose(sd.decode(sde, score, z), x, atol=1e-3)
    # encode is log_likelihood's latent.
    lat = sd.log_likelihood(jr.key(1), sde, score, x, divergence=EXACT).latent
    np.testing.assert_allclose(z, lat, atol=1e-3)

    alphas = jnp.linspace(0.0, 1.0, 5)
    path = sd.interpolate_latents(z[0], z[1], alphas)
    assert path.shape == (5, 2)
    np.testing.assert_allclose(path[0], z[0], atol=1e-5)
    np.testing.assert_allclose(path[-1], z[1], atol=1e-5)
    # slerp keeps the norm between two latents of equal norm (a line would not).
    z1 = z[1] * jnp.linalg.norm(z[0]) / jnp.linalg.norm(z[1])
    norms = jnp.linalg.norm(sd.interpolate_latents(z[0], z1, alphas), axis=1)
    np.testing.assert_allclose(norms, jnp.linalg.norm(z[0]), rtol=1e-5)
    assert sd.decode(sde, score, path, num_steps=50, solver=dfx.Heun()).shape == (5, 2)


# --------------------------------------------------------------------------------------
# Dequantisation and bits per dimension
# --------------------------------------------------------------------------------------


def test_bits_per_dim_offsets_are_the_log_jacobian():
    lp = jnp.array([-3.0, 1.5])
    x = jnp.full((2, 4), 0.25)
    d = 4
    np.testing.assert_allclose(
        sd.bits_per_dim(lp, x), -lp / (d * math.log(2)) + 8, rtol=1e-6
    )
    np.testing.assert_allclose(
        sd.bits_per_dim(lp, x, data_range=(-1.0, 1.0)),
        -lp / (d * math.log(2)) + 7,
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        sd.bits_per_dim(lp, x, data_range=(0.0, 4.0), num_bits=5),
        -lp / (d * math.log(2)) + 3,
        rtol=1e-6,
    )


def test_bits_per_dim_of_dequantised_gaussian_data_matches_closed_form():
    """8-bit data, dequantised to [-1, 1]; the model is a Gaussian N(mu, s0^2) (exact
    score). For pixel k (bin centre c, width w), E_u[-log N(c + w(u - 1/2); m, v)] =
    D/2 log(2 pi v) + sum((c - m)^2 + w^2/12) / (2 v), so E_u[bpd] is closed form."""
    sde = SDES["vp"]
    lo, hi, n_bits, n = -1.0, 1.0, 8, 256
    mu, s0 = jnp.array([0.1, -0.2, 0.3]), 0.3
    model = sd.GaussianMixture(mu[None], jnp.array([s0]))
    w = (hi - lo) / 2**n_bits
    y = model.sample(jr.key(0), n)
    k = jnp.clip(jnp.floor((y - lo) / w), 0, 2**n_bits - 1).astype(jnp.int32)
    y_deq = sd.dequantize(jr.key(1), k, data_range=(lo, hi))
    assert float(y_deq.min()) >= lo and float(y_deq.max()) < hi
    np.testing.assert_array_equal(jnp.floor((y_deq - lo) / w), k)

    out = sd.log_likelihood(
        jr.key(2),
        sde,
        model.score(sde),
        y_deq,
        divergence=EXACT,
        prior_log_prob=model.marginal(sde, sde.T).log_prob,
    )
    bpd = sd.bits_per_dim(out.log_prob, y_deq, data_range=(lo, hi))

    p_eps = model.marginal(sde, EPS)
    m, v = p_eps.means[0], p_eps.stds[0] ** 2
    c = lo + w * (k + 0.5)
    d = 3
    nats = 0.5 * jnp.sum(jnp.log(2 * jnp.pi * v)) + jnp.sum(
        ((c - m[None]) ** 2 + w**2 / 12) / (2 * v[None]), axis=1
    )
    closed = nats / (d * math.log(2)) + n_bits - math.log2(hi - lo)
    diff = np.asarray(bpd - closed, dtype=np.float64)
    se = diff.std(ddof=1) / math.sqrt(n)
    assert abs(diff.mean()) < 3 * se + 1e-4, (diff.mean(), se)
    # Point by point the solve matches the exact density (to ~1e-5 bits).
    exact_bpd = sd.bits_per_dim(
        jax.vmap(p_eps.log_prob)(y_deq), y_deq, data_range=(lo, hi)
    )
    np.testing.assert_allclose(bpd, exact_bpd, atol=1e-4)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_nan_score_is_reported():
    sde = SDES["vp"]

    def bad(t, x):
        return jnp.where(t > 0.5, jnp.nan, -x)

    x = jnp.ones((4, 2))
    with pytest.raises(Exception, match="non-finite"):
        sd.log_likelihood(
            jr.key(0), sde, bad, x, divergence=EXACT, num_steps=8
        ).log_prob.block_until_ready()
    # Adaptive: diffrax rejects every NaN step until `max_steps`, and says so.
    with pytest.raises(Exception, match="max_steps"):
        sd.log_likelihood(
            jr.key(0), sde, bad, x, divergence=EXACT, max_steps=64
        ).log_prob.block_until_ready()


def test_bad_inputs_name_the_argument():
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    score = mix.score(sde)
    key, x = jr.key(0), jnp.zeros((4, 2))
    with pytest.raises(ValueError, match="`x`.*shape"):
        sd.log_likelihood(key, sde, score, jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="`x`.*batch"):
        sd.log_likelihood(key, sde, score, jnp.zeros(2))
    with pytest.raises(ValueError, match="`x` must be finite"):
        sd.log_likelihood(key, sde, score, x.at[1, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="`x` must be a floating"):
        sd.log_likelihood(key, sde, score, jnp.zeros((4, 2), jnp.int32))
    for name in ("rtol", "atol"):
        for bad in (0.0, -1e-5):
            with pytest.raises(ValueError, match=f"`{name}`"):
                sd.log_likelihood(key, sde, score, x, **{name: bad})
    with pytest.raises(ValueError, match="`eps`"):
        sd.log_likelihood(key, sde, score, x, eps=0.0)
    with pytest.raises(ValueError, match="`num_steps`"):
        sd.log_likelihood(key, sde, score, x, num_steps=0)
    with pytest.raises(ValueError, match="`solver`.*adaptive"):
        sd.log_likelihood(key, sde, score, x, solver=dfx.Euler())
    with pytest.raises(ValueError, match="`solver`"):
        sd.log_likelihood(key, sde, score, x, solver=dfx.ShARK())
    with pytest.raises(TypeError, match="divergence"):
        sd.log_likelihood(key, sde, score, x, divergence="hutchinson")
    with pytest.raises(ValueError, match="`z`.*shape"):
        sd.decode(sde, score, jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="`num_probes`"):
        sd.Hutchinson("rademacher", num_probes=0)
    with pytest.raises(ValueError, match="`num_probes`"):
        sd.Hutchinson("gaussian", num_probes=-2)
    with pytest.raises(ValueError, match="`distribution`.*rademacher.*gaussian"):
        sd.Hutchinson("uniform")
    with pytest.raises(ValueError, match="`x` must lie in `data_range`"):
        sd.bits_per_dim(jnp.zeros(2), jnp.full((2, 3), 1.5))
    with pytest.raises(ValueError, match="`x` must lie in `data_range`"):
        sd.bits_per_dim(jnp.zeros(2), jnp.full((2, 3), -0.5), data_range=(0.0, 1.0))
    # A shape mismatch: jaxtyping's run-time check (a TypeError) in the tests, the
    # function's own ValueError without it.
    with pytest.raises((ValueError, TypeError), match="log_prob"):
        sd.bits_per_dim(jnp.zeros(3), jnp.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="`data_range`"):
        sd.bits_per_dim(jnp.zeros(2), jnp.full((2, 3), 0.5), data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="`x` must hold integers in \\[0, 255\\]"):
        sd.dequantize(key, jnp.full((2, 3), 256))
    with pytest.raises(ValueError, match="not all integers"):
        sd.dequantize(key, jnp.full((2, 3), 0.5))
    with pytest.raises((ValueError, TypeError), match="z1"):
        sd.interpolate_latents(jnp.zeros(2), jnp.zeros(3), jnp.linspace(0, 1, 3))
