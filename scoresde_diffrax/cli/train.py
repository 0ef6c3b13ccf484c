"""`scoresde train`: train a score model on a named data set; writes checkpoints."""

import pathlib

import jax
import jax.random as jr

from .. import train as sd_train
from ._args import (
    add_data_flag,
    add_distributed_flags,
    add_model_flag,
    add_sde_flag,
    add_training_flags,
)
from ._common import (
    batch_mesh,
    DATASETS,
    devices_holding,
    init_distributed,
    make_model,
    make_sde,
    UserError,
    writable_dir,
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a score model; writes checkpoints to --out"
    )
    add_data_flag(parser)
    add_sde_flag(parser)
    add_model_flag(parser)
    add_training_flags(parser)
    add_distributed_flags(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    distributed = init_distributed(args, "train")  # first: before any JAX computation

    # Set-up
    out = pathlib.Path(args.out)
    writable_dir(out, "--out")
    mesh = None
    if args.data_parallel or distributed:
        mesh = batch_mesh(
            "train", "--batch-size", args.batch_size, "for data-parallel training"
        )
    dataset = DATASETS[args.data]()
    sde = make_sde(args.sde, dataset)
    try:
        model = make_model(args.model, dataset.data_shape, sde, jr.key(args.seed + 1))
    except (ValueError, TypeError) as e:
        raise UserError(
            f"--model {args.model} does not fit --data {args.data} (examples of shape "
            f"{dataset.data_shape}): {e}"
        ) from e
    lr = args.lr if args.lr is not None else (2e-4 if args.model == "unet" else 1e-3)
    warmup = (
        args.warmup if args.warmup is not None else min(5000, max(1, args.steps // 10))
    )

    # Train
    res = sd_train(
        jr.key(args.seed),
        model,
        sde,
        dataset,
        num_steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=lr,
        warmup_steps=warmup,
        ema_decay=args.ema,
        steps_per_call=min(args.steps_per_call, args.steps),
        checkpoint_dir=out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=not args.quiet,
        sharding=mesh,
        metadata={
            "cli": {
                "data": args.data,
                "sde": args.sde,
                "model": args.model,
                "seed": args.seed,
            }
        },
    )

    # Report
    n = len(res.losses)
    last = float(res.losses[-min(n, 100) :].mean()) if n else float("nan")
    where = (
        f"checkpoint in {out}"
        if jax.process_index() == 0
        else f"process {jax.process_index()}: checkpoints are written by process 0"
    )
    devices = ""
    if mesh is not None:
        devices = f" on {devices_holding(res.model)} devices"
    print(
        f"trained {args.model} on {args.data} ({args.sde}){devices}: {n} steps in "
        f"{res.wall_time:.1f} s, final loss {last:.4g}; {where}"
    )
    return 0
