"""`scoresde inverse` end to end, in process, on tiny runs (untrained checkpoints, 3
steps, 8x8 digits): each operator through projection and DPS, measurement consistency
of projection computed from the written file; the operators against hand-computed
values; the bad inputs (one line, exit code 2)."""

import re

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import run_cli, write_checkpoint, zero_weights

import scoresde_diffrax as sd
from scoresde_diffrax import cli
from scoresde_diffrax.cli import inverse as inverse_cli
from scoresde_diffrax.data import digits_array


def _linear_x0_net(c: float):
    """An `MLPScore` on 8x8 digits (one hidden layer of 128) whose output is exactly
    `c * x` at every `t`: hidden units `silu(x)` and `silu(-x)`, output `c (silu(x) -
    silu(-x)) = c x`. As an `X0Score` it predicts `x0_hat = c x_t`: a score that pulls
    the samples towards 0 (grey in data units), with a nonzero Jacobian for DPS's
    gradient through `x0_hat`."""
    net = zero_weights(lambda k: sd.nn.MLPScore((1, 8, 8), width=128, depth=1, key=k))
    eye = jnp.eye(64)
    (layer,) = net.layers
    w1 = layer.weight.at[:64, :64].set(eye).at[64:, :64].set(-eye)
    net = eqx.tree_at(lambda m: m.layers[0].weight, net, w1)
    w2 = jnp.concatenate([c * eye, -c * eye], axis=1)
    return eqx.tree_at(lambda m: m.out.weight, net, w2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Untrained checkpoints on digits (VP): score models predicting `x0 = 0` (zero
    weights in `sd.X0Score`: the exact score of data at 0 in model units, grey in
    data units, so that the samples stay in range and clipping to [0, 1] leaves the
    projected measurement alone) and `x0 = x / 2` (`_linear_x0_net`, for DPS, whose
    gradient through `x0_hat` vanishes for the first), and a classifier (zero
    weights)."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = {k: root / k for k in ("score", "linear", "clf")}
    digits, vp = sd.data.digits(), sd.VPSDE()
    clf = zero_weights(
        lambda k: sd.nn.NoiseConditionalClassifier(
            (1, 8, 8), channels=8, num_levels=1, groups=4, key=k
        )
    )
    zero = zero_weights(lambda k: sd.nn.MLPScore((1, 8, 8), width=32, depth=1, key=k))
    write_checkpoint(paths["score"], sd.X0Score(zero, vp), vp, digits)
    write_checkpoint(paths["linear"], sd.X0Score(_linear_x0_net(0.5), vp), vp, digits)
    write_checkpoint(paths["clf"], clf, vp, digits)
    return paths


def test_linear_x0_net():
    x = jr.normal(jr.key(0), (1, 8, 8))
    np.testing.assert_allclose(_linear_x0_net(0.5)(0.3, x), 0.5 * x, atol=1e-6)


TRUTH = digits_array("test")[0][:4]  # data units, (4, 1, 8, 8)
SCALE_SHIFT = (2.0, -1.0)  # digits: [0, 1] -> [-1, 1]


def _argv(runs, tmp_path, operator, method, *extra, steps=3):
    return [
        "inverse",
        "--checkpoint",
        str(runs["score"]),
        "--data",
        "digits",
        "--operator",
        operator,
        "--algorithm",
        method,
        "--num-samples",
        "4",
        "--seed",
        "3",
        "--solver",
        "ancestral",
        "--steps",
        str(steps),
        "--out",
        str(tmp_path / "x.npy"),
        *extra,
    ]


# --------------------------------------------------------------------------- end to end

# 4 random measurements: their minimum-norm solution A^+ y (what projection gives with
# x0 = 0) stays inside [-1, 1] for these digits (-0.64..0.47; with 8, up to 1.13), so
# clipping to [0, 1] keeps A(x) = y.
OPS = ["super-resolution:2", "blur:0.7", "mask:centre-square", "random-projection:4"]


@pytest.mark.parametrize("operator", OPS)
def test_projection_satisfies_the_measurement(runs, tmp_path, capsys, operator):
    png = tmp_path / "p.png"
    argv = _argv(runs, tmp_path, operator, "projection", "--noise-std", "0")
    code, out, err = run_cli(argv + ["--png", str(png)], capsys)
    assert code == 0, err
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (4, 1, 8, 8) and x.dtype == np.float32
    assert np.all((x >= 0) & (x <= 1)) and png.exists()
    assert "4 reconstructions (projection" in out and "PSNR" in out

    # A(x) = y = A(truth) (noise std 0), computed here from the written file.
    op = sd.operators.make_operator(operator, (1, 8, 8), 3, SCALE_SHIFT)
    model = lambda v: v * 2.0 - 1.0  # noqa: E731
    got = np.asarray(op.batch(model(x)))
    want = np.asarray(op.batch(model(TRUTH)))
    scale = np.abs(want).max()
    assert np.max(np.abs(got - want)) < 2e-3 * scale, np.max(np.abs(got - want))
    # ... and the residual the command prints says so.
    printed = float(re.search(r"sqrt\(m\) (\S+)", out).group(1))
    assert printed < 2e-3

    # The result is not the truth: the measurement alone does not fix it (except for
    # a blur, which is invertible; x0 = 0 fills the rest with grey).
    if not operator.startswith("blur"):
        assert np.max(np.abs(x - TRUTH)) > 0.1


@pytest.mark.parametrize("operator", OPS)
def test_dps_writes_images(runs, tmp_path, capsys, operator):
    argv = _argv(runs, tmp_path, operator, "dps", "--noise-std", "0.1", steps=3)
    argv[argv.index("--checkpoint") + 1] = str(runs["linear"])
    code, out, err = run_cli(argv + ["--step-size", "1"], capsys)
    assert code == 0, err
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (4, 1, 8, 8) and x.dtype == np.float32
    assert np.all(np.isfinite(x)) and np.all((x >= 0) & (x <= 1))
    # DPS adds one score evaluation per step to ancestral sampling's one.
    assert "6 score evaluations each" in out, out
    # A residual well above the noise level is a warning on stderr (and only then).
    rms = float(out.split("sqrt(m) ")[1].split()[0])
    warned = "warning: DPS's residual" in err
    assert warned == (rms > inverse_cli.dps_residual_limit(0.1)), (rms, err)
    # The gradient steps pull the samples towards the measurement: for the random
    # projection (a few measurements that DPS can fit in 3 steps), the residual is
    # well below that of grey images (0 in model units), where the model alone leads
    # (measured: 0.49 vs 0.88 on average). For the others, the noise that 3 steps of
    # this toy model leave in the samples is as large as the DPS correction.
    if operator.startswith("random-projection"):
        op = sd.operators.make_operator(operator, (1, 8, 8), 3, SCALE_SHIFT)
        y = sd.operators.measure(op, TRUTH * 2.0 - 1.0, 0.1, seed=3)
        got = sd.operators.residuals(op, x * 2.0 - 1.0, y)
        grey = sd.operators.residuals(op, np.zeros_like(x), y)
        assert got.mean() < 0.7 * grey.mean(), (got, grey)


def test_help_lists_each_operator(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["inverse", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in (
        *sd.operators.OPERATORS,
        "left-half",
        "centre-square",
        "random-pixels:P",
    ):
        assert name in text, name
    for flag in ("--algorithm", "--solver-method", "--noise-std", "--step-size"):
        assert flag in text, flag


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "operator, method, extra, match",
    [
        ("zoom:2", "dps", [], "--operator must be one of super-resolution:F, blur"),
        ("blur", "dps", [], "--operator must be one of"),
        ("super-resolution:3", "dps", [], "factor must divide the image size 8 x 8"),
        ("super-resolution:x", "dps", [], "needs an integer F >= 1"),
        ("blur:-1", "dps", [], "blur:SIGMA needs a finite SIGMA > 0"),
        ("mask:top", "dps", [], "mask:NAME needs NAME one of left-half"),
        ("mask:random-pixels:1.5", "dps", [], "needs 0 < P < 1"),
        ("random-projection:0", "dps", [], "needs an integer M >= 1"),
        ("blur:1", "dps", ["--noise-std", "-0.1"], "--noise-std must be a finite"),
        (
            "blur:1",
            "projection",
            ["--step-size", "1"],
            "--algorithm projection takes no",
        ),
        ("blur:1", "dps", ["--step-size", "-1"], "--step-size"),
        ("blur:1", "tikhonov", [], "--algorithm"),
        ("blur:1", "dps", ["--checkpoint", "{clf}"], "holds a classifier"),
        ("blur:1", "dps", ["--data", "moons"], "--data moons has no test split"),
        ("blur:1", "dps", ["--data", "colored-digits"], "examples of shape"),
        ("blur:1", "dps", ["--solver", "ode-tsit5"], "--solver"),
    ],
)
def test_user_errors(runs, tmp_path, capsys, operator, method, extra, match):
    extra = [e.format(clf=runs["clf"]) for e in extra]
    argv = _argv(runs, tmp_path, operator, method)
    if "--noise-std" not in extra:
        argv += ["--noise-std", "0.1"]
    code, out, err = run_cli(argv + extra, capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("scoresde inverse: error:"), err
    assert re.search(re.escape(match), err), err
    assert not (tmp_path / "x.npy").exists()


def test_method_is_the_deprecated_name_of_algorithm(runs, tmp_path, capsys):
    argv = _argv(runs, tmp_path, "blur:1", "projection", "--noise-std", "0", steps=1)
    argv[argv.index("--algorithm")] = "--method"
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert err.strip() == (
        "scoresde inverse: note: --method is deprecated here (it means sde/ode in "
        "the other commands); use --algorithm"
    )
    assert (
        "1 reconstructions (projection" in out or "4 reconstructions (projection" in out
    )
    # Both names at once is a one-line error.
    code, out, err = run_cli(argv + ["--algorithm", "dps"], capsys)
    assert code == 2 and len(err.strip().splitlines()) <= 2, err
    assert "not allowed with argument" in err, err
