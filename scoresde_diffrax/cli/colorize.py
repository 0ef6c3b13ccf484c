"""`scoresde colorize`: colour grey images with a score model trained on colour images
(the paper's colorization: the grey direction fixed, the colours sampled)."""

import jax.random as jr
import numpy as np

from .. import colorization, sample as sd_sample
from ._common import check_sample_files, load_for_sampling, save_npy, UserError
from ._controllable import (
    add_inverse_flags,
    side_by_side,
    solve_kwargs,
    test_examples,
    to_data,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "colorize",
        help="colour the grey versions of test images with a score model trained on "
        "colour images",
    )
    add_inverse_flags(parser)
    parser.add_argument(
        "--data",
        required=True,
        metavar="NAME",
        help="colour data set whose test split gives the images (their grey "
        "versions, the mean of the channels, are the observations): "
        "colored-digits, colored-digits16",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    # Checks and set-up
    out = check_sample_files(args.out, args.png)
    model, sde, data_meta = load_for_sampling(args.checkpoint)
    shape = tuple(data_meta["data_shape"])
    if len(shape) != 3 or shape[0] < 2:
        raise UserError(
            f"--checkpoint: colorization needs a model of colour images (C >= 2, H, "
            f"W), got examples of shape {shape}"
        )
    if args.num_samples is None:
        raise UserError("--num-samples is required")
    truth, _ = test_examples(args.data, args.num_samples, data_meta)
    grey = truth.mean(axis=1)  # data units, (N, H, W)

    # Sample: the grey level is affine-equivariant, so it maps to model units as data.
    kwargs = solve_kwargs(args, sde)
    grey_model = grey * data_meta["scale"] + data_meta["shift"]
    kwargs["solver"] = colorization(kwargs["solver"], grey_model, channels=shape[0])
    res = sd_sample(jr.key(args.seed), sde, model, (len(truth), *shape), **kwargs)

    # Write and report
    result = np.asarray(to_data(res.samples, data_meta))
    # The grey level of the result is the observation's; put it exactly (ODE
    # solvers end a noise level away from it) before clipping to [0, 1].
    result = result - result.mean(axis=1, keepdims=True) + grey[:, None]
    result = np.clip(result, 0.0, 1.0)
    save_npy(out, result.astype(np.float32))
    if args.png is not None:
        side_by_side(
            [grey[:, None], result, truth],
            ["grey", "colorized", "truth"],
            args.png,
            title=f"colorization ({args.solver}, "
            f"{int(res.stats['num_score_evals'])} score evaluations)",
        )
    err = float(np.max(np.abs(result.mean(axis=1) - grey)))
    print(
        f"{len(truth)} colorizations ({args.solver}, {int(res.stats['num_steps'])} "
        f"steps, {int(res.stats['num_score_evals'])} score evaluations each; max "
        f"|grey(result) - grey| = {err:.2g} after clipping to [0, 1]) -> {out}"
        + (f", {args.png}" if args.png else "")
    )
    return 0
