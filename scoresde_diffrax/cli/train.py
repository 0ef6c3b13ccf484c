"""`scoresde train`: train a score model on a named data set; writes checkpoints.

A run is defined by its settings (`RunSettings`: data, SDE, model, seed, batch size,
learning rate, warm-up, EMA decay), which its checkpoints record. `--resume`
continues the run in `--out` with the recorded settings: a flag that contradicts them
is refused in one line, and only `--steps` (the total) may change. Flags that do not
change the arithmetic (`--checkpoint-every`, `--steps-per-call`, `--quiet`,
`--data-parallel`) are free.
"""

import dataclasses
import pathlib
import sys

import jax
import jax.random as jr

from .. import NonFiniteLossError, train as sd_train
from ._args import (
    add_data_flag,
    add_distributed_flags,
    add_model_flag,
    add_sde_flag,
    add_training_flags,
)
from ._common import (
    batch_mesh,
    checkpoint_model,
    checkpoint_steps,
    devices_holding,
    init_distributed,
    load_dataset,
    make_model,
    make_sde,
    missing_ancestor,
    newest_checkpoint,
    remove_if_empty,
    SCORE_MODEL,
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


# --------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What defines a training run, by the name of its flag's attribute (`steps` is
    the total the run trains to; it may grow when resumed)."""

    data: str
    sde: str
    model: str
    seed: int
    batch_size: int
    lr: float
    warmup: int
    ema: float
    steps: int
    data_range: str | None = None
    image_size: int | None = None


# The flag of each setting that a resumed run must keep.
FLAGS = {
    "data": "--data",
    "sde": "--sde",
    "model": "--model",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "warmup": "--warmup",
    "ema": "--ema",
    "data_range": "--data-range",
    "image_size": "--image-size",
}
REQUIRED = ("data", "sde", "model", "steps")


def default_lr(model: str) -> float:
    """`--lr`'s default: 2e-4 for the U-Net (the paper's), 2e-3 for the MLP (chosen on
    the 2-D toys: `benchmarks/bench_toys.py`)."""
    return 2e-4 if model == "unet" else 2e-3


def default_warmup(steps: int) -> int:
    """`--warmup`'s default for a new run of `steps` steps: min(5000, steps / 10)."""
    return min(5000, max(1, steps // 10))


def new_settings(args, resume_found_nothing: bool) -> RunSettings:
    """The settings of a new run: the flags, and the defaults of those left out."""
    missing = [f"--{name}" for name in REQUIRED if getattr(args, name) is None]
    if missing:
        why = (
            f"--resume found no checkpoint in --out {args.out}, so this starts a new "
            "run"
            if resume_found_nothing
            else "a new run needs them"
        )
        raise UserError(
            f"the following arguments are required: {', '.join(missing)} ({why}; "
            "with --resume, a checkpoint's settings are used)"
        )

    def given(name, default):
        value = getattr(args, name)
        return default if value is None else value

    return RunSettings(
        data=args.data,
        sde=args.sde,
        model=args.model,
        seed=given("seed", 0),
        batch_size=given("batch_size", 128),
        lr=given("lr", default_lr(args.model)),
        warmup=given("warmup", default_warmup(args.steps)),
        ema=given("ema", 0.999),
        steps=args.steps,
        data_range=args.data_range,
        image_size=args.image_size,
    )


def resumed_settings(args, meta: dict, out: pathlib.Path) -> RunSettings:
    """The settings recorded by the checkpoint `meta` in `out`; a `UserError` naming
    the flag and both values for a flag that contradicts them."""
    cli = meta.get("cli")
    if not isinstance(cli, dict):
        raise UserError(
            f"--out {out} holds checkpoints written by sd.train, not by `scoresde "
            "train`, so they do not record the command's settings: continue them with "
            "sd.train(..., resume=True), or choose another --out"
        )
    command = cli.get("command", "train")
    kind = meta.get("kind", SCORE_MODEL)
    if command != "train" or kind != SCORE_MODEL:
        raise UserError(
            f"--out {out} holds checkpoints of `scoresde {command}` (a "
            f"{kind.replace('_', ' ')}), not of `scoresde train`: --resume cannot "
            "continue them; choose another --out"
        )
    optimizer = meta["optimizer"]
    recorded = RunSettings(
        data=cli["data"],
        sde=cli["sde"],
        model=cli["model"],
        seed=cli["seed"],
        batch_size=meta["batch_size"],
        lr=optimizer["learning_rate"],
        warmup=optimizer["warmup_steps"],
        ema=meta["ema_decay"],
        steps=meta["num_steps"],
        data_range=cli.get("data_range"),
        image_size=cli.get("image_size"),
    )
    for name, flag in FLAGS.items():
        value, kept = getattr(args, name), getattr(recorded, name)
        if value is not None and value != kept:
            raise UserError(
                f"{flag} {value:g} contradicts the run being resumed: its checkpoint "
                f"in {out} was trained with {flag} {kept:g}. A resumed run keeps its "
                f"settings: leave {flag} out (or pass {kept:g}), or start a new run "
                "in another --out"
                if isinstance(value, (int, float))
                else f"{flag} {value} contradicts the run being resumed: its "
                f"checkpoint in {out} was trained with {flag} {kept}. A resumed run "
                f"keeps its settings: leave {flag} out (or pass {kept}), or start a "
                "new run in another --out"
            )
    steps = recorded.steps if args.steps is None else args.steps
    return dataclasses.replace(recorded, steps=steps)


# --------------------------------------------------------------------------- run


def run(args) -> int:
    distributed = init_distributed(args)  # first: before any JAX computation

    # Settings: a new run's, or the checkpoint's
    out = pathlib.Path(args.out)
    meta = newest_checkpoint(out)
    if meta is not None and not args.resume:
        raise UserError(
            f"--out {out} already holds a run (checkpoint at step {meta['step']}): "
            "add --resume to continue it, or choose an empty --out for a new run"
        )
    if meta is None:
        settings = new_settings(args, resume_found_nothing=args.resume)
    else:
        settings = resumed_settings(args, meta, out)
    done = 0 if meta is None else int(meta["step"])
    if done >= settings.steps:
        print(
            f"nothing to do: the run in {out} is already complete (its checkpoint is "
            f"at step {done}, --steps {settings.steps}); pass a larger --steps to "
            "train it further"
        )
        return 0

    # Set-up
    mesh = None
    if args.data_parallel or distributed:
        mesh = batch_mesh(
            "--batch-size", settings.batch_size, "for data-parallel training"
        )
    dataset = load_dataset(settings.data, settings.data_range, settings.image_size)
    if meta is None:
        sde = make_sde(settings.sde, dataset)
        try:
            model = make_model(
                settings.model, dataset.data_shape, sde, jr.key(settings.seed + 1)
            )
        except (ValueError, TypeError) as e:
            raise UserError(
                f"--model {settings.model} does not fit --data {settings.data} "
                f"(examples of shape {dataset.data_shape}): {e}"
            ) from e
    else:  # the checkpoint's SDE and network (its weights are loaded by sd.train)
        sde, model = checkpoint_model(meta)
    created = missing_ancestor(out)
    writable_dir(out, "--out")

    # Train
    try:
        res = sd_train(
            jr.key(settings.seed),
            model,
            sde,
            dataset,
            num_steps=settings.steps,
            batch_size=settings.batch_size,
            learning_rate=settings.lr,
            warmup_steps=settings.warmup,
            ema_decay=settings.ema,
            steps_per_call=args.steps_per_call,
            checkpoint_dir=out,
            checkpoint_every=args.checkpoint_every,
            resume=meta is not None,
            progress=not args.quiet,
            sharding=mesh,
            metadata={
                "cli": {
                    "command": "train",
                    "data": settings.data,
                    "sde": settings.sde,
                    "model": settings.model,
                    "seed": settings.seed,
                    "data_range": settings.data_range,
                    "image_size": settings.image_size,
                }
            },
        )
    except BaseException as e:
        remove_if_empty(out, created)
        if isinstance(e, NonFiniteLossError):
            raise UserError(
                f"the loss became NaN or inf at step {e.step} with --lr "
                f"{settings.lr:g}: training diverged; lower --lr (the default for "
                f"--model {settings.model} is {default_lr(settings.model):g})"
            ) from e
        if isinstance(e, MemoryError):
            largest = getattr(e, "largest", None)
            fix = (
                f"at most about {largest} fit: pass --batch-size {largest} or fewer"
                if largest
                else "lower --batch-size"
            )
            raise UserError(
                f"--batch-size {settings.batch_size} does not fit in memory; {fix} "
                "(or a smaller --steps-per-call)"
            ) from e
        if isinstance(e, KeyboardInterrupt):
            steps = checkpoint_steps(out)
            kept = (
                f"the steps up to {steps[-1]} are saved in {out}: continue with "
                "--resume"
                if steps
                else "no step was completed"
            )
            print(f"scoresde train: interrupted; {kept}", file=sys.stderr)
            return 130
        raise

    # Report
    n = len(res.losses)
    last = float(res.losses[-min(n, 100) :].mean())
    where = (
        f"checkpoint in {out}"
        if jax.process_index() == 0
        else f"process {jax.process_index()}: checkpoints are written by process 0"
    )
    devices = ""
    if mesh is not None:
        devices = f" on {devices_holding(res.model)} devices"
    print(
        f"trained {settings.model} on {settings.data} ({settings.sde}){devices}: {n} "
        f"steps in {res.wall_time:.1f} s (to step {settings.steps}), final loss "
        f"{last:.4g}; {where}"
    )
    return 0
