"""`scoresde train-classifier`: train a noise-conditional classifier for class
guidance, with the data sets, SDEs and checkpoints of `scoresde train`."""

import pathlib

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

from .. import ClassifierLoss, nn, train as sd_train
from ._args import add_data_flag, add_sde_flag, add_training_flags, positive_int
from ._common import load_dataset, make_sde, UserError, writable_dir
from ._controllable import TEST_SPLITS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train-classifier",
        help="train a noise-conditional classifier (for `sample --classifier`); "
        "writes checkpoints to --out",
    )
    add_data_flag(parser)
    add_sde_flag(parser)
    add_training_flags(parser)
    parser.add_argument(
        "--channels",
        type=positive_int,
        default=32,
        metavar="C",
        help="base width of the classifier (sd.nn.NoiseConditionalClassifier; "
        "default 32)",
    )
    parser.add_argument(
        "--levels",
        type=positive_int,
        default=2,
        metavar="L",
        help="resolutions of the classifier (each halves the image; default 2)",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    # Set-up: the data set and SDE exactly as `scoresde train` builds them, so the
    # classifier pairs with a score model trained on the same --data and --sde.
    out = pathlib.Path(args.out)
    writable_dir(out, "--out")
    if args.steps is None:
        raise UserError("the following arguments are required: --steps")
    # The shared training flags default to None (so `train --resume` can tell a given
    # flag from one left out); a classifier run fills in `train`'s defaults.
    seed = 0 if args.seed is None else args.seed
    batch_size = 128 if args.batch_size is None else args.batch_size
    ema = 0.999 if args.ema is None else args.ema
    steps_per_call = (
        None if args.steps_per_call is None else min(args.steps_per_call, args.steps)
    )
    dataset = load_dataset(args.data, args.data_range, args.image_size)
    if dataset.labels is None or len(dataset.data_shape) != 3:
        raise UserError(
            f"--data {args.data} has no class labels or is not images; a classifier "
            "trains on labelled images: digits, digits16, colored-digits, "
            "colored-digits16, or a .npz file with images 'x' and labels 'y'"
        )
    sde = make_sde(args.sde, dataset)
    num_classes = int(jnp.max(dataset.labels)) + 1
    try:
        # Initialised in one compiled call (eagerly, every layer compiles its own).
        classifier = _init_classifier(
            dataset.data_shape,
            num_classes,
            args.channels,
            args.levels,
            jr.key(seed + 1),
        )
    except ValueError as e:
        raise UserError(
            f"--channels {args.channels} / --levels {args.levels}: {e}"
        ) from e
    lr = args.lr if args.lr is not None else 1e-3
    warmup = (
        args.warmup if args.warmup is not None else min(5000, max(1, args.steps // 10))
    )

    # Train
    res = sd_train(
        jr.key(seed),
        classifier,
        sde,
        dataset,
        loss=ClassifierLoss(),
        num_steps=args.steps,
        batch_size=batch_size,
        learning_rate=lr,
        warmup_steps=warmup,
        ema_decay=ema,
        steps_per_call=steps_per_call,
        checkpoint_dir=out,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
        progress=not args.quiet,
        metadata={
            "cli": {
                "command": "train-classifier",
                "data": args.data,
                "sde": args.sde,
                "seed": seed,
            }
        },
    )

    # Report: accuracy of the EMA classifier on the test split at t = eps (your own
    # data has none: on the training data, and the line says so).
    split = "test" if args.data in TEST_SPLITS else "training"
    test = TEST_SPLITS[args.data]() if split == "test" else dataset
    eps = jnp.asarray(sde.default_eps)
    logits = _logits(res.ema_model, eps, test.model_data())
    acc = float(np.mean(np.asarray(jnp.argmax(logits, -1)) == np.asarray(test.labels)))
    n = len(res.losses)
    last = float(res.losses[-min(n, 100) :].mean()) if n else float("nan")
    print(
        f"trained classifier on {args.data} ({args.sde}): {n} steps in "
        f"{res.wall_time:.1f} s, final loss {last:.4g}, {split} accuracy at t = eps "
        f"{acc:.3f}; checkpoint in {out}"
    )
    return 0


@eqx.filter_jit
def _init_classifier(data_shape, num_classes: int, channels: int, levels: int, key):
    """The classifier, initialised in one compiled call (eagerly, every layer
    compiles its own random draws)."""
    return nn.NoiseConditionalClassifier(
        data_shape,
        num_classes=num_classes,
        channels=channels,
        num_levels=levels,
        groups=min(8, channels),
        key=key,
    )


@eqx.filter_jit
def _logits(classifier, t, x):
    return jax.vmap(classifier, in_axes=(None, 0))(t, x)
