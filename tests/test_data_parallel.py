"""Data-parallel training (`sd.train(sharding=mesh)`) and multi-process training
(`scoresde train --coordinator ...`).

JAX fixes the number of devices at start-up, so the 8-device checks run once in a
subprocess (`tests/_dp_checks.py checks`, 8 simulated CPU devices) that prints JSON;
the tests below assert on it case by case. The two-process test starts two
`scoresde train` processes (2 CPU devices each, gloo collectives) on loopback and
compares their checkpoint with a one-device run in this process.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys

import equinox as eqx
import jax
import numpy as np
import pytest

import scoresde_diffrax as sd
from scoresde_diffrax import cli


HERE = pathlib.Path(__file__).parent
ROOT = HERE.parent
SCRIPT = HERE / "_dp_checks.py"
TIMEOUT = 240  # seconds; the subprocesses take ~15-30 s on two busy cores

# Measured (jax 0.10.2, CPU, 40 steps, MLP width 32): 8 devices vs 1 device differ by
# at most 1.2e-7 in the loss and 2.8e-7 in a parameter (summation order only).
TOL = 1e-5


def _env(num_devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={num_devices}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def _kill(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture(scope="module")
def checks():
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "checks"],
        env=_env(8),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        _kill([proc])
    assert proc.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["device_count"] == 8
    return result


def _case(checks, name):
    c = checks[name]
    assert "error" not in c, c["error"]
    return c


@pytest.mark.parametrize("name", ["make_mesh_8", "mesh_4x2"])
def test_same_losses_and_parameters_as_one_device(checks, name):
    c = _case(checks, name)
    assert c["num_losses"] == 40
    assert c["loss_max_abs_diff"] <= TOL
    assert c["param_max_abs_diff"] <= TOL
    assert c["ema_max_abs_diff"] <= TOL
    assert c["loss_decreased"]
    assert c["all_replicated_on_mesh"]


def test_make_mesh_explicit_axes_accepted(checks):
    assert _case(checks, "make_mesh_8")["mesh_axis_types"] == ["AxisType.Explicit"]


def test_batch_is_split_with_all_reduces(checks):
    c = _case(checks, "compiled")
    assert c["per_device_batch_8x2"] and not c["full_batch_64x2"]
    assert c["all_reduce"] >= 1


def test_indivisible_batch_size(checks):
    c = _case(checks, "bad_batch")
    assert c["raised"] == "ValueError"
    for needle in ("`batch_size`", "`sharding`", "60", "8"):
        assert needle in c["message"]


def test_sharding_type_checked(checks):
    c = _case(checks, "bad_type")
    assert c["raised"] == "TypeError" and "sharding" in c["message"]


def test_sharded_resume_bit_exact(checks):
    c = _case(checks, "resume")
    assert c["steps"] == [20, 20, 40]
    assert c["losses_identical"] and c["params_identical"] and c["ema_identical"]
    assert c["loaded_is_ema"]


def test_cli_data_parallel_indivisible_batch(checks):
    c = _case(checks, "cli_bad_batch")
    assert c["code"] == 2
    assert c["stderr"].count("\n") == 1 and "Traceback" not in c["stderr"]
    assert "--batch-size 12" in c["stderr"] and "(8)" in c["stderr"]


@pytest.mark.parametrize(
    "command, needle",
    [
        ("train", "trained mlp on moons (vp) on 8 devices:"),
        (
            "sample",
            "16 samples (euler-maruyama, 4 steps, 4 score evaluations each) on 8",
        ),
    ],
)
def test_cli_data_parallel_runs_on_all_devices(checks, command, needle):
    """`scoresde train/sample --data-parallel` report the devices that hold their
    results (replicated parameters; samples split over the batch): all 8. Process 0
    writes, and the values are those of one device, with or without the mesh; this
    tells them apart."""
    c = _case(checks, "cli_devices")[command]
    assert c["code"] == 0, c["stderr"][-3000:]
    assert needle in c["stdout"], c["stdout"]


def test_batch_sharding_of_a_named_sharding(checks):
    # Only the mesh axes named in the spec's first entry split the batch (4 of 8).
    c = _case(checks, "named_sharding")
    assert c["kept"]
    assert "`num_samples` (6)" in c["message"] and "(4 devices" in c["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN = ["train", "--data", "moons", "--sde", "vp", "--model", "mlp"]
TRAIN += ["--steps", "20", "--batch-size", "32", "--steps-per-call", "10"]
TRAIN += ["--seed", "3", "--quiet"]


def test_two_processes_match_one_device(tmp_path, capsys):
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "cli",
                *TRAIN,
                "--out",
                str(tmp_path / f"p{i}"),
            ]
            + ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
            + ["--process-id", str(i)],
            env=_env(2),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        _kill(procs)
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0 and "implemented on the CPU backend" in err:
            pytest.skip("this jaxlib has no CPU collectives across processes: " + err)
        assert p.returncode == 0, err[-3000:]
    # Read from the trained parameters: they are on both processes' devices.
    assert "on 4 devices" in outs[0][0] and "checkpoint in" in outs[0][0]
    assert "written by process 0" in outs[1][0]
    assert (tmp_path / "p0" / "ckpt_000000020.json").exists()
    assert not any((tmp_path / "p1").iterdir())  # only process 0 writes

    # The same command on one device, in this process.
    assert cli.main([*TRAIN, "--out", str(tmp_path / "ref")]) == 0
    ref_out = capsys.readouterr().out

    def final_loss(text):
        return float(text.split("final loss ")[1].split(";")[0])

    assert final_loss(outs[0][0]) == pytest.approx(final_loss(ref_out), rel=2e-3)
    assert final_loss(outs[1][0]) == final_loss(outs[0][0])
    for ema in (True, False):
        a, _ = sd.load_checkpoint(tmp_path / "p0", ema=ema)
        b, _ = sd.load_checkpoint(tmp_path / "ref", ema=ema)
        la, lb = (
            jax.tree_util.tree_leaves(eqx.filter(m, eqx.is_array)) for m in (a, b)
        )
        diff = max(
            float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
            for x, y in zip(la, lb, strict=True)
        )
        assert diff <= TOL, diff
