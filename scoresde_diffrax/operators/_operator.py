"""Linear measurement operators `A` on one example (model units), built by name.

Conventions. `A` acts on ONE example in the model's units (the units the score model
and the solvers work in), and measurement noise is in those units too. The names
(`spec`):

- `super-resolution:F`: F x F block averages (each channel), the image side divisible
    by F; measurement shape `(C, H/F, W/F)`.
- `blur:SIGMA`: a Gaussian blur of each channel, kernel `exp(-k^2 / (2 SIGMA^2))` on
    `k = -r..r` with `r = max(1, ceil(2 SIGMA))` (5 x 5 at SIGMA 1), separable and
    normalised to sum 1, reflect padding (the edge pixel not repeated, NumPy's
    `"reflect"`); measurement shape `(C, H, W)`.
- `mask:NAME`: the entries of an inpainting mask (`inpainting_mask`: left-half,
    right-half, centre-square hidden, or random-pixels:P, one draw from `seed` shared
    by all examples); the measurement is the image with the hidden entries set to 0.
- `random-projection:M`: an `M x D` matrix with independent `N(0, 1/D)` entries from
    `seed` (`D = C H W`, the example flattened in C order), so that each measurement
    has about the scale of one pixel.

Super-resolution, blur and mask average with weights that sum to 1 (or select), so
they commute with the affine map between data and model units: their measurement,
mapped back to data units, is an image (`Operator.shown`).
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._masks import inpainting_mask, MASKS, random_pixels_fraction


OPERATORS = (
    "super-resolution:F",
    "blur:SIGMA",
    "mask:NAME",
    "random-projection:M",
)
_KINDS = tuple(op.split(":")[0] for op in OPERATORS)


@dataclasses.dataclass(frozen=True)
class Operator:
    """A linear measurement operator on one example (model units), as built by
    [`make_operator`][scoresde_diffrax.operators.make_operator].

    **Fields:**

    - `spec`: the name it was built from (`blur:1`, ...).
    - `apply`: `A(x)` for one example `x` of `data_shape` (JAX-traceable, linear).
    - `data_shape`, `out_shape`: the shapes of an example and of its measurement.
    - `num_measurements`: `m`, the number of real measurements (the known entries of
        a mask; else the size of `out_shape`).
    - `mask`: for `mask:NAME`, the boolean mask of `data_shape` (True where known).
    - `shown`: maps a batch of measurements (model units) to images in data units,
        for pictures; None for `random-projection`, whose picture is `A^+ y`
        (`pinv_image`).
    - `matrix_value`: the `(m', D)` matrix when it is given directly (random
        projection); else it is materialised from `apply` (`matrix`).
    """

    spec: str
    apply: Callable
    data_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    num_measurements: int
    mask: np.ndarray | None = None
    shown: Callable | None = None
    matrix_value: np.ndarray | None = None

    def __call__(self, x: Float[ArrayLike, "*shape"]) -> Float[Array, "*out"]:
        """`A(x)` on one example."""
        return self.apply(jnp.asarray(x))

    def batch(self, x: Float[ArrayLike, " n *shape"]) -> Float[Array, " n *out"]:
        """`A(x)` on every example of the batch `x` (leading axis)."""
        return jax.vmap(self.apply)(jnp.asarray(x, jnp.float32))

    def matrix(self) -> Float[np.ndarray, "m d"]:
        """The matrix of `A` on the flattened example (C order), shape
        `(prod(out_shape), D)`, float64: given, or materialised with `jax.jacfwd`
        (cheap for small images)."""
        if self.matrix_value is not None:
            return np.asarray(self.matrix_value, np.float64)
        d = math.prod(self.data_shape)

        def flat(v):
            return self.apply(v.reshape(self.data_shape)).reshape(-1)

        return np.asarray(jax.jacfwd(flat)(jnp.zeros(d, jnp.float32)), np.float64)

    def pinv_image(self, y: Float[ArrayLike, " n *out"]) -> Float[np.ndarray, "n ..."]:
        """`A^+ y` for a batch of measurements (model units), shape `(n,
        *data_shape)`: the minimum-norm example that explains each measurement."""
        y = np.asarray(y, np.float64).reshape(len(y), -1)
        return (y @ np.linalg.pinv(self.matrix()).T).reshape(len(y), *self.data_shape)


def _reflect_index(j: int, n: int) -> int:
    """Index `j` (any integer) folded into `0..n-1` by reflection about the edge
    pixels without repeating them (NumPy's `"reflect"` padding, applied as often as
    needed)."""
    if n == 1:
        return 0
    period = 2 * (n - 1)
    j = j % period
    return period - j if j > n - 1 else j


def gaussian_kernel(sigma: float) -> Float[np.ndarray, " k"]:
    """The 1-D Gaussian kernel of `blur:SIGMA`: `exp(-k^2 / (2 sigma^2))` on
    `k = -r..r`, `r = max(1, ceil(2 sigma))`, normalised to sum 1."""
    if not 0 < sigma < math.inf:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma}")
    r = max(1, math.ceil(2 * sigma))
    k = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-(k**2) / (2 * sigma**2))
    return w / w.sum()


def blur_matrix(n: int, sigma: float) -> Float[np.ndarray, "n n"]:
    """The `(n, n)` matrix of the 1-D blur of `blur:SIGMA` along an axis of length
    `n`: row `i` is the kernel centred on `i`, reflect padding folded in (each row
    sums to 1)."""
    if n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    kernel = gaussian_kernel(sigma)
    r = len(kernel) // 2
    mat = np.zeros((n, n))
    for i in range(n):
        for k, w in zip(range(-r, r + 1), kernel, strict=True):
            mat[i, _reflect_index(i + k, n)] += w
    return mat


def _split_spec(spec: str) -> tuple[str, str]:
    """`NAME:VALUE` into its name and value; a `ValueError` listing the operators if
    the name is unknown or the value missing."""
    kind, sep, value = spec.partition(":")
    if kind not in _KINDS or not (sep and value):
        raise ValueError(f"spec must be one of {', '.join(OPERATORS)}, got {spec!r}")
    return kind, value


def check_operator_spec(spec: str) -> None:
    """The checks of an operator's name that need no data: a known name (one of
    `OPERATORS`) and a valid value. A `ValueError` whose message starts with `spec`
    otherwise."""
    kind, value = _split_spec(spec)
    if kind in ("super-resolution", "random-projection"):
        try:
            v = int(value)
        except ValueError:
            v = 0
        if v < 1:
            what = "F" if kind == "super-resolution" else "M"
            raise ValueError(
                f"spec {kind}:{what} needs an integer {what} >= 1, got {spec!r}"
            )
    elif kind == "blur":
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not (0 < v < math.inf):
            raise ValueError(
                f"spec blur:SIGMA needs a finite SIGMA > 0 (the Gaussian's "
                f"standard deviation in pixels), got {spec!r}"
            )
    elif value.startswith("random-pixels:"):
        try:
            random_pixels_fraction(value)
        except ValueError:
            raise ValueError(
                f"spec mask:random-pixels:P needs 0 < P < 1, got {spec!r}"
            ) from None
    elif value not in MASKS:
        raise ValueError(
            f"spec mask:NAME needs NAME one of {', '.join(MASKS)}, got {spec!r}"
        )


def _super_resolution(spec, f, shape, as_image) -> Operator:
    c, h, w = shape
    if h % f or w % f:
        raise ValueError(
            f"spec super-resolution:{f}: the factor must divide the image size "
            f"{h} x {w}"
        )

    def down(x):
        return x.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))

    def shown(y):
        return np.repeat(np.repeat(as_image(y), f, axis=-2), f, axis=-1)

    out = (c, h // f, w // f)
    return Operator(spec, down, shape, out, math.prod(out), shown=shown)


def _blur(spec, sigma, shape, as_image) -> Operator:
    _, h, w = shape
    bh = jnp.asarray(blur_matrix(h, sigma), jnp.float32)
    bw = jnp.asarray(blur_matrix(w, sigma), jnp.float32)

    def blur(x):
        hp = jax.lax.Precision.HIGHEST
        return jnp.einsum("ij,cjk,lk->cil", bh, x, bw, precision=hp)

    return Operator(spec, blur, shape, shape, math.prod(shape), shown=as_image)


def _mask(spec, name, shape, seed, as_image) -> Operator:
    mask = inpainting_mask(name, shape, 1, seed)
    mask = mask[0] if mask.ndim == 4 else mask
    m = jnp.asarray(mask)

    def select(x):
        return jnp.where(m, x, jnp.zeros((), x.dtype))

    def shown(y):
        return np.where(mask, as_image(y), 0.5)

    num = int(mask.sum())
    return Operator(spec, select, shape, shape, num, mask=mask, shown=shown)


def _random_projection(spec, num, shape, seed) -> Operator:
    d = math.prod(shape)
    g = jr.normal(jr.fold_in(jr.key(seed), 2), (num, d), jnp.float32) / math.sqrt(d)

    def project(x):
        hp = jax.lax.Precision.HIGHEST
        return jnp.matmul(g, x.reshape(-1), precision=hp)

    return Operator(spec, project, shape, (num,), num, matrix_value=np.asarray(g))


def make_operator(
    spec: str,
    data_shape: tuple[int, ...],
    seed: int,
    scale_shift: tuple[float, float] = (1.0, 0.0),
) -> Operator:
    """The linear operator named `spec` for images of `data_shape`.

    **Arguments:**

    - `spec`: one of `OPERATORS`: `super-resolution:F`, `blur:SIGMA`, `mask:NAME`
        (NAME one of `MASKS`), `random-projection:M` (see the module's conventions).
    - `data_shape`: the shape `(C, H, W)` of one image.
    - `seed`: draws the random mask or matrix.
    - `scale_shift`: the data's map `x_model = scale * x_data + shift`, used only by
        `Operator.shown` to draw measurements as images in data units.

    **Returns:** an [`Operator`][scoresde_diffrax.operators.Operator].

    A bad `spec`, or one that does not fit the images, raises a `ValueError` whose
    message starts with `spec`.

    ```python
    op = sd.operators.make_operator("super-resolution:2", (1, 8, 8), seed=0)
    y = op.batch(x)  # (n, 1, 4, 4)
    solver = sd.Project(inner, y.reshape(len(y), -1), operator=op.matrix())
    ```
    """
    check_operator_spec(spec)
    kind, value = _split_spec(spec)
    shape = tuple(int(s) for s in data_shape)
    if len(shape) != 3:
        raise ValueError(
            f"spec needs image data (C, H, W), got examples of shape {shape}"
        )
    scale, shift = scale_shift

    def as_image(y):
        return (np.asarray(y) - shift) / scale

    if kind == "super-resolution":
        return _super_resolution(spec, int(value), shape, as_image)
    if kind == "blur":
        return _blur(spec, float(value), shape, as_image)
    if kind == "mask":
        return _mask(spec, value, shape, seed, as_image)
    return _random_projection(spec, int(value), shape, seed)


def measure(
    op: Operator, x_model: Float[ArrayLike, " n *shape"], noise_std: float, seed: int
) -> Float[np.ndarray, " n *out"]:
    """`y = A(x) + noise_std * noise` for each example of `x_model` (model units),
    the standard normal noise drawn from `seed`; for a mask, the hidden entries of `y`
    are 0 (no noise there). Float32."""
    if not 0 <= noise_std < math.inf:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std}")
    clean = op.batch(x_model)
    noise = jr.normal(jr.fold_in(jr.key(seed), 1), clean.shape, clean.dtype)
    y = clean + noise_std * noise
    if op.mask is not None:
        y = jnp.where(op.mask, y, 0.0)
    return np.asarray(y, np.float32)


def residuals(
    op: Operator, x_model: Float[ArrayLike, " n *shape"], y: Float[ArrayLike, " n *out"]
) -> Float[np.ndarray, " n"]:
    """`||A(x) - y|| / sqrt(m)` for each example (model units; `m` the operator's
    `num_measurements`)."""
    r = np.asarray(op.batch(x_model), np.float64) - np.asarray(y, np.float64)
    return np.sqrt((r.reshape(len(r), -1) ** 2).sum(1) / op.num_measurements)


def psnr(
    x: Float[ArrayLike, " n *shape"], truth: Float[ArrayLike, " n *shape"]
) -> Float[np.ndarray, " n"]:
    """The PSNR (dB, peak 1) of each example of `x` against `truth`, data units."""
    diff = np.asarray(x, np.float64) - np.asarray(truth, np.float64)
    mse = (diff**2).reshape(len(diff), -1).mean(1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-20))
