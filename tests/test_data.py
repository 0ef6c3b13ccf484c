"""Embedded data: fixed digits split, scaling, dequantisation, toys; FD-digits."""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from scipy import stats as scipy_stats

import scoresde_diffrax as sd


def test_digits_split_scaling_padding():
    tr, te = sd.data.digits("train"), sd.data.digits("test")
    assert len(tr) == 1437 and len(te) == 360 and tr.data_shape == (1, 8, 8)
    assert sd.data.digits("all").x.shape[0] == 1797
    xtr, _ = sd.data.digits_array("train")
    xte, _ = sd.data.digits_array("test")
    # Disjoint splits: no test image is a train image by index.
    from scoresde_diffrax.data._digits import split_indices

    assert not set(split_indices("train")) & set(split_indices("test"))
    assert xtr.min() == 0.0 and xtr.max() == 1.0
    m = tr.model_data()
    assert float(m.min()) == -1.0 and float(m.max()) == 1.0
    np.testing.assert_allclose(tr.to_data(m), tr.x)
    b = tr.batch(jr.key(0), 256)
    assert b.shape == (256, 1, 8, 8)
    # Dequantised: within [-1, 1), each grey level k spread uniformly over its bin
    # [k, k + 1) / 17 (bin centres or a constant offset fail the KS test).
    assert float(b.min()) >= -1.0 and float(b.max()) < 1.0
    offsets = np.asarray(tr.to_data(b), np.float64).ravel() * 17 % 1
    assert scipy_stats.kstest(offsets, "uniform").pvalue > 1e-3
    p = sd.data.digits(pad_to_16=True, centered=False, dequantize=False)
    assert p.data_shape == (1, 16, 16)
    np.testing.assert_array_equal(np.asarray(p.x[:, :, 4:12, 4:12]), xtr)
    assert float(jnp.abs(p.x[:, :, :4]).max()) == 0.0


def test_colored_digits():
    c = sd.data.colored_digits("test")
    g, _ = sd.data.digits_array("test")
    assert c.data_shape == (3, 8, 8)
    x = np.asarray(c.x)
    ratio = x.max(axis=(2, 3)) / np.maximum(g.max(axis=(2, 3)), 1e-6)
    assert np.all((ratio >= 0.2 - 1e-6) & (ratio <= 1.0 + 1e-6))
    assert np.std(ratio[:, 0] - ratio[:, 1]) > 0.1  # real colours, not grey


@pytest.mark.parametrize(
    "name", ["moons", "swiss_roll", "checkerboard", "rings", "gaussian_mixture"]
)
def test_toys(name):
    x = getattr(sd.data, name)(jr.key(0), 500)
    assert x.shape == (500, 2) and np.all(np.isfinite(x))
    assert 0.3 < float(jnp.std(x)) < 3.0
    np.testing.assert_array_equal(x, getattr(sd.data, name)(jr.key(0), 500))
    with pytest.raises(ValueError, match="`n`"):
        getattr(sd.data, name)(jr.key(0), 0)


@pytest.mark.parametrize(
    "name, classes", [("moons", 2), ("rings", 3), ("gaussian_mixture", 8)]
)
def test_toys_with_classes_carry_labels(name, classes):
    """The toys made of classes return each point's class on request, and the same
    points either way."""
    fn = getattr(sd.data, name)
    x, labels = fn(jr.key(0), 400, return_labels=True)
    np.testing.assert_array_equal(x, fn(jr.key(0), 400))
    assert labels.shape == (400,) and labels.dtype == jnp.int32
    assert set(np.unique(labels).tolist()) == set(range(classes))
    # the labels are the structure: each class sits apart (its own moon, ring, mode)
    means = np.stack([np.asarray(x)[labels == k].mean(0) for k in range(classes)])
    radii = [
        np.linalg.norm(np.asarray(x)[labels == k], axis=1).mean()
        for k in range(classes)
    ]
    spread = np.ptp(means, axis=0).max() + np.ptp(radii)
    assert spread > 0.5, (means, radii)


def test_fd_digits_with_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCORESDE_CACHE_DIR", str(tmp_path))
    from scoresde_diffrax.metrics import _fd

    _fd.digits_classifier.cache_clear()
    _fd._test_features.cache_clear()
    floor = sd.metrics.fd_digits_floor()
    cached = list(tmp_path.glob("digits_classifier-v*.eqx"))
    assert len(cached) == 1
    # Reloading from the cache gives the same classifier (deterministic training).
    _fd.digits_classifier.cache_clear()
    _fd._test_features.cache_clear()
    assert sd.metrics.fd_digits_floor() == pytest.approx(floor, rel=1e-6)
    x, y = sd.data.digits_array("test")
    assert sd.metrics.digits_accuracy(x, y) > 0.95
    xtr, _ = sd.data.digits_array("train")
    noisy = np.clip(xtr + 0.2 * np.random.RandomState(0).randn(*xtr.shape), 0, 1)
    assert 0 < floor < sd.metrics.fd_digits(noisy)
    assert sd.metrics.fd_digits(np.random.RandomState(1).rand(500, 8, 8)) > 20 * floor
    with pytest.raises(ValueError, match="images"):
        sd.metrics.fd_digits(np.zeros((10, 3, 8, 8)))
    _fd.digits_classifier.cache_clear()
    _fd._test_features.cache_clear()


def test_frechet_distance_gaussian():
    rs = np.random.RandomState(0)
    a = rs.randn(4000, 3)
    b = rs.randn(4000, 3) * 2 + 1
    # Exact: |mu|^2 + tr(I + 4I - 2 * 2I) = 3 + 3.
    assert sd.metrics.frechet_distance(a, b) == pytest.approx(6.0, rel=0.1)


def test_dequantize_is_uniform_within_bins():
    # y = lo + (hi - lo) (k + u) / 2^n with u ~ U[0, 1): the offsets u within the bins
    # are uniform, independent of the pixel value, and the bins are the right ones.
    lo, hi, bits = -1.0, 1.0, 3
    k = jnp.tile(jnp.arange(2**bits), (2000, 1))  # every level, 2000 times each
    y = np.asarray(sd.dequantize(jr.key(0), k, num_bits=bits, data_range=(lo, hi)))
    z = (y.astype(np.float64) - lo) / (hi - lo) * 2**bits
    np.testing.assert_array_equal(np.floor(z), k)
    u = z - np.asarray(k)
    for level in range(2**bits):  # 2000 offsets per level
        assert scipy_stats.kstest(u[:, level], "uniform").pvalue > 1e-3, level
    assert scipy_stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    # Examples draw their own noise.
    assert np.mean(np.abs(np.diff(u, axis=0)) > 1e-6) > 0.99
