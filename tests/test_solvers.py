"""The samplers of issue #4 against exact truth (Gaussian mixtures, Gaussian data)."""

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import (
    check_reproduces,
    CountingCalls,
    gaussian_case,
    MIXTURES,
    restart_grid,
    SDES,
)

import scoresde_diffrax as sd
from scoresde_diffrax._term import sampling_terms as _terms


def _langevin_chain(corrector, sde, mix, t, n, iters, key):
    pt = mix.marginal(sde, t)
    x = pt.sample(jr.key(1), n)
    score = mix.score(sde)

    @jax.jit
    def run(x, key):
        def body(x, k):
            z = jr.normal(k, (corrector.num_steps,) + x.shape)
            return corrector.correct(sde, score, t, t - 0.01, x, z), None

        return jax.lax.scan(body, x, jr.split(key, iters))[0]

    return pt, x, run(x, key)


@pytest.mark.parametrize("mix_name", list(MIXTURES))
def test_langevin_leaves_p_t_invariant(mix_name):
    sde, mix, t = SDES["vp"], MIXTURES[mix_name](), 0.1
    for corrector in [
        sd.Langevin(),
        sd.Langevin(snr=0.05, norms="batch"),
        sd.AnnealedLangevin(snr=0.1, num_steps=2),
    ]:
        pt, x0, x = _langevin_chain(corrector, sde, mix, t, 4000, 100, jr.key(2))
        check_reproduces(pt, x, jr.key(3))
        # ... and the chain moved: it is not invariant by standing still.
        moved = jnp.mean(jnp.sum((x - x0) ** 2, axis=1)) / jnp.mean(pt.stds**2)
        assert moved > 0.5 * mix.dim, moved


def test_langevin_per_example_norms_bias_matches_theory():
    # With per-example norms the step size depends on the example's own x and z:
    # for Gaussian data in d dimensions the stationary variance is ((d + 2) / d)^2
    # times the true one (one factor from the step's dependence on |z|, one from its
    # dependence on |s(x)|), up to O(step) terms. The batch-averaged norm is unbiased.
    d = 16
    sde = SDES["ve"]
    gauss = sd.GaussianMixture(jnp.zeros((1, d)), jnp.ones((1,)))
    ratios = {}
    for norms in ("example", "batch"):
        corr = sd.Langevin(snr=0.1, norms=norms)
        pt, _, x = _langevin_chain(corr, sde, gauss, 0.5, 4000, 300, jr.key(4))
        ratios[norms] = sd.metrics.mixture_report(pt, x).variance_ratio
    assert abs(ratios["example"] - ((d + 2) / d) ** 2) < 0.03, ratios
    assert abs(ratios["batch"] - 1) < 0.02, ratios


@pytest.mark.parametrize(
    "solver, kind, order",
    [
        (sd.DPMSolverPP2M(), "logsnr", 2.0),
        (sd.EDMHeun(), "edm", 2.0),
        (sd.DDIM(), "logsnr", 1.0),
    ],
    ids=["dpm_solver_pp_2m", "edm_heun", "ddim"],
)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_convergence_order_on_gaussian_data(solver, kind, order, sde_name):
    sde = SDES[sde_name]
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
            stepsize_controller=dfx.StepTo(sd.time_grid(sde, int(n), kind)),
            saveat=dfx.SaveAt(t0=True),
        )
        ref = exact(out.trajectory[0], sde.default_eps)
        errs.append(float(jnp.max(jnp.abs(out.samples - ref))))
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.4, (errs, slope)


def _solve_on_grids(solver, sde, score, y0, grids):
    """Manual `init`/`step` over each grid (times decreasing from T to eps), in ONE
    compiled loop: the grids are padded to a common length and the loop runs over
    the first `n` steps of each."""
    terms = _terms(sde, score, "ode", y0.shape, jr.key(0), -sde.T, -1e-3, "fast")
    longest = max(len(ts) for ts in grids)
    pad = [np.concatenate([ts, np.full(longest - len(ts), ts[-1])]) for ts in grids]

    @jax.jit
    def solve(rs, n):
        def body(i, carry):
            y, state = carry
            y, _, _, state, _ = solver.step(
                terms, rs[i], rs[i + 1], y, None, state, False
            )
            return y, state

        state = solver.init(terms, rs[0], rs[1], y0, None)
        return jax.lax.fori_loop(0, n, body, (y0, state))[0]

    return [
        solve(-jnp.asarray(p), len(ts) - 1) for p, ts in zip(pad, grids, strict=True)
    ]


# Orders measured on the edm grid (log-log slopes of the max error on 16..128 steps;
# DEIS on 32..256, whose first, first-order step pulls its slope below 3 before).
# UniPC(p) with its corrector is of order p + 1; DPM-Solver++(3M) with the
# reference's weight on its quadratic term measures 2.1 here (ours: 3.1 to 3.3).
@pytest.mark.parametrize(
    "solver, steps, order",
    [
        (sd.DPMSolverPP3M(), (16, 32, 64, 128), 3.0),
        (sd.UniPC(2), (16, 32, 64, 128), 3.0),
        (sd.UniPC(3), (16, 32, 64, 128), 4.0),
        (sd.DEIS(3), (32, 64, 128, 256), 3.0),
    ],
    ids=["dpm_solver_pp_3m", "unipc2", "unipc3", "deis3"],
)
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_multistep_convergence_order_on_gaussian_data(solver, steps, order, sde_name):
    sde = SDES[sde_name]
    mix, exact = gaussian_case(sde)
    y0 = sde.prior_std * jr.normal(jr.key(1), (32, 3))
    grids = [np.asarray(sd.time_grid(sde, n, "edm")) for n in steps]
    outs = _solve_on_grids(solver, sde, mix.score(sde), y0, grids)
    ref = exact(y0, sde.default_eps)
    errs = [float(jnp.max(jnp.abs(out - ref))) for out in outs]
    slope = -np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slope - order) < 0.4, (errs, slope)


@pytest.mark.parametrize(
    "solver",
    [
        sd.PredictorCorrector(),
        sd.PredictorCorrector(sd.AncestralSampling(), sd.AnnealedLangevin()),
        sd.StochasticDDIM(eta=0.5),
        sd.StochasticEDMHeun(churn=0.2),
        sd.StochasticDPMSolverPP(3),
    ],
    ids=["pc", "pc_ancestral", "ddim_eta", "edm_churn", "dpm_sde"],
)
def test_same_key_same_samples_under_jit_and_vmap(solver):
    sde, mix = SDES["subvp"], MIXTURES["2d"]()
    score = mix.score(sde)

    def draw(key, n):
        return sd.sample(key, sde, score, (n, 2), solver=solver, num_steps=20).samples

    a, b = draw(jr.key(3), 40), draw(jr.key(3), 40)
    np.testing.assert_array_equal(a, b)
    # Example i depends on fold_in(key, i) only: not on the batch size or the others.
    np.testing.assert_allclose(a[:10], draw(jr.key(3), 10), rtol=1e-5, atol=1e-5)
    assert not np.allclose(a[:10], draw(jr.key(4), 10))
    keys = jnp.stack([jr.key(3), jr.key(5)])
    v = jax.vmap(lambda k: draw(k, 10))(keys)
    np.testing.assert_allclose(v[0], a[:10], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v[1], draw(jr.key(5), 10), rtol=1e-5, atol=1e-5)


ALL_SOLVERS = {
    "reverse_diffusion": (sd.ReverseDiffusion(), "sde"),
    "ancestral": (sd.AncestralSampling(upper_variance=True), "sde"),
    "pc": (sd.PredictorCorrector(corrector=sd.Langevin(num_steps=2)), "sde"),
    "pc_euler": (sd.PredictorCorrector(dfx.Euler(), sd.AnnealedLangevin()), "sde"),
    "ddim": (sd.DDIM(), "ode"),
    "ddim_eta": (sd.StochasticDDIM(eta=1.0), "sde"),
    "dpm": (sd.DPMSolverPP2M(), "ode"),
    "edm": (sd.EDMHeun(), "ode"),
    "edm_churn": (sd.StochasticEDMHeun(churn=0.1), "sde"),
    "dpm3m": (sd.DPMSolverPP3M(), "ode"),
    "unipc": (sd.UniPC(), "ode"),
    "unipc_bh1": (sd.UniPC(2, "bh1"), "ode"),
    "deis": (sd.DEIS(4), "ode"),
    "dpm_sde": (sd.StochasticDPMSolverPP(3, eta=0.5), "sde"),
}


@pytest.mark.parametrize("name", list(ALL_SOLVERS))
def test_manual_stepping_matches_sample(name):
    solver, method = ALL_SOLVERS[name]
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    score = mix.score(sde)
    key, shape, eps = jr.key(11), (6, 2), 1e-3
    ts = sd.time_grid(sde, 6, "logsnr")
    out = sd.sample(
        key,
        sde,
        score,
        shape,
        solver=solver,
        stepsize_controller=dfx.StepTo(ts),
        saveat=dfx.SaveAt(t0=True),
    )
    terms = _terms(sde, score, method, shape, jr.fold_in(key, 1), -1.0, -eps, "fast")
    rs = -ts
    y = out.trajectory[0]
    state = solver.init(terms, rs[0], rs[1], y, None)
    for i in range(len(rs) - 1):
        y, err, dense, state, res = solver.step(
            terms, rs[i], rs[i + 1], y, None, state, False
        )
        assert err is None and res == dfx.RESULTS.successful
    np.testing.assert_allclose(y, out.samples, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "solver", [sd.DDIM(), sd.DPMSolverPP2M(), sd.EDMHeun(), sd.UniPC(), sd.DEIS()]
)
def test_deterministic_solvers_correct_on_natural_clock(solver):
    # diffeqsolve from T down to eps on the natural clock (diffrax wraps the terms and
    # negates time) gives what `sample` gives on the reversed clock.
    sde, mix = SDES["ve"], MIXTURES["2d"]()
    score = mix.score(sde)
    ts = sd.time_grid(sde, 12, "edm")
    out = sd.sample(
        jr.key(0),
        sde,
        score,
        (8, 2),
        solver=solver,
        stepsize_controller=dfx.StepTo(ts),
        saveat=dfx.SaveAt(t0=True),
    )
    sol = dfx.diffeqsolve(
        sd.probability_flow_term(sde, score),
        solver,
        t0=sde.T,
        t1=ts[-1],
        dt0=None,
        y0=out.trajectory[0],
        stepsize_controller=dfx.StepTo(ts),
    )
    np.testing.assert_allclose(sol.ys[-1], out.samples, rtol=1e-4, atol=1e-4)


def test_pc_on_natural_clock_with_virtual_tree():
    # The reverse SDE on the natural clock, T down to eps, with a VirtualBrownianTree:
    # Gaussian data come out with the right mean and variance.
    sde = SDES["vp"]
    mix, _ = gaussian_case(sde)
    score = mix.score(sde)
    n, eps = 2000, 1e-3
    keys = jax.vmap(lambda i: jr.fold_in(jr.key(0), i))(jnp.arange(n))
    template = dfx.VirtualBrownianTree(
        eps, sde.T, tol=1e-3, shape=jax.ShapeDtypeStruct((3,), jnp.float32), key=keys[0]
    )
    terms = dfx.MultiTerm(
        dfx.ODETerm(sd.ScoreDrift(sde, score, 1.0)),
        dfx.ControlTerm(sd.Diffusion(sde), sd.PerSampleBrownianPath(template, keys)),
    )
    y0 = jr.normal(jr.key(1), (n, 3))
    solver = sd.PredictorCorrector(
        sd.AncestralSampling(), sd.Langevin(0.05, batch_norm=True)
    )
    sol = dfx.diffeqsolve(terms, solver, sde.T, eps, -(sde.T - eps) / 200, y0)
    x = sol.ys[-1]
    np.testing.assert_allclose(jnp.mean(x, 0), mix.means[0], atol=4 * 0.7 / n**0.5)
    np.testing.assert_allclose(jnp.std(x, 0), 0.7, rtol=0.06)


def test_ddim_eta_one_is_ancestral_sampling():
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    kw = dict(num_steps=30)
    a = sd.sample(
        jr.key(2), sde, mix.score(sde), (16, 2), solver=sd.StochasticDDIM(1.0), **kw
    )
    b = sd.sample(
        jr.key(2),
        sde,
        mix.score(sde),
        (16, 2),
        solver=sd.AncestralSampling(denoise=False),
        **kw,
    )
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-4, atol=1e-4)


def test_saveat_ts_with_new_solvers():
    sde, mix = SDES["subvp"], MIXTURES["2d"]()
    ts = jnp.array([1.0, 0.5, 0.1, 1e-3])
    for solver in [sd.DPMSolverPP2M(), sd.PredictorCorrector()]:
        out = sd.sample(
            jr.key(0),
            sde,
            mix.score(sde),
            (16, 2),
            solver=solver,
            num_steps=40,
            saveat=dfx.SaveAt(ts=ts),
        )
        np.testing.assert_allclose(out.ts, ts, rtol=1e-6)
        assert out.trajectory.shape == (4, 16, 2)
        np.testing.assert_allclose(out.trajectory[-1], out.samples, rtol=1e-6)
        assert jnp.std(out.trajectory[0]) > 0.8  # the prior's spread


@pytest.mark.parametrize(
    "solver, per_step",
    [
        (sd.PredictorCorrector(corrector=sd.Langevin(num_steps=2)), 3),
        (sd.PredictorCorrector(corrector=None), 1),
        (sd.EDMHeun(), 2),
        (sd.StochasticEDMHeun(churn=0.1), 2),
        (sd.DPMSolverPP2M(), 1),
        (sd.StochasticDDIM(0.3), 1),
        (sd.DPMSolverPP3M(), 1),
        (sd.UniPC(), 1),
        (sd.DEIS(), 1),
        (sd.StochasticDPMSolverPP(), 1),
    ],
    ids=[
        "pc2",
        "p",
        "edm",
        "edm_churn",
        "dpm",
        "ddim",
        "dpm3m",
        "unipc",
        "deis",
        "sde",
    ],
)
def test_num_score_evals_is_exact(solver, per_step):
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    counter = []
    out = sd.sample(
        jr.key(0),
        sde,
        CountingCalls(mix.score(sde), counter),
        (1, 2),
        solver=solver,
        num_steps=7,
    )
    jax.effects_barrier()
    assert int(out.stats["num_score_evals"]) == len(counter) == 7 * per_step


def test_restart_score_evals_and_reproducibility():
    sde, mix = SDES["ve"], MIXTURES["2d"]()
    counter = []
    ts = restart_grid(sde, 5, 0.3, 4)
    solver = sd.Restart(sd.DPMSolverPP2M(), 0.3, 0.6, num_restarts=3, num_steps=2)

    def draw(key, n, score):
        return sd.sample(
            key, sde, score, (n, 2), solver=solver, stepsize_controller=dfx.StepTo(ts)
        )

    out = draw(jr.key(0), 1, CountingCalls(mix.score(sde), counter))
    jax.effects_barrier()
    assert int(out.stats["num_score_evals"]) == len(counter) == 9 + 3 * 2
    # Example i depends on fold_in(key, i) only, and the jumps draw from the key.
    a, b = draw(jr.key(3), 4, mix.score(sde)), draw(jr.key(3), 2, mix.score(sde))
    np.testing.assert_allclose(a.samples[:2], b.samples, rtol=1e-5, atol=1e-5)
    c = draw(jr.key(4), 2, mix.score(sde))
    assert not np.allclose(b.samples, c.samples, atol=1e-2)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_time_grids(sde_name):
    sde = SDES[sde_name]
    eps = sde.default_eps
    for kind in ("uniform", "quadratic", "logsnr", "edm"):
        ts = sd.time_grid(sde, 10, kind)
        assert ts.shape == (11,)
        assert ts[0] == jnp.float32(sde.T) and ts[-1] == jnp.float32(eps)
        assert np.all(np.diff(np.asarray(ts)) < 0), (kind, ts)
    lam = jax.vmap(sde.log_snr)(sd.time_grid(sde, 10, "logsnr"))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=2e-3)
    sig = jnp.exp(-0.5 * jax.vmap(sde.log_snr)(sd.time_grid(sde, 10, "edm")))
    root = sig ** (1 / 7)
    np.testing.assert_allclose(np.diff(root), np.diff(root)[0], rtol=2e-3)
    ts = np.asarray(sd.time_grid(sde, 10, "quadratic"), np.float64)
    quad = np.sqrt(np.maximum(ts - ts[-1], 0.0) / (ts[0] - ts[-1]))
    np.testing.assert_allclose(np.diff(quad), -0.1, atol=1e-5)


def test_bad_input_names_the_argument():
    sde, mix = SDES["vp"], MIXTURES["2d"]()
    score = mix.score(sde)
    with pytest.raises(ValueError, match="snr"):
        sd.Langevin(snr=0.0)
    with pytest.raises(ValueError, match="snr"):
        sd.AnnealedLangevin(snr=-1.0)
    with pytest.raises(ValueError, match="num_steps"):
        sd.Langevin(num_steps=0)
    with pytest.raises(ValueError, match="norms"):
        sd.Langevin(norms="per-example")
    with pytest.raises(ValueError, match="batch_norm"):
        sd.Langevin(norms="noise", batch_norm=True)
    with pytest.raises(ValueError, match="num_steps"):
        sd.AnnealedLangevin(num_steps=0)
    with pytest.raises(ValueError, match="predictor"):
        sd.PredictorCorrector(dfx.Tsit5())
    with pytest.raises((ValueError, TypeError), match="corrector"):
        sd.PredictorCorrector(sd.ReverseDiffusion(), sd.ReverseDiffusion())
    with pytest.raises(ValueError, match="eta"):
        sd.StochasticDDIM(eta=1.5)
    with pytest.raises(ValueError, match="StochasticDDIM"):
        sd.DDIM(eta=0.5)  # the stochastic family is its own class
    with pytest.raises(ValueError, match="churn"):
        sd.StochasticEDMHeun(churn=0.5)
    with pytest.raises(ValueError, match="StochasticEDMHeun"):
        sd.EDMHeun(churn=0.1)
    # Ancestral and PC solvers handed terms they cannot use.
    with pytest.raises(ValueError, match="method|SDE-only"):
        sd.sample(
            jr.key(0),
            sde,
            score,
            (4, 2),
            solver=sd.AncestralSampling(),
            method="ode",
            num_steps=5,
        )
    ode = sd.probability_flow_term(sde, score, reverse_time=True)
    y = jnp.zeros((4, 2))
    for solver in (sd.AncestralSampling(), sd.PredictorCorrector()):
        with pytest.raises(ValueError, match="terms"):
            solver.step(ode, -1.0, -0.9, y, None, None, False)
    with pytest.raises(ValueError, match="terms"):
        plain = dfx.ODETerm(lambda t, y, args: -y)
        sd.DPMSolverPP2M().step(plain, -1.0, -0.9, y, None, None, False)
    # Time grids.
    with pytest.raises(ValueError, match="num_steps"):
        sd.time_grid(sde, 0)
    with pytest.raises(ValueError, match="kind"):
        sd.time_grid(sde, 10, kind="cosine")
    with pytest.raises(ValueError, match="eps"):
        sd.time_grid(sde, 10, eps=2.0)
    with pytest.raises(ValueError, match="rho"):
        sd.time_grid(sde, 10, kind="edm", rho=0.0)
    bad_grids = [
        jnp.array([1.0, 0.3, 0.5, 1e-3]),
        jnp.array([1.2, 0.5, 1e-3]),
        jnp.array([1.0, 0.5, 1e-4]),
    ]
    for ts in bad_grids:
        with pytest.raises(ValueError, match="stepsize_controller"):
            sd.sample(
                jr.key(0),
                sde,
                score,
                (4, 2),
                solver=sd.DPMSolverPP2M(),
                stepsize_controller=dfx.StepTo(ts),
            )
    # Multistep solvers: orders, variants, grids too short for the order.
    with pytest.raises(ValueError, match="order"):
        sd.UniPC(order=4)
    with pytest.raises(ValueError, match="order"):
        sd.DEIS(order=0)
    with pytest.raises(ValueError, match="variant"):
        sd.UniPC(variant="bh3")
    with pytest.raises(ValueError, match="eta"):
        sd.StochasticDPMSolverPP(eta=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        sd.sample(jr.key(0), sde, score, (4, 2), solver=sd.UniPC(3), num_steps=2)
    with pytest.raises(ValueError, match="stepsize_controller"):
        sd.sample(
            jr.key(0),
            sde,
            score,
            (4, 2),
            solver=sd.DPMSolverPP3M(),
            stepsize_controller=dfx.StepTo(sd.time_grid(sde, 2)),
        )
    # Restart: its interval inside the time range, t_min on the grid, an ODE solver.
    grid = dfx.StepTo(restart_grid(sde, 4, 0.2, 3))
    for bad, match in [
        (sd.Restart(sd.DDIM(), 0.2, 1.5), "t_max"),
        (sd.Restart(sd.DDIM(), 1e-4, 0.5), "t_min"),
        (sd.Restart(sd.DDIM(), 0.25, 0.5), "stepsize_controller"),
    ]:
        with pytest.raises(ValueError, match=match):
            sd.sample(
                jr.key(0), sde, score, (4, 2), solver=bad, stepsize_controller=grid
            )
    with pytest.raises(ValueError, match="t_min"):
        sd.Restart(sd.DDIM(), 0.5, 0.2)
    with pytest.raises(ValueError, match="solver"):
        sd.Restart(sd.StochasticDDIM(), 0.2, 0.5)
    with pytest.raises(ValueError, match="num_steps"):
        sd.Restart(sd.UniPC(3), 0.2, 0.5, num_steps=2)
    with pytest.raises(ValueError, match="start"):
        sd.time_grid(sde, 4, start=2.0)
    with pytest.raises(ValueError, match="adaptive"):
        sd.sample(
            jr.key(0),
            sde,
            score,
            (4, 2),
            solver=sd.DPMSolverPP2M(),
            stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3),
        )


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize(
    "solver, steps",
    [
        (sd.StochasticDDIM(eta=0.5), 150),
        (sd.AncestralSampling(upper_variance=True), 1000),
    ],
    ids=["ddim_eta_half", "ancestral_upper_variance"],
)
def test_other_family_members_reproduce_mixture(sde_name, solver, steps):
    # DDIM between its deterministic and ancestral ends, and ancestral sampling with
    # the upper (forward-transition) variance: the same exact 2-D checks.
    sde, mix = SDES[sde_name], MIXTURES["2d"]()
    out = sd.sample(
        jr.key(7), sde, mix.score(sde), (2000, mix.dim), solver=solver, num_steps=steps
    )
    check_reproduces(mix, out.samples, jr.key(99))
