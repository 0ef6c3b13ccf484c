"""Your own data: `sd.data.load_data` on .npy / .npz arrays and image folders, and
`scoresde train --data PATH` (one-line errors for bad files)."""

import numpy as np
import pytest
from helpers import one_line, run_cli
from PIL import Image

import scoresde_diffrax as sd


def _png_folder(path, sizes, mode="L", seed=0):
    path.mkdir()
    rng = np.random.default_rng(seed)
    arrays = []
    for i, (h, w) in enumerate(sizes):
        shape = (h, w) if mode == "L" else (h, w, 3)
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(a, mode).save(path / f"{i:03d}.png")
        arrays.append(a)
    (path / "notes.txt").write_text("not an image")  # ignored
    return arrays


def test_npy_vectors_keep_their_units(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32) * 3
    np.save(tmp_path / "v.npy", x)
    ds = sd.data.load_data(tmp_path / "v.npy")
    np.testing.assert_array_equal(ds.x, x)
    assert ds.labels is None and (ds.scale, ds.shift, ds.levels) == (1.0, 0.0, None)
    assert ds.name == str(tmp_path / "v.npy")
    # A range maps onto [-1, 1] in model units.
    ds = sd.data.load_data(tmp_path / "v.npy", data_range=(-20, 20))
    np.testing.assert_allclose(ds.to_model(np.array([-20.0, 0.0, 20.0])), [-1, 0, 1])
    with pytest.raises(ValueError, match="outside data_range"):
        sd.data.load_data(tmp_path / "v.npy", data_range=(-1, 1))


def test_npz_images_with_labels(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (12, 8, 8), dtype=np.uint8)
    y = np.arange(12) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    ds = sd.data.load_data(tmp_path / "d.npz")
    assert ds.data_shape == (1, 8, 8) and ds.levels == 256
    np.testing.assert_allclose(ds.x[:, 0], x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.labels, y)
    np.testing.assert_allclose(ds.to_model(np.array([0.0, 1.0])), [-1.0, 1.0])
    np.savez(tmp_path / "bad.npz", x=x, y=y[:5])
    with pytest.raises(ValueError, match="labels 'y' must be integers of shape"):
        sd.data.load_data(tmp_path / "bad.npz")
    np.savez(tmp_path / "nox.npz", images=x)
    with pytest.raises(ValueError, match="under the key 'x'"):
        sd.data.load_data(tmp_path / "nox.npz")


def test_image_folders(tmp_path):
    grey = _png_folder(tmp_path / "grey", [(6, 5)] * 4)
    ds = sd.data.load_data(tmp_path / "grey")
    assert ds.data_shape == (1, 6, 5) and len(ds) == 4
    np.testing.assert_allclose(ds.x[2, 0], grey[2] / 255.0, rtol=1e-6)
    rgb = _png_folder(tmp_path / "rgb", [(4, 4)] * 3, mode="RGB")
    ds = sd.data.load_data(tmp_path / "rgb")
    assert ds.data_shape == (3, 4, 4)
    np.testing.assert_allclose(ds.x[1], rgb[1].transpose(2, 0, 1) / 255.0, rtol=1e-6)
    _png_folder(tmp_path / "mixed", [(6, 6), (6, 6), (8, 8), (5, 5)])
    # the first file whose size differs from the first file's is named
    names = sorted(p.name for p in (tmp_path / "mixed").iterdir())
    with pytest.raises(
        ValueError,
        match=f"images of different sizes: {names[2]} is 8x8, {names[0]} 6x6",
    ):
        sd.data.load_data(tmp_path / "mixed")
    assert sd.data.load_data(tmp_path / "mixed", image_size=4).data_shape == (1, 4, 4)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_text("hello"), "is not a NumPy .npy file"),
        (lambda p: np.save(p, np.zeros((0, 3))), "holds no examples"),
        (lambda p: np.save(p, np.array([[1.0, np.nan]])), "NaN"),
        (lambda p: np.save(p, np.zeros((4, 2, 3, 4, 5))), "expected examples of shape"),
        (lambda p: np.save(p, np.zeros(4)), "expected examples of shape"),
        (lambda p: np.save(p, np.full((2, 1, 3, 3), 2.0)), r"must be in \[0, 1\]"),
        (
            lambda p: np.save(p, np.array([[1, 2], [3]], dtype=object)),
            "holds pickled Python objects, not an array of numbers",
        ),
        (
            lambda p: np.save(p, {"x": np.zeros((4, 2))}, allow_pickle=True),
            "holds pickled Python objects, not an array of numbers",
        ),
    ],
    ids=["missing", "garbage", "empty", "nan", "5d", "1d", "range", "ragged", "dict"],
)
def test_bad_files_name_the_path(tmp_path, make, match):
    p = tmp_path / "x.npy"
    make(p)
    with pytest.raises(sd.data.DataFileError, match=match) as e:
        sd.data.load_data(p)
    assert str(p) in str(e.value) and "allow_pickle" not in str(e.value)


def test_train_on_own_files_from_the_shell(tmp_path, capsys):
    x = np.random.default_rng(2).normal(size=(64, 2)).astype(np.float32)
    np.save(tmp_path / "pts.npy", x)
    out = tmp_path / "run"
    argv = ["train", "--data", tmp_path / "pts.npy", "--sde", "vp", "--model", "mlp"]
    argv += ["--batch-size", "8", "--quiet", "--steps", "3", "--out", out]
    code, text, err = run_cli(argv + ["--data-range=-5,5"], capsys)
    assert code == 0, err
    assert "64 vectors of shape (2,)" in text and "-> model units x * 0.2\n" in text
    model, meta = sd.load_checkpoint(out)
    assert meta["data"]["name"] == str(tmp_path / "pts.npy")
    assert meta["cli"]["data_range"] == "-5,5"
    # A resumed run keeps its data settings.
    code, _, err = run_cli(
        ["train", "--out", out, "--resume", "--steps", "4", "--data-range=-6,6"],
        capsys,
    )
    assert code == 2 and one_line(err) and "--data-range -6,6 contradicts" in err
    # Images from a folder of PNGs, and labelled images from .npz, train too.
    _png_folder(tmp_path / "pngs", [(8, 8)] * 6)
    code, text, err = run_cli(
        ["train", "--data", tmp_path / "pngs", "--sde", "vp", "--model", "mlp"]
        + ["--batch-size", "4", "--quiet", "--steps", "2", "--out", tmp_path / "r2"],
        capsys,
    )
    assert code == 0, err
    assert "6 images of shape (1, 8, 8)" in text


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--data", "nope"], "--data: must be one of"),
        (["--data", "missing.npy"], "missing.npy: no such file"),
        (
            ["--data", "moons", "--data-range", "0,1"],
            "--data-range applies to your own",
        ),
        (["--data", "BAD", "--data-range", "1,0"], "--data-range: must be LOW,HIGH"),
        (["--data", "BAD"], "is not a NumPy .npy file"),
    ],
    ids=["unknown", "missing", "range-builtin", "range-order", "garbage"],
)
def test_bad_data_flags_are_one_line(tmp_path, capsys, extra, match):
    bad = tmp_path / "bad.npy"
    bad.write_text("not numpy")
    extra = [str(bad) if a == "BAD" else a for a in extra]
    argv = ["train", *extra, "--sde", "vp", "--model", "mlp", "--steps", "2"]
    code, _, err = run_cli(argv + ["--out", tmp_path / "o", "--quiet"], capsys)
    assert code == 2 and one_line(err), err
    assert match in err
    assert not (tmp_path / "o").exists()
