"""`scoresde learn-grid`, `scoresde sample --grid` and `scoresde bench` with
`NAME@learned`: a grid learned for a checkpoint (an untrained MLP on moons, written
without training) is saved, read back and sampled with; `sd.bench` learns grids on
prior draws of their own; wrong flags are one line naming the flag, exit code 2."""

import json
import re

import jax.random as jr
import numpy as np
import pytest
from helpers import one_line, run_cli, write_checkpoint

import scoresde_diffrax as sd
from scoresde_diffrax import cli


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    vp = sd.VPSDE()
    moons = sd.data.Dataset(sd.data.moons(jr.key(0), 512), None, name="moons")
    net = sd.nn.MLPScore((2,), width=16, depth=1, key=jr.key(1))
    write_checkpoint(root / "moons", sd.EpsScore(net, vp), vp, moons)
    return root / "moons"


@pytest.fixture(scope="module")
def grid_file(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid_out") / "ddim4.json"
    argv = ["learn-grid", "--checkpoint", ckpt, "--solver", "ddim", "--nfe", 4]
    argv += ["--num-samples", 16, "--iters", 3, "--quiet", "--out", out]
    assert cli.main([str(a) for a in argv]) == 0
    return out


def test_learn_grid_writes_a_grid(grid_file):
    g = sd.LearnedGrid.load(grid_file)
    assert g.solver == "DDIM" and g.num_steps == 4 and g.num_evals == 4
    assert np.all(np.diff(np.asarray(g.ts)) < 0)
    assert json.loads(grid_file.read_text())["sde"]["class"] == "VPSDE"


def test_sample_with_the_grid(ckpt, grid_file, tmp_path, capsys):
    out = tmp_path / "x.npy"
    argv = ["sample", "--checkpoint", ckpt, "--solver", "ddim", "--grid", grid_file]
    code, stdout, _ = run_cli([*argv, "--num-samples", 8, "--out", out], capsys)
    assert code == 0 and "4 score evaluations each" in stdout
    assert np.load(out).shape == (8, 2)


@pytest.mark.parametrize(
    "extra, flag",
    [
        (
            ["--solver", "dpm-solver++2m"],
            "--grid: .* learned for DDIM, .*; pass --solver ddim",
        ),
        (["--solver", "ddim", "--steps", "5"], "--steps"),
        (["--solver", "ddim", "--denoise"], "--denoise"),
        (["--solver", "ddim", "--eps", "0.01"], "--eps"),
    ],
)
def test_sample_grid_errors_name_the_flag(
    ckpt, grid_file, tmp_path, capsys, extra, flag
):
    argv = ["sample", "--checkpoint", ckpt, "--grid", grid_file, *extra]
    code, _, err = run_cli(
        [*argv, "--num-samples", 8, "--out", tmp_path / "x.npy"], capsys
    )
    assert code == 2 and one_line(err)
    assert re.search(flag, err), err


def test_sample_bad_grid_file(ckpt, tmp_path, capsys):
    bad = tmp_path / "g.json"
    bad.write_text("{}")
    argv = ["sample", "--checkpoint", ckpt, "--solver", "ddim", "--grid", bad]
    code, _, err = run_cli(
        [*argv, "--num-samples", 8, "--out", tmp_path / "x.npy"], capsys
    )
    assert code == 2 and one_line(err) and "--grid" in err


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--solver", "pc", "--nfe", "10"], "--solver pc"),
        (["--solver", "tsit5", "--nfe", "10"], "--solver"),
        (["--solver", "heun", "--nfe", "1"], "--nfe"),
        (["--solver", "dpm-solver++3m", "--nfe", "2"], "--nfe"),
        (["--solver", "ddim", "--nfe", "4", "--out", "grid.txt"], "--out"),
    ],
)
def test_learn_grid_errors_name_the_flag(ckpt, tmp_path, capsys, extra, flag):
    argv = ["learn-grid", "--checkpoint", ckpt, "--out", tmp_path / "g.json", *extra]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and one_line(err) and flag in err, err


def test_bench_learned_spelling(tmp_path, capsys):
    argv = ["bench", "--problem", "mixture:D=2,K=2", "--solvers", "ddim,ddim@learned"]
    argv += ["--nfe", 4, "--num-samples", 64, "--metrics", "sliced_w2"]
    code, stdout, _ = run_cli([*argv, "--out", tmp_path / "b"], capsys)
    assert code == 0 and "ddim@learned" in stdout
    rows = [json.loads(s) for s in (tmp_path / "b" / "records.jsonl").open()]
    learned = [r for r in rows if r["sampler"] == "ddim@learned"]
    assert len(learned) == 1 and learned[0]["learn_s"] > 0 and learned[0]["nfe"] == 4


@pytest.mark.parametrize(
    "solvers, match", [("pc@learned", "--solvers pc@learned"), ("ddim@fast", "@")]
)
def test_bench_learned_errors(tmp_path, capsys, solvers, match):
    argv = ["bench", "--problem", "mixture:D=2,K=2", "--solvers", solvers]
    code, _, err = run_cli([*argv, "--out", tmp_path / "b"], capsys)
    assert code == 2 and one_line(err) and match in err, err
