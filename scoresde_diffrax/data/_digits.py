import functools

import jax.numpy as jnp
import numpy as np

from ._dataset import Dataset


NUM_TEST = 360
_SPLITS = ("train", "test", "all")


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (shipped with scikit-learn; nothing downloads): images
    (1797, 8, 8) with integer values 0..16, labels (1797,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int32)


def split_indices(split: str) -> np.ndarray:
    """Indices of the fixed split: a permutation by `np.random.RandomState(0)`; its last
    360 images are the test split and the first 1,437 the train split."""
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {_SPLITS}, got {split!r}.")
    n = _raw_digits()[0].shape[0]
    perm = np.random.RandomState(0).permutation(n)
    if split == "train":
        return np.sort(perm[: n - NUM_TEST])
    if split == "test":
        return np.sort(perm[n - NUM_TEST :])
    return np.arange(n)


def digits_array(split: str = "train", *, pad_to_16: bool = False):
    """Digits images in `[0, 1]` (value / 16) as a NumPy array `(n, 1, H, W)` and their
    labels `(n,)`; `H = W = 8`, or 16 with zero padding (4 pixels each side)."""
    images, labels = _raw_digits()
    idx = split_indices(split)
    x = images[idx][:, None] / 16.0
    if pad_to_16:
        x = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)))
    return x.astype(np.float32), labels[idx]


def _scaling(centered: bool) -> tuple[float, float]:
    return (2.0, -1.0) if centered else (1.0, 0.0)


def digits(
    split: str = "train",
    *,
    centered: bool = True,
    pad_to_16: bool = False,
    dequantize: bool = True,
) -> Dataset:
    r"""scikit-learn's 8x8 handwritten digits (1,797 grayscale images, values 0..16,
    bundled with scikit-learn) as a [`Dataset`][] of shape `(1, 8, 8)` per image.

    **Arguments:**

    - `split`: `"train"` (1,437 images), `"test"` (360) or `"all"`; the split is fixed
        (a permutation by `np.random.RandomState(0)`).
    - `centered`: model units `[-1, 1]` (True, default) or `[0, 1]` (False).
    - `pad_to_16`: zero-pad to 16x16 (for U-Nets with more levels). Default False.
    - `dequantize`: add uniform noise over each of the 17 grey levels in every batch
        (True, default).

    **Returns:** a `Dataset` with `labels`; its `to_data` maps samples back to `[0, 1]`.
    """
    x, y = digits_array(split, pad_to_16=pad_to_16)
    scale, shift = _scaling(centered)
    name = "digits16" if pad_to_16 else "digits"
    return Dataset(
        jnp.asarray(x),
        jnp.asarray(y),
        scale=scale,
        shift=shift,
        levels=17 if dequantize else None,
        name=name,
    )


def colored_digits(
    split: str = "train",
    *,
    seed: int = 0,
    centered: bool = True,
    pad_to_16: bool = False,
    dequantize: bool = True,
) -> Dataset:
    r"""The digits tinted with random colours: RGB images `(3, H, W)` equal to the grey
    image times one colour per image, the colour uniform in `[0.2, 1]^3` from
    `np.random.RandomState(seed)` (fixed per image). The grey originals are the digits
    of the same split, so colourisation can be tested against them.

    **Arguments:** as [`digits`][], plus `seed` for the colours.
    """
    x, y = digits_array(split, pad_to_16=pad_to_16)
    colors = np.random.RandomState(seed).uniform(0.2, 1.0, (x.shape[0], 3, 1, 1))
    rgb = (x * colors).astype(np.float32)
    scale, shift = _scaling(centered)
    return Dataset(
        jnp.asarray(rgb),
        jnp.asarray(y),
        scale=scale,
        shift=shift,
        levels=17 if dequantize else None,
        name="colored-digits16" if pad_to_16 else "colored-digits",
    )
