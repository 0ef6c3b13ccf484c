"""`scoresde sample`: draw samples from a trained checkpoint with a named solver."""

import pathlib

import diffrax as dfx
import jax.numpy as jnp
import jax.random as jr

from .. import ClassifierFreeGuidance, ClassifierGuidance, sample as sd_sample
from .._progress import solve_progress
from ._args import add_guidance_flags, add_sampling_flags
from ._common import (
    batch_mesh,
    check_room,
    check_sample_suffixes,
    devices_splitting,
    load_for_sampling,
    make_sample_dirs,
    remove_if_empty,
    save_samples,
    UserError,
)
from ._sampler_table import check_step_flags, choose_solver, DEPRECATED
from .learn_grid import grid_sample_kwargs


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample", help="draw samples from a trained checkpoint"
    )
    add_sampling_flags(parser)
    add_guidance_flags(parser)
    parser.add_argument(
        "--grid",
        default=None,
        metavar="FILE.json",
        help="a time grid written by `scoresde learn-grid` for --solver (it fixes "
        "the steps, the end time and the denoising step)",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    # Checks and set-up
    out = check_sample_suffixes(args.out, args.png)
    choice = choose_solver(args.solver, args.method, prog="scoresde sample")
    choice = check_step_flags(choice, args, deprecated_steps=args.solver in DEPRECATED)
    model, sde, data_meta = load_for_sampling(args.checkpoint)
    if args.eps is not None and not args.eps < sde.T:
        raise UserError(
            f"--eps must be below the SDE's end time T = {sde.T}, got {args.eps}"
        )
    model, labels, guidance = _guided(model, sde, data_meta, args)
    mesh = None
    if args.data_parallel:
        mesh = batch_mesh("--num-samples", args.num_samples, "with --data-parallel")
    shape = (args.num_samples, *data_meta["data_shape"])
    created = make_sample_dirs(out, args.png)
    try:
        check_room(shape, out)
        res = _sample(args, sde, model, shape, mesh, choice)
        title = (
            f"{pathlib.Path(args.checkpoint).name}: {choice.label}, "
            f"{int(res.stats['num_score_evals'])} score evaluations"
        ) + (f"\n{guidance}" if guidance else "")
        columns = int(labels.max()) + 1 if args.label == "all" else None
        save_samples(res.samples, data_meta, out, args.png, title, labels, columns)
    except BaseException:
        for directory, first in created:  # leave no empty directory behind
            remove_if_empty(directory, first)
        raise

    # Report
    nfe = int(res.stats["num_score_evals"])
    devices = ""
    if mesh is not None:
        devices = f" on {devices_splitting(res.samples)} devices"
    print(
        f"{args.num_samples} samples ({choice.label}, {int(res.stats['num_steps'])} steps, "
        f"{nfe} score evaluations each){devices} -> {out}"
        + (f", {args.png}" if args.png else "")
    )
    return 0


def _sample(args, sde, model, shape, mesh, choice):
    """`sd.sample` for the flags; running out of memory is a `UserError` saying how
    many samples fit."""
    kwargs = dict(
        choice.sample_kwargs(sde, args.eps), denoise=args.denoise, eps=args.eps
    )
    if args.grid is not None:
        kwargs = grid_sample_kwargs(args, choice, sde)
    try:
        return sd_sample(
            jr.key(args.seed),
            sde,
            model,
            shape,
            **kwargs,
            sharding=mesh,
            progress_meter=progress_meter(args),
        )
    except MemoryError as e:
        largest = getattr(e, "largest", None)
        fix = (
            f"about {largest} fit at once: pass --num-samples {largest} or fewer, "
            "and run again with other --seed values for more"
            if largest
            else "lower --num-samples, and run again with other --seed values for more"
        )
        raise UserError(
            f"--num-samples {args.num_samples} does not fit in memory; {fix}"
        ) from e


def progress_meter(args) -> dfx.AbstractProgressMeter:
    """diffrax's tqdm progress bar on a terminal or with `--progress`, else plain
    lines (a log); none with `--quiet`."""
    return solve_progress("sample", enabled=not args.quiet, bar=args.progress)


def _labels(args, k: int, owner: str):
    """The labels of `--label` for `--num-samples` samples, `k` classes."""
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
                f"--label must be a class 0..{k - 1} (the {owner} has {k} classes) "
                f"or 'all', got {label}"
            )
        labels = jnp.full((n,), label)
    return labels


def _num_classes(model) -> int:
    """The classes of a conditional score model (0: unconditional)."""
    config = getattr(getattr(model, "model", model), "config", None)
    return int(getattr(config, "num_classes", 0) or 0)


def _guided(model, sde, data_meta: dict, args):
    """`model`; with `--classifier` the classifier-guided score of `--label`; for a
    conditional checkpoint (`train --conditional`) classifier-free guidance towards
    `--label` at `--guidance-scale` (default 0: plain conditional sampling). Also
    the labels (None without) and what the guidance is, in words, for the picture."""
    k_model = _num_classes(model)
    if k_model:
        if args.classifier is not None:
            raise UserError(
                "--classifier: the checkpoint is a conditional model (trained with "
                "--conditional); sample it with --label and --guidance-scale "
                "(classifier-free guidance), without --classifier"
            )
        if args.label is None:
            raise UserError(
                "--label is needed: the checkpoint is a conditional model (a class, "
                "or 'all')"
            )
        labels = _labels(args, k_model, "model")
        scale = 0.0 if args.guidance_scale is None else args.guidance_scale
        what = _label_text(args, k_model, data_meta)
        what += f", classifier-free guidance w = {scale:g}"
        return ClassifierFreeGuidance(model, labels, scale), labels, what
    if args.classifier is None:
        if args.label is not None or args.guidance_scale is not None:
            raise UserError(
                "--label and --guidance-scale need --classifier (or a checkpoint "
                "trained with --conditional)"
            )
        return model, None, ""
    from ._controllable import load_classifier

    if args.label is None:
        raise UserError("--classifier needs --label (a class, or 'all')")
    classifier, _ = load_classifier(args.classifier, sde, data_meta)
    k = classifier.config.num_classes
    labels = _labels(args, k, "classifier")
    scale = 1.0 if args.guidance_scale is None else args.guidance_scale
    what = _label_text(args, k, data_meta)
    what += f", classifier {pathlib.Path(args.classifier).name} at scale {scale:g}"
    return ClassifierGuidance(model, classifier, labels, scale), labels, what


def _label_text(args, k: int, data_meta: dict) -> str:
    """`--label` in words: a class, or all of them by column (images) or colour."""
    if args.label != "all":
        return f"label {int(args.label)}"
    by = "column j: label j" if len(data_meta["data_shape"]) == 3 else "by colour"
    return f"labels 0-{k - 1} ({by})"
