"""Inpainting masks by name (True where an entry is KNOWN). Imports only NumPy."""

import numpy as np
from jaxtyping import Bool


MASKS = ("left-half", "right-half", "centre-square", "random-pixels:P")


def inpainting_mask(
    spec: str, data_shape: tuple[int, ...], n: int, seed: int
) -> Bool[np.ndarray, "..."]:
    """The inpainting mask named `spec` for images of `data_shape` `(C, H, W)`, True
    where an entry is KNOWN: the named region is the one to fill in.

    **Arguments:**

    - `spec`: one of `MASKS`: `left-half`, `right-half`, `centre-square` (a square of
        half the height, centred), or `random-pixels:P`, which hides each pixel (all
        its channels) with probability `0 < P < 1`, independently per example.
    - `data_shape`: the shape `(C, H, W)` of one image.
    - `n`: the number of examples (`random-pixels:P` only).
    - `seed`: seeds `np.random` for `random-pixels:P`.

    **Returns:** a boolean array of shape `data_shape`, or `(n, *data_shape)` for
    `random-pixels:P`.

    A bad `spec` or `data_shape` raises a `ValueError` whose message starts with the
    argument's name (`spec` or `data_shape`).
    """
    if len(data_shape) != 3:
        raise ValueError(
            f"spec needs image data (C, H, W), got examples of shape {tuple(data_shape)}"
        )
    c, h, w = (int(s) for s in data_shape)
    missing = np.zeros((h, w), bool)
    if spec == "left-half":
        missing[:, : w // 2] = True
    elif spec == "right-half":
        missing[:, w // 2 :] = True
    elif spec == "centre-square":
        s = max(1, h // 2)
        top, left = (h - s) // 2, (w - s) // 2
        missing[top : top + s, left : left + s] = True
    elif spec.startswith("random-pixels:"):
        p = random_pixels_fraction(spec)
        rng = np.random.RandomState(seed)
        hide = rng.uniform(size=(n, 1, h, w)) < p
        return np.broadcast_to(~hide, (n, c, h, w)).copy()
    else:
        raise ValueError(f"spec must be one of {', '.join(MASKS)}, got {spec!r}")
    return np.broadcast_to(~missing, (c, h, w)).copy()


def random_pixels_fraction(spec: str) -> float:
    """P of `random-pixels:P`; a `ValueError` unless `0 < P < 1`."""
    try:
        p = float(spec.split(":", 1)[1])
    except ValueError:
        p = float("nan")
    if not 0 < p < 1:
        raise ValueError(f"spec random-pixels:P needs 0 < P < 1, got {spec!r}")
    return p
