import dataclasses
import math

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import ScalarLike
from ._config import freeze
from ._embedding import GaussianFourierEmbedding, SinusoidalEmbedding


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Hyperparameters of an [`MLPScore`][] (enough to rebuild it from a checkpoint)."""

    data_shape: tuple[int, ...]
    width: int = 128
    depth: int = 3
    time_dim: int = 32
    fourier_time: bool = False

    def __post_init__(self):
        object.__setattr__(self, "data_shape", freeze(self.data_shape))
        if not self.data_shape or any(
            not isinstance(s, int) or s < 1 for s in self.data_shape
        ):
            raise ValueError(
                "MLPScore: `data_shape` must be a non-empty tuple of positive ints, got "
                f"{self.data_shape!r}."
            )
        for name in ("width", "depth", "time_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"MLPScore: `{name}` must be an int >= 1, got {v!r}.")
        if self.time_dim % 2 or self.time_dim < 4:
            raise ValueError(
                f"MLPScore: `time_dim` must be even and >= 4, got {self.time_dim}."
            )


class MLPScore(eqx.Module):
    r"""A multilayer perceptron on one example, conditioned on time through sinusoidal
    (or random Fourier) features, for low-dimensional data such as the 2-D toys.

    The example is flattened, concatenated with the time features, and passed through
    `depth` hidden layers of `width` SiLU units (the time features enter every layer);
    the output has the example's shape. What it predicts (score, noise or data) is up to
    the wrapper: use it bare as a score, or as `sd.EpsScore(MLPScore(...), sde)` /
    `sd.X0Score(...)`.

    **Arguments:**

    - `data_shape`: shape of one example, e.g. `(2,)`.
    - `width`: hidden units per layer. Default 128.
    - `depth`: number of hidden layers. Default 3.
    - `time_dim`: number of time features (even). Default 32.
    - `fourier_time`: random Gaussian Fourier features (scale 16, NCSN++) instead of
        sinusoidal ones (DDPM). Default False.
    - `key`: PRNG key for the initial weights.

    **Example:**

    ```python
    net = sd.nn.MLPScore((2,), key=jr.key(0))
    score = sd.EpsScore(net, sd.VPSDE())   # score(t, x) on one example
    ```
    """

    config: MLPConfig = eqx.field(static=True)
    embed: SinusoidalEmbedding | GaussianFourierEmbedding
    layers: tuple[eqx.nn.Linear, ...]
    out: eqx.nn.Linear

    def __init__(
        self,
        data_shape: tuple[int, ...],
        *,
        width: int = 128,
        depth: int = 3,
        time_dim: int = 32,
        fourier_time: bool = False,
        key: PRNGKeyArray,
    ):
        self.config = MLPConfig(tuple(data_shape), width, depth, time_dim, fourier_time)
        d = math.prod(self.config.data_shape)
        kt, ko, *kl = jr.split(key, depth + 2)
        if fourier_time:
            self.embed = GaussianFourierEmbedding(time_dim, key=kt)
        else:
            self.embed = SinusoidalEmbedding(time_dim)
        sizes = [d + time_dim] + [width + time_dim] * (depth - 1)
        self.layers = tuple(
            eqx.nn.Linear(i, width, key=k) for i, k in zip(sizes, kl, strict=True)
        )
        out = eqx.nn.Linear(width, d, key=ko)
        # Small initial output, so a fresh model predicts roughly zero.
        self.out = eqx.tree_at(lambda m: m.weight, out, out.weight * 0.1)

    def __call__(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        x = jnp.asarray(x)
        if x.shape != self.config.data_shape:
            raise ValueError(
                f"MLPScore: expected one example of shape {self.config.data_shape}, got "
                f"{x.shape}. Models act on one example; batch with jax.vmap."
            )
        temb = self.embed(t).astype(x.dtype)
        h = einops.rearrange(x, "... -> (...)")
        for layer in self.layers:
            h = jax.nn.silu(layer(jnp.concatenate([h, temb])))
        return self.out(h).reshape(self.config.data_shape)
