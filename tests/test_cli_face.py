"""The user's face (issue 14, points 1-4): `scoresde bench` and `sd.bench`,
`scoresde likelihood` and `bits_per_dim(num_levels=...)`, the solver names and
`scoresde solvers`, and run-time failures as one line (exit code 2) in the CLI and as
`sd.SolveError` in the library. Checkpoints are written without training (small
randomly initialised MLPs; no compilation to make them)."""

import json
import math
import re
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import run_cli, write_checkpoint

import scoresde_diffrax as sd
from scoresde_diffrax import cli
from scoresde_diffrax.cli._sampler_table import choose_solver, DEPRECATED, SOLVERS


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Untrained checkpoints (VP): an MLP on moons, the same with NaN weights, an MLP
    on the 8x8 digits."""
    root = tmp_path_factory.mktemp("face")
    vp = sd.VPSDE()
    moons = sd.data.Dataset(sd.data.moons(jr.key(0), 512), None, name="moons")
    net = sd.nn.MLPScore((2,), width=16, depth=1, key=jr.key(1))
    write_checkpoint(root / "moons", sd.EpsScore(net, vp), vp, moons)
    nan = jax.tree_util.tree_map(lambda a: a * jnp.nan if eqx_array(a) else a, net)
    write_checkpoint(root / "nan", sd.EpsScore(nan, vp), vp, moons)
    dnet = sd.nn.MLPScore((1, 8, 8), width=16, depth=1, key=jr.key(2))
    write_checkpoint(root / "digits", sd.EpsScore(dnet, vp), vp, sd.data.digits())
    return {k: str(root / k) for k in ("moons", "nan", "digits")}


def eqx_array(a):
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)


# ------------------------------------------------------------------ help, solvers


@pytest.mark.parametrize(
    "command, flags",
    [
        ("bench", ["--problem", "--solvers", "--nfe", "--metrics", "--out"]),
        ("likelihood", ["--checkpoint", "--divergence", "--split", "--out"]),
        ("solvers", []),
        ("sample", ["--solver", "--method", "--steps", "--max-steps", "--rtol"]),
    ],
)
def test_help_of_each_command(command, flags, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: scoresde {command}")
    for flag in flags:
        assert flag in out, flag
    if command == "sample":  # every solver name, none split over two lines
        for name in SOLVERS:
            assert re.search(rf"(^|[\s,]){re.escape(name)}([,\s]|$)", out), name


def test_solvers_table_lists_every_solver(capsys):
    code, out, _ = run_cli(["solvers"], capsys)
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:] if line}
    for name, e in SOLVERS.items():
        row = rows[name]
        assert row[1] == "/".join(m.upper() for m in e.all_methods)
        assert row[2] == (
            "adaptive" if e.adaptive else "fixed" + "," * (e.grid != "uniform")
        )
        assert str(e.score_evals_per_step()) in row[3:6]
    for old, (new, method) in DEPRECATED.items():
        said = f"{old} -> {new}" + (f" --method {method}" if method else "")
        assert said in out


def test_old_names_map_to_new_ones(capsys):
    """Each old name resolves to its new name and method, with one note line; the
    solver objects are the ones the old names built."""
    built = {
        "euler-heun-sde": (dfx.EulerHeun, "sde"),
        "heun-sde": (dfx.Heun, "sde"),
        "shark-adaptive": (dfx.ShARK, "sde"),
        "sra1-adaptive": (dfx.SRA1, "sde"),
        "ode-euler": (dfx.Euler, "ode"),
        "heun-ode": (dfx.Heun, "ode"),
        "midpoint-ode": (dfx.Midpoint, "ode"),
        "ode-tsit5": (dfx.Tsit5, "ode"),
        "dopri5-ode": (dfx.Dopri5, "ode"),
    }
    assert set(built) == set(DEPRECATED)
    for old, (cls, method) in built.items():
        choice = choose_solver(old, prog="scoresde sample")
        err = capsys.readouterr().err
        assert (choice.name, choice.method) == (
            DEPRECATED[old][0],
            method,
        )
        assert type(choice.sampler.solver) is cls and choice.sampler.method == method
        assert err.count("\n") == 1 and f"--solver {old} is deprecated" in err
        assert f"use --solver {choice.label}" in err


def test_old_name_samples_what_the_new_name_samples(ckpts, tmp_path, capsys):
    base = ["sample", "--checkpoint", ckpts["moons"], "--num-samples", "4", "--quiet"]
    code, _, err = run_cli(
        base
        + ["--solver", "heun-sde", "--steps", "3", "--out", str(tmp_path / "a.npy")],
        capsys,
    )
    assert code == 0 and "deprecated" in err
    code, out, err = run_cli(
        base
        + ["--solver", "heun", "--method", "sde", "--steps", "3"]
        + ["--out", str(tmp_path / "b.npy")],
        capsys,
    )
    assert code == 0 and err == ""
    assert "(heun --method sde, 3 steps, 6 score evaluations each)" in out
    np.testing.assert_array_equal(
        np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    )


def test_sample_restart_spends_its_steps(ckpts, tmp_path, capsys):
    """`--solver restart --steps 12` is `sd.restart_schedule(sde, 12)` (the same
    samples) and spends 12 score evaluations, as the table's 1 per step says."""
    out_npy = tmp_path / "r.npy"
    code, out, err = run_cli(
        ["sample", "--checkpoint", ckpts["moons"], "--num-samples", "4"]
        + [
            "--solver",
            "restart",
            "--steps",
            "12",
            "--seed",
            "2",
            "--out",
            str(out_npy),
        ],
        capsys,
    )
    assert code == 0, err
    # 9 steps on the main grid + one restart of 3 steps
    assert "(restart, 9 steps, 12 score evaluations each)" in out, out
    model, meta = sd.load_checkpoint(ckpts["moons"])
    sde = sd.sde_from_description(meta["sde"])
    solver, grid = sd.restart_schedule(sde, 12)
    res = sd.sample(
        jr.key(2),
        sde,
        sd.nn.loop_friendly(model),
        (4, 2),
        solver=solver,
        stepsize_controller=grid,
    )
    assert (
        int(res.stats["num_score_evals"])
        == 12 * SOLVERS["restart"].score_evals_per_step()
    )
    d = meta["data"]
    want = (np.asarray(res.samples) - d["shift"]) / d["scale"]
    np.testing.assert_array_equal(np.load(out_npy), want)


# ------------------------------------------------------------------ failures


def test_max_steps_is_one_line_and_the_api_raises_the_same(ckpts, tmp_path, capsys):
    code, out, err = run_cli(
        ["sample", "--checkpoint", ckpts["moons"], "--num-samples", "4"]
        + ["--solver", "tsit5", "--max-steps", "2", "--out", str(tmp_path / "x.npy")],
        capsys,
    )
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err == (
        "scoresde sample: error: the solve reached --max-steps 2 before its end time; "
        "raise --max-steps, or loosen --rtol/--atol\n"
    )
    assert not (tmp_path / "x.npy").exists()
    # An old adaptive name keeps its old --steps: the maximum number of steps.
    code, _, err = run_cli(
        ["sample", "--checkpoint", ckpts["moons"], "--num-samples", "4"]
        + ["--solver", "ode-tsit5", "--steps", "2", "--out", str(tmp_path / "x.npy")],
        capsys,
    )
    note, error = err.splitlines()
    assert code == 2 and "use --solver tsit5" in note
    assert error.endswith(
        "reached --max-steps 2 before its end time; raise --max-steps, or loosen --rtol/--atol"
    )
    # The library: the same failure, the same words first, as an exception.
    model, meta = sd.load_checkpoint(ckpts["moons"])
    sde = sd.sde_from_description(meta["sde"])
    with pytest.raises(sd.SolveError) as e:
        sd.sample(
            jr.key(0),
            sde,
            model,
            (4, 2),
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-5),
            max_steps=2,
        )
    assert isinstance(e.value, RuntimeError) and e.value.kind == "max_steps"
    assert str(e.value).startswith(
        "sample: the solve reached max_steps=2 before its end time; raise max_steps"
    )


def test_non_finite_samples_are_one_line(ckpts, tmp_path, capsys):
    code, _, err = run_cli(
        ["sample", "--checkpoint", ckpts["nan"], "--num-samples", "4"]
        + ["--solver", "euler", "--steps", "2", "--out", str(tmp_path / "x.npy")],
        capsys,
    )
    # Before the error, the solve's progress lines (stderr is not a terminal here).
    *progress, error = err.splitlines()
    assert code == 2 and error.startswith("scoresde sample: error: "), err
    assert all(line.startswith("sample: ") for line in progress), err
    assert "non-finite" in error and "--steps" in error and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["sample", "--solver", "tsit5", "--steps", "5"], "--steps is for fixed-step"),
        (["sample", "--solver", "euler", "--rtol", "1e-3"], "--rtol is for adaptive"),
        (["sample", "--solver", "euler", "--max-steps", "9"], "--max-steps is for"),
        (["sample", "--solver", "tsit5", "--method", "sde"], "--method sde: --solver"),
        (["sample", "--solver", "tsit"], "--solver: unknown solver 'tsit'; choose"),
        (["bench", "--problem", "cube:3", "--solvers", "euler"], "--problem must be"),
        (["bench", "--problem", "mixture:D=x,K=2", "--solvers", "euler"], "--problem"),
        (["bench", "--problem", "mixture:D=2,K=2", "--solvers", "eulr"], "--solvers:"),
        (
            ["bench", "--problem", "mixture:D=2,K=2", "--solvers", "pc", "--nfe", "1"],
            "--nfe: an NFE budget of 1 is below what pc needs",
        ),
        (
            [
                "bench",
                "--problem",
                "mixture:D=2,K=2",
                "--solvers",
                "euler",
                "--nfe",
                "0",
            ],
            "--nfe",
        ),
        (
            [
                "bench",
                "--problem",
                "mixture:D=2,K=2",
                "--solvers",
                "euler",
                "--metrics",
                "fid",
            ],
            "--metrics: unknown fid",
        ),
        (
            ["sample", "--solver", "restart", "--steps", "4"],
            "--steps 4 is below what --solver restart needs: at least 5",
        ),
        (
            ["bench", "--problem", "mixture:D=2,K=2", "--solvers", "restart"]
            + ["--nfe", "4,10"],
            "--nfe: an NFE budget of 4 is below what restart needs",
        ),
        (["likelihood", "--divergence", "gaussian:0"], "--divergence must be"),
        (["likelihood", "--num-examples", "99999"], "--num-examples must be at most"),
        (["likelihood", "--out", "ll.txt"], "--out must name a .npy"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(ckpts, tmp_path, capsys, argv, needle):
    command, rest = argv[0], argv[1:]
    if command == "sample":
        rest += ["--checkpoint", ckpts["moons"], "--num-samples", "2"]
        rest += ["--out", str(tmp_path / "x.npy")]
    elif command == "bench":
        rest += ["--out", str(tmp_path / "b")]
    else:
        ck = ckpts["moons"] if "moons" in rest else ckpts["digits"]
        rest += ["--checkpoint", ck]
    code, out, err = run_cli([command, *rest], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert needle in err, err


def test_bench_out_that_cannot_be_written(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(
        ["bench", "--problem", "mixture:D=2,K=2", "--solvers", "euler"]
        + ["--out", str(tmp_path / "file" / "b")],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "--out" in err, err


# ------------------------------------------------------------------ bench


def test_bench_command_writes_what_the_runner_returns(tmp_path, capsys):
    out_dir = tmp_path / "bench"
    code, out, err = run_cli(
        [
            "bench",
            "--problem",
            "mixture:D=2,K=2",
            "--solvers",
            "euler-maruyama",
        ]
        + [
            "--nfe",
            "4,8",
            "--num-samples",
            "100",
            "--seed",
            "3",
            "--out",
            str(out_dir),
        ],
        capsys,
    )
    assert code == 0, err
    lines = (out_dir / "records.jsonl").read_text().splitlines()
    got = [json.loads(line) for line in lines]
    table = (out_dir / "table.md").read_text()
    assert table in out
    assert (out_dir / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    problem = sd.bench.MixtureProblem(
        sd.bench.mixture_preset(2, 2), sd.VPSDE(), "mixture D=2,K=2,vp"
    )
    samplers = [sd.bench.Sampler("euler-maruyama", dfx.Euler(), "sde")]
    records = sd.bench.run(jr.key(3), [problem], samplers, [4, 8], num_samples=100)
    assert [(g["sampler"], g["nfe"], g["steps"]) for g in got] == [
        ("euler-maruyama", 4, 4),
        ("euler-maruyama", 8, 8),
    ]
    for g, r in zip(got, records, strict=True):
        # the verdict and its test, in the records and the table
        assert g["verdict"] == r.verdict and r.verdict.startswith("best")
        assert g["verdict_test"] == sd.bench.VERDICT_TEST
        assert f"| {r.verdict} |" in table
        assert (g["sampler"], g["nfe"], g["nfe_budget"]) == (
            r.sampler,
            r.nfe,
            r.nfe_budget,
        )
        assert set(g["metrics"]) == set(sd.bench.MIXTURE_METRICS)
        for name, m in g["metrics"].items():
            assert m["value"] == r.metrics[name][0] and m["se"] == r.metrics[name][1]
            assert m["floor"] == r.floor[name][0]
            # the table shows the same figures
            assert f"{r.metrics[name][0]:.4g} ± {r.metrics[name][1]:.2g}" in table
    # The figures are the metrics of the samples: recompute one by hand.
    # (problem 0's sample key, folded with the sampler's index: independent draws)
    x = sd.sample(
        jr.fold_in(jr.split(jr.fold_in(jr.key(3), 0))[1], 0),
        problem.sde,
        problem.score(),
        (100, 2),
        solver=dfx.Euler(),
        method="sde",
        num_steps=8,
    ).samples
    rep = sd.metrics.mixture_report(problem.mixture, x)
    assert got[1]["metrics"]["variance_ratio"]["value"] == pytest.approx(
        rep.variance_ratio
    )
    # More steps of the same solver are closer to the truth; the floor is true samples.
    vr = [abs(g["metrics"]["variance_ratio"]["value"] - 1) for g in got[:2]]
    assert vr[1] < vr[0]


def test_bench_on_a_checkpoint_uses_held_data(ckpts, tmp_path, capsys):
    code, out, err = run_cli(
        ["bench", "--problem", f"checkpoint:{ckpts['moons']}", "--solvers", "euler"]
        + ["--nfe", "3", "--num-samples", "50", "--out", str(tmp_path / "b")],
        capsys,
    )
    assert code == 0, err
    (rec,) = [json.loads(x) for x in (tmp_path / "b" / "records.jsonl").open()]
    m = rec["metrics"]["sliced_w2"]
    assert rec["nfe"] == 3 and rec["problem"].startswith("moons")
    # an untrained model is far from the data; true samples are not
    assert m["floor"] is not None and 0 < m["floor"] < m["value"]


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.SubVPSDE(), sd.VESDE()])
def test_restart_schedule_splits_the_budget(sde):
    """Main grid steps + restarts x segment steps = the budget; t_min on the grid."""
    for budget in (5, 6, 13, 20, 50, 1000):
        solver, grid = sd.restart_schedule(sde, budget)
        ts = np.asarray(grid.ts)
        main = len(ts) - 1
        assert main + solver.num_restarts * solver.num_steps == budget, budget
        assert solver.num_restarts == max(1, budget // 10)
        assert np.all(np.diff(ts) < 0) and ts[0] == sde.T
        assert np.isclose(ts[1:-1], solver.t_min, rtol=1e-5).sum() == 1
        solver.check_grid(ts, float(sde.T), float(ts[-1]), "ts")  # what sample checks
    with pytest.raises(ValueError, match="at least 5"):
        sd.restart_schedule(sde, 4)


def test_bench_restart_spends_each_budget(tmp_path, capsys):
    """`--solvers restart` spends exactly each --nfe budget (counted by the solve), as
    `scoresde solvers` says (1 evaluation per step, segments included)."""
    assert SOLVERS["restart"].score_evals_per_step() == 1
    code, out, err = run_cli(
        ["bench", "--problem", "mixture:D=2,K=2", "--solvers", "restart,euler"]
        + ["--nfe", "5,12,20", "--num-samples", "64", "--out", str(tmp_path / "b")],
        capsys,
    )
    assert code == 0, err
    got = [json.loads(x) for x in (tmp_path / "b" / "records.jsonl").open()]
    rows = [(g["sampler"], g["nfe_budget"], g["nfe"], g["steps"]) for g in got]
    assert rows[:3] == [
        ("restart", 5, 5, 2),  # 2 main steps + 1 restart of 3
        ("restart", 12, 12, 9),  # 9 + 1 x 3
        ("restart", 20, 20, 14),  # 14 + 2 x 3
    ], rows
    assert all(g["nfe"] == g["nfe_budget"] for g in got)


class _FlatScore(eqx.Module):
    """A score on vectors, for examples of shape `shape`."""

    score: Callable
    shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, t, x):
        return self.score(t, x.reshape(-1)).reshape(self.shape)


def test_bench_fd_digits_on_a_digits_problem():
    """`fd_digits` for 8x8 digits (no checkpoint: the exact score of a per-class
    diagonal Gaussian mixture fitted to the train digits, in model units [-1, 1]): the
    figure is FD-digits of the samples against the first held digits, the floor that
    of as many other held digits, both with a bootstrap standard error."""
    train, labels = sd.data.digits_array("train")
    flat = train.reshape(len(train), 64) * 2 - 1
    means = np.stack([flat[labels == k].mean(0) for k in range(10)])
    stds = np.stack([flat[labels == k].std(0) for k in range(10)]) + 0.05
    sde = sd.VPSDE()
    mix = sd.GaussianMixture(jnp.asarray(means), jnp.asarray(stds))
    test, _ = sd.data.digits_array("test")  # (360, 1, 8, 8) in [0, 1]
    held = test[:200] * 2 - 1
    problem = sd.bench.DataProblem(
        sde, _FlatScore(mix.score(sde), (1, 8, 8)), held, "digit mixture"
    )
    assert problem.metrics == ("sliced_w2", "fd_digits")
    dpm = sd.bench.Sampler("dpm", sd.DPMSolverPP2M(), "ode", grid="logsnr")
    (rec,) = sd.bench.run(jr.key(0), [problem], [dpm], [10], num_samples=100)
    assert set(rec.metrics) == {"sliced_w2", "fd_digits"}
    x = sd.sample(
        # the first problem's sampling key, then the first sampler's own draws
        jr.fold_in(jr.split(jr.fold_in(jr.key(0), 0))[1], 0),
        sde,
        problem.score,
        (100, 1, 8, 8),
        solver=sd.DPMSolverPP2M(),
        stepsize_controller=dfx.StepTo(sd.time_grid(sde, 10, "logsnr")),
    ).samples
    images = np.clip((np.asarray(x) + 1) / 2, 0, 1)
    want = sd.metrics.fd_digits_with_se(images, test[:100])
    np.testing.assert_allclose(rec.metrics["fd_digits"], want, rtol=1e-5)
    floor = sd.metrics.fd_digits_with_se(test[100:200], test[:100])
    np.testing.assert_allclose(rec.floor["fd_digits"], floor, rtol=1e-5)
    assert rec.metrics["fd_digits"][1] > 0 and rec.floor["fd_digits"][1] > 0
    # Noise is far from digits: its FD-digits is many standard errors above the floor.
    noise = np.asarray(jr.uniform(jr.key(1), (100, 1, 8, 8)))
    fd, se = sd.metrics.fd_digits_with_se(noise, test[:100])
    assert fd > floor[0] + 4 * math.hypot(se, floor[1]), (fd, se, floor)
    # Not digits: fd_digits does not apply, and the error lists what does.
    moons = sd.bench.DataProblem(sde, mix.score(sde), np.zeros((200, 2)), "moons")
    with pytest.raises(
        ValueError, match="do not apply to moons; choose from sliced_w2"
    ):
        sd.bench.run(
            jr.key(0), [moons], [dpm], [10], num_samples=100, metrics=["fd_digits"]
        )


def test_bootstrap_se_of_fd_digits_is_the_spread_over_sample_sets():
    """The bootstrap standard error of FD-digits against the spread of the figure over
    disjoint sets of real digits (7 sets of 180 train digits, the reference 180 test
    digits; measured: spread 5.5, bootstrap 5.5-9.1)."""
    train, _ = sd.data.digits_array("train")
    test, _ = sd.data.digits_array("test")
    perm = np.random.default_rng(0).permutation(len(train))
    runs = [
        sd.metrics.fd_digits_with_se(train[perm[i * 180 : (i + 1) * 180]], test[:180])
        for i in range(7)
    ]
    spread = np.std([v for v, _ in runs], ddof=1)
    se = np.median([s for _, s in runs])
    assert 0.4 < se / spread < 2.5, (se, spread)
    with pytest.raises(ValueError, match="num_resamples"):
        sd.metrics.fd_digits_with_se(test[:10], test[10:20], num_resamples=1)


def test_runner_checks_budgets_and_metrics():
    problem = sd.bench.MixtureProblem(sd.bench.mixture_preset(2, 2), sd.VPSDE())
    pc = sd.bench.Sampler("pc", sd.PredictorCorrector(), "sde", evals_per_step=2)
    # a budget buys budget // evals_per_step steps, on the sampler's grid
    assert pc.sample_kwargs(problem.sde, 5)["num_steps"] == 2
    dpm = sd.bench.Sampler("dpm", sd.DPMSolverPP2M(), "ode", grid="logsnr")
    ts = dpm.sample_kwargs(problem.sde, 7)["stepsize_controller"].ts
    np.testing.assert_allclose(ts, sd.time_grid(problem.sde, 7, "logsnr"))
    with pytest.raises(ValueError, match="below what pc needs"):
        sd.bench.run(jr.key(0), [problem], [pc], [1])
    with pytest.raises(ValueError, match="do not apply"):
        sd.bench.run(jr.key(0), [problem], [pc], [4], metrics=["fd_digits"])


# ------------------------------------------------------------------ likelihood


def test_bits_per_dim_takes_levels():
    x = jnp.full((3, 4), 0.25)
    lp = jnp.array([-1.0, 0.5, 2.0])
    np.testing.assert_allclose(
        sd.bits_per_dim(lp, x, num_levels=256), sd.bits_per_dim(lp, x, num_bits=8)
    )
    np.testing.assert_allclose(
        sd.bits_per_dim(lp, x), sd.bits_per_dim(lp, x, num_bits=8)
    )
    # 17 levels in [-1, 1]: + log2(17) - log2(2) per dimension
    xs = jnp.zeros((3, 4))
    want = -np.asarray(lp) / (4 * math.log(2)) + math.log2(17) - 1
    got = sd.bits_per_dim(lp, xs, data_range=(-1.0, 1.0), num_levels=17)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        sd.bits_per_dim(lp, x, num_bits=8, num_levels=256)
    with pytest.raises(ValueError, match="num_levels"):
        sd.bits_per_dim(lp, x, num_levels=1)
    y = sd.dequantize(jr.key(0), jnp.array([[0, 16]]), num_levels=17)
    assert 0 <= float(y[0, 0]) < 1 / 17 and 16 / 17 <= float(y[0, 1]) < 1
    with pytest.raises(ValueError, match=r"\[0, 16\] \(17 levels\)"):
        sd.dequantize(jr.key(0), jnp.array([[17.0]]), num_levels=17)


def test_likelihood_command_matches_log_likelihood(ckpts, tmp_path, capsys):
    npy = tmp_path / "ll.npy"
    code, out, err = run_cli(
        ["likelihood", "--checkpoint", ckpts["digits"], "--num-examples", "4"]
        + ["--seed", "1", "--out", str(npy)],
        capsys,
    )
    assert code == 0, err
    # stderr is not a terminal here: plain progress lines, the last at the end
    assert err.splitlines()[-1].startswith("likelihood: 100% of the solve, ")
    got = np.load(npy)

    model, meta = sd.load_checkpoint(ckpts["digits"])
    sde = sd.sde_from_description(meta["sde"])
    x = np.asarray(sd.data.digits("test").x[:4])
    k = np.round(x * 16)
    key_deq, key_probe = jr.split(jr.key(1))
    y = sd.dequantize(key_deq, k, num_levels=17, data_range=(-1.0, 1.0))
    ref = sd.log_likelihood(
        key_probe,
        sde,
        sd.nn.loop_friendly(model),
        y,
        divergence=sd.Hutchinson(),
        progress_meter=dfx.TqdmProgressMeter(),  # as the CLI: the same program
    )
    np.testing.assert_allclose(got, np.asarray(ref.log_prob), rtol=1e-5)
    bpd = np.asarray(
        sd.bits_per_dim(ref.log_prob, y, data_range=(-1.0, 1.0), num_levels=17)
    )
    se = bpd.std(ddof=1) / 2
    line = re.search(r"([-\d.]+) \+- ([-\d.]+) bits/dim \(17 levels\)", out)
    assert line, out
    assert float(line.group(1)) == pytest.approx(bpd.mean(), abs=1e-4)
    assert float(line.group(2)) == pytest.approx(se, abs=1e-4)
    assert "4 examples of digits (test)" in out


def test_likelihood_of_your_own_data(ckpts, tmp_path, capsys):
    """`--data PATH`: all the file's examples (8-bit images: 256 levels), scored as
    `sd.log_likelihood` scores them; `--split` is for the built-in data sets."""
    k = np.asarray(jr.randint(jr.key(5), (4, 1, 8, 8), 0, 256), np.uint8)
    path = tmp_path / "mine.npy"
    np.save(path, k)
    argv = ["likelihood", "--checkpoint", ckpts["digits"], "--data", str(path)]
    code, out, err = run_cli(
        argv + ["--seed", "1", "--out", str(tmp_path / "ll.npy")], capsys
    )
    assert code == 0, err
    assert "4 examples of" in out and "(all)" in out and "(256 levels)" in out
    model, meta = sd.load_checkpoint(ckpts["digits"])
    key_deq, key_probe = jr.split(jr.key(1))
    y = sd.dequantize(key_deq, k, num_levels=256, data_range=(-1.0, 1.0))
    ref = sd.log_likelihood(
        key_probe,
        sd.sde_from_description(meta["sde"]),
        sd.nn.loop_friendly(model),
        y,
        divergence=sd.Hutchinson(),
        progress_meter=dfx.TqdmProgressMeter(),
    )
    np.testing.assert_allclose(np.load(tmp_path / "ll.npy"), ref.log_prob, rtol=1e-5)
    capsys.readouterr()  # the reference's progress meter
    code, _, err = run_cli(argv + ["--split", "test"], capsys)
    assert code == 2 and err.count("\n") == 1 and "--split applies" in err, err


def test_sample_progress_bar(ckpts, tmp_path, capsys):
    base = ["sample", "--checkpoint", ckpts["moons"], "--num-samples", "4"]
    base += ["--solver", "euler-maruyama", "--steps", "5"]
    code, _, err = run_cli(
        base + ["--out", str(tmp_path / "a.npy"), "--progress"], capsys
    )
    assert code == 0 and "100.00%" in err, err
    code, _, err = run_cli(base + ["--out", str(tmp_path / "b.npy"), "--quiet"], capsys)
    assert code == 0 and err == ""
    np.testing.assert_array_equal(
        np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    )
    code, _, err = run_cli(
        base + ["--out", str(tmp_path / "c.npy"), "--quiet", "--progress"], capsys
    )
    assert code == 2 and "not allowed with argument" in err and err.count("\n") == 1


def test_likelihood_on_a_toy_scores_a_fresh_held_out_set(ckpts, tmp_path, capsys):
    """A generated 2-D toy's default (test) split is 2048 fresh points, not its
    training points (it was refused: "pass --split train")."""
    scores = {}
    for split in ("test", "train"):
        npy = tmp_path / f"{split}.npy"
        code, out, err = run_cli(
            ["likelihood", "--checkpoint", ckpts["moons"], "--data", "moons"]
            + ["--split", split, "--num-examples", "8", "--quiet", "--out", str(npy)],
            capsys,
        )
        assert code == 0, err
        assert f"8 examples of moons ({split})" in out
        scores[split] = np.load(npy)
    assert np.all(np.isfinite(scores["test"]))
    assert not np.allclose(scores["test"], scores["train"])


def test_bench_errors_name_their_flag_by_argument(ckpts, tmp_path, capsys):
    """`sd.bench` errors carry the argument at fault (`BenchArgumentError.argument`),
    and `scoresde bench` names its flag from it (not from the message)."""
    code, _, err = run_cli(
        ["bench", "--problem", f"checkpoint:{ckpts['digits']}", "--solvers", "euler"]
        + ["--nfe", "2", "--num-samples", "400", "--out", str(tmp_path / "b")],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "--num-samples: `num_samples` = 400 exceeds" in err, err
    problem = sd.bench.MixtureProblem(sd.bench.mixture_preset(2, 2), sd.VPSDE())
    euler = sd.bench.Sampler("euler", dfx.Euler(), "ode")
    with pytest.raises(sd.bench.BenchArgumentError) as e:
        sd.bench.run(jr.key(0), [problem], [euler], [2], metrics=["fd_digits"])
    assert e.value.argument == "metrics"
    with pytest.raises(sd.bench.BenchArgumentError) as e:
        sd.bench.run(jr.key(0), [problem], [euler], [0])
    assert e.value.argument == "nfe_budgets"


def test_one_sampler_specification_for_the_api_and_the_cli():
    """The CLI's table holds `sd.bench.Sampler`s; evaluations per step are counted
    from the solver (a wrong hand-written count is refused); one default tolerance;
    the older `SolverEntry` + `register_solver` still add a name."""
    assert all(isinstance(s, sd.bench.Sampler) for s in SOLVERS.values())
    assert all(name == s.name for name, s in SOLVERS.items())
    assert SOLVERS["tsit5"].rtol == sd.bench.Sampler("t", dfx.Tsit5(), "ode").rtol
    assert sd.bench.DEFAULT_RTOL == sd.bench.DEFAULT_ATOL == 1e-5
    heun = sd.bench.Sampler("heun", dfx.Heun(), "ode", evals_per_step=3)
    with pytest.raises(sd.bench.BenchArgumentError, match="evaluates the score 2"):
        heun.score_evals_per_step()
    assert SOLVERS["heun"].score_evals_per_step() == 2
    sde = sd.VPSDE()
    kw = SOLVERS["dpm-solver++2m"].sample_kwargs(sde, 7)
    np.testing.assert_allclose(
        kw["stepsize_controller"].ts, sd.time_grid(sde, 7, "logsnr")
    )
    assert SOLVERS["pc"].step_kwargs(sde, 7)["num_steps"] == 7
    assert SOLVERS["pc"].sample_kwargs(sde, 7)["num_steps"] == 3  # 2 per step
    entry = cli.SolverEntry(dfx.Midpoint, "ode", help="midpoint again")
    try:
        cli.register_solver("midpoint-again", entry)
        choice = choose_solver("midpoint-again")
        assert choice.sampler.help == "midpoint again"
        assert choice.sample_kwargs(sde)["num_steps"] == 1000
    finally:
        SOLVERS.pop("midpoint-again", None)
