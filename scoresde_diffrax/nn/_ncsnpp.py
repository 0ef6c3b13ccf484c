"""The paper's score networks, NCSN++ and DDPM++, as one Equinox network: a port of the
official PyTorch code (yang-song/score_sde_pytorch, `models/ncsnpp.py` and the layers it
uses) that keeps its parameter shapes and order, on one example `(C, H, W)`.

Inside, the network runs channels-last, `(H, W, C)`: the layout XLA's convolutions use, so
the activations are transposed once on the way in and once on the way out instead of
around every convolution (about a fifth of a CPU forward pass in the channels-first
form). The convolutions ([`ChannelsLastConv2d`][]) store their weights `(kh, kw, in,
out)`, the layout those convolutions read; the other weights keep the official
layouts, and the loader transposes the official `(out, in, kh, kw)`."""

import dataclasses
import math
from collections.abc import Callable

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import ScalarLike
from ._config import freeze
from ._conv import ChannelsLastConv2d


_SQRT2 = math.sqrt(2.0)
_RESBLOCKS = ("ddpm", "biggan")
_PROGRESSIVE = ("none", "output_skip", "residual")
_PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
_COMBINE = ("sum", "cat")
_EMBEDDINGS = ("fourier", "positional")
_ACTIVATIONS: dict[str, Callable] = {
    "swish": jax.nn.silu,
    "elu": jax.nn.elu,
    "relu": jax.nn.relu,
    "lrelu": lambda x: jax.nn.leaky_relu(x, 0.2),
}


# --------------------------------------------------------------------------- FIR filters


def _fir_taps(kernel: tuple[float, ...], gain: float) -> tuple[float, ...]:
    """The 1-D taps of the separable FIR filter `outer(k, k) / sum(k)^2 * gain`
    (each axis gets `k / sum(k) * sqrt(gain)`), reversed: the official `upfirdn2d`
    convolves (flips the kernel), a sum of shifted slices correlates."""
    k = np.asarray(kernel, np.float64)
    k = k / k.sum() * math.sqrt(gain)
    return tuple(float(v) for v in k[::-1])


def _filter_axis(x, taps, axis: int, pad: tuple[int, int], stride: int = 1):
    """Zero-pad `x` along `axis` by `pad` and correlate with `taps` (valid), keeping
    every `stride`-th output: shifted slices, no `lax.conv` (fast inside loops)."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = pad
    x = jnp.pad(x, widths)
    n_out = (x.shape[axis] - len(taps)) // stride + 1
    out = 0.0
    for i, tap in enumerate(taps):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(i, i + stride * (n_out - 1) + 1, stride)
        out = out + tap * x[tuple(sl)]
    return out


def _zero_insert(x: Float[Array, "h w c"], trailing: bool) -> Float[Array, "hh ww c"]:
    """Every pixel followed by a zero along both axes (`trailing=False`: not after the
    last one): the `up` step of `upfirdn2d`."""
    z = jnp.stack([x, jnp.zeros_like(x)])
    z = jnp.stack([z, jnp.zeros_like(z)])
    z = einops.rearrange(z, "b a h w c -> (h a) (w b) c")
    return z if trailing else z[:-1, :-1]


def _fir(x, taps, pad: tuple[int, int], stride: int = 1):
    x = _filter_axis(x, taps, 0, pad, stride)
    return _filter_axis(x, taps, 1, pad, stride)


def upsample_2d(x: Float[Array, "h w c"], kernel: tuple[float, ...]):
    """The official `upsample_2d` (factor 2, gain 1) on one channels-last example."""
    p = len(kernel) - 2
    return _fir(
        _zero_insert(x, True), _fir_taps(kernel, 4.0), ((p + 1) // 2 + 1, p // 2)
    )


def downsample_2d(x: Float[Array, "h w c"], kernel: tuple[float, ...]):
    """The official `downsample_2d` (factor 2, gain 1) on one channels-last example."""
    p = len(kernel) - 2
    return _fir(x, _fir_taps(kernel, 1.0), ((p + 1) // 2, p // 2), stride=2)


def _naive_upsample(x):
    return einops.repeat(x, "h w c -> (h a) (w b) c", a=2, b=2)


def _naive_downsample(x):
    return einops.reduce(x, "(h a) (w b) c -> h w c", "mean", a=2, b=2)


# --------------------------------------------------------------------------- layers


def _group_norm(channels: int) -> eqx.nn.GroupNorm:
    """The official GroupNorm: `min(channels // 4, 32)` groups, eps 1e-6."""
    return eqx.nn.GroupNorm(min(channels // 4, 32), channels, eps=1e-6)


def _conv(cin, cout, kernel, *, key, stride=1, padding=None):
    """A convolution initialised as `eqx.nn.Conv2d` (padding `kernel // 2` by
    default), stored channels-last."""
    pad = kernel // 2 if padding is None else padding
    conv = eqx.nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, key=key)
    return ChannelsLastConv2d.from_conv2d(conv)


def _apply_norm(norm: eqx.nn.GroupNorm, x: Float[Array, "h w c"]):
    """`eqx.nn.GroupNorm` (its groups, eps and affine weights) on one channels-last
    image."""
    h, w, c = x.shape
    g = norm.groups
    n = h * w * (c // g)
    # Sums over the pixels first, channel by channel (reductions along the leading
    # axis, which XLA:CPU vectorises along the channels), then over each group's
    # channels: two passes, the variance of the centred values (as `jnp.var`); about
    # 3 % of a DDPM++ pass faster than reducing the (h, w, groups, c / groups) view at
    # once (one core, batch 8).
    xs = x.reshape(h * w, c)
    mean = jnp.repeat(jnp.sum(xs, axis=0).reshape(g, c // g).sum(axis=1) / n, c // g)
    d = xs - mean[None, :]
    var = jnp.sum(d * d, axis=0).reshape(g, c // g).sum(axis=1) / n
    scale = jnp.repeat(jax.lax.rsqrt(var + norm.eps), c // g) * norm.weight
    return (d * scale[None, :] + norm.bias[None, :]).reshape(h, w, c)


class NIN(eqx.Module):
    """A 1x1 convolution stored as the official `NIN`: `W` of shape `(in, out)`."""

    W: Float[Array, "cin cout"]
    b: Float[Array, " cout"]

    def __init__(self, cin: int, cout: int, *, key: PRNGKeyArray):
        lim = math.sqrt(3.0 / ((cin + cout) / 2))
        self.W = jr.uniform(key, (cin, cout), minval=-lim, maxval=lim)
        self.b = jnp.zeros((cout,))

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "h w o"]:
        return jnp.einsum("hwc,co->hwo", x, self.W) + self.b[None, None, :]


def _dropout(h, rate: float, key):
    if key is None or rate == 0.0:
        return h
    keep = jr.bernoulli(key, 1.0 - rate, h.shape)
    return jnp.where(keep, h / (1.0 - rate), 0.0)


class ResBlock(eqx.Module):
    """The official residual blocks: `ResnetBlockDDPMpp` (`kind="ddpm"`: a `NIN` on the
    skip path when the width changes) and `ResnetBlockBigGANpp` (`kind="biggan"`: a
    1x1 conv on the skip path when the width changes or it resamples; `up`/`down` by
    FIR filtering or nearest/average pooling)."""

    norm0: eqx.nn.GroupNorm
    conv0: ChannelsLastConv2d
    dense0: eqx.nn.Linear
    norm1: eqx.nn.GroupNorm
    conv1: ChannelsLastConv2d
    skip: NIN | ChannelsLastConv2d | None
    kind: str = eqx.field(static=True)
    resample: str = eqx.field(static=True)  # "none", "up", "down"
    fir_kernel: tuple[float, ...] | None = eqx.field(static=True)
    skip_rescale: bool = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    act: Callable = eqx.field(static=True)

    def __init__(
        self, kind, cin, cout, temb_dim, *, resample, fir_kernel, skip_rescale,
        dropout, act, key,
    ):  # fmt: skip
        k0, k1, k2, k3 = jr.split(key, 4)
        self.norm0 = _group_norm(cin)
        self.conv0 = _conv(cin, cout, 3, key=k0)
        self.dense0 = eqx.nn.Linear(temb_dim, cout, key=k1)
        self.norm1 = _group_norm(cout)
        self.conv1 = _conv(cout, cout, 3, key=k2)
        if kind == "ddpm":
            self.skip = NIN(cin, cout, key=k3) if cin != cout else None
        else:
            changes = cin != cout or resample != "none"
            self.skip = _conv(cin, cout, 1, key=k3) if changes else None
        self.kind, self.resample, self.fir_kernel = kind, resample, fir_kernel
        self.skip_rescale, self.dropout, self.act = skip_rescale, dropout, act

    def _resample(self, x):
        if self.resample == "up":
            if self.fir_kernel is None:
                return _naive_upsample(x)
            return upsample_2d(x, self.fir_kernel)
        if self.resample == "down":
            if self.fir_kernel is None:
                return _naive_downsample(x)
            return downsample_2d(x, self.fir_kernel)
        return x

    def __call__(self, x, temb, key=None):
        h = self.act(_apply_norm(self.norm0, x))
        h, x = self._resample(h), self._resample(x)
        h = self.conv0(h)
        if temb is not None:
            h = h + self.dense0(self.act(temb))[None, None, :]
        h = self.act(_apply_norm(self.norm1, h))
        h = self.conv1(_dropout(h, self.dropout, key))
        if self.skip is not None:  # a NIN (DDPM) or a 1x1 convolution (BigGAN)
            x = self.skip(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h

    def official(self) -> tuple[tuple[str, object], ...]:
        skip = "NIN_0" if self.kind == "ddpm" else "Conv_2"
        named = (
            ("GroupNorm_0", self.norm0),
            ("Conv_0", self.conv0),
            ("Dense_0", self.dense0),
            ("GroupNorm_1", self.norm1),
            ("Conv_1", self.conv1),
        )
        return named + (((skip, self.skip),) if self.skip is not None else ())


class AttnBlock(eqx.Module):
    """The official `AttnBlockpp`: single-head self-attention over the pixels."""

    norm: eqx.nn.GroupNorm
    q: NIN
    k: NIN
    v: NIN
    out: NIN
    skip_rescale: bool = eqx.field(static=True)

    def __init__(self, channels, skip_rescale, *, key):
        kq, kk, kv, ko = jr.split(key, 4)
        self.norm = _group_norm(channels)
        self.q = NIN(channels, channels, key=kq)
        self.k = NIN(channels, channels, key=kk)
        self.v = NIN(channels, channels, key=kv)
        self.out = NIN(channels, channels, key=ko)
        self.skip_rescale = skip_rescale

    def __call__(self, x):
        hh, ww, c = x.shape
        h = _apply_norm(self.norm, x)
        q, k, v = (
            einops.rearrange(f(h), "h w c -> (h w) c") for f in (self.q, self.k, self.v)
        )
        w = jax.nn.softmax(q @ k.T * (c**-0.5), axis=-1)
        h = einops.rearrange(w @ v, "(h w) c -> h w c", h=hh, w=ww)
        h = self.out(h)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h

    def official(self):
        return (
            ("GroupNorm_0", self.norm),
            ("NIN_0", self.q),
            ("NIN_1", self.k),
            ("NIN_2", self.v),
            ("NIN_3", self.out),
        )


class Resample(eqx.Module):
    """The official `Upsample`/`Downsample` layers: FIR filtering (with a fused 3x3 conv
    when `conv` is given), or nearest/average-pool resampling with an optional 3x3
    conv."""

    conv: ChannelsLastConv2d | None
    up: bool = eqx.field(static=True)
    fir_kernel: tuple[float, ...] | None = eqx.field(static=True)

    def __init__(self, cin, cout, *, up, with_conv, fir_kernel, key):
        self.up, self.fir_kernel = up, fir_kernel
        if not with_conv:
            self.conv = None
        elif fir_kernel is not None:
            # upsample_conv_2d / conv_downsample_2d: padding applied by hand.
            self.conv = _conv(cin, cout, 3, key=key, stride=1 if up else 2, padding=0)
        elif up:
            self.conv = _conv(cin, cout, 3, key=key)
        else:  # 'SAME' padding of a stride-2 conv: (0, 1) on each axis
            self.conv = _conv(cin, cout, 3, key=key, stride=2, padding=((0, 1), (0, 1)))

    def __call__(self, x):
        k = self.fir_kernel
        if k is None:
            if self.up:
                x = _naive_upsample(x)
                return x if self.conv is None else self.conv(x)
            if self.conv is None:
                return _naive_downsample(x)
            return self.conv(x)
        if self.conv is None:
            return upsample_2d(x, k) if self.up else downsample_2d(x, k)
        p = len(k) - 2
        if self.up:  # transposed conv (zero insertion, full padding), then the filter
            x = jnp.pad(_zero_insert(x, False), ((2, 2), (2, 2), (0, 0)))
            x = self.conv(x)
            return _fir(x, _fir_taps(k, 4.0), ((p - 2 + 1) // 2 + 1, (p - 2) // 2 + 1))
        x = _fir(x, _fir_taps(k, 1.0), ((p + 2 + 1) // 2, (p + 2) // 2))
        return self.conv(x)

    def official(self):
        if self.conv is None:
            return ()
        return (("Conv2d_0" if self.fir_kernel is not None else "Conv_0", self.conv),)


class Combine(eqx.Module):
    """The official `Combine`: a 1x1 conv of the input pyramid, summed with or
    concatenated to the features."""

    conv: ChannelsLastConv2d
    method: str = eqx.field(static=True)

    def __init__(self, cin, cout, method, *, key):
        self.conv = _conv(cin, cout, 1, key=key)
        self.method = method

    def __call__(self, x, y):
        h = self.conv(x)
        return h + y if self.method == "sum" else jnp.concatenate([h, y], axis=-1)

    def official(self):
        return (("Conv_0", self.conv),)


class GaussianFourierFeatures(eqx.Module):
    """The official `GaussianFourierProjection` (fixed `W`, not trained)."""

    W: Float[Array, " n"]

    def __call__(self, x):
        proj = x * jax.lax.stop_gradient(self.W) * (2 * math.pi)
        return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)])


def timestep_embedding(t, dim: int, max_positions: int = 10000):
    """The official `get_timestep_embedding` of one scalar."""
    half = dim // 2
    freqs = jnp.exp(jnp.arange(half) * -(math.log(max_positions) / (half - 1)))
    emb = t * freqs
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)])
    return jnp.pad(emb, (0, dim % 2))


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class NCSNppConfig:
    """Hyperparameters of an [`NCSNpp`][] (enough to rebuild it); the fields and their
    meaning are those of the official config's `model` and `data` sections."""

    image_size: int
    num_channels: int = 3
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: tuple[int, ...] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    scale_by_sigma: bool = True
    centered: bool = False
    nonlinearity: str = "swish"

    def __post_init__(self):
        for f in ("ch_mult", "attn_resolutions", "fir_kernel"):
            object.__setattr__(self, f, freeze(getattr(self, f)))
        for name in ("image_size", "num_channels", "nf", "num_res_blocks"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"NCSNpp: `{name}` must be an int >= 1, got {v!r}.")
        if not self.ch_mult or any(
            not isinstance(m, int) or m < 1 for m in self.ch_mult
        ):
            raise ValueError(
                f"NCSNpp: `ch_mult` must be a non-empty tuple of ints >= 1, got "
                f"{self.ch_mult!r}."
            )
        factor = 2 ** (len(self.ch_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"NCSNpp: `image_size` {self.image_size} must be divisible by {factor} "
                f"(2 ** (len(ch_mult) - 1))."
            )
        for name, allowed in (
            ("resblock_type", _RESBLOCKS),
            ("progressive", _PROGRESSIVE),
            ("progressive_input", _PROGRESSIVE_INPUT),
            ("progressive_combine", _COMBINE),
            ("embedding_type", _EMBEDDINGS),
            ("nonlinearity", tuple(_ACTIVATIONS)),
        ):
            v = getattr(self, name)
            if not isinstance(v, str) or v.lower() != v or v not in allowed:
                raise ValueError(
                    f"NCSNpp: `{name}` must be one of {', '.join(allowed)}, got {v!r}."
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"NCSNpp: `dropout` must be in [0, 1), got {self.dropout}."
            )
        if self.embedding_type == "positional" and self.scale_by_sigma:
            raise ValueError(
                "NCSNpp: `scale_by_sigma` with the positional embedding divides by the "
                "discrete noise levels of the official discrete-time models, which this "
                "port does not support; use embedding_type='fourier' (the continuous "
                "VE models) or scale_by_sigma=False."
            )
        for c in sorted({self.nf * m for m in self.ch_mult}):
            if c < 4 or c % min(c // 4, 32):
                raise ValueError(
                    f"NCSNpp: every width nf * ch_mult must be >= 4 and divisible by "
                    f"its GroupNorm's min(width // 4, 32) groups; {c} is not."
                )


# --------------------------------------------------------------------------- network


class NCSNpp(eqx.Module):
    r"""NCSN++ and DDPM++ (Song et al. 2021), one network configured as the official
    `models/ncsnpp.py`, on one example `(C, H, W)`.

    Called as `net(label, x)`, where `label` is what the official network is given:
    the noise level $\sigma(t)$ for the Gaussian Fourier embedding (VE models), or
    $999\,t$ for the positional embedding (VP and sub-VP models). `x` is in the
    model's data range: `[-1, 1]` when `centered`, else `[0, 1]` (the network maps it
    to `[-1, 1]` itself). The output is the official network's output: the score for
    VE models (divided by `label` when `scale_by_sigma`), the noise prediction
    $\epsilon$ for VP and sub-VP. [`OfficialScore`][] turns it into the score of an
    SDE with the official time conventions; [`load_official`][] fills it with the
    official checkpoints' weights; the named constructors
    ([`NCSNpp.cifar10_ve`][], ...) build the paper's configurations.

    **Arguments:** the fields of [`NCSNppConfig`][] as keywords (the names and values
    of the official config: `image_size`, `num_channels`, `nf`, `ch_mult`,
    `num_res_blocks`, `attn_resolutions`, `dropout`, `resamp_with_conv`,
    `conditional`, `fir`, `fir_kernel`, `skip_rescale`, `resblock_type`
    (`"biggan"`/`"ddpm"`), `progressive` (`"none"`/`"output_skip"`/`"residual"`),
    `progressive_input` (`"none"`/`"input_skip"`/`"residual"`), `progressive_combine`
    (`"sum"`/`"cat"`), `embedding_type` (`"fourier"`/`"positional"`),
    `fourier_scale`, `init_scale`, `scale_by_sigma`, `centered`, `nonlinearity`), and
    `key` for the initial weights (random; the official initialisation's scales are
    not reproduced: load trained weights).

    Dropout (`dropout > 0`) is applied only when a `key` is passed to the call:
    `net(label, x, key=k)`; without one the network is in evaluation mode, as the
    official samplers run it.

    **Reference:** Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole, *Score-Based
    Generative Modeling through Stochastic Differential Equations*, ICLR 2021.
    """

    config: NCSNppConfig = eqx.field(static=True)
    fourier: GaussianFourierFeatures | None
    temb: tuple[eqx.nn.Linear, eqx.nn.Linear] | None
    conv_in: ChannelsLastConv2d
    down: tuple
    mid: tuple[ResBlock, AttnBlock, ResBlock]
    up: tuple
    out: tuple[eqx.nn.GroupNorm, ChannelsLastConv2d] | None

    def __init__(self, *, key: PRNGKeyArray, **config):
        cfg = config.pop("config", None) or NCSNppConfig(**config)
        self.config = cfg
        parts = eqx.filter_jit(_build)(cfg, key)
        self.fourier, self.temb, self.conv_in = parts[:3]
        self.down, self.mid, self.up, self.out = parts[3:]

    # ----------------------------------------------------------------- named configs

    @classmethod
    def cifar10_ve(cls, *, deep: bool = False, key: PRNGKeyArray) -> "NCSNpp":
        """NCSN++ cont. for CIFAR-10 under the VE SDE (`configs/ve/cifar10_ncsnpp_
        continuous.py`; 62,758,915 parameters; `deep`: `cifar10_ncsnpp_deep_
        continuous`, 107,587,075)."""
        return cls(
            config=paper_config("cifar10_ncsnpp_deep" if deep else "cifar10_ncsnpp"),
            key=key,
        )

    @classmethod
    def cifar10_vp(cls, *, deep: bool = False, key: PRNGKeyArray) -> "NCSNpp":
        """DDPM++ cont. for CIFAR-10 under the VP or sub-VP SDE (`configs/vp/cifar10_
        ddpmpp_continuous.py`; 61,804,419 parameters; `deep`: 106,632,579)."""
        return cls(
            config=paper_config("cifar10_ddpmpp_deep" if deep else "cifar10_ddpmpp"),
            key=key,
        )

    @classmethod
    def ffhq_1024(cls, *, key: PRNGKeyArray) -> "NCSNpp":
        """NCSN++ cont. for FFHQ 1024x1024 (`configs/ve/ffhq_ncsnpp_continuous.py`;
        105,785,896 parameters)."""
        return cls(config=paper_config("ffhq_1024_ncsnpp"), key=key)

    @classmethod
    def celebahq_256(cls, *, key: PRNGKeyArray) -> "NCSNpp":
        """NCSN++ cont. for CelebA-HQ 256x256 (`configs/ve/celebahq_256_ncsnpp_
        continuous.py`)."""
        return cls(config=paper_config("celebahq_256_ncsnpp"), key=key)

    # ----------------------------------------------------------------- forward pass

    def __call__(
        self,
        t: ScalarLike,
        x: Float[ArrayLike, "c h w"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "c h w"]:
        cfg = self.config
        x = jnp.asarray(x)
        want = (cfg.num_channels, cfg.image_size, cfg.image_size)
        if x.shape != want:
            raise ValueError(
                f"NCSNpp: expected one image of shape {want} (channels, height, "
                f"width), got {x.shape}. Models act on one example; batch with jax.vmap."
            )
        act = _ACTIVATIONS[cfg.nonlinearity]
        fir_kernel = tuple(float(k) for k in cfg.fir_kernel)
        label = jnp.asarray(t, x.dtype)
        temb = self._time_embedding(label, act)
        keys = iter(jr.split(key, 512) if key is not None else [None] * 512)

        if not cfg.centered:
            x = 2 * x - 1.0
        x = einops.rearrange(x, "c h w -> h w c")

        # Down path
        pyramid = x if cfg.progressive_input != "none" else None
        hs = [self.conv_in(x)]
        for blocks, resample, pyramid_layer in self.down:
            for res, attn in blocks:
                h = res(hs[-1], temb, next(keys))
                if attn is not None:
                    h = attn(h)
                hs.append(h)
            if resample is None:
                continue
            if isinstance(resample, ResBlock):
                h = resample(hs[-1], temb, next(keys))
            else:
                h = resample(hs[-1])
            if cfg.progressive_input == "input_skip":
                pyramid = (
                    downsample_2d(pyramid, fir_kernel)
                    if cfg.fir
                    else _naive_downsample(pyramid)
                )
                h = pyramid_layer(pyramid, h)
            elif cfg.progressive_input == "residual":
                pyramid = pyramid_layer(pyramid)
                pyramid = (pyramid + h) / _SQRT2 if cfg.skip_rescale else pyramid + h
                h = pyramid
            hs.append(h)

        # Middle
        res0, attn, res1 = self.mid
        h = res1(attn(res0(hs[-1], temb, next(keys))), temb, next(keys))

        # Up path
        pyramid = None
        for level, (blocks, attn, pyramid_layers, resample) in enumerate(self.up):
            for res in blocks:
                h = res(jnp.concatenate([h, hs.pop()], axis=-1), temb, next(keys))
            if attn is not None:
                h = attn(h)
            if cfg.progressive == "output_skip":
                norm, conv = pyramid_layers
                if level > 0:
                    pyramid = (
                        upsample_2d(pyramid, fir_kernel)
                        if cfg.fir
                        else _naive_upsample(pyramid)
                    )
                    pyramid = pyramid + conv(act(_apply_norm(norm, h)))
                else:
                    pyramid = conv(act(_apply_norm(norm, h)))
            elif cfg.progressive == "residual":
                if level == 0:
                    norm, conv = pyramid_layers
                    pyramid = conv(act(_apply_norm(norm, h)))
                else:
                    (up,) = pyramid_layers
                    pyramid = up(pyramid)
                    pyramid = (
                        (pyramid + h) / _SQRT2 if cfg.skip_rescale else pyramid + h
                    )
                    h = pyramid
            if resample is not None:
                if isinstance(resample, ResBlock):
                    h = resample(h, temb, next(keys))
                else:
                    h = resample(h)

        if cfg.progressive == "output_skip":
            h = pyramid
        else:
            norm, conv = self.out
            h = conv(act(_apply_norm(norm, h)))
        h = einops.rearrange(h, "h w c -> c h w")
        if cfg.scale_by_sigma:
            h = h / label
        return h

    def _time_embedding(self, label, act):
        """The official time embedding of the network's input `label` (Gaussian Fourier
        features of its log, or the positional embedding), through the two dense
        layers; None for a network that is not `conditional` on time."""
        cfg = self.config
        if self.fourier is not None:
            temb = self.fourier(jnp.log(label))
        else:
            temb = timestep_embedding(label, cfg.nf)
        if not cfg.conditional:
            return None
        dense0, dense1 = self.temb
        return dense1(act(dense0(temb.astype(label.dtype))))

    # ----------------------------------------------------------------- official names

    def official_modules(self) -> tuple:
        """The layers in the order of the official `all_modules` list (index `i` holds
        the official `all_modules.{i}.*` parameters): the one table between the
        official names and this module's fields."""
        cfg = self.config
        mods: list = []
        if self.fourier is not None:
            mods.append(self.fourier)
        if self.temb is not None:
            mods.extend(self.temb)
        mods.append(self.conv_in)
        for blocks, resample, pyramid_layer in self.down:
            for res, attn in blocks:
                mods.append(res)
                if attn is not None:
                    mods.append(attn)
            if resample is not None:
                mods.append(resample)
                if cfg.progressive_input != "none":
                    mods.append(pyramid_layer)
        mods.extend(self.mid)
        for blocks, attn, pyramid_layers, resample in self.up:
            mods.extend(blocks)
            if attn is not None:
                mods.append(attn)
            mods.extend(pyramid_layers)
            if resample is not None:
                mods.append(resample)
        if self.out is not None:
            mods.extend(self.out)
        return tuple(mods)


def _output_pyramid(cfg, top: bool, in_ch: int, pyramid_ch: int, resample_layer, keys):
    """The progressive-output layers of one level of the up path (`top`: the
    lowest resolution, first on the way up) and the pyramid's channels after it."""
    if cfg.progressive == "output_skip":
        conv = _conv(in_ch, cfg.num_channels, 3, key=next(keys))
        return (_group_norm(in_ch), conv), pyramid_ch
    if cfg.progressive == "residual":
        if top:
            layers = (_group_norm(in_ch), _conv(in_ch, in_ch, 3, key=next(keys)))
        else:
            layers = (resample_layer(pyramid_ch, in_ch, True, True),)
        return layers, in_ch
    return (), pyramid_ch


def _build(cfg: NCSNppConfig, key):
    keys = iter(jr.split(key, 4096))
    nf, act = cfg.nf, _ACTIVATIONS[cfg.nonlinearity]
    fir_kernel = tuple(float(k) for k in cfg.fir_kernel) if cfg.fir else None
    n_levels = len(cfg.ch_mult)
    resolutions = [cfg.image_size // 2**i for i in range(n_levels)]
    channels = cfg.num_channels

    fourier = None
    if cfg.embedding_type == "fourier":
        w = jr.normal(next(keys), (nf,)) * cfg.fourier_scale
        fourier = GaussianFourierFeatures(w)
        embed_dim = 2 * nf
    else:
        embed_dim = nf
    temb = None
    if cfg.conditional:
        temb = (
            eqx.nn.Linear(embed_dim, 4 * nf, key=next(keys)),
            eqx.nn.Linear(4 * nf, 4 * nf, key=next(keys)),
        )

    def res_block(cin, cout=None, resample="none"):
        return ResBlock(
            cfg.resblock_type, cin, cout or cin, 4 * nf, resample=resample,
            fir_kernel=fir_kernel, skip_rescale=cfg.skip_rescale,
            dropout=cfg.dropout, act=act, key=next(keys),
        )  # fmt: skip

    def attn_block(c):
        return AttnBlock(c, cfg.skip_rescale, key=next(keys))

    def resample_layer(cin, cout, up, with_conv):
        return Resample(
            cin, cout, up=up, with_conv=with_conv, fir_kernel=fir_kernel, key=next(keys)
        )

    conv_in = _conv(channels, nf, 3, key=next(keys))
    hs_c = [nf]
    in_ch = nf
    pyramid_ch = channels
    down = []
    for level in range(n_levels):
        blocks = []
        for _ in range(cfg.num_res_blocks):
            out_ch = nf * cfg.ch_mult[level]
            res = res_block(in_ch, out_ch)
            in_ch = out_ch
            attn = (
                attn_block(in_ch)
                if resolutions[level] in cfg.attn_resolutions
                else None
            )
            blocks.append((res, attn))
            hs_c.append(in_ch)
        resample = pyramid_layer = None
        if level != n_levels - 1:
            if cfg.resblock_type == "ddpm":
                resample = resample_layer(in_ch, in_ch, False, cfg.resamp_with_conv)
            else:
                resample = res_block(in_ch, resample="down")
            if cfg.progressive_input == "input_skip":
                pyramid_layer = Combine(
                    pyramid_ch, in_ch, cfg.progressive_combine, key=next(keys)
                )
                if cfg.progressive_combine == "cat":
                    in_ch *= 2
            elif cfg.progressive_input == "residual":
                pyramid_layer = resample_layer(pyramid_ch, in_ch, False, True)
                pyramid_ch = in_ch
            hs_c.append(in_ch)
        down.append((tuple(blocks), resample, pyramid_layer))

    in_ch = hs_c[-1]
    mid = (res_block(in_ch), attn_block(in_ch), res_block(in_ch))

    up = []
    pyramid_ch = 0
    for level in reversed(range(n_levels)):
        blocks = []
        for _ in range(cfg.num_res_blocks + 1):
            out_ch = nf * cfg.ch_mult[level]
            blocks.append(res_block(in_ch + hs_c.pop(), out_ch))
            in_ch = out_ch
        attn = attn_block(in_ch) if resolutions[level] in cfg.attn_resolutions else None
        pyramid_layers, pyramid_ch = _output_pyramid(
            cfg, level == n_levels - 1, in_ch, pyramid_ch, resample_layer, keys
        )
        resample = None
        if level != 0:
            if cfg.resblock_type == "ddpm":
                resample = resample_layer(in_ch, in_ch, True, cfg.resamp_with_conv)
            else:
                resample = res_block(in_ch, resample="up")
        up.append((tuple(blocks), attn, pyramid_layers, resample))
    assert not hs_c

    out = None
    if cfg.progressive != "output_skip":
        out = (_group_norm(in_ch), _conv(in_ch, channels, 3, key=next(keys)))
    return fourier, temb, conv_in, tuple(down), mid, tuple(up), out


# --------------------------------------------------------------------------- the paper's


_CIFAR10 = dict(
    image_size=32, nf=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), dropout=0.1
)
_PAPER = {
    "cifar10_ncsnpp": _CIFAR10 | dict(num_res_blocks=4),
    "cifar10_ncsnpp_deep": _CIFAR10 | dict(num_res_blocks=8),
    "cifar10_ddpmpp": _CIFAR10
    | dict(
        num_res_blocks=4,
        fir=False,
        progressive_input="none",
        embedding_type="positional",
        scale_by_sigma=False,
        centered=True,
    ),  # fmt: skip
    "cifar10_ddpmpp_deep": _CIFAR10
    | dict(
        num_res_blocks=8,
        fir=False,
        progressive_input="none",
        embedding_type="positional",
        scale_by_sigma=False,
        centered=True,
    ),  # fmt: skip
    "ffhq_1024_ncsnpp": dict(
        image_size=1024,
        nf=16,
        ch_mult=(1, 2, 4, 8, 16, 32, 32, 32),
        num_res_blocks=1,
        attn_resolutions=(16,),
        dropout=0.0,
        progressive="output_skip",
        progressive_input="input_skip",
    ),  # fmt: skip
    "celebahq_256_ncsnpp": dict(
        image_size=256,
        nf=128,
        ch_mult=(1, 1, 2, 2, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.0,
        progressive="output_skip",
        progressive_input="input_skip",
    ),  # fmt: skip
}


def paper_config(name: str) -> NCSNppConfig:
    """The network configuration of one of the paper's models by name (see
    [`PAPER_MODELS`][])."""
    if name not in _PAPER:
        raise ValueError(
            f"unknown configuration {name!r}; the paper's networks: {', '.join(_PAPER)}."
        )
    return NCSNppConfig(**_PAPER[name])


PAPER_MODELS: tuple[str, ...] = tuple(_PAPER)
"""The names of the paper's network configurations ([`paper_config`][])."""
