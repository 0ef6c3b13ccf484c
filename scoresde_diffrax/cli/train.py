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

from .. import ConditionalDSMLoss, NonFiniteLossError, train as sd_train
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
    DATASETS,
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
    parser.add_argument(
        "--conditional",
        action="store_const",
        const=True,
        default=None,
        help="train a class-conditional model on the data's labels (digits, "
        "colored-digits), dropping the label with probability --cond-drop "
        f"(classifier-free guidance; sample with --label){_RESUMED}",
    )
    parser.add_argument(
        "--cond-drop",
        type=float,
        default=None,
        metavar="P",
        help="with --conditional: probability in [0, 1) of dropping the label "
        f"(default 0.1){_RESUMED}",
    )
    parser.set_defaults(run=run)


_RESUMED = "; with --resume: the checkpoint's"


# --------------------------------------------------------------------------- settings


def default_lr(model: str) -> float:
    """`--lr`'s default: 2e-4 for the U-Net (the paper's), 2e-3 for the MLP (chosen on
    the 2-D toys: `benchmarks/bench_toys.py`)."""
    return 2e-4 if model == "unet" else 2e-3


def default_warmup(steps: int) -> int:
    """`--warmup`'s default for a new run of `steps` steps: min(5000, steps / 10)."""
    return min(5000, max(1, steps // 10))


_REQUIRED = object()  # a setting a new run must be given


def _setting(stored: tuple[str, ...], default=_REQUIRED, *, grows: bool = False):
    """A field of `RunSettings`. Its flag is `--` and the field's name with hyphens;
    `stored` is where a checkpoint's metadata records it (`("cli", name)`: the
    command's own record, written by `run`; else `sd.train`'s); `default` is a new
    run's value when the flag is left out (a constant, or a function of the parsed
    arguments), also the value of a `cli` setting that an older checkpoint lacks;
    `grows`: the setting may change when resumed (only `steps`)."""
    return dataclasses.field(
        metadata={"stored": stored, "default": default, "grows": grows}
    )


def _cli(name: str, default=_REQUIRED):
    return _setting(("cli", name), default)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What defines a training run, by the name of its flag's attribute (`steps` is
    the total the run trains to; it may grow when resumed). Each field says where a
    checkpoint records it and its default (`_setting`): the flags a resumed run must
    keep, the settings read back from a checkpoint and the record written into it
    all come from these fields."""

    data: str = _cli("data")
    sde: str = _cli("sde")
    model: str = _cli("model")
    seed: int = _cli("seed", 0)
    batch_size: int = _setting(("batch_size",), 128)
    lr: float = _setting(
        ("optimizer", "learning_rate"), lambda args: default_lr(args.model)
    )
    warmup: int = _setting(
        ("optimizer", "warmup_steps"), lambda args: default_warmup(args.steps)
    )
    ema: float = _setting(("ema_decay",), 0.999)
    steps: int = _setting(("num_steps",), grows=True)
    data_range: str | None = _cli("data_range", None)
    image_size: int | None = _cli("image_size", None)
    conditional: bool = _cli("conditional", False)
    cond_drop: float = _cli("cond_drop", 0.1)

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of the setting `name`."""
        return "--" + name.replace("_", "-")

    def cli_record(self) -> dict:
        """The command's record in a checkpoint's metadata (`meta["cli"]`)."""
        record = {"command": "train"}
        for f in dataclasses.fields(self):
            if f.metadata["stored"][0] == "cli":
                record[f.name] = getattr(self, f.name)
        return record


def _fields():
    return dataclasses.fields(RunSettings)


def _recorded(meta: dict, field):
    """The value of the setting `field` recorded in the checkpoint `meta` (a `cli`
    setting an older checkpoint lacks takes its default)."""
    value = meta
    for key in field.metadata["stored"]:
        if key not in value and field.metadata["default"] is not _REQUIRED:
            return field.metadata["default"]
        value = value[key]
    return field.type(value) if field.type in (bool, int, float) else value


def new_settings(args, resume_found_nothing: bool) -> RunSettings:
    """The settings of a new run: the flags, and the defaults of those left out."""
    missing = [
        RunSettings.flag(f.name)
        for f in _fields()
        if f.metadata["default"] is _REQUIRED and getattr(args, f.name) is None
    ]
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
    values = {}
    for f in _fields():
        value, default = getattr(args, f.name), f.metadata["default"]
        if value is None:
            value = default(args) if callable(default) else default
        values[f.name] = value
    return RunSettings(**values)


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
    recorded = RunSettings(**{f.name: _recorded(meta, f) for f in _fields()})
    for f in _fields():
        value, kept = getattr(args, f.name), getattr(recorded, f.name)
        if f.metadata["grows"] or value is None or value == kept:
            continue
        flag = RunSettings.flag(f.name)
        if isinstance(value, (int, float)):
            value, kept = f"{value:g}", f"{kept:g}"
        raise UserError(
            f"{flag} {value} contradicts the run being resumed: its checkpoint in "
            f"{out} was trained with {flag} {kept}. A resumed run keeps its settings: "
            f"leave {flag} out (or pass {kept}), or start a new run in another --out"
        )
    steps = recorded.steps if args.steps is None else args.steps
    return dataclasses.replace(recorded, steps=steps)


def _check_conditional(args, settings: RunSettings) -> None:
    """`--cond-drop` in [0, 1), and only with `--conditional`."""
    if args.cond_drop is not None and not settings.conditional:
        raise UserError("--cond-drop needs --conditional")
    if not 0 <= settings.cond_drop < 1:
        raise UserError(
            f"--cond-drop must be a probability in [0, 1), got {settings.cond_drop:g}"
        )


# --------------------------------------------------------------------------- run


def _settings(args, out: pathlib.Path) -> tuple[RunSettings, dict | None]:
    """The run's settings (a new run's, or the checkpoint's) and the newest
    checkpoint's metadata in `--out` (None for a new run)."""
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
    _check_conditional(args, settings)
    if meta is not None and args.warmup is None:
        fresh = default_warmup(settings.steps)
        if settings.steps > int(meta["num_steps"]) and fresh != settings.warmup:
            print(
                f"scoresde train: note: a resumed run keeps its warm-up of "
                f"{settings.warmup} steps; a new run with --steps {settings.steps} "
                f"would warm up for {fresh} (a tenth of --steps, at most 5000), so "
                "the two differ: pass --warmup to runs that must match",
                file=sys.stderr,
            )
    return settings, meta


def _model(settings: RunSettings, meta: dict | None, dataset) -> tuple:
    """The SDE and the network: new ones for a new run, else the checkpoint's (its
    weights are loaded by `sd.train`)."""
    if meta is not None:
        return checkpoint_model(meta)
    num_classes = 0
    if settings.conditional:
        if dataset.labels is None:
            raise UserError(
                "--conditional needs a data set with labels (moons, rings, "
                "gaussian-mixture, digits, digits16, colored-digits, "
                "colored-digits16, or a .npz file with labels 'y'), got --data "
                f"{settings.data}"
            )
        num_classes = int(dataset.labels.max()) + 1
    sde = make_sde(settings.sde, dataset)
    try:
        model = make_model(
            settings.model,
            dataset.data_shape,
            sde,
            jr.key(settings.seed + 1),
            num_classes=num_classes,
        )
    except (ValueError, TypeError) as e:
        raise UserError(
            f"--model {settings.model} does not fit --data {settings.data} "
            f"(examples of shape {dataset.data_shape}): {e}"
        ) from e
    return sde, model


# What the README measured for the bundled 8x8 digits (benchmarks/README.md, Digits):
# 6000 steps of batch 128 at --lr 1e-3 with the default U-Net reach FD-digits 1.55x the
# floor of real digits; 10.8 minutes on 2 shared CPU cores.
USEFUL_IMAGE_STEPS = 6000


def _hint_steps(settings: RunSettings, dataset) -> None:
    """On your own images, a note when `--steps` is below what a useful model of the
    8x8 digits took."""
    if settings.data in DATASETS or len(dataset.data_shape) != 3:
        return
    if settings.steps >= USEFUL_IMAGE_STEPS:
        return
    print(
        f"scoresde train: note: --steps {settings.steps} is likely too few for a "
        f"useful model of images: on the bundled 8x8 digits, --model unet needed "
        f"{USEFUL_IMAGE_STEPS} steps of --batch-size 128 at --lr 1e-3 (about 11 "
        "minutes on 2 CPU cores) for samples at 1.55-1.82x the FD-digits floor of "
        "real digits (README, benchmarks); larger images need more",
        file=sys.stderr,
    )


def _failed(e: BaseException, settings: RunSettings, out: pathlib.Path) -> int:
    """A training failure in terms of the flags that fix it (raises `UserError`), or
    the exit code of an interrupt (130, after saying what was kept)."""
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
            f"the steps up to {steps[-1]} are saved in {out}: continue with --resume"
            if steps
            else "no step was completed"
        )
        print(f"scoresde train: interrupted; {kept}", file=sys.stderr)
        return 130
    raise e


def run(args) -> int:
    distributed = init_distributed(args)  # first: before any JAX computation
    out = pathlib.Path(args.out)
    settings, meta = _settings(args, out)
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
    _hint_steps(settings, dataset)
    sde, model = _model(settings, meta, dataset)
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
            loss=ConditionalDSMLoss(settings.cond_drop)
            if settings.conditional
            else None,
            learning_rate=settings.lr,
            warmup_steps=settings.warmup,
            ema_decay=settings.ema,
            steps_per_call=args.steps_per_call,
            checkpoint_dir=out,
            checkpoint_every=args.checkpoint_every,
            resume=meta is not None,
            progress=not args.quiet,
            sharding=mesh,
            metadata={"cli": settings.cli_record()},
        )
    except BaseException as e:
        remove_if_empty(out, created)
        return _failed(e, settings, out)

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
