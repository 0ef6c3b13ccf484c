"""`scoresde inverse`: solve a linear inverse problem y = A(x) + noise on test images
with a trained (unconditional) score model: `sd.Project` (Song et al. 2022's
measurement-consistent projection) or `sd.DPS` (Chung et al. 2023's diffusion
posterior sampling) around a fixed-step solver.

Conventions. `A` acts on ONE example in the model's units (the units the score model
and the solvers work in; for the built-in digits, data units `[0, 1]` map to `[-1, 1]`),
and the noise of `--noise-std` is in those units too. The operators:

- `super-resolution:F`: F x F block averages (each channel), the image side divisible
    by F; measurement shape `(C, H/F, W/F)`.
- `blur:SIGMA`: a Gaussian blur of each channel, kernel `exp(-k^2 / (2 SIGMA^2))` on
    `k = -r..r` with `r = max(1, ceil(2 SIGMA))` (5 x 5 at SIGMA 1), separable and
    normalised to sum 1, reflect padding (the edge pixel not repeated, NumPy's
    `"reflect"`); measurement shape `(C, H, W)`.
- `mask:NAME`: the entries of the `inpaint` masks (left-half, right-half, centre-square
    hidden, or random-pixels:P, one draw from `--seed` shared by all examples);
    the measurement is the image with the hidden entries set to 0.
- `random-projection:M`: an `M x D` matrix with independent `N(0, 1/D)` entries from
    `--seed` (`D = C H W`, the example flattened in C order), so that each measurement
    has about the scale of one pixel.

`--method` is the inverse-problem method (projection or dps); the solver's SDE/ODE
choice, `--method` in `inpaint` and `colorize`, is `--solver-method` here.

Super-resolution, blur and mask average with weights that sum to 1 (or select), so
they commute with the affine map between data and model units: their measurement,
mapped back to data units, is an image (shown as such in the PNG).
"""

import dataclasses
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .. import DPS, Project, sample as sd_sample
from ._args import nonnegative_float
from ._common import check_sample_files, load_for_sampling, save_npy, UserError
from ._conditioning import (
    add_inverse_flags,
    inpainting_mask,
    MASKS,
    side_by_side,
    solve_kwargs,
    test_examples,
    to_data,
    to_model,
)


OPERATORS = (
    "super-resolution:F",
    "blur:SIGMA",
    "mask:NAME",
    "random-projection:M",
)
METHODS = ("projection", "dps")


# --------------------------------------------------------------------------- operators


@dataclasses.dataclass(frozen=True)
class Operator:
    """A linear measurement operator on one example (model units).

    - `spec`: the `--operator` value it was built from.
    - `apply`: `A(x)` for one example `x` of `data_shape` (JAX-traceable, linear).
    - `data_shape`, `out_shape`: the shapes of an example and of its measurement.
    - `num_measurements`: `m`, the number of real measurements (the known entries of
        a mask; else the size of `out_shape`).
    - `mask`: for `mask:NAME`, the boolean mask of `data_shape` (True where known).
    - `shown`: maps a batch of measurements (model units) to images in data units
        for the PNG, given the data's `(scale, shift)`; None for `random-projection`,
        whose picture is `A^+ y` (`pinv_image`).
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

    def __call__(self, x):
        """`A(x)` on one example."""
        return self.apply(x)

    def batch(self, x):
        """`A(x)` on every example of the batch `x` (leading axis)."""
        return jax.vmap(self.apply)(jnp.asarray(x, jnp.float32))

    def matrix(self) -> np.ndarray:
        """The matrix of `A` on the flattened example (C order), shape
        `(prod(out_shape), D)`, float64: given, or materialised with `jax.jacfwd`
        (cheap for the small images of the built-in data sets)."""
        if self.matrix_value is not None:
            return np.asarray(self.matrix_value, np.float64)
        d = math.prod(self.data_shape)

        def flat(v):
            return self.apply(v.reshape(self.data_shape)).reshape(-1)

        return np.asarray(jax.jacfwd(flat)(jnp.zeros(d, jnp.float32)), np.float64)

    def pinv_image(self, y) -> np.ndarray:
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


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1-D Gaussian kernel of `blur:SIGMA`: `exp(-k^2 / (2 sigma^2))` on
    `k = -r..r`, `r = max(1, ceil(2 sigma))`, normalised to sum 1."""
    r = max(1, math.ceil(2 * sigma))
    k = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-(k**2) / (2 * sigma**2))
    return w / w.sum()


def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """The `(n, n)` matrix of the 1-D blur along an axis of length `n`: row `i` is the
    kernel centred on `i`, reflect padding folded in (each row sums to 1)."""
    kernel = gaussian_kernel(sigma)
    r = len(kernel) // 2
    mat = np.zeros((n, n))
    for i in range(n):
        for k, w in zip(range(-r, r + 1), kernel, strict=True):
            mat[i, _reflect_index(i + k, n)] += w
    return mat


def _split_spec(spec: str) -> tuple[str, str]:
    """`NAME:VALUE` of `--operator` into its name and value; a `UserError` listing
    the operators if the name is unknown or the value missing."""
    kind, sep, value = spec.partition(":")
    if kind not in ("super-resolution", "blur", "mask", "random-projection") or not (
        sep and value
    ):
        raise UserError(
            f"--operator must be one of {', '.join(OPERATORS)}, got {spec!r}"
        )
    return kind, value


def check_operator_spec(spec: str) -> None:
    """The checks of `--operator` that need no data: a known name and a valid value
    (`UserError` otherwise)."""
    kind, value = _split_spec(spec)
    if kind in ("super-resolution", "random-projection"):
        try:
            v = int(value)
        except ValueError:
            v = 0
        if v < 1:
            what = "F" if kind == "super-resolution" else "M"
            raise UserError(
                f"--operator {kind}:{what} needs an integer {what} >= 1, got {spec!r}"
            )
    elif kind == "blur":
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if not (0 < v < math.inf):
            raise UserError(
                f"--operator blur:SIGMA needs a finite SIGMA > 0 (the Gaussian's "
                f"standard deviation in pixels), got {spec!r}"
            )
    else:
        named = [m for m in MASKS if not m.endswith(":P")]
        if value not in named and not value.startswith("random-pixels:"):
            raise UserError(
                f"--operator mask:NAME needs NAME one of {', '.join(MASKS)}, got {spec!r}"
            )
        if value.startswith("random-pixels:"):
            try:
                p = float(value.split(":", 1)[1])
            except ValueError:
                p = float("nan")
            if not 0 < p < 1:
                raise UserError(
                    f"--operator mask:random-pixels:P needs 0 < P < 1, got {spec!r}"
                )


def make_operator(spec: str, data_shape, seed: int, scale_shift=(1.0, 0.0)):
    """The `Operator` of `--operator spec` for images of `data_shape` `(C, H, W)`;
    `seed` draws the random mask or matrix; `scale_shift` is the data's map from data
    to model units (for the pictures). `UserError` for a bad spec or one that does not
    fit the images."""
    check_operator_spec(spec)
    kind, value = _split_spec(spec)
    shape = tuple(int(s) for s in data_shape)
    if len(shape) != 3:
        raise UserError(
            f"--operator needs image data (C, H, W), got examples of shape {shape}"
        )
    c, h, w = shape
    scale, shift = scale_shift

    def as_image(y):
        return (np.asarray(y) - shift) / scale

    if kind == "super-resolution":
        f = int(value)
        if h % f or w % f:
            raise UserError(
                f"--operator super-resolution:{f}: the factor must divide the image "
                f"size {h} x {w}"
            )

        def down(x):
            return x.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))

        def shown_sr(y):
            return np.repeat(np.repeat(as_image(y), f, axis=-2), f, axis=-1)

        out = (c, h // f, w // f)
        return Operator(spec, down, shape, out, math.prod(out), shown=shown_sr)

    if kind == "blur":
        sigma = float(value)
        bh = jnp.asarray(blur_matrix(h, sigma), jnp.float32)
        bw = jnp.asarray(blur_matrix(w, sigma), jnp.float32)

        def blur(x):
            hp = jax.lax.Precision.HIGHEST
            return jnp.einsum("ij,cjk,lk->cil", bh, x, bw, precision=hp)

        return Operator(spec, blur, shape, shape, math.prod(shape), shown=as_image)

    if kind == "mask":
        mask = inpainting_mask(value, shape, 1, seed)
        mask = mask[0] if mask.ndim == 4 else mask
        m = jnp.asarray(mask)

        def select(x):
            return jnp.where(m, x, jnp.zeros((), x.dtype))

        def shown_mask(y):
            return np.where(mask, as_image(y), 0.5)

        return Operator(
            spec,
            select,
            shape,
            shape,
            int(mask.sum()),
            mask=mask,
            shown=shown_mask,
        )

    # random projection
    num = int(value)
    d = math.prod(shape)
    g = jr.normal(jr.fold_in(jr.key(seed), 2), (num, d), jnp.float32) / math.sqrt(d)

    def project(x):
        hp = jax.lax.Precision.HIGHEST
        return jnp.matmul(g, x.reshape(-1), precision=hp)

    return Operator(spec, project, shape, (num,), num, matrix_value=np.asarray(g))


def measure(op: Operator, x_model, noise_std: float, seed: int):
    """`y = A(x) + noise_std * noise` for each example of `x_model` (model units),
    the standard normal noise drawn from `seed`; for a mask, the hidden entries of `y`
    are 0 (no noise there)."""
    clean = op.batch(x_model)
    noise = jr.normal(jr.fold_in(jr.key(seed), 1), clean.shape, clean.dtype)
    y = clean + noise_std * noise
    if op.mask is not None:
        y = jnp.where(op.mask, y, 0.0)
    return np.asarray(y, np.float32)


def residuals(op: Operator, x_model, y) -> np.ndarray:
    """`||A(x) - y|| / sqrt(m)` for each example (model units)."""
    r = np.asarray(op.batch(x_model), np.float64) - np.asarray(y, np.float64)
    return np.sqrt((r.reshape(len(r), -1) ** 2).sum(1) / op.num_measurements)


def psnr(x, truth) -> np.ndarray:
    """The PSNR (dB, peak 1) of each example of `x` against `truth`, data units."""
    mse = ((np.asarray(x, np.float64) - truth) ** 2).reshape(len(x), -1).mean(1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-20))


# --------------------------------------------------------------------------- command


def add_parser(subparsers) -> None:
    """Add `scoresde inverse` and its flags to `subparsers`."""
    parser = subparsers.add_parser(
        "inverse",
        help="solve y = A(x) + noise on test images (super-resolution, blur, mask, "
        "random projection) with a trained score model: projection or DPS",
        description="Measure the first N test images through a linear operator A "
        "(acting on one example in the model's units), add Gaussian noise, and "
        "reconstruct them with sd.Project (Song et al. 2022) or sd.DPS (Chung et al. "
        "2023) around a fixed-step solver.",
    )
    add_inverse_flags(parser, method_flag="--solver-method")
    parser.add_argument(
        "--data",
        required=True,
        metavar="NAME",
        help="data set whose test split gives the images (the first N): digits, "
        "digits16, colored-digits, colored-digits16",
    )
    parser.add_argument(
        "--operator",
        required=True,
        metavar="OP",
        help="the measurement A, on one example in model units: "
        "super-resolution:F (F x F block averages; F divides the image side), "
        "blur:SIGMA (Gaussian blur, kernel radius ceil(2 SIGMA), reflect padding), "
        "mask:NAME (NAME one of " + ", ".join(MASKS) + "; the random mask is one "
        "draw from --seed for all examples), random-projection:M (an M x D matrix of "
        "N(0, 1/D) entries from --seed, D the pixels times channels)",
    )
    parser.add_argument(
        "--noise-std",
        type=float,
        required=True,
        metavar="S",
        help="standard deviation of the Gaussian noise added to A(x), in model units "
        "(digits: [0, 1] -> [-1, 1], so 2x data units); 0 for exact measurements",
    )
    parser.add_argument(
        "--method",
        required=True,
        choices=METHODS,
        metavar="METHOD",
        help="projection (sd.Project: every operator; treats y as exact, so the "
        "noise is not modelled) or dps (sd.DPS, diffusion posterior sampling)",
    )
    parser.add_argument(
        "--step-size",
        type=nonnegative_float,
        default=None,
        metavar="ZETA",
        help="DPS only: zeta, the step along the gradient of ||y - A(x0_hat)|| "
        "(model units; default 1, sd.DPS's)",
    )
    parser.set_defaults(run=run)


def _check_flags(args) -> None:
    """The checks of `inverse`'s flags that need neither checkpoint nor data."""
    if not (0 <= args.noise_std < math.inf):
        raise UserError(
            f"--noise-std must be a finite number >= 0, got {args.noise_std}"
        )
    if args.method == "projection" and args.step_size is not None:
        raise UserError(
            "--step-size is DPS's zeta; --method projection takes no step size"
        )
    if args.num_samples is None:
        raise UserError("--num-samples is required")
    check_operator_spec(args.operator)


def _wrap_solver(op: Operator, args, kwargs: dict, y) -> dict:
    """`sd.sample` arguments with `--solver` wrapped in `sd.Project` or `sd.DPS`."""
    inner = kwargs["solver"]
    if args.method == "projection":
        if op.mask is not None:
            solver = Project(inner, y, mask=op.mask)
        else:
            solver = Project(inner, y.reshape(len(y), -1), operator=op.matrix())
    else:
        step = {} if args.step_size is None else {"step_size": args.step_size}
        solver = DPS(inner, op.apply, y, **step)
    return dict(kwargs, solver=solver)


def run(args) -> int:
    """Run `scoresde inverse`: measure, reconstruct, write, report (see the module)."""
    # Checks and set-up
    _check_flags(args)
    out = check_sample_files(args.out, args.png)
    model, sde, data_meta = load_for_sampling(args.checkpoint)
    shape = tuple(data_meta["data_shape"])
    truth, _ = test_examples(args.data, args.num_samples, data_meta)
    scale, shift = data_meta["scale"], data_meta["shift"]
    op = make_operator(args.operator, shape, args.seed, (scale, shift))
    n = len(truth)

    # Measure and reconstruct (model units)
    y = measure(op, to_model(truth, data_meta), args.noise_std, args.seed)
    kwargs = _wrap_solver(op, args, solve_kwargs(args, sde), y)
    res = sd_sample(jr.key(args.seed), sde, model, (n, *shape), **kwargs)

    # Write and report (data units)
    result = np.clip(np.asarray(to_data(res.samples, data_meta)), 0.0, 1.0)
    save_npy(out, result.astype(np.float32))
    nfe = int(res.stats["num_score_evals"])
    if args.png is not None:
        if op.shown is not None:
            shown, what = op.shown(y), "measurement"
        else:
            shown, what = to_data(op.pinv_image(y), data_meta), "A^+ y"
        side_by_side(
            [np.clip(shown, 0, 1), result, truth],
            args.png,
            title=f"{what} / result / truth: {args.method}, {args.operator} "
            f"({args.solver}, {nfe} score evaluations)",
        )
    res_rms = residuals(op, to_model(result, data_meta), y)
    print(
        f"{n} reconstructions ({args.method}, {args.operator}, noise std "
        f"{args.noise_std:g}; {args.solver}, {int(res.stats['num_steps'])} steps, "
        f"{nfe} score evaluations each): PSNR {psnr(result, truth).mean():.2f} dB "
        f"(mean over examples, data units), residual ||A(x) - y|| / sqrt(m) "
        f"{np.sqrt((res_rms**2).mean()):.3g} (RMS over examples, model units; m = "
        f"{op.num_measurements}) -> {out}" + (f", {args.png}" if args.png else "")
    )
    return 0
