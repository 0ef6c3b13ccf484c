import dataclasses

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import ScalarLike
from ._config import freeze
from ._embedding import SinusoidalEmbedding
from ._unet import _norm, ResBlock


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Hyperparameters of a [`NoiseConditionalClassifier`][]."""

    data_shape: tuple[int, ...]
    num_classes: int = 10
    channels: int = 32
    num_levels: int = 2
    groups: int = 8

    def __post_init__(self):
        object.__setattr__(self, "data_shape", freeze(self.data_shape))
        shape = self.data_shape
        if len(shape) != 3 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(
                "NoiseConditionalClassifier: `data_shape` must be (channels, height, "
                f"width) of positive ints, got {shape!r}."
            )
        factor = 2 ** (self.num_levels - 1)
        if shape[1] % factor or shape[2] % factor:
            raise ValueError(
                f"NoiseConditionalClassifier: height and width of `data_shape` {shape} "
                f"must be divisible by {factor} (2 ** (num_levels - 1))."
            )
        for name in ("num_classes", "channels", "num_levels", "groups"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(
                    f"NoiseConditionalClassifier: `{name}` must be an int >= 1, got {v!r}."
                )


class NoiseConditionalClassifier(eqx.Module):
    r"""A time-conditional image classifier $p_t(y \mid x_t)$ on one example: the
    down half of a [`UNet`][] (residual blocks with a time projection), global average
    pooling and a linear head. Trained on noisy inputs $x_t$ it gives the
    $\nabla_x \log p_t(y \mid x)$ of class guidance (Song et al. 2021, sec. 5).

    **Arguments:**

    - `data_shape`: `(channels, height, width)`.
    - `num_classes`: number of classes. Default 10.
    - `channels`: base width (doubled at each level). Default 32.
    - `num_levels`: resolutions (each halves height and width). Default 2.
    - `groups`: GroupNorm groups. Default 8.
    - `key`: PRNG key for the initial weights.

    Called as `classifier(t, x)`, it returns the logits, shape `(num_classes,)`;
    `classifier.features(t, x)` returns the pooled penultimate features.
    """

    config: ClassifierConfig = eqx.field(static=True)
    embed: SinusoidalEmbedding
    temb: eqx.nn.Linear
    conv_in: eqx.nn.Conv2d
    blocks: tuple
    norm: eqx.nn.GroupNorm
    head: eqx.nn.Linear

    def __init__(
        self,
        data_shape: tuple[int, ...],
        *,
        num_classes: int = 10,
        channels: int = 32,
        num_levels: int = 2,
        groups: int = 8,
        key: PRNGKeyArray,
    ):
        cfg = ClassifierConfig(
            tuple(data_shape), num_classes, channels, num_levels, groups
        )
        self.config = cfg
        keys = iter(jr.split(key, 4 + 2 * num_levels))
        tdim = 4 * channels
        self.embed = SinusoidalEmbedding(channels)
        self.temb = eqx.nn.Linear(channels, tdim, key=next(keys))
        self.conv_in = eqx.nn.Conv2d(
            cfg.data_shape[0], channels, 3, padding=1, key=next(keys)
        )
        blocks = []
        cur = channels
        for level in range(num_levels):
            out = channels * 2**level
            down = None
            if level != num_levels - 1:
                down = eqx.nn.Conv2d(out, out, 3, stride=2, padding=1, key=next(keys))
            blocks.append(
                (ResBlock(cur, out, tdim, groups, True, key=next(keys)), down)
            )
            cur = out
        self.blocks = tuple(blocks)
        self.norm = _norm(groups, cur)
        self.head = eqx.nn.Linear(cur, num_classes, key=next(keys))

    def features(
        self, t: ScalarLike, x: Float[ArrayLike, "c h w"]
    ) -> Float[Array, " features"]:
        """The pooled features before the linear head, on one example."""
        x = jnp.asarray(x)
        if x.shape != self.config.data_shape:
            raise ValueError(
                "NoiseConditionalClassifier: expected one image of shape "
                f"{self.config.data_shape}, got {x.shape}."
            )
        temb = self.temb(self.embed(t).astype(x.dtype))
        h = self.conv_in(x)
        for block, down in self.blocks:
            h = block(h, temb)
            if down is not None:
                h = down(h)
        h = jax.nn.silu(self.norm(h))
        return einops.reduce(h, "c h w -> c", "mean")

    def __call__(
        self, t: ScalarLike, x: Float[ArrayLike, "c h w"]
    ) -> Float[Array, " num_classes"]:
        return self.head(self.features(t, x))
