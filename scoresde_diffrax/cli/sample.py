"""`scoresde sample`: draw samples from a trained checkpoint with a named solver."""

import jax.numpy as jnp
import jax.random as jr

from .. import ClassifierGuidance, sample as sd_sample
from ._args import add_guidance_flags, add_sampling_flags
from ._common import (
    batch_mesh,
    check_sample_files,
    devices_splitting,
    load_for_sampling,
    save_samples,
    UserError,
)
from ._solvers import SOLVERS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample", help="draw samples from a trained checkpoint"
    )
    add_sampling_flags(parser)
    add_guidance_flags(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    # Checks and set-up
    out = check_sample_files(args.out, args.png)
    model, sde, data_meta = load_for_sampling(args.checkpoint)
    if args.eps is not None and not args.eps < sde.T:
        raise UserError(
            f"--eps must be below the SDE's end time T = {sde.T}, got {args.eps}"
        )
    model = _guided(model, sde, data_meta, args)
    mesh = None
    if args.data_parallel:
        mesh = batch_mesh(
            "sample", "--num-samples", args.num_samples, "with --data-parallel"
        )

    # Sample
    res = sd_sample(
        jr.key(args.seed),
        sde,
        model,
        (args.num_samples, *data_meta["data_shape"]),
        **SOLVERS[args.solver].sample_kwargs(sde, args.steps, args.eps),
        denoise=args.denoise,
        eps=args.eps,
        sharding=mesh,
    )

    # Write and report
    save_samples(res.samples, data_meta, out, args.png)
    nfe = int(res.stats["num_score_evals"])
    devices = ""
    if mesh is not None:
        devices = f" on {devices_splitting(res.samples)} devices"
    print(
        f"{args.num_samples} samples ({args.solver}, {int(res.stats['num_steps'])} steps, "
        f"{nfe} score evaluations each){devices} -> {out}"
        + (f", {args.png}" if args.png else "")
    )
    return 0


def _guided(model, sde, data_meta: dict, args):
    """`model`, or with `--classifier` the classifier-guided score of `--label`."""
    if args.classifier is None:
        if args.label is not None or args.guidance_scale is not None:
            raise UserError("--label and --guidance-scale need --classifier")
        return model
    from ._conditioning import load_classifier

    if args.label is None:
        raise UserError("--classifier needs --label (a class, or 'all')")
    classifier, _ = load_classifier(args.classifier, sde, data_meta)
    k = classifier.config.num_classes
    n = args.num_samples
    if args.label == "all":
        labels = jnp.arange(n) % k
    else:
        try:
            label = int(args.label)
        except ValueError:
            raise UserError(
                f"--label must be a class 0..{k - 1} or 'all', got {args.label!r}"
            ) from None
        if not 0 <= label < k:
            raise UserError(
                f"--label must be a class 0..{k - 1} (the classifier has {k} classes) "
                f"or 'all', got {label}"
            )
        labels = jnp.full((n,), label)
    scale = 1.0 if args.guidance_scale is None else args.guidance_scale
    return ClassifierGuidance(model, classifier, labels, scale)
