"""`sd.operators`: the linear measurement operators of inverse problems (block
averages, Gaussian blur, masks, random projections), their matrices, measurements and
errors."""

import math
import re

import numpy as np
import pytest

import scoresde_diffrax as sd


def test_super_resolution_is_block_averaging():
    op = sd.operators.make_operator("super-resolution:2", (1, 4, 4), 0)
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    want = np.array([[[2.5, 4.5], [10.5, 12.5]]])  # e.g. (0 + 1 + 4 + 5) / 4
    np.testing.assert_allclose(np.asarray(op(x)), want, rtol=1e-6)
    assert op.out_shape == (1, 2, 2) and op.num_measurements == 4
    # The picture: nearest-neighbour upsampling, back in data units.
    shown = op.shown(np.asarray(op(x))[None])
    np.testing.assert_allclose(shown[0, 0, :2, :2], 2.5)
    np.testing.assert_allclose(shown[0, 0, 2:, 2:], 12.5)


def test_blur_of_a_delta_is_the_kernel():
    sigma = 1.0
    k1 = np.exp(-(np.arange(-2, 3) ** 2) / 2.0)  # r = ceil(2 sigma) = 2: 5 taps
    k1 /= k1.sum()
    np.testing.assert_allclose(sd.operators.gaussian_kernel(sigma), k1, rtol=1e-12)
    op = sd.operators.make_operator(f"blur:{sigma}", (2, 9, 9), 0)
    x = np.zeros((2, 9, 9), np.float32)
    x[1, 4, 4] = 1.0  # a delta in the middle of channel 1
    out = np.asarray(op(x))
    want = np.zeros((9, 9))
    want[2:7, 2:7] = np.outer(k1, k1)
    np.testing.assert_allclose(out[1], want, atol=1e-7)
    np.testing.assert_array_equal(out[0], 0)  # channels blur separately
    # Reflect padding: the mass that falls outside comes back mirrored about the edge
    # pixel (index -1 -> 1): a delta next to the edge (row 1) gives row 0 the weights
    # of offsets -1 and +1, and itself those of 0 and -2 (row 1 - 2 = -1 -> 1).
    x = np.zeros((1, 9, 9), np.float32)
    x[0, 1, 4] = 1.0
    col = np.asarray(op(x))[0, :, 4]
    np.testing.assert_allclose(
        col[:5],
        np.array([2 * k1[1], k1[2] + k1[0], k1[1], k1[0], 0]) * k1[2],
        atol=1e-7,
    )
    # Sums to 1 (a constant image stays constant), so it commutes with the
    # data-to-model map.
    np.testing.assert_allclose(np.asarray(op(np.ones((2, 9, 9)))), 1.0, rtol=1e-6)


def test_mask_and_random_projection():
    op = sd.operators.make_operator("mask:left-half", (1, 4, 4), 0)
    x = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4)
    want = x.copy()
    want[..., :2] = 0  # the left half is hidden
    np.testing.assert_array_equal(np.asarray(op(x)), want)
    assert op.num_measurements == 8 and op.mask[..., 2:].all()
    # The random mask is one draw, shared by the examples, from the seed.
    a = sd.operators.make_operator("mask:random-pixels:0.5", (1, 8, 8), 1).mask
    b = sd.operators.make_operator("mask:random-pixels:0.5", (1, 8, 8), 2).mask
    assert a.shape == (1, 8, 8) and 10 < a.sum() < 54 and not np.array_equal(a, b)

    op = sd.operators.make_operator("random-projection:5", (1, 4, 4), 0)
    g = op.matrix()
    assert g.shape == (5, 16) and op.out_shape == (5,)
    np.testing.assert_allclose(np.asarray(op(x)), g @ x.reshape(-1), rtol=1e-5)
    assert 0.5 < g.std() * math.sqrt(16) < 1.5  # N(0, 1/D) entries
    # A^+ y explains y.
    y = np.asarray(op.batch(x[None]))
    np.testing.assert_allclose(g @ op.pinv_image(y).reshape(-1), y[0], rtol=1e-4)


def test_matrix_of_a_callable_operator():
    op = sd.operators.make_operator("super-resolution:2", (1, 4, 4), 0)
    mat = op.matrix()
    x = np.random.RandomState(0).normal(size=(1, 4, 4))
    np.testing.assert_allclose(
        mat @ x.reshape(-1), np.asarray(op(x.astype(np.float32))).reshape(-1), 1e-5
    )
    assert mat.shape == (4, 16) and np.allclose(mat.sum(1), 1)


def test_measure_adds_the_noise():
    op = sd.operators.make_operator("mask:right-half", (1, 8, 8), 0)
    x = np.zeros((3, 1, 8, 8), np.float32)
    y = sd.operators.measure(op, x, 0.5, seed=0)
    assert np.all(y[..., 4:] == 0)  # no noise where nothing is measured
    assert 0.35 < y[..., :4].std() < 0.65
    np.testing.assert_array_equal(y, sd.operators.measure(op, x, 0.5, seed=0))


@pytest.mark.parametrize(
    "spec, shape, match",
    [
        ("zoom:2", (1, 8, 8), "spec must be one of super-resolution:F, blur:SIGMA"),
        ("blur", (1, 8, 8), "spec must be one of"),
        ("super-resolution:3", (1, 8, 8), "factor must divide the image size 8 x 8"),
        ("super-resolution:x", (1, 8, 8), "spec super-resolution:F needs an integer"),
        ("blur:-1", (1, 8, 8), "spec blur:SIGMA needs a finite SIGMA > 0"),
        ("mask:top", (1, 8, 8), "spec mask:NAME needs NAME one of left-half"),
        ("mask:random-pixels:1.5", (1, 8, 8), "needs 0 < P < 1"),
        ("random-projection:0", (1, 8, 8), "spec random-projection:M needs"),
        ("blur:1", (8, 8), "spec needs image data (C, H, W)"),
    ],
)
def test_bad_specs_name_the_argument(spec, shape, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        sd.operators.make_operator(spec, shape, 0)


def test_inpainting_masks():
    left = sd.operators.inpainting_mask("left-half", (3, 4, 6), 2, 0)
    assert left.shape == (3, 4, 6) and left.dtype == bool
    assert not left[..., :3].any() and left[..., 3:].all()  # True where known
    centre = sd.operators.inpainting_mask("centre-square", (1, 8, 8), 1, 0)
    assert (~centre).sum() == 16 and not centre[0, 2:6, 2:6].any()
    rand = sd.operators.inpainting_mask("random-pixels:0.5", (3, 8, 8), 4, 7)
    assert rand.shape == (4, 3, 8, 8)
    assert (rand == rand[:, :1]).all()  # a pixel is hidden in all its channels
    assert not np.array_equal(rand[0], rand[1])  # drawn per example
    with pytest.raises(ValueError, match="spec must be one of left-half"):
        sd.operators.inpainting_mask("top", (1, 8, 8), 1, 0)
    with pytest.raises(ValueError, match="noise_std"):
        op = sd.operators.make_operator("blur:1", (1, 4, 4), 0)
        sd.operators.measure(op, np.zeros((1, 1, 4, 4)), -1.0, 0)


def test_psnr():
    truth = np.zeros((2, 1, 4, 4))
    x = truth + np.array([0.1, 0.01]).reshape(2, 1, 1, 1)
    np.testing.assert_allclose(sd.operators.psnr(x, truth), [20.0, 40.0], rtol=1e-9)
