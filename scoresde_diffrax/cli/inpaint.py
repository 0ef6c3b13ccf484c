"""`scoresde inpaint`: fill in the hidden part of images with a trained score model
(the paper's imputation: `sd.Impute` around a fixed-step solver)."""

import jax.random as jr
import numpy as np

from .. import sample as sd_sample
from ._common import check_sample_files, load_for_sampling, save_npy, UserError
from ._controllable import (
    add_inverse_flags,
    impute_solver,
    inpainting_mask,
    load_mask_file,
    load_observations,
    MASKS,
    side_by_side,
    solve_kwargs,
    test_examples,
    to_data,
    to_model,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inpaint",
        help="fill in a hidden region of images (test examples or your own) with a "
        "trained score model",
    )
    add_inverse_flags(parser)
    parser.add_argument(
        "--data",
        default=None,
        metavar="NAME",
        help="take the observations from the first N examples of this data set's "
        "test split (digits, digits16, colored-digits, colored-digits16)",
    )
    parser.add_argument(
        "--mask",
        default=None,
        metavar="REGION",
        help=f"the region to fill in: {', '.join(MASKS)} (P: the fraction of pixels "
        "hidden at random, per example)",
    )
    parser.add_argument(
        "--observations",
        default=None,
        metavar="FILE.npy",
        help="your own observations instead of --data: (N, *data_shape) in data units",
    )
    parser.add_argument(
        "--mask-file",
        default=None,
        metavar="FILE.npy",
        help="your own mask instead of --mask: binary, 1 where KNOWN, shape "
        "data_shape or (N, *data_shape)",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    # Checks and set-up
    out = check_sample_files(args.out, args.png)
    model, sde, data_meta = load_for_sampling(args.checkpoint)
    shape = tuple(data_meta["data_shape"])
    if (args.data is None) == (args.observations is None):
        raise UserError(
            "give one of --data (test examples) and --observations (your own)"
        )
    truth = None
    if args.data is not None:
        if args.mask is None or args.mask_file is not None:
            raise UserError(
                "--data goes with --mask (a named region); --observations with --mask-file"
            )
        if args.num_samples is None:
            raise UserError("--num-samples is required with --data")
        truth, _ = test_examples(args.data, args.num_samples, data_meta)
        observed = truth
        mask = inpainting_mask(args.mask, shape, len(observed), args.seed)
    else:
        if args.mask_file is None or args.mask is not None:
            raise UserError("--observations goes with --mask-file; --data with --mask")
        observed = load_observations(args.observations, data_meta)
        if args.num_samples is not None:
            if args.num_samples > len(observed):
                raise UserError(
                    f"--num-samples must be at most {len(observed)} (the observations), "
                    f"got {args.num_samples}"
                )
            observed = observed[: args.num_samples]
        mask = load_mask_file(args.mask_file, shape, len(observed))
        if mask.ndim == len(shape) + 1:
            mask = mask[: len(observed)]
    n = len(observed)

    # Sample
    kwargs = impute_solver(solve_kwargs(args, sde), to_model(observed, data_meta), mask)
    res = sd_sample(jr.key(args.seed), sde, model, (n, *shape), **kwargs)

    # Write and report: the known region is the observation itself.
    result = np.where(mask, observed, to_data(res.samples, data_meta))
    result = np.clip(result, 0.0, 1.0) if len(shape) == 3 else result
    save_npy(out, result.astype(np.float32))
    if args.png is not None:
        shown = np.where(mask, observed, 0.5)
        rows = [shown, result] + ([truth] if truth is not None else [])
        names = ["observed", "inpainted"] + (["truth"] if truth is not None else [])
        side_by_side(
            [np.clip(r, 0, 1) for r in rows],
            names,
            args.png,
            title=f"inpainting ({args.solver}, "
            f"{int(res.stats['num_score_evals'])} score evaluations)",
        )
    nfe = int(res.stats["num_score_evals"])
    print(
        f"{n} completions ({args.solver}, {int(res.stats['num_steps'])} steps, {nfe} "
        f"score evaluations each) -> {out}" + (f", {args.png}" if args.png else "")
    )
    return 0
