import functools
import hashlib
import io
import os
import pathlib
import tempfile
import warnings

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray


CLASSIFIER_VERSION = "1"
_HIDDEN = (256, 64)
_TRAIN_STEPS = 600
_LR = 3e-3


class DigitsClassifier(eqx.Module):
    """The small MLP (64 -> 256 -> 64 -> 10, SiLU) behind FD-digits, on one 8x8 image in
    `[0, 1]`. `features` gives the 64 penultimate activations; calling it, the logits.
    Get the trained one from [`digits_classifier`][]."""

    layers: tuple[eqx.nn.Linear, ...]

    def __init__(self, *, key: PRNGKeyArray):
        sizes = (64, *_HIDDEN, 10)
        keys = jr.split(key, len(sizes) - 1)
        self.layers = tuple(
            eqx.nn.Linear(a, b, key=k)
            for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )

    def features(self, x: Float[ArrayLike, "8 8"]) -> Float[Array, " 64"]:
        h = einops.rearrange(jnp.asarray(x), "h w -> (h w)")
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        return h

    def __call__(self, x: Float[ArrayLike, "8 8"]) -> Float[Array, " 10"]:
        return self.layers[-1](self.features(x))


def cache_dir() -> pathlib.Path:
    """Where trained helpers are cached: `$SCORESDE_CACHE_DIR`, else
    `$XDG_CACHE_HOME/scoresde_diffrax`, else `~/.cache/scoresde_diffrax`."""
    env = os.environ.get("SCORESDE_CACHE_DIR")
    if env:
        return pathlib.Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "scoresde_diffrax"


def _cache_key(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"v{CLASSIFIER_VERSION}-{_HIDDEN}-{_TRAIN_STEPS}-{_LR}".encode())
    h.update(np.ascontiguousarray(x, np.float32).tobytes())
    h.update(np.ascontiguousarray(y, np.int32).tobytes())
    return h.hexdigest()[:16]


@eqx.filter_jit
def _fit(model, x, y):
    opt = optax.adamw(_LR, weight_decay=1e-4)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_fn(p):
        logits = jax.vmap(eqx.combine(p, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss_fn)(p)
        u, s = opt.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, _TRAIN_STEPS)
    return eqx.combine(params, static)


@functools.lru_cache(maxsize=1)
def digits_classifier() -> DigitsClassifier:
    """The FD-digits classifier, trained deterministically (full-batch AdamW, 600
    steps, a few seconds on a CPU) on the train split of `sd.data.digits`, then cached
    on disk under [`cache_dir`][] with a key hashing the version, the settings and the
    data; later calls (and processes) load it. An unwritable cache only costs the
    retraining."""
    from ..data import digits_array

    x, y = digits_array("train")
    x = x[:, 0]
    path = (
        cache_dir() / f"digits_classifier-v{CLASSIFIER_VERSION}-{_cache_key(x, y)}.eqx"
    )
    like = eqx.filter_eval_shape(lambda k: DigitsClassifier(key=k), jr.key(0))
    if path.exists():
        try:
            return eqx.tree_deserialise_leaves(path, like)
        except Exception:  # noqa: BLE001  (a damaged cache entry: retrain)
            pass
    model = _fit(DigitsClassifier(key=jr.key(0)), jnp.asarray(x), jnp.asarray(y))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        eqx.tree_serialise_leaves(buf, model)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(
            f"could not cache the digits classifier in {path}: {e}", stacklevel=2
        )
    return model


def _as_digits(images) -> jnp.ndarray:
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim == 3 and x.shape[1:] == (16, 16):
        x = x[:, 4:12, 4:12]  # undo sd.data.digits(pad_to_16=True)
    if x.ndim != 3 or x.shape[1:] != (8, 8):
        raise ValueError(
            "`images` must be grayscale digits of shape (n, 8, 8), (n, 1, 8, 8) or "
            f"(n, 1, 16, 16) (padded), in [0, 1]; got {np.shape(images)}."
        )
    if x.shape[0] < 2:
        raise ValueError(f"`images`: need at least 2 images, got {x.shape[0]}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("`images` contains NaN or inf.")
    return jnp.asarray(np.clip(x, 0.0, 1.0))


@jax.jit
def _features(model, x):
    return jax.vmap(model.features)(x)


def digits_features(images: Float[ArrayLike, "n ..."]) -> np.ndarray:
    """Penultimate features `(n, 64)` of the FD-digits classifier for images in
    `[0, 1]` (values outside are clipped)."""
    return np.asarray(_features(digits_classifier(), _as_digits(images)), np.float64)


def frechet_distance(a: Float[ArrayLike, "n d"], b: Float[ArrayLike, "m d"]) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets:
    $\|\mu_a - \mu_b\|^2 + \mathrm{tr}(\Sigma_a + \Sigma_b
    - 2 (\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2})^{1/2})$, in float64 (NumPy)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"`a`, `b` must be (n, d) and (m, d), got {a.shape}, {b.shape}."
        )
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ sb @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2 * cross)


@functools.lru_cache(maxsize=1)
def _test_features() -> np.ndarray:
    from ..data import digits_array

    return digits_features(digits_array("test")[0])


def fd_digits(images: Float[ArrayLike, "n ..."]) -> float:
    """FD-digits: the Fréchet distance between the classifier features of `images`
    (in `[0, 1]`, e.g. `dataset.to_data(samples)`) and those of the 360 test-split
    digits. Compare with [`fd_digits_floor`][]; use about 1,437 images (the train
    split's size) so the sample-size bias matches the floor's."""
    return frechet_distance(digits_features(images), _test_features())


def fd_digits_floor() -> float:
    """FD-digits of the real train split (1,437 images) against the test split: the
    value a perfect generator reaches, up to sampling noise."""
    from ..data import digits_array

    return fd_digits(digits_array("train")[0])


def digits_accuracy(
    images: Float[ArrayLike, "n ..."], labels: Int[ArrayLike, " n"]
) -> float:
    """Fraction of `images` the FD-digits classifier assigns to `labels` (for
    class-conditional samples)."""
    x = _as_digits(images)
    labels = np.asarray(labels)
    if labels.shape != (x.shape[0],):
        raise ValueError(
            f"`labels` must have shape ({x.shape[0]},), got {labels.shape}."
        )
    logits = jax.vmap(digits_classifier())(x)
    return float(np.mean(np.asarray(jnp.argmax(logits, -1)) == labels))


def fd_digits_with_se(
    images: Float[ArrayLike, "n ..."],
    reference: Float[ArrayLike, "m ..."],
    *,
    num_resamples: int = 200,
    seed: int = 0,
) -> tuple[float, float]:
    """FD-digits of `images` against `reference` digits (both in `[0, 1]`, shapes as
    [`digits_features`][scoresde_diffrax.metrics.digits_features] takes), with a
    standard error: the standard deviation of the distance over `num_resamples`
    bootstrap resamples of `images` (drawn with replacement, the reference fixed), so
    it measures the noise of the sample set, not of the reference. Used by
    `sd.bench` for the `fd_digits` metric, whose floor is the same figure for as many
    held real digits.

    **Arguments:**

    - `images`: the digits to score, e.g. samples mapped to `[0, 1]`.
    - `reference`: real digits, e.g. held-out ones.
    - `num_resamples`: bootstrap resamples (>= 2).
    - `seed`: the seed of the resampling (NumPy).

    **Returns:** `(distance, standard error)`.
    """
    if isinstance(num_resamples, bool) or not (
        isinstance(num_resamples, int) and num_resamples >= 2
    ):
        raise ValueError(f"`num_resamples` must be an int >= 2, got {num_resamples!r}.")
    a, b = digits_features(images), digits_features(reference)
    rng = np.random.default_rng(seed)
    boot = [
        frechet_distance(a[rng.integers(0, len(a), len(a))], b)
        for _ in range(num_resamples)
    ]
    return frechet_distance(a, b), float(np.std(boot, ddof=1))
