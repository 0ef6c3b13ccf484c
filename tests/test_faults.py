"""The fault and bad-input matrix: every bad input a user can give the API or the CLI
fails with a clear error naming the argument (API: `ValueError`/`TypeError`; CLI: exit
code 2 and one line on stderr naming the flag); a NaN inside a solve always raises,
never comes back silently; a SIGKILL during training (even mid-write of a checkpoint)
loses nothing, and resuming reaches the parameters of an uninterrupted run bit for bit.

`throw=False` (decided here and documented in the docstrings): a non-finite result
still raises; a solve that *fails* (an adaptive solve whose steps are all rejected
because the score is NaN somewhere, until `max_steps`) returns the finite state it
reached with `result != diffrax.RESULTS.successful`, which the caller must check.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jaxtyping
import numpy as np
import pytest

import scoresde_diffrax as sd
import scoresde_diffrax._checkpoint as checkpoint_mod
from scoresde_diffrax import cli


SDE = sd.VPSDE()
MIX = sd.GaussianMixture(jnp.array([[-1.0, 0.0], [1.0, 0.5]]), jnp.array([0.4, 0.6]))
SCORE = MIX.score(SDE)
X = jnp.array([[0.1, -0.2], [0.3, 0.4]])
PID = dfx.PIDController(rtol=1e-3, atol=1e-3)
DATA = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)), jnp.float32)
MODEL = sd.EpsScore(sd.nn.MLPScore((2,), width=8, depth=1, key=jr.key(0)), SDE)


def _sample(**kw):
    kw = {"solver": dfx.Euler(), "method": "ode", "num_steps": 2, **kw}
    shape = kw.pop("shape", (2, 2))
    return sd.sample(jr.key(0), SDE, kw.pop("score", SCORE), shape, **kw)


def _ll(x=X, **kw):
    return sd.log_likelihood(jr.key(0), SDE, kw.pop("score", SCORE), x, **kw)


def _train(**kw):
    kw = {"num_steps": 2, "batch_size": 4, "progress": False, **kw}
    return sd.train(jr.key(0), kw.pop("model", MODEL), SDE, kw.pop("data", DATA), **kw)


# (id, call, exception type, regex naming the argument). Every entry is a different
# failure mode; entries marked "fixed" raised nothing, hung, or failed at run time
# without naming the argument before this matrix.
API_CASES = [
    # shapes
    ("shape-data-vs-score", lambda: _sample(shape=(2, 3)), ValueError, r"`shape`"),
    ("shape-rank", lambda: _sample(shape=(4,)), ValueError, r"`shape`"),
    ("shape-zero-samples", lambda: _sample(shape=(0, 2)), ValueError, r"`shape`"),
    ("shape-float", lambda: _sample(shape=(2.0, 2)), ValueError, r"`shape`"),
    ("ll-x-vs-score", lambda: _ll(jnp.zeros((2, 3))), ValueError, r"`x` of shape"),
    ("ll-x-rank", lambda: _ll(jnp.zeros((2,))), ValueError, r"`x` must have shape"),
    ("score-wrong-arity", lambda: _sample(score=lambda x: x), ValueError, r"`score`"),
    (
        "score-returns-tuple",
        lambda: _sample(score=lambda t, x: (x, x)),
        ValueError,
        r"`score` returned",
    ),
    ("score-not-callable", lambda: _sample(score=3), TypeError, r"`score`"),
    ("mixture-x-dim", lambda: MIX.log_prob(jnp.zeros(3)), ValueError, r"`x`"),  # fixed
    (
        "mixture-n-negative",
        lambda: MIX.sample(jr.key(0), -1),
        ValueError,
        r"`n`",
    ),  # fixed
    (
        "mixture-weights-shape",
        lambda: sd.GaussianMixture(jnp.zeros((2, 2)), jnp.ones(2), jnp.ones(3)),
        ValueError,
        r"`weights`",
    ),
    # dtypes and non-finite data
    (
        "ll-int-data",
        lambda: _ll(jnp.zeros((2, 2), jnp.int32)),
        ValueError,
        r"`x` must be a floating",
    ),
    (
        "ll-complex-data",
        lambda: _ll(X.astype(jnp.complex64)),
        ValueError,
        r"`x` must be a floating",
    ),
    (
        "ll-nan-data",
        lambda: _ll(X.at[0, 0].set(jnp.nan)),
        ValueError,
        r"`x` must be finite",
    ),
    (
        "decode-inf-latent",
        lambda: sd.decode(SDE, SCORE, X.at[1, 1].set(jnp.inf)),
        ValueError,
        r"`z` must be finite",
    ),
    (
        "mixture-nan-means",
        lambda: sd.GaussianMixture(jnp.full((1, 2), jnp.nan), jnp.ones(1)),
        ValueError,
        r"`means`",
    ),
    # time ranges
    ("eps-zero", lambda: _sample(eps=0.0), ValueError, r"`eps`"),
    ("eps-ge-T", lambda: _ll(eps=1.0), ValueError, r"`eps`"),
    ("eps-not-a-number", lambda: _sample(eps="a"), ValueError, r"`eps`"),
    (
        "stepto-increasing",
        lambda: _sample(
            num_steps=None, stepsize_controller=dfx.StepTo(jnp.linspace(1e-3, 1.0, 3))
        ),
        ValueError,
        r"`stepsize_controller`",
    ),
    (
        "stepto-not-from-T",
        lambda: _sample(
            num_steps=None, stepsize_controller=dfx.StepTo(jnp.linspace(0.9, 1e-3, 3))
        ),
        ValueError,
        r"`stepsize_controller`",
    ),
    (
        "ll-stepto-decreasing",
        lambda: _ll(
            stepsize_controller=dfx.StepTo(  # fixed
                jnp.linspace(1.0, 1e-5, 3)
            )
        ),
        ValueError,
        r"`stepsize_controller`",
    ),
    (
        "decode-stepto-increasing",
        lambda: sd.decode(
            SDE,
            SCORE,
            X,  # fixed
            stepsize_controller=dfx.StepTo(jnp.linspace(1e-5, 1.0, 3)),
        ),
        ValueError,
        r"`stepsize_controller`",
    ),
    (
        "saveat-increasing",
        lambda: _sample(
            saveat=dfx.SaveAt(  # fixed
                ts=jnp.array([0.1, 0.5])
            )
        ),
        ValueError,
        r"`saveat`",
    ),
    (
        "dt0-zero",
        lambda: _sample(
            solver=dfx.Tsit5(),
            num_steps=None,  # fixed
            stepsize_controller=PID,
            dt0=0.0,
        ),
        ValueError,
        r"`dt0`",
    ),
    (
        "brownian-tol-negative",
        lambda: _sample(
            solver=dfx.ShARK(),
            method=None,  # fixed
            num_steps=None,
            stepsize_controller=PID,
            brownian_tol=-1.0,
        ),
        ValueError,
        r"`brownian_tol`",
    ),
    ("time-grid-eps-gt-T", lambda: sd.time_grid(SDE, 3, eps=2.0), ValueError, r"`eps`"),
    # SDE parameters
    (
        "vp-beta-min-gt-max",
        lambda: sd.VPSDE(beta_min=5.0, beta_max=1.0),
        ValueError,
        r"`beta_max`",
    ),
    ("vp-beta-nan", lambda: sd.VPSDE(beta_min=float("nan")), ValueError, r"`beta_min`"),
    ("subvp-T-zero", lambda: sd.SubVPSDE(T=0.0), ValueError, r"`T`"),
    ("ve-sigma-negative", lambda: sd.VESDE(sigma_min=-0.1), ValueError, r"`sigma_min`"),
    (
        "ve-sigma-min-ge-max",
        lambda: sd.VESDE(sigma_min=2.0, sigma_max=2.0),
        ValueError,
        r"`sigma_min`",
    ),
    (
        "ve-sigma-inf",
        lambda: sd.VESDE(sigma_max=float("inf")),
        ValueError,
        r"`sigma_max`",
    ),
    # solver / term mismatch
    (
        "ode-solver-method-sde",
        lambda: _sample(solver=dfx.Tsit5(), method="sde"),
        ValueError,
        r"`solver`",
    ),
    (
        "sde-solver-method-ode",
        lambda: _sample(solver=dfx.ShARK(), method="ode"),
        ValueError,
        r"`solver`",
    ),
    (
        "nonadaptive-with-pid",
        lambda: _sample(num_steps=None, stepsize_controller=PID),
        ValueError,
        r"`solver`",
    ),
    ("euler-without-method", lambda: _sample(method=None), ValueError, r"`method`"),
    ("unknown-method", lambda: _sample(method="rk"), ValueError, r"`method`"),
    ("ll-sde-solver", lambda: _ll(solver=dfx.ShARK()), ValueError, r"`solver`"),
    (
        "pc-with-non-corrector",
        lambda: sd.PredictorCorrector(sd.ReverseDiffusion(), dfx.Euler()),
        ValueError,
        r"`corrector`",
    ),
    (
        "steps-and-controller",
        lambda: _sample(stepsize_controller=PID),
        ValueError,
        r"`num_steps`",
    ),
    ("num-steps-zero", lambda: _sample(num_steps=0), ValueError, r"`num_steps`"),
    (
        "constant-step-no-dt0",
        lambda: _sample(num_steps=None, stepsize_controller=dfx.ConstantStepSize()),
        ValueError,
        r"`dt0`",
    ),
    ("ll-rtol-negative", lambda: _ll(rtol=-1e-3), ValueError, r"`rtol`"),
    ("ll-max-steps-zero", lambda: _ll(max_steps=0), ValueError, r"`max_steps`"),
    # unknown names and wrong objects
    ("hutchinson-foo", lambda: sd.Hutchinson("foo"), ValueError, r"`distribution`"),
    (
        "time-grid-kind-foo",
        lambda: sd.time_grid(SDE, 3, kind="foo"),
        ValueError,
        r"`kind`",
    ),
    ("divergence-string", lambda: _ll(divergence="exact"), TypeError, r"`divergence`"),
    (
        "sde-string",
        lambda: sd.sample(
            jr.key(0), "vp", SCORE, (2, 2), solver=dfx.Tsit5(), num_steps=2
        ),
        TypeError,
        r"`sde`",
    ),
    ("mixture-score-sde-string", lambda: MIX.score("vp"), TypeError, r"`sde`"),  # fixed
    (
        "eps-score-sde-string",
        lambda: sd.EpsScore(lambda t, x: x, "vp"),
        TypeError,  # fixed
        r"`sde`",
    ),
    (
        "x0-score-model-not-callable",
        lambda: sd.X0Score(3, SDE),
        TypeError,  # fixed
        r"`model`",
    ),
    (
        "sample-too-many-samples",
        lambda: _sample(shape=(2**31, 2)),
        ValueError,
        r"`shape`: at most 2147483647 samples per call",
    ),
    (
        # The first offending pair, not the (correct) endpoints.
        "sample-stepto-not-decreasing",
        lambda: _sample(
            num_steps=None,
            stepsize_controller=dfx.StepTo(jnp.array([1.0, 0.5, 0.6, 0.2, 1e-3])),
        ),
        ValueError,
        r"ts\[1\] = 0\.5 and ts\[2\] = 0\.6\d* are not",
    ),
    # train
    (
        "train-batch-size-zero",
        lambda: _train(batch_size=0),
        ValueError,
        r"`batch_size`",
    ),
    ("train-num-steps-zero", lambda: _train(num_steps=0), ValueError, r"`num_steps`"),
    (
        "train-lr-zero",
        lambda: _train(learning_rate=0.0),
        ValueError,
        r"`learning_rate`",
    ),
    ("train-ema-one", lambda: _train(ema_decay=1.0), ValueError, r"`ema_decay`"),
    (
        "train-data-wrong-shape",
        lambda: _train(data=jnp.zeros((8, 3))),
        ValueError,
        r"`model` does not fit",
    ),
    (
        "train-data-nan",
        lambda: _train(data=DATA.at[3, 1].set(jnp.nan)),
        ValueError,
        r"`x` must be finite",
    ),  # fixed (was a NaN loss at run time)
    (
        "train-data-empty",
        lambda: _train(data=jnp.zeros((0, 2))),
        ValueError,  # fixed
        r"`x` must have shape",
    ),
    (
        "train-adapter-other-sde",
        lambda: sd.train(jr.key(0), MODEL, sd.SubVPSDE(), DATA, num_steps=1),
        ValueError,
        r"`model`",
    ),
    ("train-resume-without-dir", lambda: _train(resume=True), ValueError, r"`resume"),
    (
        # One rule for integer data: training refuses it as log_likelihood does.
        "train-integer-data",
        lambda: _train(data=jnp.zeros((16, 2), jnp.int32)),
        ValueError,
        r"`data` must be a floating-point array, got dtype int32\. For integer "
        r"\(e\.g\. 8-bit\) data, dequantise it first",
    ),
    (
        "train-warmup-negative",
        lambda: _train(warmup_steps=-1),
        ValueError,
        r"`warmup_steps` must be an int >= 0",
    ),
    ("train-loss-string", lambda: _train(loss="dsm"), TypeError, r"`loss`"),
    (
        "train-checkpoint-every-float",
        lambda: _train(checkpoint_every=1.5),
        ValueError,
        r"`checkpoint_every`",
    ),
    # metrics and data
    (
        "sliced-w-nan",
        lambda: sd.metrics.sliced_wasserstein(
            jr.key(0),  # fixed
            X.at[0, 0].set(jnp.nan),
            X,
        ),
        ValueError,
        r"`x` must be finite",
    ),
    (
        "sliced-w-empty",
        lambda: sd.metrics.sliced_wasserstein(
            jr.key(0),  # fixed
            jnp.zeros((0, 2)),
            X,
        ),
        ValueError,
        r"`x` and `y`",
    ),
    (
        "sliced-w-dims",
        lambda: sd.metrics.sliced_wasserstein(jr.key(0), X, jnp.zeros((2, 3))),
        ValueError,
        r"`x` and `y`",
    ),
    (
        "mixture-report-nan",
        lambda: sd.metrics.mixture_report(
            MIX,  # fixed
            X.at[0, 0].set(jnp.nan),
        ),
        ValueError,
        r"`samples`",
    ),
    (
        "dequantize-out-of-range",
        lambda: sd.dequantize(jr.key(0), jnp.full((2, 2), 300)),
        ValueError,
        r"`x` must hold integers",
    ),
    (
        "bits-per-dim-shape",
        lambda: sd.bits_per_dim(jnp.zeros(3), X),
        ValueError,
        r"`log_prob`|`x`",
    ),
    ("toy-n-zero", lambda: sd.data.moons(jr.key(0), 0), ValueError, r"`n`"),
    ("digits-split-foo", lambda: sd.data.digits("foo"), ValueError, r"`split`"),
    (
        "load-missing-dir",
        lambda: sd.load_checkpoint("/nonexistent/run"),
        FileNotFoundError,
        r"does not exist",
    ),
]


@pytest.mark.parametrize(
    "call, exc, match", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES]
)
def test_api_bad_input(call, exc, match):
    # The library's own errors, as a user sees them: jaxtyping's run-time type checker
    # (pyproject's addopts) is switched off for the call, or it would reject wrongly
    # typed arguments first (and, as beartype checks one random element of a tuple,
    # not always naming the argument).
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        with pytest.raises(exc) as info:
            call()
    finally:
        jaxtyping.config.update("jaxtyping_disable", False)
    assert re.search(match, str(info.value)), str(info.value)


def test_api_cases_distinct():
    ids = [c[0] for c in API_CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 25


# ------------------------------------------------------------------ NaN inside a solve


class NaNBelow(eqx.Module):
    """A score that is NaN for t < t_nan (an array, so all cases share one compile)."""

    t_nan: jax.Array

    def __call__(self, t, x):
        return jnp.where(t < self.t_nan, jnp.nan, -x)


@pytest.mark.parametrize("throw", [True, False], ids=["throw", "no-throw"])
def test_nan_score_sample_raises(throw):
    kw = dict(solver=dfx.Euler(), method="ode", num_steps=4, throw=throw)
    ok = _sample(score=NaNBelow(jnp.asarray(-1.0)), **kw)  # the control: same compile
    assert bool(jnp.all(jnp.isfinite(ok.samples)))
    for t_nan in (2.0, 0.5):  # NaN everywhere; NaN only in the second half of the solve
        with pytest.raises(Exception, match="non-finite samples"):
            _sample(score=NaNBelow(jnp.asarray(t_nan)), **kw)


@pytest.mark.parametrize("throw", [True, False], ids=["throw", "no-throw"])
def test_nan_score_log_likelihood_and_flows_raise(throw):
    kw = dict(num_steps=3, throw=throw)
    nan_late = NaNBelow(jnp.asarray(0.5))  # likelihoods run from eps up: NaN at first
    with pytest.raises(Exception, match="non-finite log-density"):
        _ll(score=nan_late, divergence=sd.ExactDivergence(), **kw)
    with pytest.raises(Exception, match="produced NaN or inf"):
        sd.encode(SDE, nan_late, X, **kw)
    with pytest.raises(Exception, match="produced NaN or inf"):
        sd.decode(SDE, nan_late, X, **kw)  # T -> eps: NaN only after t = 0.5


def test_nan_midway_adaptive_fails_loudly_or_reports():
    """With a PID controller, NaN steps are rejected until `max_steps`: `throw=True`
    raises; `throw=False` returns finite values of the state reached and a failed
    `result` (the documented contract)."""
    score = NaNBelow(jnp.asarray(0.5))
    kw = dict(solver=dfx.Tsit5(), method=None, num_steps=None, stepsize_controller=PID)
    with pytest.raises(Exception, match="max_steps"):
        _sample(score=score, max_steps=16, **kw)
    res = _sample(score=score, max_steps=16, throw=False, **kw)
    assert res.result != dfx.RESULTS.successful
    assert bool(jnp.all(jnp.isfinite(res.samples)))
    res = _ll(
        score=lambda t, x: jnp.where(t > 0.5, jnp.nan, -x), max_steps=16, throw=False
    )
    assert res.result != dfx.RESULTS.successful
    assert bool(jnp.all(jnp.isfinite(res.log_prob)))


def test_nan_loss_in_training_raises():
    # A network with one NaN weight: the loss is NaN at the first step.
    bad = eqx.tree_at(
        lambda m: m.model.layers[0].weight,
        MODEL,
        MODEL.model.layers[0].weight.at[0, 0].set(jnp.nan),
    )
    with pytest.raises(
        sd.NonFiniteLossError, match="became NaN or inf at step 1:"
    ) as e:
        _train(model=bad, steps_per_call=2)
    assert isinstance(e.value, FloatingPointError) and e.value.step == 1


# ------------------------------------------------------------------ the CLI

TRAIN = ["train", "--data", "moons", "--sde", "vp", "--model", "mlp", "--steps", "2"]
TINY = ["--steps-per-call", "2", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    ck = tmp_path_factory.mktemp("faults") / "ck"
    assert cli.main([*TRAIN, "--seed", "0", "--out", str(ck), *TINY]) == 0
    return ck


def _sample_argv(ck, out, *extra):
    return [
        "sample",
        "--checkpoint",
        str(ck),
        "--num-samples",
        "2",
        "--solver",
        "euler-maruyama",
        "--steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def _flip_byte(d):
    f = next(d.glob("ckpt_*.eqx"))
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


def _drop_json(d):
    next(d.glob("ckpt_*.json")).unlink()


def _garble_json(d):
    next(d.glob("ckpt_*.json")).write_text('{"format": "scoresde_diffrax.checkp')


# (id, argv with {ck} = a fresh copy of a tiny checkpoint, {d} = an empty directory,
#  {f} = a plain file; what to do to the copy first; needle in the stderr line)
CLI_CASES = [
    (
        "unknown-sde",
        [*TRAIN[:3], "--sde", "vq", *TRAIN[5:], "--out", "{d}/o"],
        None,
        "argument --sde: invalid choice: 'vq'",
    ),
    ("unknown-command", ["frobnicate"], None, "invalid choice: 'frobnicate'"),
    ("no-command", [], None, "required: COMMAND"),
    ("missing-out", _sample_argv("{ck}", "x.npy")[:-2], None, "required: --out"),
    (
        "missing-data",
        [*TRAIN[:1], *TRAIN[3:], "--out", "{d}/o"],
        None,
        "required: --data",
    ),
    (
        "negative-steps",
        _sample_argv("{ck}", "{d}/x.npy")[:8] + ["-5", "--out", "{d}/x.npy"],
        None,
        "argument --steps: must be an integer >= 1",
    ),
    (
        "non-integer-num-samples",
        [
            "sample",
            "--checkpoint",
            "{ck}",
            "--num-samples",
            "2.5",
            "--solver",
            "pc",
            "--out",
            "{d}/x.npy",
        ],
        None,
        "argument --num-samples: must be an integer >= 1, got '2.5'",
    ),
    (
        "batch-size-zero",
        [*TRAIN, "--out", "{d}/o", "--batch-size", "0"],
        None,
        "argument --batch-size: must be an integer >= 1",
    ),
    (
        "lr-negative",
        [*TRAIN, "--out", "{d}/o", "--lr", "-1"],
        None,  # fixed
        "argument --lr: must be a finite number > 0",
    ),
    (
        "ema-above-one",
        [*TRAIN, "--out", "{d}/o", "--ema", "1.5"],
        None,  # fixed
        "argument --ema: must be a number in [0, 1)",
    ),
    (
        "eps-negative",
        _sample_argv("{ck}", "{d}/x.npy", "--eps", "-1"),
        None,  # fixed
        "argument --eps: must be a finite number > 0",
    ),
    (
        "eps-above-T",
        _sample_argv("{ck}", "{d}/x.npy", "--eps", "2"),
        None,  # fixed
        "--eps must be below the SDE's end time",
    ),
    (
        "checkpoint-is-a-file",
        _sample_argv("{f}", "{d}/x.npy"),
        None,
        "is a file, not a directory",
    ),
    (
        "checkpoint-empty-dir",
        _sample_argv("{d}", "{d}/x.npy"),
        None,
        "--checkpoint: no complete checkpoint",
    ),
    ("out-unwritable", _sample_argv("{ck}", "{f}/x.npy"), None, "--out's directory"),
    (
        "png-wrong-suffix",
        _sample_argv("{ck}", "{d}/x.npy", "--png", "{d}/p.jpg"),
        None,
        "--png must name a .png file",
    ),
    (
        "checkpoint-flipped-byte",
        _sample_argv("{ck}", "{d}/x.npy"),
        _flip_byte,
        "SHA-256 mismatch",
    ),
    (
        "checkpoint-json-missing",
        _sample_argv("{ck}", "{d}/x.npy"),
        _drop_json,
        "--checkpoint: no complete checkpoint",
    ),
    (
        "checkpoint-json-corrupt",
        _sample_argv("{ck}", "{d}/x.npy"),
        _garble_json,
        "metadata",
    ),
    (
        "resume-corrupt-checkpoint",
        [*TRAIN[:8], "4", "--out", "{ck}", "--resume", *TINY],
        _flip_byte,
        "truncated or corrupt",
    ),
    (
        "resume-other-model-width",
        [*TRAIN[:8], "4", "--out", "{ck}", "--resume", *TINY],
        "width",
        "`resume`: the checkpoint",
    ),
    ("train-out-is-a-file", [*TRAIN, "--out", "{f}", *TINY], None, "--out"),
]


def _other_width(d):
    js = next(d.glob("ckpt_*.json"))
    meta = json.loads(js.read_text())
    meta["model"]["config"]["width"] = 64  # the CLI's MLP has width 128
    js.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "argv, damage, needle", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_cli_bad_input(ckpt, tmp_path, capsys, argv, damage, needle):
    ck = tmp_path / "ck"
    shutil.copytree(ckpt, ck)
    if damage == "width":
        damage = _other_width
    if damage is not None:
        damage(ck)
    d = tmp_path / "empty"
    d.mkdir()
    f = tmp_path / "file"
    f.write_text("x")
    argv = [a.format(ck=ck, d=d, f=f) for a in argv]
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert needle in err, err
    assert not list(d.glob("*.npy"))  # nothing written on failure


# ------------------------------------------------------------------ atomic checkpoints


def _leaves(tree):
    return [
        np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))
    ]


def _equal(a, b):
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(x, y) for x, y in zip(la, lb, strict=True)
    )


def test_failed_json_rename_leaves_previous_checkpoint(ckpt, tmp_path, monkeypatch):
    """The weights of a new checkpoint are in place but the rename of its JSON fails:
    the new checkpoint does not count, the old one loads, no temporary file is left,
    and a resume that succeeds later overwrites the orphan."""
    d = tmp_path / "ck"
    shutil.copytree(ckpt, d)
    good, meta = sd.load_checkpoint(d)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("EIO on rename")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint_mod.os, "replace", failing_replace)
    argv = [*TRAIN[:8], "4", "--out", str(d), "--resume", *TINY]
    with pytest.raises(OSError, match="EIO"):
        cli.train.run(cli.build_parser().parse_args(argv))
    assert (d / "ckpt_000000004.eqx").exists()  # orphaned weights, no JSON
    assert not (d / "ckpt_000000004.json").exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    again, meta2 = sd.load_checkpoint(d)
    assert meta2["step"] == meta["step"] and _equal(again, good)
    monkeypatch.setattr(checkpoint_mod.os, "replace", real_replace)
    assert cli.main(argv) == 0
    assert sd.load_checkpoint(d)[1]["step"] == 4


# ------------------------------------------------------------------ SIGKILL and resume

_CHILD = textwrap.dedent(
    """
    import os, pathlib, sys, time
    import jax.random as jr
    import scoresde_diffrax as sd
    import scoresde_diffrax._checkpoint as checkpoint_mod

    d = pathlib.Path(sys.argv[1])
    calls = [0]
    real_fsync = os.fsync

    def fsync(fd):
        calls[0] += 1
        if calls[0] == 3:  # the weights of the second checkpoint are half written
            (d.parent / "stuck").write_text("x")
            time.sleep(600)
        return real_fsync(fd)

    checkpoint_mod.os.fsync = fsync
    exec(sys.argv[2])
    sd.train(jr.key(3), model(), sd.VPSDE(), data(), num_steps=10_000,
             checkpoint_dir=d, **KW)
    """
)
_SETUP = textwrap.dedent(
    """
    import jax.random as jr
    import scoresde_diffrax as sd

    def model():
        return sd.EpsScore(sd.nn.MLPScore((2,), width=16, depth=2, key=jr.key(1)),
                           sd.VPSDE())

    def data():
        return sd.data.moons(jr.key(0), 256)

    KW = dict(batch_size=16, learning_rate=1e-3, warmup_steps=5, steps_per_call=5,
              checkpoint_every=5, ema_decay=0.9, progress=False)
    """
)


def test_sigkill_mid_checkpoint_then_resume_is_bit_exact(tmp_path):
    d = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(d), _SETUP],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "stuck").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the training subprocess hung"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stderr.close()
    # Killed between the temporary write and the rename of checkpoint 10's weights:
    # a stray temporary file, and checkpoint 5 is the newest complete one.
    assert [p.name for p in d.glob("*.json")] == ["ckpt_000000005.json"]
    assert [p for p in d.iterdir() if p.name.endswith(".tmp")]
    ns = {}
    exec(_SETUP, ns)
    model, data, kw = ns["model"], ns["data"], ns["KW"]
    loaded, meta = sd.load_checkpoint(d)
    assert meta["step"] == 5
    total = 15
    resumed = sd.train(
        jr.key(99),
        model(),
        SDE,
        data(),
        num_steps=total,
        checkpoint_dir=d,
        resume=True,
        **kw,
    )
    full = sd.train(jr.key(3), model(), SDE, data(), num_steps=total, **kw)
    assert resumed.losses.shape == (total - 5,)
    np.testing.assert_array_equal(resumed.losses, full.losses[5:])
    assert _equal(resumed.model, full.model) and _equal(
        resumed.ema_model, full.ema_model
    )
    assert _equal(resumed.state.opt_state, full.state.opt_state)


def test_wrapped_multistep_solver_gets_its_grid_minimum():
    """A multistep solver inside `Impute` (any wrapper) needs as many grid steps as
    it stores predictions: the wrapper answers for the solver it wraps."""
    obs, mask = jnp.zeros((2, 2)), jnp.array([True, False])
    for solver in (sd.DEIS(order=3), sd.Impute(sd.DEIS(order=3), obs, mask)):
        with pytest.raises(ValueError, match="`num_steps`.*at least 3 steps"):
            sd.sample(
                jr.key(0), SDE, lambda t, x: -x, (2, 2), solver=solver, num_steps=2
            )


def test_solve_errors_keep_their_kind_and_message_under_jit():
    """Outside `jit` a failure is a `SolveError` of one kind; under an outer `jit` the
    same message is raised from inside the program."""
    nan = NaNBelow(jnp.asarray(2.0))
    kw = dict(solver=dfx.Euler(), method="ode", num_steps=2)
    with pytest.raises(sd.SolveError, match="non-finite samples") as info:
        sd.sample(jr.key(0), SDE, nan, (2, 2), **kw)
    assert info.value.kind == "non_finite"
    with pytest.raises(sd.SolveError, match="produced NaN or inf") as info:
        sd.encode(SDE, nan, jnp.zeros((2, 2)), num_steps=2)
    assert info.value.kind == "non_finite"
    jitted = jax.jit(lambda k: sd.sample(k, SDE, nan, (2, 2), **kw).samples)
    with pytest.raises(Exception, match="non-finite samples"):
        jax.block_until_ready(jitted(jr.key(0)))
    assert issubclass(sd.OutOfMemoryError, MemoryError)
    assert sd.OutOfMemoryError("m", largest=3).largest == 3
