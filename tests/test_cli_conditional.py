"""The controllable-generation commands end to end, in process, on tiny runs:
`train-classifier` (and --resume), `sample --classifier --label`, `inpaint`,
`colorize`; and their user errors (one line, exit code 2)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import cli_args, run_cli, write_checkpoint

import scoresde_diffrax as sd


TINY = dict(steps_per_call=2, batch_size=16, quiet=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Untrained checkpoints: a score model (MLP) and a classifier on digits (VP), a
    score model on coloured digits, a classifier with another SDE (VE)."""
    root = tmp_path_factory.mktemp("ckpts")
    paths = {k: root / k for k in ("score", "clf", "color", "clf_ve")}
    digits, colored = sd.data.digits(), sd.data.colored_digits()
    vp, ve = sd.VPSDE(), sd.VESDE(sigma_min=0.01, sigma_max=10.0)

    def zeros(make):
        # The structure without computing anything, with zero weights: untrained
        # checkpoints for the commands, at no compilation cost.
        like = eqx.filter_eval_shape(make, jr.key(0))
        return jax.tree_util.tree_map(
            lambda x: (
                jnp.zeros(x.shape, x.dtype)
                if isinstance(x, jax.ShapeDtypeStruct)
                else x
            ),
            like,
        )

    mlp = lambda shape: zeros(  # noqa: E731
        lambda k: sd.nn.MLPScore(shape, width=32, depth=1, key=k)
    )
    clf = zeros(
        lambda k: sd.nn.NoiseConditionalClassifier(
            (1, 8, 8), channels=8, num_levels=1, groups=4, key=k
        )
    )
    write_checkpoint(paths["score"], sd.EpsScore(mlp((1, 8, 8)), vp), vp, digits)
    write_checkpoint(paths["clf"], clf, vp, digits)
    write_checkpoint(paths["color"], sd.EpsScore(mlp((3, 8, 8)), vp), vp, colored)
    write_checkpoint(paths["clf_ve"], clf, ve, digits)
    return paths


def test_train_classifier_reports_and_resumes(tmp_path, capsys):
    out = tmp_path / "clf"
    argv = cli_args(
        "train-classifier",
        data="digits",
        sde="vp",
        out=out,
        **(TINY | dict(steps_per_call=1)),
        channels=8,
        levels=1,
    )
    code, text, err = run_cli(argv + ["--steps", "2"], capsys)
    assert code == 0, err
    assert "2 steps" in text and "test accuracy" in text
    code, text, err = run_cli(argv + ["--steps", "4", "--resume"], capsys)
    assert code == 0, err
    assert "2 steps" in text and (out / "ckpt_000000004.json").exists()
    model, meta = sd.load_checkpoint(out)
    assert isinstance(model, sd.nn.NoiseConditionalClassifier)
    assert meta["loss"]["class"] == "ClassifierLoss" and meta["step"] == 4


def test_guided_sample_inpaint_colorize(runs, tmp_path, capsys):
    npy, png = tmp_path / "g.npy", tmp_path / "g.png"
    ancestral3 = dict(solver="ancestral", steps=3)
    code, out, err = run_cli(
        cli_args(
            "sample",
            checkpoint=runs["score"],
            classifier=runs["clf"],
            label="all",
            guidance_scale=2,
            num_samples=12,
            **ancestral3,
            out=npy,
            png=png,
        ),
        capsys,
    )
    assert code == 0, err
    x = np.load(npy)
    assert x.shape == (12, 1, 8, 8) and png.exists()

    # Inpainting: the known region is the observation, the PNG three columns.
    npy, png = tmp_path / "i.npy", tmp_path / "i.png"
    code, out, err = run_cli(
        cli_args(
            "inpaint",
            checkpoint=runs["score"],
            data="digits",
            mask="left-half",
            num_samples=5,
            seed=1,
            **ancestral3,
            out=npy,
            png=png,
        ),
        capsys,
    )
    assert code == 0, err
    from scoresde_diffrax.data import digits_array

    truth = digits_array("test")[0][:5]
    x = np.load(npy)
    assert x.shape == (5, 1, 8, 8) and "5 completions" in out
    np.testing.assert_array_equal(x[..., 4:], truth[..., 4:])
    assert png.exists()

    # Your own observations and mask (1 = known); the same shapes and solver as above,
    # so nothing compiles again.
    obs, mask = tmp_path / "o.npy", tmp_path / "m.npy"
    np.save(obs, truth)
    m = np.zeros((1, 8, 8), bool)
    m[:, :4] = True
    np.save(mask, m)
    code, out, err = run_cli(
        cli_args(
            "inpaint",
            checkpoint=runs["score"],
            observations=obs,
            mask_file=mask,
            **ancestral3,
            out=tmp_path / "own.npy",
        ),
        capsys,
    )
    assert code == 0, err
    own = np.load(tmp_path / "own.npy")
    np.testing.assert_array_equal(own[:, :, :4], truth[:, :, :4])

    # Colorization: the grey level of each result is the observation's.
    npy = tmp_path / "c.npy"
    code, out, err = run_cli(
        cli_args(
            "colorize",
            checkpoint=runs["color"],
            data="colored-digits",
            num_samples=4,
            **ancestral3,
            out=npy,
        ),
        capsys,
    )
    assert code == 0, err
    from scoresde_diffrax.data import colored_digits

    grey = np.asarray(colored_digits("test").x[:4]).mean(1)
    x = np.load(npy)
    assert x.shape == (4, 3, 8, 8)
    inside = (x > 0) & (x < 1)  # where clipping to [0, 1] did not act
    assert np.all(inside.all(1) <= (np.abs(x.mean(1) - grey) < 1e-5))


_GUIDED = dict(checkpoint="{score}", classifier="{clf}")
_INPAINT = dict(checkpoint="{score}", data="digits", mask="left-half", num_samples=2)


@pytest.mark.parametrize(
    "argv, match",
    [
        # A classifier where a score model goes, and the reverse.
        (cli_args("sample", checkpoint="{clf}"), "--checkpoint: .* holds a classifier"),
        (
            cli_args("sample", **(_GUIDED | dict(classifier="{score}")), label=1),
            "--classifier: .* holds a score model",
        ),
        # A classifier trained with another SDE.
        (
            cli_args("sample", **(_GUIDED | dict(classifier="{clf_ve}")), label=1),
            "--classifier: trained with the SDE",
        ),
        (
            cli_args("sample", **_GUIDED, label=10),
            "--label must be a class 0..9",
        ),
        (cli_args("sample", **_GUIDED, label="x"), "--label must be a class"),
        (cli_args("sample", **_GUIDED), "--classifier needs --label"),
        (
            cli_args("sample", checkpoint="{score}", label=1),
            "--label and --guidance-scale need --classifier",
        ),
        (
            cli_args("sample", **_GUIDED, label=1, guidance_scale=-1),
            "--guidance-scale",
        ),
        (
            cli_args("inpaint", **(_INPAINT | dict(checkpoint="{clf}"))),
            "--checkpoint: .* holds a classifier",
        ),
        (
            cli_args("inpaint", **(_INPAINT | dict(mask="top"))),
            "--mask must be one of",
        ),
        (
            cli_args("inpaint", **(_INPAINT | dict(mask="random-pixels:2"))),
            "random-pixels:P needs 0 < P < 1",
        ),
        (
            cli_args("inpaint", **(_INPAINT | dict(data="colored-digits"))),
            "--data colored-digits has examples of shape",
        ),
        (
            cli_args("inpaint", **(_INPAINT | dict(data="moons"))),
            "--data moons has no test split",
        ),
        (
            cli_args(
                "inpaint",
                checkpoint="{score}",
                observations="{obs}",
                mask_file="{badmask}",
            ),
            "--mask-file: the mask must have shape",
        ),
        (
            cli_args(
                "inpaint",
                checkpoint="{score}",
                observations="{obs}",
                mask_file="{nonbinary}",
            ),
            "--mask-file: the mask must be binary",
        ),
        (cli_args("inpaint", **_INPAINT, solver="ode-tsit5"), "--solver"),
        (
            cli_args(
                "colorize",
                checkpoint="{score}",
                data="colored-digits",
                num_samples=2,
            ),
            "colorization needs a model of colour images",
        ),
        (
            cli_args(
                "train-classifier", data="moons", sde="vp", steps=2, out="{tmp}/x"
            ),
            "--data moons has no class labels",
        ),
    ],
)
def test_user_errors(runs, tmp_path, capsys, argv, match):
    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros((2, 1, 8, 8), np.float32))
    np.save(tmp_path / "bad.npy", np.ones((8, 8), bool))
    np.save(tmp_path / "nb.npy", np.full((1, 8, 8), 0.5))
    names = {k: str(v) for k, v in runs.items()}
    names.update(obs=str(obs), badmask=str(tmp_path / "bad.npy"))
    names.update(nonbinary=str(tmp_path / "nb.npy"), tmp=str(tmp_path))
    argv = [a.format(**names) for a in argv]
    if argv[0] in ("sample", "inpaint", "colorize"):
        argv += ["--out", str(tmp_path / "o.npy")]
    if argv[0] == "sample":
        argv += ["--num-samples", "2", "--solver", "ancestral", "--steps", "2"]
    code, out, err = run_cli(argv, capsys)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(match, err), err
