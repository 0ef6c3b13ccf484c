import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import (
    check_reproduces,
    CountingCalls,
    gaussian_case,
    gaussian_posterior_mean,
    MIXTURES,
    SDES,
)

import scoresde_diffrax as sd
from scoresde_diffrax._clock import Clock, FORWARD, REVERSED


PID = dfx.PIDController(rtol=1e-5, atol=1e-5)
SOLVERS = {
    "euler_maruyama": dict(solver=dfx.Euler(), method="sde", num_steps=1000),
    "tsit5_ode": dict(solver=dfx.Tsit5(), stepsize_controller=PID),
}


@pytest.mark.parametrize("solver_name", list(SOLVERS))
@pytest.mark.parametrize("mix_name", list(MIXTURES))
@pytest.mark.parametrize("sde_name", list(SDES))
def test_sampler_reproduces_mixture(sde_name, mix_name, solver_name):
    sde, mix = SDES[sde_name], MIXTURES[mix_name]()
    n = 4000 if mix_name == "2d" else 2000
    out = sd.sample(
        jr.key(7),
        sde,
        mix.score(sde),
        (n, mix.dim),
        denoise=True,
        **SOLVERS[solver_name],
    )
    assert out.samples.shape == (n, mix.dim)
    check_reproduces(mix, out.samples, jr.key(99))


def test_probability_flow_maps_prior_to_gaussian_exactly(sde):
    # Every saved state, not only the last, is the exact affine map of x_T: the saved
    # times are in t, and a sign error in the reversed clock would send the states away.
    mix, exact = gaussian_case(sde)
    eps = sde.default_eps
    ts = jnp.array([sde.T, 0.7, 0.3, 0.1, 0.02, eps])
    out = sd.sample(
        jr.key(0),
        sde,
        mix.score(sde),
        (64, 3),
        solver=dfx.Tsit5(),
        stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
        saveat=dfx.SaveAt(ts=ts),
    )
    x_T = out.trajectory[0]
    np.testing.assert_allclose(out.ts, ts, rtol=1e-6)
    # The state saved at T is the prior draw (64 x 3 values: its std within 20 %).
    np.testing.assert_allclose(jnp.std(x_T), sde.prior_std, rtol=0.2)
    for t, x in zip(ts, out.trajectory, strict=True):
        # Relative to the state's scale: 50 for VE at T, under 3 at eps.
        scale = float(jnp.max(jnp.abs(x)))
        np.testing.assert_allclose(x, exact(x_T, t), atol=1e-4 * scale + 1e-4)
    np.testing.assert_allclose(out.samples, exact(x_T, eps), atol=2e-4)


# Where the denoising step moves the samples by O(1): s(eps)^2 comparable to a^2 s0^2.
DENOISE_EPS = {"vp": 0.2, "subvp": 0.3, "ve": 0.5}


@pytest.mark.parametrize("sde_name", list(SDES))
def test_denoise_is_the_exact_posterior_mean(sde_name):
    # For Gaussian data E[x0 | x_eps] is affine in x_eps, and the probability-flow map
    # x_T -> x_eps is known: the denoised samples are known exactly. At the default eps
    # the step changes the variance by ~1e-3 (VP) or ~1e-8 (VE, sub-VP), too little for
    # any sampler test to see: it is tested here, where it moves samples by O(1).
    sde, eps = SDES[sde_name], DENOISE_EPS[sde_name]
    mix, exact = gaussian_case(sde)
    out = sd.sample(
        jr.key(0),
        sde,
        mix.score(sde),
        (64, 3),
        solver=dfx.Tsit5(),
        stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6),
        eps=eps,
        denoise=True,
        saveat=dfx.SaveAt(t0=True),
    )
    x_eps = exact(out.trajectory[0], eps)
    want = gaussian_posterior_mean(sde, x_eps, eps)
    assert float(jnp.max(jnp.abs(want - x_eps))) > 0.3  # a step worth testing
    np.testing.assert_allclose(out.samples, want, atol=2e-4)


def test_denoise_after_the_reverse_sde():
    # Same key, same noise: the denoised samples are the posterior mean of the others.
    sde, eps = SDES["vp"], DENOISE_EPS["vp"]
    mix, _ = gaussian_case(sde)
    kw = dict(solver=dfx.Euler(), method="sde", num_steps=50, eps=eps)
    plain = sd.sample(jr.key(1), sde, mix.score(sde), (64, 3), **kw).samples
    den = sd.sample(jr.key(1), sde, mix.score(sde), (64, 3), denoise=True, **kw)
    want = gaussian_posterior_mean(sde, plain, eps)
    np.testing.assert_allclose(den.samples, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "solver, order", [(dfx.Euler(), 1.0), (dfx.Heun(), 2.0), (dfx.Midpoint(), 2.0)]
)
def test_convergence_order_on_probability_flow(solver, order):
    sde = SDES["vp"]
    mix, exact = gaussian_case(sde)
    steps = np.array([16, 32, 64, 128])
    errs = []
    for n in steps:
        out = sd.sample(
            jr.key(1),
            sde,
            mix.score(sde),
            (32, 3),
            solver=solver,
            method="ode",
            num_steps=int(n),
            saveat=dfx.SaveAt(t0=True),
        )
        errs.append(
            float(jnp.max(jnp.abs(out.samples - exact(out.trajectory[0], 1e-3))))
        )
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.4, (errs, slope)


def test_same_key_same_samples_and_prefix_independence():
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    kw = dict(solver=dfx.Euler(), method="sde", num_steps=50)
    a = sd.sample(jr.key(3), sde, mix.score(sde), (40, 2), **kw).samples
    b = sd.sample(jr.key(3), sde, mix.score(sde), (40, 2), **kw).samples
    c = sd.sample(jr.key(3), sde, mix.score(sde), (10, 2), **kw).samples
    d = sd.sample(jr.key(4), sde, mix.score(sde), (10, 2), **kw).samples
    np.testing.assert_array_equal(a, b)
    # Example i depends on fold_in(key, i) only, not on the batch size.
    np.testing.assert_allclose(a[:10], c, rtol=1e-5, atol=1e-5)
    assert not np.allclose(c, d)


def test_same_samples_with_and_without_outer_jit():
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    kw = dict(solver=dfx.Euler(), method="sde", num_steps=1000)

    def run(key):
        return sd.sample(key, sde, mix.score(sde), (8, 2), **kw).samples

    # Bitwise on CPU; round-off on GPU (fusions differ). Different noise would differ
    # by O(0.1).
    np.testing.assert_allclose(run(jr.key(2)), jax.jit(run)(jr.key(2)), atol=1e-5)


class _CountingTraces(eqx.Module):
    """Exact mixture score that counts how often it is traced."""

    inner: sd.MixtureScore
    log: list = eqx.field(static=True)

    def __call__(self, t, x):
        self.log.append(1)
        return self.inner(t, x)


def test_no_retrace_on_repeated_calls():
    sde, mix = SDES["subvp"], MIXTURES["2d"]()
    score = _CountingTraces(mix.score(sde), [])
    kw = dict(solver=dfx.Euler(), method="sde", num_steps=20)
    sd.sample(jr.key(0), sde, score, (8, 2), **kw)
    traced = len(score.log)
    for seed in range(1, 4):
        sd.sample(jr.key(seed), sde, score, (8, 2), **kw)
    # A new mixture of the same shapes is new data, not a new program.
    other = eqx.tree_at(lambda s: s.inner.mixture.means, score, mix.means + 1.0)
    sd.sample(jr.key(0), sde, other, (8, 2), **kw)
    assert len(score.log) == traced


@pytest.mark.parametrize(
    "kw",
    [
        dict(solver=dfx.Euler(), method="sde", num_steps=13),
        dict(solver=dfx.Heun(), method="ode", num_steps=9),
        dict(solver=dfx.Tsit5(), stepsize_controller=PID),
        dict(solver=dfx.Dopri5(), stepsize_controller=PID, denoise=True),
        dict(
            solver=dfx.ShARK(),
            stepsize_controller=dfx.PIDController(rtol=1e-2, atol=1e-2),
        ),
        dict(solver=dfx.ReversibleHeun(), method="ode", num_steps=7),
    ],
    ids=["em", "heun", "tsit5", "dopri5-denoise", "shark-adaptive", "revheun"],
)
def test_num_score_evals_is_exact(kw):
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    counter = []
    out = sd.sample(
        jr.key(0), sde, CountingCalls(mix.score(sde), counter), (1, 2), **kw
    )
    jax.effects_barrier()
    assert int(out.stats["num_score_evals"]) == len(counter), out.stats


def test_sde_solvers_with_levy_area_on_reversed_clock():
    # diffrax's SRK solvers fail under t1 < t0; on our reversed clock they are right.
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    out = sd.sample(
        jr.key(5),
        sde,
        mix.score(sde),
        (2000, 2),
        solver=dfx.ShARK(),
        stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3),
    )
    check_reproduces(mix, out.samples, jr.key(98))


def test_reversed_clock_terms_sign():
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    score = mix.score(sde)
    x = mix.sample(jr.key(0), 5)
    t = 0.37
    natural = sd.probability_flow_term(sde, score).vector_field(t, x, None)
    reversed_ = sd.probability_flow_term(sde, score, reverse_time=True).vector_field(
        -t, x, None
    )
    np.testing.assert_allclose(reversed_, -natural, rtol=1e-6)
    manual = sde.drift_coeff(t) * x - 0.5 * sde.diffusion(t) ** 2 * jax.vmap(
        lambda y: score(t, y)
    )(x)
    np.testing.assert_allclose(natural, manual, rtol=1e-5, atol=1e-6)


def test_clock_round_trip_and_grids():
    """The one clock: user time <-> solver time exactly, grids kept in NumPy (their
    bits key the fast Brownian path), rates and steps with the solver's sign."""
    rev, fwd = Clock.running(increasing=False), Clock.running(increasing=True)
    assert (rev, fwd) == (REVERSED, FORWARD) and rev.reversed and not fwd.reversed
    ts = sd.time_grid(sd.VPSDE(), 7, "logsnr")  # decreasing from T to eps
    for clock in (rev, fwd):
        for t in (0.37, np.float32(1e-3), np.asarray(ts), jnp.asarray(ts)):
            r = clock.to_solver(t)
            assert type(r) is type(t)
            np.testing.assert_array_equal(clock.to_user(r), t)  # bitwise
    r = rev.to_solver(np.asarray(ts))
    assert r.dtype == ts.dtype and np.all(np.diff(r) > 0)  # forwards on the solver
    assert rev.to_solver(1.0) == -1.0 and fwd.to_solver(1.0) == 1.0
    assert rev.to_solver_rate(2.0) == -2.0 and fwd.to_solver_rate(2.0) == 2.0
    assert rev.to_solver_step(-0.1) == fwd.to_solver_step(0.1) == 0.1
    subs = rev.to_solver_saveat(dfx.SubSaveAt(ts=[1.0, 0.5], fn=lambda t, y, a: t))
    np.testing.assert_array_equal(subs.ts, [-1.0, -0.5])
    assert subs.fn(-0.25, None, None) == 0.25  # `fn` still sees user time
    with pytest.raises(ValueError, match="sign"):
        Clock(0)


def test_saveat_trajectory_times_in_t():
    sde, mix = SDES["ve"], MIXTURES["2d"]()
    ts = jnp.array([1.0, 0.5, 0.1, 1e-5])
    out = sd.sample(
        jr.key(0),
        sde,
        mix.score(sde),
        (16, 2),
        solver=dfx.Euler(),
        method="ode",
        num_steps=100,
        saveat=dfx.SaveAt(ts=ts),
    )
    np.testing.assert_allclose(out.ts, ts, rtol=1e-6)
    assert out.trajectory.shape == (4, 16, 2)
    np.testing.assert_allclose(out.trajectory[-1], out.samples, rtol=1e-6)
    # The spread shrinks from about sigma_max = 50 to the data's (about 2).
    spreads = jnp.std(out.trajectory, axis=(1, 2))
    assert spreads[0] > 20 and spreads[-1] < 4, spreads


def test_step_to_grid():
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    grid = jnp.array([1.0, 0.6, 0.3, 0.1, 0.03, 1e-3])
    out = sd.sample(
        jr.key(0),
        sde,
        mix.score(sde),
        (4, 2),
        solver=dfx.Heun(),
        method="ode",
        stepsize_controller=dfx.StepTo(grid),
    )
    assert int(out.stats["num_steps"]) == 5
    assert int(out.stats["num_score_evals"]) == 10


def test_nan_score_is_reported():
    sde = SDES["vp"]

    def bad(t, x):
        return jnp.where(t < 0.5, jnp.nan, -x)

    with pytest.raises(Exception, match="non-finite"):
        sd.sample(
            jr.key(0), sde, bad, (4, 2), solver=dfx.Euler(), method="sde", num_steps=10
        ).samples.block_until_ready()


def test_bad_inputs_name_the_argument():
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    score = mix.score(sde)
    em = dict(solver=dfx.Euler(), method="sde")
    key = jr.key(0)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)|shape"):
        sd.sample(key, sde, score, (8, 3), num_steps=10, **em)
    with pytest.raises(ValueError, match="returned shape"):
        sd.sample(key, sde, lambda t, x: x[:1], (8, 2), num_steps=10, **em)
    with pytest.raises(ValueError, match="eps"):
        sd.sample(key, sde, score, (8, 2), num_steps=10, eps=0.0, **em)
    with pytest.raises(ValueError, match="eps"):
        sd.sample(key, sde, score, (8, 2), num_steps=10, eps=1.5, **em)
    with pytest.raises(ValueError, match="num_steps"):
        sd.sample(key, sde, score, (8, 2), num_steps=0, **em)
    # Neither num_steps nor a controller: adaptive by default, which Euler cannot do.
    with pytest.raises(ValueError, match="neither `num_steps` nor"):
        sd.sample(key, sde, score, (8, 2), **em)
    with pytest.raises(ValueError, match="at most one"):
        sd.sample(key, sde, score, (8, 2), num_steps=5, stepsize_controller=PID, **em)
    with pytest.raises(ValueError, match="method"):
        sd.sample(key, sde, score, (8, 2), solver=dfx.Euler(), num_steps=5)
    with pytest.raises(ValueError, match="ODE solver"):
        sd.sample(
            key, sde, score, (8, 2), solver=dfx.Tsit5(), method="sde", num_steps=5
        )
    with pytest.raises(ValueError, match="SDE-only"):
        sd.sample(key, sde, score, (8, 2), solver=dfx.SRA1(), method="ode", num_steps=5)
    with pytest.raises(ValueError, match="adaptive"):
        sd.sample(key, sde, score, (8, 2), stepsize_controller=PID, **em)
    with pytest.raises(ValueError, match="shape"):
        sd.sample(key, sde, score, (8,), num_steps=5, **em)
    with pytest.raises(ValueError, match="stepsize_controller"):
        sd.sample(
            key,
            sde,
            score,
            (8, 2),
            stepsize_controller=dfx.StepTo(jnp.array([1e-3, 0.5, 1.0])),
            **em,
        )


def test_eps_and_x0_adapters_recover_the_score(sde):
    mix = MIXTURES["2d"]()
    score = mix.score(sde)

    def eps_model(t, x):  # the exact noise predictor
        return -sde.std(t) * score(t, x)

    def x0_model(t, x):  # the exact denoiser (Tweedie)
        return (x + sde.std(t) ** 2 * score(t, x)) / sde.mean_coeff(t)

    x0 = mix.sample(jr.key(0), 8)
    # Not at tiny noise levels: there x0 - x ~ s^2 cancels in float32 (inherent to
    # the x0 parameterisation, not to the adapter).
    for t in [0.1, 0.4, 0.9]:
        t = jnp.asarray(t)
        x = sde.mean_coeff(t) * x0 + sde.std(t) * jr.normal(jr.key(1), x0.shape)
        want = jax.vmap(score, in_axes=(None, 0))(t, x)
        for adapter in (sd.EpsScore(eps_model, sde), sd.X0Score(x0_model, sde)):
            got = jax.vmap(adapter, in_axes=(None, 0))(t, x)
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


class _MLPScore(eqx.Module):
    mlp: eqx.nn.MLP
    log: list = eqx.field(static=True)

    def __call__(self, t, x):
        self.log.append(1)
        return self.mlp(jnp.concatenate([x, jnp.reshape(t, (1,))]))


def test_equinox_network_as_score_not_retraced_for_new_weights():
    sde = SDES["vp"]
    log = []
    net = _MLPScore(eqx.nn.MLP(3, 2, 16, 2, key=jr.key(0)), log)
    kw = dict(solver=dfx.Heun(), method="ode", num_steps=10)
    a = sd.sample(jr.key(0), sde, net, (4, 2), **kw).samples
    traced = len(log)
    net2 = eqx.tree_at(lambda n: n.mlp, net, eqx.nn.MLP(3, 2, 16, 2, key=jr.key(1)))
    b = sd.sample(jr.key(0), sde, net2, (4, 2), **kw).samples
    assert len(log) == traced
    assert not np.allclose(a, b)
