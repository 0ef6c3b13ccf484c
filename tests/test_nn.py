"""Networks: shapes, time conditioning, parameterisations, bad shapes, loop-friendly
convolutions."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoresde_diffrax as sd


# One small U-Net and classifier for the whole module (building one compiles for
# seconds).
UNET = sd.nn.UNet((1, 8, 8), channels=8, key=jr.key(0))
CLF = eqx.filter_jit(
    lambda k: sd.nn.NoiseConditionalClassifier((1, 8, 8), channels=8, key=k)
)(jr.key(5))
BATCHED = eqx.filter_jit(lambda m, t, x: jax.vmap(m)(t, x))
CALL = eqx.filter_jit(lambda m, t, x: m(t, x))


def test_mlp_shapes_and_time_dependence():
    for fourier in (False, True):
        net = sd.nn.MLPScore(
            (3, 2), width=16, depth=2, fourier_time=fourier, key=jr.key(1)
        )
        x = jr.normal(jr.key(2), (3, 2))
        y0, y1 = net(0.1, x), net(0.9, x)
        assert y0.shape == (3, 2)
        assert not np.allclose(y0, y1)
    with pytest.raises(ValueError, match="expected one example of shape"):
        net(0.1, jnp.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="time_dim"):
        sd.nn.MLPScore((2,), time_dim=3, key=jr.key(0))


def test_unet_shapes_batching_and_loop_friendly():
    x = jr.normal(jr.key(3), (4, 1, 8, 8))
    t = jnp.array([0.1, 0.4, 0.6, 0.9])
    y = BATCHED(UNET, t, x)
    assert y.shape == (4, 1, 8, 8) and np.all(np.isfinite(y))
    # Per example: batching changes nothing.
    one = eqx.filter_jit(lambda m, t, x: m(t, x))
    np.testing.assert_allclose(y[1], one(UNET, t[1], x[1]), rtol=1e-5, atol=1e-6)
    # The loop-friendly copy computes the same function.
    y2 = BATCHED(sd.nn.loop_friendly(UNET), t, x)
    np.testing.assert_allclose(y2, y, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="expected one image of shape"):
        UNET(0.5, jnp.zeros((3, 8, 8)))


def _relative_change(f, x):
    """|f(0.9, x) - f(0.1, x)| / |f(0.1, x)| over a batch: how much the output depends
    on the time."""
    t0, t1 = (jnp.full(x.shape[:1], t, dtype=x.dtype) for t in (0.1, 0.9))
    y0, y1 = f(t0, x), f(t1, x)
    return float(jnp.linalg.norm(y1 - y0) / jnp.linalg.norm(y0))


@pytest.mark.parametrize(
    "kernel, stride, padding", [(3, 1, 1), (1, 1, 0), (3, 2, ((0, 1), (0, 1)))]
)
def test_channels_last_conv_is_the_equinox_conv(kernel, stride, padding):
    # The same sums as eqx.nn.Conv2d on the channels-first image, by lax.conv and as
    # shifted slices (loop_friendly), with the weight stored (kh, kw, in, out).
    conv = eqx.nn.Conv2d(3, 5, kernel, stride=stride, padding=padding, key=jr.key(0))
    fast = sd.nn.ChannelsLastConv2d.from_conv2d(conv)
    assert fast.weight.shape == (kernel, kernel, 3, 5) and not fast.shifted
    x = jr.normal(jr.key(1), (3, 8, 8))
    want = np.asarray(conv(x)).transpose(1, 2, 0)
    hwc = jnp.transpose(x, (1, 2, 0))
    for m in (fast, sd.nn.loop_friendly(fast)):
        np.testing.assert_allclose(m(hwc), want, rtol=1e-5, atol=1e-5)
    assert sd.nn.loop_friendly(fast).shifted


def test_channels_last_conv_refuses_what_it_cannot_compute():
    reflect = eqx.nn.Conv2d(3, 5, 3, padding=1, padding_mode="REFLECT", key=jr.key(0))
    with pytest.raises(ValueError, match="padding_mode='REFLECT'"):
        sd.nn.ChannelsLastConv2d.from_conv2d(reflect)
    dilated = eqx.nn.Conv2d(3, 5, 3, dilation=2, key=jr.key(0))
    with pytest.raises(ValueError, match="dilation=\\(2, 2\\)"):
        sd.nn.ChannelsLastConv2d.from_conv2d(dilated)


def test_outputs_depend_on_time():
    # The time enters each residual block as one shift per channel, which a GroupNorm
    # over one channel cancels. Measured at initialisation (small residual branches):
    # 1.1e-2 for UNET (8 channels, groups=8 asked, two channels per group after the
    # time), 1.1e-3 with one channel per group in its first level.
    x = jr.normal(jr.key(6), (4, 1, 8, 8))
    change = _relative_change(lambda t, x: BATCHED(UNET, t, x), x)
    assert change > 3e-3, change
    x = jr.normal(jr.key(4), (1, 8, 8))
    y0, y1 = CALL(CLF, 0.1, x), CALL(CLF, 0.9, x)
    change = float(jnp.linalg.norm(y1 - y0) / jnp.linalg.norm(y0))
    assert change > 1e-2, change  # measured 2.0e-2
    mlp = sd.nn.MLPScore((3, 2), width=16, depth=2, key=jr.key(1))
    x = jr.normal(jr.key(2), (4, 3, 2))
    change = _relative_change(jax.vmap(mlp), x)
    assert change > 1e-2, change  # measured 4.5e-2


def test_unet_config_errors():
    with pytest.raises(ValueError, match="divisible by 2"):
        sd.nn.UNet((1, 7, 7), key=jr.key(0))
    with pytest.raises(ValueError, match="channels, height, width"):
        sd.nn.UNet((2,), key=jr.key(0))
    # One level at 512x512: the middle attention would need a 262144^2 matrix.
    with pytest.raises(ValueError, match="`channel_mult`.*262144 pixels"):
        sd.nn.UNet((3, 512, 512), channel_mult=(1,), key=jr.key(0))
    with pytest.raises(ValueError, match="divisible by 2"):
        sd.nn.NoiseConditionalClassifier((1, 5, 5), key=jr.key(0))


def test_parameterisations_and_classifier():
    sde = sd.VPSDE()
    x = jr.normal(jr.key(4), (1, 8, 8))
    call = CALL
    eps = call(UNET, 0.5, x)
    score = call(sd.EpsScore(UNET, sde), 0.5, x)
    np.testing.assert_allclose(score, -eps / sde.std(0.5), rtol=1e-5)
    clf = CLF
    logits = call(clf, 0.3, x)
    assert logits.shape == (10,)
    grad = eqx.filter_jit(
        lambda c, z: jax.grad(lambda z: jax.nn.log_softmax(c(0.3, z))[3])(z)
    )
    g = grad(clf, x)
    assert g.shape == x.shape and np.all(np.isfinite(g))
    n = sum(a.size for a in jax.tree_util.tree_leaves(eqx.filter(UNET, eqx.is_array)))
    assert n > 0
