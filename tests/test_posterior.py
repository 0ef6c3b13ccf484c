"""Exact posteriors of Gaussian mixtures under linear-Gaussian observations, and the
exact class posterior p_t(k | x), against brute force (quadrature on a grid)."""

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoresde_diffrax as sd


def _mixture_2d() -> sd.GaussianMixture:
    return sd.GaussianMixture(
        jnp.array([[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]]),
        jnp.array([[0.6, 0.9], [0.8, 0.5], [0.7, 0.7]]),
        jnp.array([0.3, 0.5, 0.2]),
    )


def _grid(lim=8.0, n=401):
    g = np.linspace(-lim, lim, n)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], -1), (g[1] - g[0]) ** 2


def _component_log_densities(mix, pts):
    return np.asarray(
        jax.jit(jax.vmap(mix.component_log_probs))(jnp.asarray(pts)), np.float64
    )


def test_condition_matches_brute_force():
    """y = A x + sigma_y n with A mixing both coordinates: posterior log-density,
    weights, mean and covariance against quadrature of p(x) N(y; A x, sigma_y^2)."""
    mix = _mixture_2d()
    A, y, sy = np.array([[1.0, 0.7]]), np.array([0.4]), 0.5
    post = mix.condition(jnp.asarray(A), jnp.asarray(y), sy)
    assert isinstance(post, sd.FullCovarianceMixture)
    pts, da = _grid()
    log_lik = -0.5 * ((y[0] - pts @ A[0]) / sy) ** 2
    joint_k = _component_log_densities(mix, pts) + log_lik[:, None]  # (n, K)
    scale = joint_k.max()
    mass_k = np.exp(joint_k - scale).sum(0) * da
    np.testing.assert_allclose(post.weights, mass_k / mass_k.sum(), atol=2e-5)
    p = np.exp(joint_k - scale).sum(1) * da
    p /= p.sum()
    mean = p @ pts
    cov = (pts - mean).T @ ((pts - mean) * p[:, None])
    np.testing.assert_allclose(post.mean(), mean, atol=2e-5)
    np.testing.assert_allclose(post.covariance(), cov, atol=5e-5)
    keep = p > 1e-4 * p.max()
    log_post = np.asarray(jax.jit(jax.vmap(post.log_prob))(jnp.asarray(pts[keep])))
    np.testing.assert_allclose(log_post, np.log(p[keep] / da), atol=1e-4)


def test_exact_observation_of_coordinates_two_ways():
    """sigma_y = 0 with A selecting coordinates equals `condition_on_coordinates`, and
    the latter matches quadrature over the unobserved coordinates."""
    mix = sd.GaussianMixture(
        jnp.array([[0.0, 1.0, -1.0], [2.0, -1.0, 0.5]]),
        jnp.array([[0.5, 0.8, 0.6], [0.9, 0.4, 0.7]]),
        jnp.array([0.4, 0.6]),
    )
    mask = np.array([False, True, False])
    x = jnp.array([9.0, 0.2, -9.0])  # only x[1] is observed
    post = mix.condition_on_coordinates(mask, x)
    assert post.dim == 2
    full = mix.condition(jnp.array([[0.0, 1.0, 0.0]]), jnp.array([0.2]), 0.0)
    np.testing.assert_allclose(full.weights, post.weights, rtol=1e-5)
    np.testing.assert_allclose(full.means[:, [0, 2]], post.means, atol=1e-5)
    np.testing.assert_allclose(full.means[:, 1], 0.2, atol=1e-5)
    covs = np.asarray(full.covs)
    np.testing.assert_allclose(covs[:, 1, :], 0.0, atol=1e-5)  # degenerate direction
    for k in range(2):
        np.testing.assert_allclose(
            covs[k][np.ix_([0, 2], [0, 2])], np.diag(post.stds[k] ** 2), atol=1e-5
        )
    # Brute force over the two unobserved coordinates.
    pts, da = _grid()
    full_pts = np.stack([pts[:, 0], np.full(len(pts), 0.2), pts[:, 1]], -1)
    log_joint = np.asarray(
        jax.jit(jax.vmap(mix.log_prob))(jnp.asarray(full_pts)), np.float64
    )
    p = np.exp(log_joint - log_joint.max())
    p /= p.sum() * da
    keep = p > 1e-4 * p.max()
    log_post = np.asarray(jax.jit(jax.vmap(post.log_prob))(jnp.asarray(pts[keep])))
    np.testing.assert_allclose(log_post, np.log(p[keep]), atol=1e-4)


def test_full_covariance_mixture_is_exact():
    """Score = autodiff of the marginal log-density; sample moments; normalisation."""
    post = _mixture_2d().condition(jnp.array([[1.0, 0.7]]), jnp.array([0.4]), 0.5)
    sde = sd.VPSDE()
    x = post.sample(jr.key(0), 16)

    @jax.jit
    def both(t):
        auto = jax.vmap(jax.grad(post.marginal(sde, t).log_prob))(x)
        return jax.vmap(post.score(sde), in_axes=(None, 0))(t, x), auto

    for t in (1e-3, 0.3, 1.0):
        exact, auto = both(jnp.asarray(t))
        np.testing.assert_allclose(exact, auto, rtol=1e-4, atol=1e-4)
    xs = post.sample(jr.key(1), 40000)
    se = np.sqrt(np.diag(post.covariance()) / xs.shape[0])
    assert np.all(np.abs(np.asarray(xs.mean(0) - post.mean())) < 4.5 * se)
    np.testing.assert_allclose(np.cov(np.asarray(xs).T), post.covariance(), atol=0.03)
    pts, da = _grid()
    total = (
        np.exp(np.asarray(jax.jit(jax.vmap(post.log_prob))(jnp.asarray(pts)))).sum()
        * da
    )
    np.testing.assert_allclose(total, 1.0, rtol=1e-4)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_exact_class_posterior(sde_name):
    """log p_t(k | x) against w_k N_k,t(x) / p_t(x) by brute force, and guidance with
    it at scale 1 = the exact score of component k's marginal."""
    sde = sd.VPSDE() if sde_name == "vp" else sd.VESDE(sigma_min=0.01, sigma_max=20.0)
    mix = _mixture_2d()
    clf = mix.classifier(sde)
    assert clf.num_classes == 3
    x = jr.normal(jr.key(2), (8, 2)) * 2
    labels = jnp.arange(8) % 3
    guided = sd.ClassifierGuidance(mix.score(sde), clf, labels)

    @jax.jit
    def compute(t):
        marg = mix.marginal(sde, t)
        log_post = jax.vmap(clf, in_axes=(None, 0))(t, x)
        z = (x[:, None, :] - marg.means[None]) / marg.stds[None]  # (n, K, D)
        comps = (
            jnp.log(mix.weights)[None]
            - 0.5 * jnp.sum(z**2, -1)
            - jnp.sum(jnp.log(marg.stds), -1)[None]
            - jnp.log(2 * jnp.pi)
        )
        got = sd._term.batched_score(guided, t, x)
        # The score of each example's own component's marginal, by autodiff.
        own = jax.vmap(
            lambda xi, k: jax.grad(
                lambda u: jnp.sum(-0.5 * ((u - marg.means[k]) / marg.stds[k]) ** 2)
            )(xi)
        )(x, labels)
        return log_post, comps, got, own

    for t in (1e-3, 0.2, 0.7):
        log_post, comps, got, own = map(np.asarray, compute(jnp.asarray(t)))
        brute = comps - np.log(np.exp(comps.astype(np.float64)).sum(-1, keepdims=True))
        # float32 log-posteriors (down to about -35) against float64: a few ulps.
        np.testing.assert_allclose(log_post, brute, rtol=2e-6, atol=1e-5)
        np.testing.assert_allclose(got, own, rtol=1e-4, atol=1e-4)


def test_bad_posterior_input_names_the_argument():
    mix = _mixture_2d()
    with pytest.raises(ValueError, match="`operator`"):
        mix.condition(jnp.ones((1, 3)), jnp.zeros(1), 0.1)
    with pytest.raises(ValueError, match="`y`"):
        mix.condition(jnp.ones((1, 2)), jnp.zeros(2), 0.1)
    with pytest.raises(ValueError, match="`sigma_y`"):
        mix.condition(jnp.ones((1, 2)), jnp.zeros(1), -0.1)
    with pytest.raises(ValueError, match="`operator`"):  # rank-deficient, exact
        mix.condition(jnp.ones((2, 2)), jnp.zeros(2), 0.0)
    with pytest.raises(ValueError, match="`mask`.*shape"):
        mix.condition_on_coordinates(np.array([True, False, True]), jnp.zeros(2))
    with pytest.raises(ValueError, match="`mask`.*binary"):
        mix.condition_on_coordinates(np.array([0.5, 1.0]), jnp.zeros(2))
    with pytest.raises(ValueError, match="`mask`"):
        mix.condition_on_coordinates(np.array([True, True]), jnp.zeros(2))
