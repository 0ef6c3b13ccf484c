"""What a new user meets first, from the shell: defaults that need no reading (a
default solver), paths that do not grow directories in odd places, progress in a
log, pictures that say what they show, data conversions said out loud, and a hint
of how long to train. Tiny untrained checkpoints: nothing here trains a model."""

import jax.random as jr
import numpy as np
import pytest
from helpers import one_line, run_cli, write_checkpoint, zero_weights

import scoresde_diffrax as sd
from scoresde_diffrax import cli
from scoresde_diffrax.cli._common import writable_dir


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Untrained checkpoints (VP): an MLP on moons, a class-conditional MLP on moons
    (2 classes), an MLP on the 8x8 digits and a classifier of them (zero weights),
    an MLP on the coloured digits."""
    root = tmp_path_factory.mktemp("newuser")
    vp = sd.VPSDE()
    moons = sd.data.Dataset(sd.data.moons(jr.key(0), 256), None, name="moons")
    net = sd.nn.MLPScore((2,), width=8, depth=1, key=jr.key(1))
    write_checkpoint(root / "moons", sd.EpsScore(net, vp), vp, moons)
    cond = sd.nn.MLPScore((2,), width=8, depth=1, num_classes=2, key=jr.key(2))
    write_checkpoint(root / "cond", sd.EpsScore(cond, vp), vp, moons)
    digits = sd.data.digits()
    dnet = sd.nn.MLPScore((1, 8, 8), width=8, depth=1, key=jr.key(3))
    write_checkpoint(root / "digits", sd.EpsScore(dnet, vp), vp, digits)
    clf = zero_weights(
        lambda k: sd.nn.NoiseConditionalClassifier(
            (1, 8, 8), channels=8, num_levels=1, groups=4, key=k
        )
    )
    write_checkpoint(root / "clf", clf, vp, digits)
    cnet = sd.nn.MLPScore((3, 8, 8), width=8, depth=1, key=jr.key(4))
    write_checkpoint(
        root / "color", sd.EpsScore(cnet, vp), vp, sd.data.colored_digits()
    )
    return {k: str(root / k) for k in ("moons", "cond", "digits", "clf", "color")}


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


# ------------------------------------------------------------------ your own images


def _mixed_folder(path):
    """6 grey, 3 colour, 1 transparent, 1 16-bit grey 8x8 PNG; the 16-bit one starts
    with 257 * 128, 65535, 0."""
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        a = rng.integers(0, 256, (8, 8), dtype=np.uint8)
        Image.fromarray(a, "L").save(path / f"g{i}.png")
    for i in range(3):
        a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(a, "RGB").save(path / f"c{i}.png")
    a = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(a, "RGBA").save(path / "t.png")
    wide = np.zeros((8, 8), np.uint16)
    wide[0, 0], wide[0, 1] = 257 * 128, 65535
    Image.fromarray(wide).save(path / "w.png")


def test_mixed_images_are_said_to_be_converted(tmp_path, capsys):
    """A folder of grey and colour images (one transparent, one 16-bit) is read as
    colour with one line saying how many images were converted, and how; the data
    line writes the mapping to model units as `x * 2 - 1`; 16-bit values are
    scaled, not clipped."""
    from scoresde_diffrax.cli._common import load_dataset

    folder = tmp_path / "mixed"
    _mixed_folder(folder)
    with pytest.warns(sd.data.DataConversionWarning) as caught:
        ds = sd.data.load_data(folder)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "7 of the 11 images from grey to RGB" in message
    assert "1 of the 11 images from 16 to 8 bits" in message
    assert "1 of the 11 images without their transparency" in message
    assert ds.x.shape == (11, 3, 8, 8)
    wide = np.asarray(ds.x[-1])  # w.png, sorted last
    np.testing.assert_allclose(wide[:, 0, :3], [[128 / 255, 1, 0]] * 3, atol=1e-6)

    capsys.readouterr()
    load_dataset(str(folder))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("-> model units x * 2 - 1"), lines[0]
    assert lines[1].startswith(f"data: {folder}: converted 7 of the 11 images"), lines


def test_training_on_your_own_images_hints_at_the_steps(tmp_path, capsys):
    """Training on your own images with fewer steps than the bundled digits model
    needed says so, naming the measured figure; not on vectors, not with enough
    --steps. The note comes before training (here, before an --out that is a file
    is refused, so that nothing compiles)."""
    folder = tmp_path / "faces"
    _mixed_folder(folder)
    np.save(tmp_path / "v.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "file").write_text("")
    base = ["train", "--sde", "vp", "--model", "mlp", "--out", tmp_path / "file"]
    code, _, err = run_cli(base + ["--data", folder, "--steps", "500"], capsys)
    note, error = err.splitlines()
    assert note.startswith("scoresde train: note: --steps 500 is likely too few")
    assert "6000 steps of --batch-size 128 at --lr 1e-3" in note
    assert code == 2 and error.startswith("scoresde train: error: --out")
    for data, steps in ((folder, "6000"), (tmp_path / "v.npy", "500")):
        code, _, err = run_cli(base + ["--data", data, "--steps", steps], capsys)
        assert code == 2 and one_line(err) and "note" not in err, err


# ------------------------------------------------------------------ bench plots


def test_bench_plot_ticks_are_plain_nfe(tmp_path, monkeypatch):
    """The x axis of `sd.bench.plot` (log scale) is ticked at the budgets, labelled 5,
    10, 20, 50 (not 10^1), with no minor ticks; an NFE within 25% of a tick (an
    adaptive solver's 52 beside 50) gets no label of its own."""
    import matplotlib.figure

    records = [
        sd.bench.BenchRecord(
            "mixture",
            s,
            nfe,
            nfe,
            nfe,
            0.0,
            0.0,
            {"sliced_w2": (1 / nfe, 0.01)},
            {"sliced_w2": (0.01, 0.001)},
        )
        for s, budgets in (("ddim", (5, 10, 20, 50)), ("tsit5", (52,)))
        for nfe in budgets
    ]
    drawn = []
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: drawn.append(fig)
    )
    sd.bench.plot(records, str(tmp_path / "p.png"))
    (ax,) = drawn[0].axes
    assert list(ax.get_xticks()) == [5, 10, 20, 50]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5", "10", "20", "50"]
    assert len(ax.xaxis.get_minorticklocs()) == 0


# ------------------------------------------------------------------ --out and --png


def test_out_into_a_missing_directory_outside_the_current_one(
    ckpts, tmp_path, capsys, monkeypatch
):
    """Every command that writes: a missing directory outside the current directory
    is one line naming it and the fix, and nothing is created; under the current
    directory missing directories are created; a DIR that --out names itself is
    created wherever its parent exists."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    missing = elsewhere / "typo" / "deeper"
    sample = ["sample", "--checkpoint", ckpts["moons"], "--num-samples", "4"]
    sample += ["--steps", "2", "--quiet"]
    cases = [
        (sample + ["--out", missing / "x.npy"], f"--out's directory '{missing}'"),
        (
            sample + ["--out", "ok/x.npy", "--png", missing / "x.png"],
            f"--png's directory '{missing}'",
        ),
        (
            ["likelihood", "--checkpoint", ckpts["moons"], "--out", missing / "l.npy"],
            f"--out's directory '{missing}'",
        ),
        (
            ["train", "--data", "moons", "--sde", "vp", "--model", "mlp"]
            + ["--steps", "2", "--out", missing / "run"],
            f"--out '{missing / 'run'}': its parent '{missing}'",
        ),
        (
            ["train-classifier", "--data", "digits", "--sde", "vp", "--steps", "2"]
            + ["--out", missing / "run"],
            f"--out '{missing / 'run'}': its parent '{missing}'",
        ),
        (
            ["bench", "--problem", "mixture:D=2,K=2", "--solvers", "ddim", "--nfe", "5"]
            + ["--out", missing / "b"],
            f"--out '{missing / 'b'}': its parent '{missing}'",
        ),
        (
            ["inpaint", "--checkpoint", ckpts["moons"], "--out", missing / "i.npy"],
            f"--out's directory '{missing}'",
        ),
    ]
    for argv, named in cases:
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and one_line(err), err
        assert named in err and "does not exist" in err, err
        assert f"mkdir -p {missing}" in err, err
        assert not (elsewhere / "typo").exists() and not (work / "ok").exists()
    code, _, err = run_cli(sample + ["--out", "a/b/x.npy", "--png", "c/x.png"], capsys)
    assert code == 0 and (work / "a/b/x.npy").exists() and (work / "c/x.png").exists()
    (elsewhere / "typo").mkdir()
    writable_dir(elsewhere / "typo" / "b", "--out")  # what train and bench call
    assert (elsewhere / "typo" / "b").is_dir()


# ------------------------------------------------------------------ progress in a log


def test_likelihood_and_sample_progress_is_plain_lines_when_piped(
    ckpts, tmp_path, capsys
):
    """With stderr not a terminal (captured here), `likelihood` and `sample` report
    the solve as `train` reports training: a few plain lines, no carriage returns,
    the last at 100%; `--quiet` reports nothing."""
    for argv, desc in (
        (
            ["likelihood", "--checkpoint", ckpts["moons"], "--num-examples", "8"],
            "likelihood",
        ),
        (
            ["sample", "--checkpoint", ckpts["moons"], "--num-samples", "4"]
            + ["--steps", "2", "--out", tmp_path / "x.npy"],
            "sample",
        ),
    ):
        code, _, err = run_cli(argv, capsys)
        assert code == 0, err
        lines = err.splitlines()
        assert "\r" not in err and 1 <= len(lines) <= 11, err
        assert all(line.startswith(f"{desc}: ") for line in lines), err
        assert lines[-1].split(":")[1].startswith(" 100% of the solve, "), err
        code, _, err = run_cli(argv + ["--quiet"], capsys)
        assert code == 0 and err == "", err


# ------------------------------------------------------------------ what a picture shows


def _recording(monkeypatch, name):
    """Wrap `_common.NAME` (a picture function) to record its calls' arguments."""
    from scoresde_diffrax.cli import _common

    calls, real = [], getattr(_common, name)

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(_common, name, record)
    return calls


def test_guided_pictures_say_label_scale_and_classifier(
    ckpts, tmp_path, capsys, monkeypatch
):
    """Class-conditional sampling: the picture's title names the labels, the guidance
    scale and the classifier (or classifier-free guidance); a 2-D scatter colours the
    samples by label; an image grid of `--label all` has a column per class."""
    from PIL import Image

    scatters = _recording(monkeypatch, "save_scatter")
    png = tmp_path / "c.png"
    code, _, err = run_cli(
        ["sample", "--checkpoint", ckpts["cond"], "--num-samples", "200"]
        + ["--label", "all", "--guidance-scale", "2", "--solver", "ddim"]
        + ["--steps", "3", "--out", tmp_path / "c.npy", "--png", png, "--quiet"],
        capsys,
    )
    assert code == 0, err
    ((_, kwargs),) = scatters
    assert kwargs["title"].endswith(
        "\nlabels 0-1 (by colour), classifier-free guidance w = 2"
    )
    np.testing.assert_array_equal(kwargs["labels"], np.arange(200) % 2)
    pic = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, b = pic[..., 0], pic[..., 2]
    blue, orange = (b - r > 60).sum(), (r - b > 80).sum()  # labels 0 and 1
    assert blue > 150 and orange > 150, (blue, orange)  # beyond the legend's

    grids = _recording(monkeypatch, "image_grid")
    images = _recording(monkeypatch, "save_image")
    base = ["sample", "--checkpoint", ckpts["digits"], "--classifier", ckpts["clf"]]
    base += ["--num-samples", "20", "--solver", "ddim", "--steps", "2", "--quiet"]
    for label, scale, says, ncols in (
        ("all", [], "labels 0-9 (column j: label j), classifier clf at scale 1", 10),
        ("3", ["--guidance-scale", "1"], "label 3, classifier clf at scale 1", None),
    ):
        code, _, err = run_cli(
            base
            + ["--label", label, *scale, "--out", tmp_path / "d.npy"]
            + ["--png", tmp_path / "d.png"],
            capsys,
        )
        assert code == 0, err
        assert images[-1][1]["title"].endswith("\n" + says), images[-1]
        assert grids[-1][1]["ncols"] == ncols
    assert Image.open(tmp_path / "d.png").size[1] > 2 * 48  # the grid under 2 lines


def test_save_rows_names_each_row():
    """`save_rows`: a row per group named on its left, the examples in columns,
    `per_row` to a block; each cell holds its image, enlarged."""
    import tempfile

    from PIL import Image

    from scoresde_diffrax._pictures import MIN_CELL, save_rows

    rng = np.random.default_rng(0)
    groups = [rng.uniform(size=(5, 1, 8, 8)) for _ in range(2)]
    groups.append(rng.uniform(size=(5, 3, 8, 8)))  # colour beside grey
    with tempfile.TemporaryDirectory() as d:
        save_rows(f"{d}/r.png", groups, ["observed", "result", "truth"], per_row=4)
        pic = np.asarray(Image.open(f"{d}/r.png").convert("RGB")).astype(float)
    cell, pad = MIN_CELL, 2
    block = 3 * (cell + pad) + pad
    assert pic.shape[0] == 2 * block + 3 * pad + 4  # two blocks and the gap
    margin = pic.shape[1] - (4 * (cell + pad) + pad)
    assert margin > 30
    for r in range(3):  # each name is drawn beside its row
        middle = pad + r * (cell + pad) + cell // 2
        assert pic[middle - 4 : middle + 4, :margin].min() < 100, r
    # Example 5 (the second block's first), row "result", top-left pixel.
    y0, x0 = block + 3 * pad + 4 + pad + (cell + pad), margin + pad
    expected = round(groups[1][4, 0, 0, 0] * 255)
    np.testing.assert_allclose(pic[y0, x0], [expected] * 3, atol=1)


def test_inverse_problem_pictures_name_their_rows(ckpts, tmp_path, capsys, monkeypatch):
    """inpaint, colorize and inverse draw observation, result and truth as rows named
    on their left."""
    from scoresde_diffrax.cli import _controllable

    calls = []
    monkeypatch.setattr(
        _controllable, "save_rows", lambda *a, **k: calls.append((a, k))
    )
    common = ["--num-samples", "3", "--solver", "ddim", "--steps", "2"]
    common += ["--out", tmp_path / "x.npy", "--png", tmp_path / "x.png"]
    for argv, names in (
        (
            ["inpaint", "--checkpoint", ckpts["digits"], "--data", "digits"]
            + ["--mask", "left-half"],
            ["observed", "inpainted", "truth"],
        ),
        (
            ["colorize", "--checkpoint", ckpts["color"], "--data", "colored-digits"],
            ["grey", "colorized", "truth"],
        ),
        (
            ["inverse", "--checkpoint", ckpts["digits"], "--data", "digits"]
            + ["--operator", "blur:1", "--noise-std", "0", "--algorithm"]
            + ["projection"],
            ["measurement", "result", "truth"],
        ),
    ):
        code, _, err = run_cli(argv + common, capsys)
        assert code == 0, err
        (_, groups, got), kwargs = calls.pop()
        assert got == names and kwargs["title"], kwargs
        assert [g.shape[0] for g in groups] == [3, 3, 3]
