"""Gradients through sampling: `jax.grad` of a loss of `sd.sample(...)` against central
finite differences in float64, for the probability-flow ODE (fixed and adaptive steps,
default adjoint) and the reverse SDE (a reverse-mode adjoint switches the noise to a
differentiable per-example Brownian tree; the default fast path takes forward mode)."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoresde_diffrax as sd


class GaussianScore(eqx.Module):
    """The exact score of p_t for data N(m, s^2 I): -(x - a m) / (a^2 s^2 + std^2)."""

    m: jax.Array
    s: float
    sde: sd.AbstractSDE

    def __call__(self, t, x):
        a, std = self.sde.mean_coeff(t), self.sde.std(t)
        return -(x - a * self.m) / (a**2 * self.s**2 + std**2)


SDE = sd.VPSDE()
SHAPE = (4, 2)

CASES = {
    # name: (solver, sample kwargs)
    "ode-fixed": (dfx.Heun(), dict(method="ode", num_steps=16)),
    "ode-adaptive": (
        dfx.Tsit5(),
        dict(stepsize_controller=dfx.PIDController(rtol=1e-8, atol=1e-8)),
    ),
    "ode-dpm": (sd.DPMSolverPP2M(), dict(num_steps=12)),
    "sde-fixed-checkpoint": (
        dfx.Euler(),
        dict(method="sde", num_steps=16, adjoint=dfx.RecursiveCheckpointAdjoint()),
    ),
}


def _loss(m, solver, kw):
    score = GaussianScore(m, 0.5, SDE)
    x = sd.sample(jr.key(3), SDE, score, SHAPE, solver=solver, **kw).samples
    return jnp.sum(jnp.sin(x))  # a nonlinear loss of every sample


def _central_difference(f, m, h=1e-5):
    out = []
    for i in range(m.size):
        e = jnp.zeros_like(m).at[i].set(h)
        out.append((f(m + e) - f(m - e)) / (2 * h))
    return np.asarray(out)


@pytest.mark.parametrize("name", list(CASES))
def test_grad_through_sample_matches_finite_differences(name):
    solver, kw = CASES[name]
    with jax.enable_x64(True):
        m = jnp.array([0.7, -0.3], dtype=jnp.float64)
        grad = jax.grad(_loss)(m, solver, kw)
        fd = _central_difference(lambda v: _loss(v, solver, kw), m)
        assert grad.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-8)
    assert np.all(np.abs(fd) > 1e-3)  # the loss depends on m: the check can fail


def test_fast_sde_path_takes_forward_mode():
    # Fixed-step SDE sampling keeps its fast Brownian path by default: forward-mode
    # derivatives (jax.jvp) work and match finite differences.
    solver, kw = dfx.Euler(), dict(method="sde", num_steps=16)
    with jax.enable_x64(True):
        m = jnp.array([0.7, -0.3], dtype=jnp.float64)
        v = jnp.array([1.0, 0.0], dtype=jnp.float64)
        _, tangent = jax.jvp(lambda a: _loss(a, solver, kw), (m,), (v,))
        fd = _central_difference(lambda a: _loss(a, solver, kw), m)[0]
    np.testing.assert_allclose(float(tangent), fd, rtol=1e-6)


def test_checkpointed_sde_samples_have_the_right_law():
    # The differentiable noise (a per-example VirtualBrownianTree on a fixed grid) is
    # still Brownian: Euler-Maruyama on Gaussian data gives the right mean and variance.
    score = GaussianScore(jnp.array([1.0, -2.0]), 0.5, SDE)
    x = sd.sample(
        jr.key(0),
        SDE,
        score,
        (4000, 2),
        solver=dfx.Euler(),
        method="sde",
        num_steps=200,
        adjoint=dfx.RecursiveCheckpointAdjoint(),
    ).samples
    se_mean = 0.5 / np.sqrt(4000)
    np.testing.assert_allclose(np.mean(x, 0), [1.0, -2.0], atol=4 * se_mean)
    ratio = np.var(np.asarray(x), 0) / 0.25
    np.testing.assert_allclose(ratio, 1.0, atol=4 * np.sqrt(2 / 4000) + 0.02)


def test_dense_saveat_is_refused():
    score = GaussianScore(jnp.zeros(2), 1.0, SDE)
    with pytest.raises(ValueError, match="dense"):
        sd.sample(
            jr.key(0),
            SDE,
            score,
            SHAPE,
            solver=dfx.Tsit5(),
            num_steps=4,
            saveat=dfx.SaveAt(dense=True),
        )
