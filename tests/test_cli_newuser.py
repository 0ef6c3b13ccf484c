"""What a new user meets first, from the shell: defaults that need no reading (a
default solver), paths that do not grow directories in odd places, progress in a
log, pictures that say what they show, data conversions said out loud, and a hint
of how long to train. Tiny untrained checkpoints: nothing here trains a model."""

import jax.random as jr
import numpy as np
import pytest
from helpers import one_line, run_cli, write_checkpoint

import scoresde_diffrax as sd
from scoresde_diffrax import cli


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Untrained checkpoints (VP): an MLP on moons, a class-conditional MLP on moons
    (2 classes)."""
    root = tmp_path_factory.mktemp("newuser")
    vp = sd.VPSDE()
    moons = sd.data.Dataset(sd.data.moons(jr.key(0), 256), None, name="moons")
    net = sd.nn.MLPScore((2,), width=8, depth=1, key=jr.key(1))
    write_checkpoint(root / "moons", sd.EpsScore(net, vp), vp, moons)
    cond = sd.nn.MLPScore((2,), width=8, depth=1, num_classes=2, key=jr.key(2))
    write_checkpoint(root / "cond", sd.EpsScore(cond, vp), vp, moons)
    return {k: str(root / k) for k in ("moons", "cond")}


def _sample_help() -> str:
    sub = cli.build_parser()._subparsers._group_actions[0].choices["sample"]
    return " ".join(sub.format_help().split())


# ------------------------------------------------------------------ a default solver


def test_sample_has_a_default_solver(ckpts, tmp_path, capsys):
    """`sample` without `--solver` uses pc, the default of inpaint, colorize and
    inverse, and says so in its help."""
    npy = tmp_path / "x.npy"
    code, out, err = run_cli(
        ["sample", "--checkpoint", ckpts["moons"], "--num-samples", "4"]
        + ["--steps", "2", "--out", npy, "--quiet"],
        capsys,
    )
    assert code == 0, err
    assert "(pc, 2 steps, 4 score evaluations each)" in out
    assert np.load(npy).shape == (4, 2)
    assert "(default pc: the paper's predictor-corrector" in _sample_help()
    inpaint = cli.build_parser()._subparsers._group_actions[0].choices["inpaint"]
    assert "default pc" in " ".join(inpaint.format_help().split())
