"""`scoresde inverse`: solve a linear inverse problem y = A(x) + noise on test images
with a trained (unconditional) score model: `sd.Project` (Song et al. 2022's
measurement-consistent projection) or `sd.DPS` (Chung et al. 2023's diffusion
posterior sampling) around a fixed-step solver.

The operators are `sd.operators.make_operator`'s (see `sd.operators` for their
conventions), acting on ONE example in the model's units (for the built-in digits,
data units `[0, 1]` map to `[-1, 1]`); the noise of `--noise-std` is in those units
too. A mask or random projection is one draw from `--seed`, shared by all examples.

`--algorithm` is the inverse-problem algorithm (projection or dps; `--method`, its
old name, still works with a deprecation note on stderr); the solver's SDE/ODE
choice, `--method` in `sample`, `inpaint` and `colorize`, is `--solver-method` here.
"""

import argparse
import math
import sys

import jax.random as jr
import numpy as np

from .. import DPS, operators, Project, sample as sd_sample
from ..operators import (  # the library's names, also importable from here
    blur_matrix as blur_matrix,
    gaussian_kernel as gaussian_kernel,
    measure as measure,
    Operator as Operator,
    OPERATORS as OPERATORS,
    psnr as psnr,
    residuals as residuals,
)
from ._args import nonnegative_float
from ._common import check_sample_files, load_for_sampling, save_npy, UserError
from ._controllable import (
    add_inverse_flags,
    flag_error,
    MASKS,
    side_by_side,
    solve_kwargs,
    test_examples,
    to_data,
    to_model,
)


ALGORITHMS = ("projection", "dps")
METHODS = ALGORITHMS  # the old name, kept for importers


def make_operator(spec: str, data_shape, seed: int, scale_shift=(1.0, 0.0)):
    """`sd.operators.make_operator` of `--operator spec`, errors naming the flag."""
    try:
        return operators.make_operator(spec, data_shape, seed, scale_shift)
    except ValueError as e:
        raise flag_error("--operator", e) from e


def check_operator_spec(spec: str) -> None:
    """`sd.operators.check_operator_spec` of `--operator spec`, errors naming the
    flag."""
    try:
        operators.check_operator_spec(spec)
    except ValueError as e:
        raise flag_error("--operator", e) from e


class _DeprecatedMethod(argparse.Action):
    """`--method` of `inverse`, the old name of `--algorithm`: stores the value and
    prints one deprecation line on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            "scoresde inverse: note: --method is deprecated here (it means sde/ode "
            "in the other commands); use --algorithm",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


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
    algorithm = parser.add_mutually_exclusive_group(required=True)
    algorithm.add_argument(
        "--algorithm",
        choices=ALGORITHMS,
        metavar="ALGORITHM",
        help="projection (sd.Project: every operator; treats y as exact, so the "
        "noise is not modelled) or dps (sd.DPS, diffusion posterior sampling)",
    )
    algorithm.add_argument(
        "--method",
        dest="algorithm",
        choices=ALGORITHMS,
        action=_DeprecatedMethod,
        metavar="ALGORITHM",
        help="deprecated name of --algorithm",
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
    if args.algorithm == "projection" and args.step_size is not None:
        raise UserError(
            "--step-size is DPS's zeta; --algorithm projection takes no step size"
        )
    if args.num_samples is None:
        raise UserError("--num-samples is required")
    check_operator_spec(args.operator)


def _wrap_solver(op: Operator, args, kwargs: dict, y) -> dict:
    """`sd.sample` arguments with `--solver` wrapped in `sd.Project` or `sd.DPS`."""
    inner = kwargs["solver"]
    if args.algorithm == "projection":
        if op.mask is not None:
            solver = Project(inner, y, mask=op.mask)
        else:
            solver = Project(inner, y.reshape(len(y), -1), operator=op.matrix())
    else:
        step = {} if args.step_size is None else {"step_size": args.step_size}
        solver = DPS(inner, op.apply, y, **step)
    return dict(kwargs, solver=solver)


def dps_residual_limit(noise_std: float) -> float:
    """The residual RMS (model units) above which DPS is said not to fit the
    measurements: twice the noise level, and at least 0.05 (noiseless measurements)."""
    return max(2.0 * noise_std, 0.05)


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
            [what, "result", "truth"],
            args.png,
            title=f"{args.algorithm}, {args.operator} ({args.solver}, {nfe} score "
            "evaluations)",
        )
    res_rms = residuals(op, to_model(result, data_meta), y)
    rms = float(np.sqrt((res_rms**2).mean()))
    if args.algorithm == "dps" and rms > dps_residual_limit(args.noise_std):
        print(
            f"scoresde inverse: warning: DPS's residual {rms:.3g} is well above the "
            f"noise level (--noise-std {args.noise_std:g}): the reconstructions do "
            "not fit the measurements; raise --step-size (zeta) or --steps (README: "
            "inverse problems)",
            file=sys.stderr,
        )
    print(
        f"{n} reconstructions ({args.algorithm}, {args.operator}, noise std "
        f"{args.noise_std:g}; {args.solver}, {int(res.stats['num_steps'])} steps, "
        f"{nfe} score evaluations each): PSNR {psnr(result, truth).mean():.2f} dB "
        f"(mean over examples, data units), residual ||A(x) - y|| / sqrt(m) "
        f"{np.sqrt((res_rms**2).mean()):.3g} (RMS over examples, model units; m = "
        f"{op.num_measurements}) -> {out}" + (f", {args.png}" if args.png else "")
    )
    return 0
