import dataclasses
import math

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from .._custom_types import ScalarLike
from ._config import freeze
from ._embedding import (
    check_condition_config,
    condition_features,
    ConditionEmbedding,
    GaussianFourierEmbedding,
    SinusoidalEmbedding,
)


_SQRT2 = math.sqrt(2.0)
# Largest lowest-resolution feature map (H*W) the middle attention may attend over:
# 64x64 pixels, a 4096x4096 attention matrix (64 MiB in float32) per example.
_MAX_MID_ATTN_PIXELS = 64 * 64


def _norm(groups: int, channels: int, min_group_size: int = 1) -> eqx.nn.GroupNorm:
    """GroupNorm over `channels` with the most groups that divide both `groups` and
    `channels` and hold at least `min_group_size` channels each."""
    g = max(
        (
            d
            for d in range(1, channels + 1)
            if groups % d == 0 and channels % d == 0 and channels // d >= min_group_size
        ),
        default=1,
    )
    return eqx.nn.GroupNorm(g, channels)


def _scaled(layer, scale: float):
    return eqx.tree_at(lambda m: m.weight, layer, layer.weight * scale)


class ResBlock(eqx.Module):
    """DDPM++ residual block: GroupNorm, SiLU, 3x3 conv, + time projection, GroupNorm,
    SiLU, 3x3 conv; a 1x1 conv on the skip path when the width changes; the sum is
    divided by sqrt(2) when `skip_rescale`.

    The time projection adds one constant per channel, and a GroupNorm over a single
    channel subtracts exactly that constant: the GroupNorm after it keeps at least two
    channels per group (fewer groups than asked if need be), else the block, and a
    network of such blocks, would not depend on the time at all."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    temb: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None
    skip_rescale: bool = eqx.field(static=True)

    def __init__(self, cin, cout, temb_dim, groups, skip_rescale, *, key):
        k1, k2, k3, k4 = jr.split(key, 4)
        self.norm1 = _norm(groups, cin)
        self.conv1 = eqx.nn.Conv2d(cin, cout, 3, padding=1, key=k1)
        self.temb = eqx.nn.Linear(temb_dim, cout, key=k2)
        self.norm2 = _norm(groups, cout, min_group_size=2)
        self.conv2 = _scaled(eqx.nn.Conv2d(cout, cout, 3, padding=1, key=k3), 0.1)
        self.skip = None if cin == cout else eqx.nn.Conv2d(cin, cout, 1, key=k4)
        self.skip_rescale = skip_rescale

    def __call__(self, x, temb):
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.temb(jax.nn.silu(temb))[:, None, None]
        h = self.conv2(jax.nn.silu(self.norm2(h)))
        skip = x if self.skip is None else self.skip(x)
        out = skip + h
        return out / _SQRT2 if self.skip_rescale else out


class AttnBlock(eqx.Module):
    """Single-head self-attention over the pixels of a (C, H, W) feature map."""

    norm: eqx.nn.GroupNorm
    qkv: eqx.nn.Conv2d
    proj: eqx.nn.Conv2d
    skip_rescale: bool = eqx.field(static=True)

    def __init__(self, channels, groups, skip_rescale, *, key):
        k1, k2 = jr.split(key)
        self.norm = _norm(groups, channels)
        self.qkv = eqx.nn.Conv2d(channels, 3 * channels, 1, key=k1)
        self.proj = _scaled(eqx.nn.Conv2d(channels, channels, 1, key=k2), 0.1)
        self.skip_rescale = skip_rescale

    def __call__(self, x):
        c, hh, ww = x.shape
        qkv = self.qkv(self.norm(x))
        q, k, v = einops.rearrange(qkv, "(n c) h w -> n (h w) c", n=3)
        w = jax.nn.softmax(q @ k.T / math.sqrt(c), axis=-1)
        h = einops.rearrange(w @ v, "(h w) c -> c h w", h=hh, w=ww)
        out = x + self.proj(h)
        return out / _SQRT2 if self.skip_rescale else out


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Hyperparameters of a [`UNet`][] (enough to rebuild it from a checkpoint)."""

    data_shape: tuple[int, ...]
    channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (4,)
    groups: int = 8
    fourier_time: bool = False
    skip_rescale: bool = True
    num_classes: int = 0
    context_dim: int = 0

    def __post_init__(self):
        for f in ("data_shape", "channel_mult", "attn_resolutions"):
            object.__setattr__(self, f, freeze(getattr(self, f)))
        shape = self.data_shape
        if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(
                "UNet: `data_shape` must be (channels, height, width) of positive ints, "
                f"got {shape!r}."
            )
        if not self.channel_mult or any(
            not isinstance(m, int) or m < 1 for m in self.channel_mult
        ):
            raise ValueError(
                "UNet: `channel_mult` must be a non-empty tuple of ints >= 1, got "
                f"{self.channel_mult!r}."
            )
        factor = 2 ** (len(self.channel_mult) - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"UNet: height and width of `data_shape` {shape} must be divisible by "
                f"{factor} (2 ** (len(channel_mult) - 1) for {len(self.channel_mult)} "
                "resolutions); pad the images (e.g. digits to 16x16) or use fewer "
                "levels."
            )
        for name in ("channels", "num_res_blocks", "groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"UNet: `{name}` must be an int >= 1, got {v!r}.")
        pixels = (shape[1] // factor) * (shape[2] // factor)
        if pixels > _MAX_MID_ATTN_PIXELS:
            # The middle block always attends over the lowest resolution: a
            # (pixels x pixels) matrix per example. At 512x512 that is 1.1 TB in float32.
            raise ValueError(
                f"UNet: `channel_mult` has {len(self.channel_mult)} level(s), so the "
                f"middle self-attention runs at {shape[1] // factor}x{shape[2] // factor}"
                f" = {pixels} pixels and needs a {pixels}x{pixels} matrix per example "
                f"(at most {_MAX_MID_ATTN_PIXELS} pixels allowed); add levels to "
                "`channel_mult` (each halves the height and width)."
            )
        check_condition_config(self.num_classes, self.context_dim, "UNet")


@eqx.filter_jit
def _build_unet(cfg: "UNetConfig", key):
    groups, skip_rescale = cfg.groups, cfg.skip_rescale
    fourier_time, num_res_blocks = cfg.fourier_time, cfg.num_res_blocks
    keys = iter(jr.split(key, 256))
    ch = cfg.channels
    tdim = 4 * ch
    if fourier_time:
        embed = GaussianFourierEmbedding(ch, key=next(keys))
    else:
        embed = SinusoidalEmbedding(ch)
    temb1 = eqx.nn.Linear(ch, tdim, key=next(keys))
    temb2 = eqx.nn.Linear(tdim, tdim, key=next(keys))
    cin, res = cfg.data_shape[0], cfg.data_shape[1]
    conv_in = eqx.nn.Conv2d(cin, ch, 3, padding=1, key=next(keys))

    def res_block(a, b):
        return ResBlock(a, b, tdim, groups, skip_rescale, key=next(keys))

    def attn(c):
        return AttnBlock(c, groups, skip_rescale, key=next(keys))

    # Down path: each entry (res, attn | None) or a downsampling conv.
    hs_ch = [ch]
    cur = ch
    down = []
    n_levels = len(cfg.channel_mult)
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(num_res_blocks):
            down.append(
                (
                    res_block(cur, ch * mult),
                    attn(ch * mult) if res in cfg.attn_resolutions else None,
                )
            )
            cur = ch * mult
            hs_ch.append(cur)
        if level != n_levels - 1:
            down.append(eqx.nn.Conv2d(cur, cur, 3, stride=2, padding=1, key=next(keys)))
            res //= 2
            hs_ch.append(cur)
    down = tuple(down)
    mid = (res_block(cur, cur), attn(cur), res_block(cur, cur))
    up = []
    for level, mult in reversed(list(enumerate(cfg.channel_mult))):
        for _ in range(num_res_blocks + 1):
            skip_ch = hs_ch.pop()
            up.append(
                (
                    res_block(cur + skip_ch, ch * mult),
                    attn(ch * mult) if res in cfg.attn_resolutions else None,
                )
            )
            cur = ch * mult
        if level != 0:
            up.append(eqx.nn.Conv2d(cur, cur, 3, padding=1, key=next(keys)))
            res *= 2
    up = tuple(up)
    norm_out = _norm(groups, cur)
    conv_out = _scaled(eqx.nn.Conv2d(cur, cin, 3, padding=1, key=next(keys)), 0.1)

    return (embed, temb1, temb2, conv_in, down, mid, up, norm_out, conv_out)


class UNet(eqx.Module):
    r"""A small U-Net in the spirit of DDPM++/NCSN++ for images `(C, H, W)`, on one
    example: residual blocks with GroupNorm and a time projection, self-attention at
    the resolutions in `attn_resolutions`, strided-conv downsampling, nearest
    upsampling, skip connections between the halves, residual sums rescaled by
    $1/\sqrt2$, and a sinusoidal (or Gaussian Fourier) time embedding.

    What it predicts is up to the wrapper: use `sd.EpsScore(UNet(...), sde)` (DDPM++;
    for a VE SDE this is NCSN++'s output scaling by $1/\sigma(t)$), `sd.X0Score(...)`,
    or the bare network as a score.

    **Arguments:**

    - `data_shape`: `(channels, height, width)` of one image; height and width must be
        divisible by `2 ** (len(channel_mult) - 1)`.
    - `channels`: base width. Default 16.
    - `channel_mult`: width multiplier per resolution, one entry per level.
        Default `(1, 2)` (8x8 and 4x4 for digits). The middle block always attends
        over the lowest resolution, which may have at most 64x64 pixels: large images
        need more levels (e.g. 5 levels for 1024x1024).
    - `num_res_blocks`: residual blocks per level. Default 1.
    - `attn_resolutions`: spatial sizes (height) that get self-attention. Default `(4,)`.
    - `groups`: GroupNorm groups (reduced to a divisor of each width; after the time
        projection, also to at least two channels per group, since a GroupNorm over one
        channel would cancel the time). Default 8.
    - `fourier_time`: Gaussian Fourier time features instead of sinusoidal. Default
        False.
    - `skip_rescale`: divide residual sums by sqrt(2). Default True.
    - `num_classes`: > 0 makes the network conditional on a class label in
        `0..num_classes - 1` (default 0: unconditional).
    - `context_dim`: > 0 makes it conditional on a context vector of this size
        instead (default 0).
    - `key`: PRNG key for the initial weights.

    **Conditional networks** (`num_classes` or `context_dim` > 0) are called as
    `net(t, x, condition=None, *, drop=False)`: the condition's embedding (with a
    learned "no condition" token, [`ConditionEmbedding`][]) is added to the time
    embedding that every residual block receives. `condition=None` or `drop=True`
    gives the unconditional output, as classifier-free guidance needs
    ([`ClassifierFreeGuidance`][], [`ConditionalDSMLoss`][]).

    The defaults (177k parameters for 8x8 digits) are sized so the digits benchmark
    trains on a 2-core CPU within 15 minutes (about 9 steps/s at batch 128).

    **Reference:** Ho, Jain, Abbeel, *Denoising Diffusion Probabilistic Models*,
    NeurIPS 2020; Song et al., *Score-Based Generative Modeling through Stochastic
    Differential Equations*, ICLR 2021 (DDPM++ / NCSN++).
    """

    config: UNetConfig = eqx.field(static=True)
    embed: SinusoidalEmbedding | GaussianFourierEmbedding
    temb1: eqx.nn.Linear
    temb2: eqx.nn.Linear
    conv_in: eqx.nn.Conv2d
    down: tuple
    mid: tuple
    up: tuple
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d
    cond_embed: ConditionEmbedding | None

    def __init__(
        self,
        data_shape: tuple[int, ...],
        *,
        channels: int = 16,
        channel_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attn_resolutions: tuple[int, ...] = (4,),
        groups: int = 8,
        fourier_time: bool = False,
        skip_rescale: bool = True,
        num_classes: int = 0,
        context_dim: int = 0,
        key: PRNGKeyArray,
    ):
        cfg = UNetConfig(
            tuple(data_shape),
            channels,
            tuple(channel_mult),
            num_res_blocks,
            tuple(attn_resolutions),
            groups,
            fourier_time,
            skip_rescale,
            num_classes,
            context_dim,
        )
        self.config = cfg
        # Built under jit: one compilation instead of hundreds of eager ops.
        parts = _build_unet(cfg, key)
        (
            self.embed,
            self.temb1,
            self.temb2,
            self.conv_in,
            self.down,
            self.mid,
            self.up,
            self.norm_out,
            self.conv_out,
        ) = parts
        # Its own key, so unconditional networks keep their initial weights.
        self.cond_embed = (
            ConditionEmbedding(
                4 * channels,
                num_classes=num_classes,
                context_dim=context_dim,
                key=jr.fold_in(key, 2),
            )
            if num_classes or context_dim
            else None
        )

    def __call__(
        self,
        t: ScalarLike,
        x: Float[ArrayLike, "c h w"],
        condition: ArrayLike | None = None,
        *,
        drop: bool | Bool[ArrayLike, ""] = False,
    ) -> Float[Array, "c h w"]:
        x = jnp.asarray(x)
        if x.shape != self.config.data_shape:
            raise ValueError(
                f"UNet: expected one image of shape {self.config.data_shape} "
                f"(channels, height, width), got {x.shape}. Models act on one "
                "example; batch with jax.vmap."
            )
        temb = self.embed(t).astype(x.dtype)
        temb = self.temb2(jax.nn.silu(self.temb1(temb)))
        temb = condition_features(self.cond_embed, temb, condition, drop, "UNet")
        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            if isinstance(block, tuple):
                r, a = block
                h = r(h, temb)
                if a is not None:
                    h = a(h)
            else:
                h = block(h)
            hs.append(h)
        r1, a, r2 = self.mid
        h = r2(a(r1(h, temb)), temb)
        for block in self.up:
            if isinstance(block, tuple):
                r, a = block
                h = r(jnp.concatenate([h, hs.pop()]), temb)
                if a is not None:
                    h = a(h)
            else:
                h = einops.repeat(h, "c h w -> c (h h2) (w w2)", h2=2, w2=2)
                h = block(h)
        return self.conv_out(jax.nn.silu(self.norm_out(h)))
