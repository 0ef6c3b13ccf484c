"""The `scoresde` command: train -> sample end to end (in process), and user errors
(one line on stderr, exit code 2, no traceback)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tomllib

from scoresde_diffrax import cli


TINY = ["--steps-per-call", "10", "--batch-size", "32", "--quiet"]


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_sample_resume_end_to_end(tmp_path, capsys):
    ck = tmp_path / "ck"
    code, out, err = run(
        [
            "train",
            "--data",
            "moons",
            "--sde",
            "vp",
            "--model",
            "mlp",
            "--steps",
            "20",
            "--seed",
            "1",
            "--out",
            str(ck),
            "--checkpoint-every",
            "10",
            *TINY,
        ],
        capsys,
    )
    assert code == 0, err
    assert "20 steps" in out and (ck / "ckpt_000000020.json").exists()
    # Resume to 30 steps.
    code, out, err = run(
        [
            "train",
            "--data",
            "moons",
            "--sde",
            "vp",
            "--model",
            "mlp",
            "--steps",
            "30",
            "--seed",
            "1",
            "--out",
            str(ck),
            "--resume",
            *TINY,
        ],
        capsys,
    )
    assert code == 0, err
    assert "10 steps" in out and (ck / "ckpt_000000030.json").exists()
    npy, png = tmp_path / "s.npy", tmp_path / "s.png"
    code, out, err = run(
        [
            "sample",
            "--checkpoint",
            str(ck),
            "--num-samples",
            "50",
            "--solver",
            "euler-maruyama",
            "--steps",
            "20",
            "--seed",
            "0",
            "--out",
            str(npy),
            "--png",
            str(png),
        ],
        capsys,
    )
    assert code == 0, err
    x = np.load(npy)
    assert x.shape == (50, 2) and np.all(np.isfinite(x))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same seed, same samples; an adaptive ODE solver works too.
    code, _, err = run(
        [
            "sample",
            "--checkpoint",
            str(ck),
            "--num-samples",
            "50",
            "--solver",
            "euler-maruyama",
            "--steps",
            "20",
            "--out",
            str(tmp_path / "t.npy"),
        ],
        capsys,
    )
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), x)
    code, out, err = run(
        [
            "sample",
            "--checkpoint",
            str(ck),
            "--num-samples",
            "8",
            "--solver",
            "ode-tsit5",
            "--out",
            str(tmp_path / "o.npy"),
        ],
        capsys,
    )
    assert code == 0, err
    # Bad input that needs a checkpoint: another architecture cannot resume.
    code, _, err = run(
        [
            "train",
            "--data",
            "moons",
            "--sde",
            "ve",
            "--model",
            "mlp",
            "--steps",
            "40",
            "--out",
            str(ck),
            "--resume",
            *TINY,
        ],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "trained with" in err
    # A truncated checkpoint file.
    eqx_file = ck / "ckpt_000000030.eqx"
    eqx_file.write_bytes(eqx_file.read_bytes()[:50])
    code, _, err = run(
        [
            "sample",
            "--checkpoint",
            str(ck),
            "--num-samples",
            "8",
            "--solver",
            "euler-maruyama",
            "--out",
            str(tmp_path / "u.npy"),
        ],
        capsys,
    )
    assert code == 2 and "truncated or corrupt" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            [
                "train",
                "--data",
                "cifar",
                "--sde",
                "vp",
                "--model",
                "mlp",
                "--steps",
                "5",
                "--out",
                "{d}",
            ],
            "invalid choice: 'cifar'",
        ),
        (
            [
                "train",
                "--data",
                "moons",
                "--sde",
                "vp",
                "--model",
                "resnet",
                "--steps",
                "5",
                "--out",
                "{d}",
            ],
            "invalid choice: 'resnet'",
        ),
        (
            [
                "train",
                "--data",
                "moons",
                "--sde",
                "vp",
                "--model",
                "mlp",
                "--steps",
                "0",
                "--out",
                "{d}",
            ],
            "--steps: must be an integer >= 1",
        ),
        (
            [
                "train",
                "--data",
                "moons",
                "--sde",
                "vp",
                "--model",
                "unet",
                "--steps",
                "5",
                "--out",
                "{d}",
            ],
            "--model unet does not fit --data moons",
        ),
        (
            [
                "train",
                "--data",
                "moons",
                "--sde",
                "vp",
                "--model",
                "mlp",
                "--steps",
                "5",
                "--out",
                "{f}/sub",
            ],
            "--out",
        ),
        (
            [
                "sample",
                "--checkpoint",
                "{d}",
                "--num-samples",
                "5",
                "--solver",
                "rk99",
                "--out",
                "{d}/x.npy",
            ],
            "invalid choice: 'rk99'",
        ),
        (
            [
                "sample",
                "--checkpoint",
                "{d}/nothing",
                "--num-samples",
                "5",
                "--solver",
                "euler-maruyama",
                "--out",
                "{d}/x.npy",
            ],
            "does not exist",
        ),
        (
            [
                "sample",
                "--checkpoint",
                "{d}",
                "--num-samples",
                "5",
                "--solver",
                "euler-maruyama",
                "--out",
                "{d}/x.txt",
            ],
            ".npy",
        ),
    ],
)
def test_bad_input_one_line_exit_2(tmp_path, capsys, argv, needle):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    argv = [a.format(d=tmp_path, f=blocker) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


_TRAIN5 = ["train", "--data", "moons", "--sde", "vp", "--model", "mlp", "--steps", "5"]


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
    code, out, err = run([*_TRAIN5, "--out", str(tmp_path / "o"), *flags], capsys)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err


def test_console_script_declared_and_runs(tmp_path):
    meta = tomllib.loads(
        (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    )
    assert meta["project"]["scripts"]["scoresde"] == "scoresde_diffrax.cli:console_main"
    # The entry point, in a fresh interpreter: --help, then a user error.
    cmd = [
        sys.executable,
        "-c",
        "import sys; from scoresde_diffrax.cli import console_main; sys.argv[0] = 'scoresde'; console_main()",
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
    bad = subprocess.run(
        [
            *cmd,
            "sample",
            "--checkpoint",
            str(tmp_path),
            "--num-samples",
            "1",
            "--solver",
            "euler-maruyama",
            "--out",
            str(tmp_path / "x.npy"),
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


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    ck = tmp_path_factory.mktemp("solvers") / "ck"
    argv = ["train", "--data", "moons", "--sde", "subvp", "--model", "mlp"]
    argv += ["--steps", "10", "--seed", "0", "--out", str(ck), *TINY]
    assert cli.main(argv) == 0
    return ck


@pytest.mark.parametrize("name", sorted(cli.SOLVERS))
def test_every_cli_solver_samples(tiny_checkpoint, tmp_path, capsys, name):
    npy = tmp_path / "s.npy"
    steps = "4096" if cli.SOLVERS[name].adaptive else "6"
    code, out, err = run(
        ["sample", "--checkpoint", str(tiny_checkpoint), "--num-samples", "8"]
        + ["--solver", name, "--steps", steps, "--seed", "0", "--out", str(npy)],
        capsys,
    )
    assert code == 0, err
    x = np.load(npy)
    assert x.shape == (8, 2) and np.all(np.isfinite(x))
