"""The `scoresde` command: train -> sample end to end (in process), and user errors
(one line on stderr, exit code 2, no traceback)."""

import contextlib
import io
import os
import pathlib
import subprocess
import sys

import diffrax as dfx
import jax.random as jr
import numpy as np
import pytest
import tomllib
from helpers import cli_args, run_cli

import scoresde_diffrax as sd
from scoresde_diffrax import cli


TINY = dict(steps_per_call=10, batch_size=32, quiet=True)
MOONS_MLP = dict(data="moons", sde="vp", model="mlp")


def test_train_sample_resume_end_to_end(tmp_path, capsys):
    ck = tmp_path / "ck"
    code, out, err = run_cli(
        cli_args(
            "train",
            **MOONS_MLP,
            steps=20,
            seed=1,
            out=ck,
            checkpoint_every=10,
            **TINY,
        ),
        capsys,
    )
    assert code == 0, err
    assert "20 steps" in out and (ck / "ckpt_000000020.json").exists()
    # Resume to 30 steps.
    code, out, err = run_cli(
        cli_args("train", **MOONS_MLP, steps=30, seed=1, out=ck, resume=True, **TINY),
        capsys,
    )
    assert code == 0, err
    assert "10 steps" in out and (ck / "ckpt_000000030.json").exists()
    npy, png = tmp_path / "s.npy", tmp_path / "s.png"
    em = dict(checkpoint=ck, num_samples=50, solver="euler-maruyama", steps=20)
    code, out, err = run_cli(cli_args("sample", **em, seed=0, out=npy, png=png), capsys)
    assert code == 0, err
    x = np.load(npy)
    assert x.shape == (50, 2) and np.all(np.isfinite(x))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same seed, same samples; an adaptive ODE solver works too.
    code, _, err = run_cli(cli_args("sample", **em, out=tmp_path / "t.npy"), capsys)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), x)
    code, out, err = run_cli(
        cli_args(
            "sample",
            checkpoint=ck,
            num_samples=8,
            solver="tsit5",
            out=tmp_path / "o.npy",
        ),
        capsys,
    )
    assert code == 0, err
    # Bad input that needs a checkpoint: another architecture cannot resume.
    code, _, err = run_cli(
        cli_args(
            "train",
            **(MOONS_MLP | dict(sde="ve")),
            steps=40,
            out=ck,
            resume=True,
            **TINY,
        ),
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "trained with" in err
    # A truncated checkpoint file.
    eqx_file = ck / "ckpt_000000030.eqx"
    eqx_file.write_bytes(eqx_file.read_bytes()[:50])
    code, _, err = run_cli(
        cli_args(
            "sample",
            checkpoint=ck,
            num_samples=8,
            solver="euler-maruyama",
            out=tmp_path / "u.npy",
        ),
        capsys,
    )
    assert code == 2 and "truncated or corrupt" in err and err.count("\n") == 1


_TRAIN5 = cli_args("train", **MOONS_MLP, steps=5)
_SAMPLE5 = dict(checkpoint="{d}", num_samples=5, solver="euler-maruyama")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            cli_args("train", **(MOONS_MLP | dict(data="cifar")), steps=5, out="{d}"),
            "argument --data: must be one of moons",
        ),
        (
            cli_args("train", **(MOONS_MLP | dict(model="resnet")), steps=5, out="{d}"),
            "invalid choice: 'resnet'",
        ),
        (
            cli_args("train", **MOONS_MLP, steps=0, out="{d}"),
            "--steps: must be an integer >= 1",
        ),
        (
            cli_args("train", **(MOONS_MLP | dict(model="unet")), steps=5, out="{d}"),
            "--model unet does not fit --data moons",
        ),
        ([*_TRAIN5, "--out", "{f}/sub"], "--out"),
        (
            cli_args("sample", **(_SAMPLE5 | dict(solver="rk99")), out="{d}/x.npy"),
            "--solver: unknown solver 'rk99'; choose from euler-maruyama",
        ),
        (
            cli_args(
                "sample",
                **(_SAMPLE5 | dict(checkpoint="{d}/nothing")),
                out="{d}/x.npy",
            ),
            "does not exist",
        ),
        (cli_args("sample", **_SAMPLE5, out="{d}/x.txt"), ".npy"),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = [a.format(d=tmp_path, f=blocker) for a in argv]
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--coordinator", "127.0.0.1:1234"], "--num-processes, --process-id missing"),
        (["--num-processes", "2", "--process-id", "0"], "--coordinator missing"),
        (
            ["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
            "--coordinator must be HOST:PORT",
        ),
        (
            ["--coordinator", "h:99999", "--num-processes", "2", "--process-id", "0"],
            "--coordinator must be HOST:PORT",
        ),
        (
            ["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "2"],
            "--process-id must be in 0..1 for --num-processes 2, got 2",
        ),
        (
            ["--coordinator", "h:1234", "--num-processes", "2", "--process-id", "-1"],
            "--process-id: must be an integer >= 0",
        ),
        (
            ["--coordinator", "h:1234", "--num-processes", "0", "--process-id", "0"],
            "--num-processes: must be an integer >= 1",
        ),
    ],
)
def test_distributed_flags_one_line_exit_2(tmp_path, capsys, flags, needle):
    # Checked before jax.distributed.initialize is called (nothing connects).
    code, out, err = run_cli([*_TRAIN5, "--out", str(tmp_path / "o"), *flags], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_console_script_declared_and_runs(tmp_path):
    meta = tomllib.loads(
        (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    )
    assert meta["project"]["scripts"]["scoresde"] == "scoresde_cli:console_main"
    # The entry point, in a fresh interpreter: --help, then a user error.
    cmd = [
        sys.executable,
        "-c",
        "import sys; from scoresde_cli import console_main; sys.argv[0] = 'scoresde'; console_main()",
    ]
    help_ = subprocess.run(
        [*cmd, "sample", "--help"],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).parents[1],
    )
    assert (
        help_.returncode == 0
        and "--solver" in help_.stdout
        and "euler-maruyama" in help_.stdout
    )
    # The same command as a module.
    as_module = subprocess.run(
        [sys.executable, "-m", "scoresde_diffrax.cli", "train", "--help"],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).parents[1],
    )
    assert as_module.returncode == 0, as_module.stderr
    assert as_module.stdout.startswith("usage: scoresde train")
    bad = subprocess.run(
        [
            *cmd,
            *cli_args(
                "sample",
                checkpoint=tmp_path,
                num_samples=1,
                solver="euler-maruyama",
                out=tmp_path / "x.npy",
            ),
        ],
        capture_output=True,
        text=True,
        cwd=pathlib.Path(__file__).parents[1],
    )
    assert (
        bad.returncode == 2
        and bad.stderr.count("\n") == 1
        and "no complete checkpoint" in bad.stderr
    ), bad.stderr


# ------------------------------------------------------------------ every CLI solver

# Steps of the fixed-step solvers, and the maximum of the adaptive ones. At 1000 steps
# the fixed-step probability-flow ODE solvers have converged (below) on the model of
# `tiny_checkpoint`, not at 200: the MLP's time embedding oscillates in t (frequencies
# up to 1000). (After 10 training steps, not 300, the score near eps is so large that
# the samples are of size ~250 and the ODE is stiff.)
STEPS, MAX_STEPS = 1000, 4096


def _paper_pc():
    return sd.PredictorCorrector(
        sd.ReverseDiffusion(), sd.Langevin(snr=0.16, batch_norm=True)
    )


# What each `--solver` name must stand for, written out here apart from the CLI's
# table: the solver, the terms, and the steps (fixed uniform steps, a PID controller's
# tolerance, or a `sd.time_grid` kind).
EXPECTED = {
    "euler-maruyama": (dfx.Euler, "sde", "uniform"),
    "euler-heun": (dfx.EulerHeun, "sde", "uniform"),
    "heun --method sde": (dfx.Heun, "sde", "uniform"),
    "shark": (dfx.ShARK, "sde", 1e-2),
    "sra1": (dfx.SRA1, "sde", 1e-2),
    "euler": (dfx.Euler, "ode", "uniform"),
    "heun": (dfx.Heun, "ode", "uniform"),
    "midpoint": (dfx.Midpoint, "ode", "uniform"),
    "tsit5": (dfx.Tsit5, "ode", 1e-5),
    "dopri5": (dfx.Dopri5, "ode", 1e-5),
    "pc": (_paper_pc, "sde", "uniform"),
    "reverse-diffusion": (sd.ReverseDiffusion, "sde", "uniform"),
    "ancestral": (sd.AncestralSampling, "sde", "uniform"),
    "sde-dpm-solver++2m": (lambda: sd.StochasticDPMSolverPP(2), "sde", "logsnr"),
    "edm-heun-churn": (sd.StochasticEDMHeun, "sde", "edm"),
    "ddim": (sd.DDIM, "ode", "uniform"),
    "dpm-solver++2m": (sd.DPMSolverPP2M, "ode", "logsnr"),
    "dpm-solver++3m": (sd.DPMSolverPP3M, "ode", "logsnr"),
    "unipc": (sd.UniPC, "ode", "logsnr"),
    "deis": (sd.DEIS, "ode", "logsnr"),
    "edm-heun": (sd.EDMHeun, "ode", "edm"),
    "restart": (None, "sde", "restart"),
}


def _sample_kwargs(name, sde, eps=None) -> dict:
    """The `sd.sample` arguments of `--solver name --steps STEPS` (or MAX_STEPS)."""
    make, method, steps = EXPECTED[name]
    if steps == "restart":  # STEPS score evaluations in all
        solver, grid = sd.restart_schedule(sde, STEPS, eps=eps)
        return dict(solver=solver, stepsize_controller=grid, method=method, eps=eps)
    kwargs = dict(solver=make(), method=method, eps=eps)
    if steps == "uniform":
        return kwargs | dict(num_steps=STEPS)
    if isinstance(steps, float):
        controller = dfx.PIDController(rtol=steps, atol=steps)
        return kwargs | dict(stepsize_controller=controller, max_steps=MAX_STEPS)
    ts = sd.time_grid(sde, STEPS, kind=steps, eps=eps)
    return kwargs | dict(stepsize_controller=dfx.StepTo(ts))


ODE_SECOND_ORDER = (
    "heun",
    "midpoint",
    "dpm-solver++2m",
    "dpm-solver++3m",
    "unipc",
    "deis",
    "edm-heun",
)
ODE_FIRST_ORDER = ("euler", "ddim")
ODE_ADAPTIVE = ("tsit5", "dopri5")


def _cli(argv) -> str:
    """`scoresde argv` in process (exit code 0 asserted); its stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    assert code == 0, err.getvalue()
    return out.getvalue()


def _reference(ck, key, shape, **kwargs):
    """`sd.sample` from the checkpoint `ck` as a user of the library would call it,
    in data units as the CLI writes them; and its stats."""
    model, meta = sd.load_checkpoint(ck)
    sde = sd.sde_from_description(meta["sde"])
    res = sd.sample(key, sde, sd.nn.loop_friendly(model), shape, **kwargs)
    d = meta["data"]
    x = (np.asarray(res.samples) - d["shift"]) / d["scale"]
    if len(d["data_shape"]) == 3:
        x = np.clip(x, 0.0, 1.0)
    return x, res.stats


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    ck = tmp_path_factory.mktemp("solvers") / "ck"
    _cli(
        cli_args(
            "train",
            **(MOONS_MLP | dict(sde="subvp")),
            steps=300,
            seed=0,
            out=ck,
            batch_size=32,
            quiet=True,
        )
    )
    return ck


@pytest.fixture(scope="module")
def cli_samples(tiny_checkpoint, tmp_path_factory):
    """Every `--solver`, once, from `tiny_checkpoint`: name -> (samples, stdout)."""
    d = tmp_path_factory.mktemp("samples")
    runs = {}
    for name in sorted(EXPECTED):
        npy = d / f"{name.split()[0]}-{EXPECTED[name][1]}.npy"
        adaptive = isinstance(EXPECTED[name][2], float)
        steps = ["--max-steps", str(MAX_STEPS)] if adaptive else ["--steps", str(STEPS)]
        stdout = _cli(
            ["sample", "--checkpoint", str(tiny_checkpoint), "--num-samples", "8"]
            + ["--solver", *name.split(), *steps, "--seed", "3"]
            + ["--out", str(npy)]
        )
        runs[name] = np.load(npy), stdout
    return runs


def test_cli_solvers_are_the_expected_ones():
    labels = {
        name if m == e.method else f"{name} --method {m}"
        for name, e in cli.SOLVERS.items()
        for m in e.all_methods
    }
    assert labels == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cli_solver_is_the_sd_sample_call(tiny_checkpoint, cli_samples, name):
    """`scoresde sample --solver name` writes what the equivalent `sd.sample` call
    returns (the same compiled program: bitwise), and reports its steps."""
    x, stdout = cli_samples[name]
    sde = sd.sde_from_description(sd.load_checkpoint(tiny_checkpoint)[1]["sde"])
    kwargs = _sample_kwargs(name, sde)
    ref, stats = _reference(tiny_checkpoint, jr.key(3), (8, 2), **kwargs)
    assert x.shape == (8, 2) and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, ref)
    nfe = int(stats["num_score_evals"])
    assert f"({name}, {int(stats['num_steps'])} steps, {nfe} score" in stdout
    entry = cli.SOLVERS[name.split()[0]]  # what `scoresde solvers` says
    # --steps STEPS costs evals/step x STEPS (restart: its segments' steps count too)
    steps = int(stats["num_steps"]) if entry.adaptive else STEPS
    per_step = entry.score_evals_per_step() * steps
    assert nfe == per_step + (1 if entry.adaptive and EXPECTED[name][1] == "ode" else 0)


def test_cli_ode_solvers_agree_at_many_steps(cli_samples):
    """The probability-flow ODE solvers of the CLI solve one ODE: at 1000 steps the
    fixed-step ones agree with each other (and the adaptive ones with them) to their
    order's error. Measured against heun (samples of size ~2.4; seeds 0 and 3):
    second order <= 4.6e-5, first order <= 1.5e-3, tsit5 <= 1.8e-3, dopri5 <= 9.2e-3;
    an SDE solver (euler-maruyama) >= 3.8."""
    ref = cli_samples["heun"][0]

    def diff(name):
        return float(np.max(np.abs(cli_samples[name][0] - ref)))

    for names, tol in (
        (ODE_SECOND_ORDER, 4e-4),
        (ODE_FIRST_ORDER, 1e-2),
        (ODE_ADAPTIVE, 3e-2),
    ):
        for name in names:
            assert diff(name) <= tol, (name, diff(name))
    assert {n for n, e in EXPECTED.items() if e[1] == "ode"} == {
        *ODE_SECOND_ORDER,
        *ODE_FIRST_ORDER,
        *ODE_ADAPTIVE,
    }
    assert diff("euler-maruyama") > 0.5  # the tolerances tell the SDE apart


# ------------------------------------------------------------------ paths to the end


def test_ve_sigma_max_from_data_with_denoise_and_eps(tmp_path):
    """`--sde ve` takes sigma_max from the data (the largest distance between
    training examples, first 1000, to 3 digits); `--denoise` and `--eps` reach
    `sd.sample`."""
    ck, npy = tmp_path / "ck", tmp_path / "x.npy"
    _cli(cli_args("train", **(MOONS_MLP | dict(sde="ve")), steps=20, out=ck, **TINY))
    model, meta = sd.load_checkpoint(ck)
    sde = sd.sde_from_description(meta["sde"])
    x = np.asarray(sd.data.moons(jr.key(0), 8192), np.float64)[:1000]
    largest = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1)).max()
    assert isinstance(sde, sd.VESDE) and sde.sigma_min == 0.01
    assert sde.sigma_max == pytest.approx(largest, rel=5e-3) and largest > 1
    stdout = _cli(
        cli_args(
            "sample",
            checkpoint=ck,
            num_samples=16,
            seed=2,
            solver="euler-maruyama",
            steps=20,
            out=npy,
            denoise=True,
            eps=0.001,
        )
    )
    ref, stats = _reference(
        ck,
        jr.key(2),
        (16, 2),
        solver=dfx.Euler(),
        method="sde",
        num_steps=20,
        eps=1e-3,
        denoise=True,
    )
    np.testing.assert_array_equal(np.load(npy), ref)
    assert "20 steps, 21 score evaluations each" in stdout  # 1 for the denoising


@pytest.mark.slow
def test_unet_on_digits(tmp_path):
    """`--model unet` on the smallest images (8x8 digits), from the shell with the
    default --steps-per-call (2 unrolled steps per call, sd.train's; the CLI's old
    default of 100 compiled 100 unrolled U-Net steps and was killed at ~24 GB): two
    training steps within 3 GB of peak RSS, measured on the child process; then DDIM
    from the checkpoint, clipped to [0, 1] and drawn as a PNG grid.

    The peak is the child's own `VmHWM` (Linux), written by the child as it exits:
    the `ru_maxrss` that `wait4` reports also counts the parent's pages when the
    child was started by `vfork` (it is carried across `exec`), so it read 3.9 GiB
    in a test worker that had grown large, for a command that peaks at ~1.4 GiB."""
    ck, npy, png = tmp_path / "ck", tmp_path / "x.npy", tmp_path / "x.png"
    hwm = tmp_path / "hwm"
    report = (
        "import atexit, pathlib, runpy, sys; "
        f"atexit.register(lambda: pathlib.Path({str(hwm)!r}).write_text("
        "pathlib.Path('/proc/self/status').read_text())); "
        "sys.argv = ['scoresde', *sys.argv[1:]]; "
        "runpy.run_module('scoresde_diffrax.cli', run_name='__main__')"
    )
    argv = [sys.executable, "-c", report, "train", "--data", "digits"]
    argv += ["--sde", "vp", "--model", "unet", "--steps", "2", "--batch-size", "8"]
    argv += ["--quiet", "--out", str(ck)]
    root = pathlib.Path(__file__).parents[1]
    env = dict(os.environ, PYTHONPATH=str(root))
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
    assert proc.returncode == 0, (tmp_path / "err").read_text()[-2000:]
    (kib,) = [
        ln.split()[1] for ln in hwm.read_text().splitlines() if ln[:6] == "VmHWM:"
    ]
    peak = int(kib) * 1024
    assert peak < 3e9, f"peak RSS {peak / 2**30:.2f} GiB"
    model, meta = sd.load_checkpoint(ck)
    assert isinstance(model.model, sd.nn.UNet) and meta["step"] == 2
    _cli(
        ["sample", "--checkpoint", str(ck), "--num-samples", "4", "--solver", "ddim"]
        + ["--steps", "3", "--out", str(npy), "--png", str(png)]
    )
    ref, _ = _reference(
        ck, jr.key(0), (4, 1, 8, 8), solver=sd.DDIM(), method="ode", num_steps=3
    )
    x = np.load(npy)
    assert x.shape == (4, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    np.testing.assert_array_equal(x, ref)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
