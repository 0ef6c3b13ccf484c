"""`scoresde train --conditional [--cond-drop P]` and `scoresde sample --label L|all
--guidance-scale W` for conditional checkpoints, end to end in process on a tiny run;
and their user errors (one line, exit code 2)."""

import re

import numpy as np
import pytest
from helpers import run_cli

import scoresde_diffrax as sd
from scoresde_diffrax import cli


TINY = ["--steps-per-call", "2", "--batch-size", "16", "--quiet"]


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A conditional MLP on digits, 2 steps, then resumed to 4."""
    out = tmp_path_factory.mktemp("cfg") / "run"
    argv = ["train", "--data", "digits", "--sde", "vp", "--model", "mlp"]
    argv += ["--conditional", "--cond-drop", "0.2", "--out", str(out), *TINY]
    assert cli.main(argv + ["--steps", "2"]) == 0
    assert cli.main(["train", "--out", str(out), "--steps", "4", "--resume"]) == 0
    return out


def test_train_conditional_and_sample_each_label(conditional_run, tmp_path, capsys):
    model, meta = sd.load_checkpoint(conditional_run)
    assert meta["step"] == 4 and meta["loss"]["class"] == "ConditionalDSMLoss"
    assert meta["loss"]["cond_drop"] == 0.2 and meta["cli"]["conditional"] is True
    assert model.model.config.num_classes == 10
    npy = tmp_path / "s.npy"
    code, out, err = run_cli(
        ["sample", "--checkpoint", str(conditional_run), "--label", "all"]
        + ["--guidance-scale", "2", "--num-samples", "12", "--solver", "ancestral"]
        + ["--steps", "3", "--out", str(npy)],
        capsys,
    )
    assert code == 0, err
    assert np.load(npy).shape == (12, 1, 8, 8) and "3 score evaluations" in out
    # A resumed run keeps its settings: another --cond-drop is refused.
    code, out, err = run_cli(
        ["train", "--out", str(conditional_run), "--steps", "6", "--resume"]
        + ["--cond-drop", "0.5"],
        capsys,
    )
    assert code == 2 and "--cond-drop 0.5 contradicts" in err, err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["train", "--cond-drop", "1.0", "--conditional"], r"--cond-drop must be"),
        (["train", "--cond-drop", "-0.1", "--conditional"], r"--cond-drop must be"),
        (["train", "--cond-drop", "0.2"], r"--cond-drop needs --conditional"),
        (["sample", "--checkpoint", "{run}"], r"--label is needed"),
        (["sample", "--checkpoint", "{run}", "--label", "10"], r"--label must be"),
    ],
)
def test_conditional_user_errors(conditional_run, tmp_path, capsys, argv, match):
    argv = [a.format(run=str(conditional_run)) for a in argv]
    if argv[0] == "train":
        argv += ["--data", "digits", "--sde", "vp", "--model", "mlp", "--steps", "2"]
        argv += ["--out", str(tmp_path / "t"), *TINY]
    else:
        argv += ["--out", str(tmp_path / "o.npy"), "--num-samples", "2"]
        argv += ["--solver", "ancestral", "--steps", "2"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(match, err), err


def test_conditional_needs_labels(tmp_path, capsys):
    argv = ["train", "--data", "swiss-roll", "--sde", "vp", "--model", "mlp"]
    argv += ["--conditional", "--steps", "2", "--out", str(tmp_path / "m"), *TINY]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and re.search(r"--conditional needs a data set with labels", err)


def test_conditional_on_a_labelled_toy(tmp_path, capsys):
    """The built-in 2-D toys with classes carry labels: `--conditional` on moons trains
    (it was refused for lack of labels), and `sample --label` draws from one moon."""
    out = tmp_path / "moons"
    argv = ["train", "--data", "moons", "--sde", "vp", "--model", "mlp"]
    argv += ["--conditional", "--steps", "2", "--out", str(out), *TINY]
    code, text, err = run_cli(argv, capsys)
    assert code == 0, err
    code, text, err = run_cli(
        ["sample", "--checkpoint", str(out), "--label", "1", "--num-samples", "4"]
        + ["--solver", "euler-maruyama", "--steps", "3", "--quiet"]
        + ["--out", str(tmp_path / "x.npy")],
        capsys,
    )
    assert code == 0, err
    assert np.load(tmp_path / "x.npy").shape == (4, 2)
