"""Linear inverse problems y = A x (+ noise): measurement-consistent projection
(`sd.Project`) and diffusion posterior sampling (`sd.DPS`), against the exact posterior
of an 8-D mixture (`GaussianMixture.condition`) under VP and VE; `Project` on a mask
against `sd.Impute`. Run with `-s` to see the measured errors."""

import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import pytest
from helpers import inverse_mixture

import scoresde_diffrax as sd


N = 1500
STEPS = 200
SDES = {"vp": sd.VPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=20.0)}
SIGMA_Y_DPS = 0.1


def _mixture():
    return inverse_mixture()


def _operator():
    """A random 3 x 8 operator, mostly on coordinates 0-3 (singular values 1.7, 1.0,
    0.31), and a measurement between components 0 and 1: exact posterior weights
    0.52 / 0.48 / 0 for sigma_y = 0 (prior 0.3 / 0.3 / 0.4)."""
    k1, k2 = jr.split(jr.key(7))
    A = (
        np.concatenate(
            [
                np.asarray(jr.normal(k1, (3, 4))),
                0.1 * np.asarray(jr.normal(k2, (3, 4))),
            ],
            axis=1,
        )
        / 2
    )
    mu = np.asarray(inverse_mixture().means)
    y = A @ (0.55 * mu[0] + 0.45 * mu[1])
    return A.astype(np.float32), y.astype(np.float32)


def _reduced(post, A):
    """The posterior in the coordinates N^T x of the null space of A (where a
    posterior given an exact measurement has a density), and the basis N."""
    _, _, vt = np.linalg.svd(A)
    basis = vt[A.shape[0] :].T  # (D, D - M)
    means = np.asarray(post.means, np.float64) @ basis
    covs = np.einsum("da,kde,eb->kab", basis, np.asarray(post.covs, np.float64), basis)
    red = sd.FullCovarianceMixture(
        jnp.asarray(means, jnp.float32),
        jnp.asarray(covs, jnp.float32),
        post.weights,
    )
    return red, basis


def _errors(post, x):
    """Weights of the samples (each in its most probable component), their total
    variation from the exact ones, and over the components of weight >= 0.05 the
    largest |mean error| in posterior standard deviations and the mean ratio of
    sample to exact variances (per coordinate)."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(jax.jit(jax.vmap(post.classify))(jnp.asarray(x, jnp.float32)))
    w_true = np.asarray(post.weights, np.float64)
    w = np.bincount(labels, minlength=w_true.size) / len(x)
    mean_err, ratios = 0.0, []
    for c in np.flatnonzero(w_true >= 0.05):
        xc = x[labels == c]
        sd_c = np.sqrt(np.diag(np.asarray(post.covs[c], np.float64)))
        err = np.abs(xc.mean(0) - np.asarray(post.means[c], np.float64)) / sd_c
        mean_err = max(mean_err, float(err.max()))
        ratios.append(xc.var(0, ddof=1) / sd_c**2)
    return w, 0.5 * float(np.abs(w - w_true).sum()), mean_err, float(np.mean(ratios))


def _report(what, post, x, key):
    """Print the errors of `x` and, as the noise floor, of as many exact samples."""
    w, tv, me, vr = _errors(post, x)
    _, tv0, me0, vr0 = _errors(post, post.sample(key, len(x)))
    print(
        f"\n{what}: weights {np.round(w, 3)} (exact {np.round(post.weights, 3)}); "
        f"TV {tv:.3f} / mean err {me:.3f} sd / var ratio {vr:.3f}  "
        f"[exact samples: {tv0:.3f} / {me0:.3f} / {vr0:.3f}]"
    )
    return w, tv, me, vr


def _pc():
    return sd.PredictorCorrector(
        sd.ReverseDiffusion(), sd.Langevin(snr=0.16, batch_norm=True)
    )


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_projection_against_exact_posterior(sde_name):
    """Project with a random 3 x 8 operator, exact measurement: A x = y to round-off;
    in the null space of A the component weights, means and variances are close to
    the exact posterior's (margins over the measured errors, README; ignoring the
    measurement gives weights 0.3 / 0.3 / 0.4)."""
    sde = SDES[sde_name]
    mix = _mixture()
    A, y = _operator()
    post = mix.condition(A, y, 0.0)
    red, basis = _reduced(post, A)
    obs = jnp.broadcast_to(y, (N, 3))
    out = sd.sample(
        jr.key(0),
        sde,
        mix.score(sde),
        (N, 8),
        solver=sd.Project(_pc(), obs, operator=lx.MatrixLinearOperator(A)),
        num_steps=STEPS,
    )
    x = np.asarray(out.samples, np.float64)
    assert int(out.stats["num_score_evals"]) == 2 * STEPS  # no extra evaluations
    np.testing.assert_allclose(x @ A.T, np.broadcast_to(y, (N, 3)), atol=2e-4)
    w, tv, mean_err, var_ratio = _report(
        f"Project PC {STEPS} steps {sde_name}", red, x @ basis, jr.key(1)
    )
    assert tv < 0.1, (w, tv)
    assert w[2] < 0.08, w  # measured 0.035 (VP), 0.041 (VE)
    assert mean_err < 0.3, mean_err
    assert abs(var_ratio - 1) < 0.1, var_ratio


def test_projection_on_a_mask_is_impute():
    """With a mask (and weight 1) Project takes Impute's steps: the same samples,
    bitwise, for the same key; as a matrix (rows of the identity) the same
    distribution (the coordinates it replaces are the same, the noise is drawn in
    other coordinates)."""
    sde = SDES["vp"]
    mix = _mixture()
    mask = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    x_obs = jnp.array([0.3, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0])
    obs = jnp.broadcast_to(x_obs, (N, 8))
    run = lambda solver: np.asarray(  # noqa: E731
        sd.sample(
            jr.key(2), sde, mix.score(sde), (N, 8), solver=solver, num_steps=STEPS
        ).samples
    )
    a = run(sd.Project(_pc(), obs, mask=mask))
    b = run(sd.Impute(_pc(), obs, mask))
    np.testing.assert_array_equal(a, b)
    select = np.eye(8, dtype=np.float32)[mask]
    c = run(sd.Project(_pc(), obs[:, mask], operator=select))
    np.testing.assert_allclose(c[:, mask], a[:, mask], atol=1e-5)
    post = mix.condition_on_coordinates(mask, x_obs)
    w_a, *_ = _errors_diag(post, a[:, ~mask])
    w_c, *_ = _errors_diag(post, c[:, ~mask])
    se = np.sqrt(2 * np.maximum(w_a * (1 - w_a), 0.01) / N)
    assert np.all(np.abs(w_a - w_c) < 4 * se), (w_a, w_c)


def _errors_diag(post: sd.GaussianMixture, x):
    full = sd.FullCovarianceMixture(
        post.means, jax.vmap(jnp.diag)(post.stds**2), post.weights
    )
    return _errors(full, x)


# Measured (README, `pytest -s`): TV / mean error (sd) / variance ratio / RMS residual:
# vp, zeta 0.1: 0.020 / 0.52 / 1.06 / 0.090; ve, zeta 0.3: 0.172 / 0.09 / 1.06 / 0.26.
@pytest.mark.parametrize(
    "sde_name, zeta, max_tv, max_mean_err, max_resid",
    [("vp", 0.1, 0.08, 1.0, 0.15), ("ve", 0.3, 0.25, 0.4, 0.4)],
)
def test_dps_against_exact_posterior(sde_name, zeta, max_tv, max_mean_err, max_resid):
    """DPS (reverse-diffusion steps, the reference step-size rule) with the same
    operator and sigma_y = 0.1: measured against the exact posterior, its bias
    asserted with margins over the measured errors (above). Without guidance the
    weights would be the prior's (0.3 / 0.3 / 0.4) and the residual of order 1."""
    sde = SDES[sde_name]
    mix = _mixture()
    A, y = _operator()
    post = mix.condition(A, y, SIGMA_Y_DPS)
    obs = jnp.broadcast_to(y, (N, 3))
    out = sd.sample(
        jr.key(3),
        sde,
        mix.score(sde),
        (N, 8),
        solver=sd.DPS(sd.ReverseDiffusion(), A, obs, step_size=zeta),
        num_steps=STEPS,
    )
    x = np.asarray(out.samples, np.float64)
    assert int(out.stats["num_score_evals"]) == 2 * STEPS  # one more per step
    resid = float(np.sqrt(np.mean((x @ A.T - y) ** 2)))
    print(f"\nDPS {sde_name} zeta {zeta}: RMS residual {resid:.3f} (sigma_y 0.1)")
    w, tv, mean_err, var_ratio = _report(
        f"DPS reverse diffusion {STEPS} steps {sde_name}", post, x, jr.key(4)
    )
    assert tv < max_tv, (w, tv)
    assert w[2] < 0.25, w
    assert mean_err < max_mean_err, mean_err
    assert abs(var_ratio - 1) < 0.25, var_ratio
    assert resid < max_resid, resid


def test_bad_inverse_input_names_the_argument():
    A, y = _operator()
    obs = jnp.broadcast_to(y, (4, 3))
    pc = sd.ReverseDiffusion()
    with pytest.raises(ValueError, match="`operator`.*3 measurements"):
        sd.Project(pc, jnp.zeros((4, 5)), operator=A)
    with pytest.raises(ValueError, match="`operator`.*exactly one"):
        sd.Project(pc, obs)
    with pytest.raises(ValueError, match="`weight`"):
        sd.Project(pc, obs, operator=A, weight=0.0)
    with pytest.raises(ValueError, match="`mask`"):
        sd.Project(pc, jnp.zeros((4, 8)), mask=np.ones(7, bool))
    with pytest.raises(ValueError, match="`operator`.*shape"):
        sd.DPS(pc, A, jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="`operator`.*shape"):
        sd.DPS(pc, lx.MatrixLinearOperator(jnp.asarray(A)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="`step_size`"):
        sd.DPS(pc, A, obs, step_size=-1.0)
    with pytest.raises(ValueError, match="`observation`"):
        sd.DPS(pc, A, jnp.zeros(3))
    # A callable whose output does not match the observation: when the solve traces.
    sde = SDES["vp"]
    mix = _mixture()
    bad = sd.DPS(pc, lambda x: x[:2], obs)
    with pytest.raises(ValueError, match="`operator` maps"):
        sd.sample(jr.key(0), sde, mix.score(sde), (4, 8), solver=bad, num_steps=2)
