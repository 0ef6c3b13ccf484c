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


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Hyperparameters of an [`MLPScore`][] (enough to rebuild it from a checkpoint)."""

    data_shape: tuple[int, ...]
    width: int = 128
    depth: int = 3
    time_dim: int = 32
    fourier_time: bool = False
    input_fourier_features: int = 0
    input_fourier_scale: float = 1.0
    num_classes: int = 0
    context_dim: int = 0

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
        n = self.input_fourier_features
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n % 2:
            raise ValueError(
                "MLPScore: `input_fourier_features` must be an even int >= 0, got "
                f"{n!r}."
            )
        scale = self.input_fourier_scale
        if isinstance(scale, bool) or not (
            isinstance(scale, (int, float)) and 0 < scale < math.inf
        ):
            raise ValueError(
                "MLPScore: `input_fourier_scale` must be a finite number > 0, got "
                f"{scale!r}."
            )
        check_condition_config(self.num_classes, self.context_dim, "MLPScore")


class MLPScore(eqx.Module):
    r"""A multilayer perceptron on one example, conditioned on time through sinusoidal
    (or random Fourier) features, for low-dimensional data such as the 2-D toys.

    The example is flattened and, for low-dimensional data, extended by random Fourier
    features of itself, $[\sin(2\pi B x), \cos(2\pi B x)]$ with a fixed
    $B_{ij} \sim \mathcal{N}(0, s^2)$ (Tancik et al. 2020): without them an MLP is
    slow to learn functions that vary on a finer scale than the data's spread (its
    spectral bias), such as the score near thin rings at small noise. It is then
    concatenated with the time features and passed through `depth` hidden layers of
    `width` SiLU units (the time features enter every layer); the output has the
    example's shape. What it predicts (score, noise or data) is up to the wrapper: use
    it bare as a score, or as `sd.EpsScore(MLPScore(...), sde)` / `sd.X0Score(...)`.

    **Arguments:**

    - `data_shape`: shape of one example, e.g. `(2,)`.
    - `width`: hidden units per layer. Default 128.
    - `depth`: number of hidden layers. Default 3.
    - `time_dim`: number of time features (even). Default 32.
    - `fourier_time`: random Gaussian Fourier features (scale 16, NCSN++) instead of
        sinusoidal ones (DDPM). Default False.
    - `input_fourier_features`: number of random Fourier features of the input (even;
        0: none). Default None: 64 for examples of at most 4 numbers (coordinates,
        such as the 2-D toys), else 0. (Checkpoints written before this option
        existed rebuild with 0.)
    - `input_fourier_scale`: the standard deviation $s$ of $B$, in cycles per unit
        of the (model-unit) input. Default 1.
    - `num_classes`: > 0 makes the network conditional on a class label in
        `0..num_classes - 1` (default 0: unconditional).
    - `context_dim`: > 0 makes it conditional on a context vector of this size
        instead (default 0).
    - `key`: PRNG key for the initial weights.

    **Conditional networks** (`num_classes` or `context_dim` > 0) are called as
    `net(t, x, condition=None, *, drop=False)`: the condition's embedding (a learned
    table of labels, or a linear map of the context, each with a learned "no
    condition" token, [`ConditionEmbedding`][]) is added to the time features.
    `condition=None`, or `drop=True` (a boolean, may be traced), gives the
    unconditional output (the null token), as classifier-free guidance needs
    ([`ClassifierFreeGuidance`][], trained with [`ConditionalDSMLoss`][]). An
    unconditional network takes no condition.

    **Example:**

    ```python
    net = sd.nn.MLPScore((2,), key=jr.key(0))
    score = sd.EpsScore(net, sd.VPSDE())   # score(t, x) on one example
    ```
    """

    config: MLPConfig = eqx.field(static=True)
    embed: SinusoidalEmbedding | GaussianFourierEmbedding
    input_freqs: Float[Array, "features d"] | None
    layers: tuple[eqx.nn.Linear, ...]
    out: eqx.nn.Linear
    cond_embed: ConditionEmbedding | None

    def __init__(
        self,
        data_shape: tuple[int, ...],
        *,
        width: int = 128,
        depth: int = 3,
        time_dim: int = 32,
        fourier_time: bool = False,
        input_fourier_features: int | None = None,
        input_fourier_scale: float = 1.0,
        num_classes: int = 0,
        context_dim: int = 0,
        key: PRNGKeyArray,
    ):
        d = math.prod(tuple(data_shape))
        if input_fourier_features is None:
            input_fourier_features = 64 if d <= 4 else 0
        self.config = MLPConfig(
            tuple(data_shape),
            width,
            depth,
            time_dim,
            fourier_time,
            input_fourier_features,
            input_fourier_scale,
            num_classes,
            context_dim,
        )
        kt, ko, *kl = jr.split(key, depth + 2)
        if fourier_time:
            self.embed = GaussianFourierEmbedding(time_dim, key=kt)
        else:
            self.embed = SinusoidalEmbedding(time_dim)
        n = input_fourier_features
        self.input_freqs = (
            input_fourier_scale * jr.normal(jr.fold_in(key, 1), (n // 2, d))
            if n
            else None
        )
        sizes = [d + n + time_dim] + [width + time_dim] * (depth - 1)
        self.layers = tuple(
            eqx.nn.Linear(i, width, key=k) for i, k in zip(sizes, kl, strict=True)
        )
        out = eqx.nn.Linear(width, d, key=ko)
        # Small initial output, so a fresh model predicts roughly zero.
        self.out = eqx.tree_at(lambda m: m.weight, out, out.weight * 0.1)
        # Its own key, so unconditional networks keep their initial weights.
        self.cond_embed = (
            ConditionEmbedding(
                time_dim,
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
        x: Float[ArrayLike, "*shape"],
        condition: ArrayLike | None = None,
        *,
        drop: bool | Bool[ArrayLike, ""] = False,
    ) -> Float[Array, "*shape"]:
        x = jnp.asarray(x)
        if x.shape != self.config.data_shape:
            raise ValueError(
                f"MLPScore: expected one example of shape {self.config.data_shape}, got "
                f"{x.shape}. Models act on one example; batch with jax.vmap."
            )
        temb = self.embed(t).astype(x.dtype)
        temb = condition_features(self.cond_embed, temb, condition, drop, "MLPScore")
        h = einops.rearrange(x, "... -> (...)")
        if self.input_freqs is not None:
            arg = 2 * jnp.pi * (jax.lax.stop_gradient(self.input_freqs) @ h)
            h = jnp.concatenate([h, jnp.sin(arg), jnp.cos(arg)])
        for layer in self.layers:
            h = jax.nn.silu(layer(jnp.concatenate([h, temb])))
        return self.out(h).reshape(self.config.data_shape)
