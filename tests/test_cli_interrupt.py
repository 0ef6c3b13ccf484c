"""Ctrl-C and the compilation cache of the `scoresde` command, through its entry point
(`scoresde_cli`) in a child process, as a user runs it.

SIGINT at any moment (the imports, compiling, solving, writing) ends the command with
one line on stderr and exit code 130, and leaves no file half written; launched in the
foreground, and as a shell script's background job (which starts with SIGINT ignored).
Before the entry point handled it, an interrupt during the imports printed a 30-line
traceback, and one during a solve was not seen until the solve ended and then crashed
the interpreter's teardown (exit code 139).
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import one_line, write_checkpoint

import scoresde_cli
import scoresde_diffrax as sd
from scoresde_diffrax.cli import _common


ROOT = pathlib.Path(__file__).parents[1]
_SCRIPT = pathlib.Path(sys.executable).parent / "scoresde"
# The installed console script where there is one (CI's virtual environment), else
# the same entry point as a module.
SCORESDE = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "scoresde_cli"]
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    vp = sd.VPSDE()
    model = sd.EpsScore(sd.nn.MLPScore((2,), width=16, depth=1, key=jr.key(0)), vp)
    moons = sd.data.Dataset(sd.data.moons(jr.key(1), 64), None, name="moons")
    write_checkpoint(d, model, vp, moons)
    return d


def _env(**extra):
    return dict(os.environ, PYTHONPATH=str(ROOT), **extra)


def _interrupt(argv, delay: float, background: bool, env) -> tuple[int, str, float]:
    """Run `argv`, send SIGINT after `delay` seconds; (exit code, stderr, seconds from
    the signal to the exit)."""
    if background:
        # `cmd &` in a non-interactive shell: the job starts with SIGINT ignored.
        pidfile = pathlib.Path(env["PIDFILE"])
        script = 'exec "$@" & echo $! > "$PIDFILE"; wait $!'
        proc = subprocess.Popen(
            ["bash", "-c", script, "bash", *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pid = int(pidfile.read_text())
    else:
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        pid = proc.pid
    try:
        time.sleep(delay)
        assert proc.poll() is None, proc.communicate()[1]
        sent = time.monotonic()
        os.kill(pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# Delays that land in the imports, in compiling, and in the solve (200,000 samples,
# 5000 Euler-Maruyama steps: minutes, were it not interrupted).
@pytest.mark.parametrize("background", [False, True], ids=["foreground", "background"])
@pytest.mark.parametrize("delay", [0.2, 2.0, 6.0])
def test_ctrl_c_at_any_moment(checkpoint, tmp_path, delay, background, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the command may create out/
    out = tmp_path / "out" / "x.npy"
    argv = [*SCORESDE, "sample", "--checkpoint", str(checkpoint)]
    argv += ["--num-samples", "200000", "--solver", "euler-maruyama"]
    argv += ["--steps", "5000", "--out", str(out), "--quiet"]
    env = _env(PIDFILE=str(tmp_path / "pid"), SCORESDE_COMPILATION_CACHE="0")
    code, err, took = _interrupt(argv, delay, background, env)
    assert code == 130, err
    assert err == "scoresde sample: interrupted\n", err
    assert took < 10, took  # not when the solve ends
    assert not out.exists()
    if out.parent.exists():
        assert not list(out.parent.iterdir())


def test_interrupted_write_leaves_the_old_file(tmp_path):
    """Writing: an interrupt inside `atomic_output` removes the temporary file and
    leaves the target as it was; the temporary file was registered with the entry
    point while it was written (so ending the process from the watchdog removes it)."""
    target = tmp_path / "x.npy"
    np.save(target, np.arange(3.0))
    seen = []
    hooks = dict(_common.INTERRUPT_HOOKS)
    _common.INTERRUPT_HOOKS["writing"] = lambda path, start: seen.append((path, start))
    try:
        with pytest.raises(KeyboardInterrupt):
            with _common.atomic_output(target) as tmp:
                np.save(tmp, np.zeros(10**6))
                assert pathlib.Path(tmp).exists() and tmp.endswith(".npy")
                raise KeyboardInterrupt
        _common.save_npy(target, jnp.ones(2))
    finally:
        _common.INTERRUPT_HOOKS.update(hooks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
    np.testing.assert_array_equal(np.load(target), np.ones(2))
    assert seen[0] == (tmp, True) and seen[1] == (tmp, False) and len(seen) == 4
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # a normal file


def test_entry_point_removes_registered_files(tmp_path, monkeypatch):
    """What the watchdog does when it ends the process: registered temporary files
    are removed, then `os._exit(130)` (patched here)."""
    f = tmp_path / "half.tmp"
    f.write_text("x")
    codes = []
    monkeypatch.setattr(scoresde_cli.os, "_exit", codes.append)
    scoresde_cli.writing(str(f), True)
    try:
        scoresde_cli._exit_now(130)
    finally:
        scoresde_cli.writing(str(f), False)
    assert codes == [130] and not f.exists()


def test_compilation_cache(checkpoint, tmp_path):
    """The command keeps its compiled programs in JAX's persistent cache (a second
    identical call loads them instead of compiling); SCORESDE_COMPILATION_CACHE=0
    turns it off. (Its speed-up is measured in benchmarks/bench_compile_cache.py.)"""
    argv = [*SCORESDE, "sample", "--checkpoint", str(checkpoint), "--num-samples"]
    argv += ["4", "--solver", "euler-maruyama", "--steps", "3", "--quiet"]
    on, off = tmp_path / "on", tmp_path / "off"
    for cache, flag in ((on, "1"), (off, "0")):
        env = _env(JAX_COMPILATION_CACHE_DIR=str(cache))
        env["SCORESDE_COMPILATION_CACHE"] = flag
        env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
        proc = subprocess.run(
            [*argv, "--out", str(tmp_path / f"{flag}.npy")],
            env=env,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
    assert len(list(on.iterdir())) > 0
    assert not off.exists() or not list(off.iterdir())
    np.testing.assert_array_equal(
        np.load(tmp_path / "1.npy"), np.load(tmp_path / "0.npy")
    )


def test_one_line_for_a_user_error_through_the_entry_point(tmp_path):
    proc = subprocess.run(
        [*SCORESDE, "sample", "--checkpoint", str(tmp_path / "none")],
        env=_env(SCORESDE_COMPILATION_CACHE="0"),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and one_line(proc.stderr), proc.stderr
