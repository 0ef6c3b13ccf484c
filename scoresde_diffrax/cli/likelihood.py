"""`scoresde likelihood`: per-example log-likelihoods of a checkpoint's model on a data
split (the probability-flow ODE, `sd.log_likelihood`), and the mean bits/dim."""

import math
import pathlib
import sys

import jax.random as jr
import numpy as np

from .. import bits_per_dim, dequantize, ExactDivergence, Hutchinson, log_likelihood
from .._progress import solve_progress
from ._args import MAKES_PARENT, positive_float, positive_int
from ._common import (
    DATASETS,
    load_dataset,
    load_for_sampling,
    save_npy,
    toy_test_split,
    UserError,
    writable_dir,
)
from ._controllable import TEST_SPLITS


DIVERGENCES = "exact, rademacher, gaussian, rademacher:K or gaussian:K (K probes)"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "likelihood",
        help="log-likelihoods of a checkpoint's model on data, and bits/dim",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="checkpoint directory written by `scoresde train`",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="NAME|PATH",
        help="data set (default: the checkpoint's): " + ", ".join(DATASETS) + ", or "
        "your own .npy/.npz file or folder of images (all its examples; see "
        "`scoresde train --help`)",
    )
    parser.add_argument(
        "--split",
        choices=("test", "train"),
        default=None,
        help="which split of a built-in data set (default test; for a 2-D toy, "
        "train is its 8192 training points and test 2048 fresh ones)",
    )
    parser.add_argument(
        "--num-examples",
        type=positive_int,
        default=None,
        metavar="N",
        help="the first N examples of the split (default all)",
    )
    parser.add_argument(
        "--divergence",
        default="rademacher",
        metavar="KIND",
        help=f"divergence of the score: {DIVERGENCES} (default rademacher)",
    )
    parser.add_argument(
        "--rtol", type=positive_float, default=1e-5, help="Tsit5's rtol (default 1e-5)"
    )
    parser.add_argument(
        "--atol", type=positive_float, default=1e-5, help="Tsit5's atol (default 1e-5)"
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=4096,
        metavar="M",
        help="most steps of the adaptive solve (default 4096)",
    )
    parser.add_argument(
        "--eps",
        type=positive_float,
        default=1e-5,
        help="start time of the flow (default 1e-5, the paper's)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the dequantisation noise and the probes (default 0)",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="FILE.npy",
        help="write the per-example log-likelihoods (nats, of the data in model "
        "units, dequantised where the data are quantised); " + MAKES_PARENT,
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress report (by default a bar on a terminal, else a plain "
        "line per tenth of the solve)",
    )
    parser.set_defaults(run=run)


def parse_divergence(spec: str):
    """`--divergence`: `exact`, `rademacher[:K]`, `gaussian[:K]`."""
    kind, _, k = spec.partition(":")
    if kind == "exact" and not k:
        return ExactDivergence()
    if kind in ("rademacher", "gaussian"):
        try:
            probes = int(k) if k else 1
        except ValueError:
            probes = 0
        if probes >= 1:
            return Hutchinson(kind, num_probes=probes)
    raise UserError(f"--divergence must be one of {DIVERGENCES}, got {spec!r}")


def _examples(name: str, split: str | None, data_meta: dict):
    """The examples of `split` of `--data name` (data units), or all those of your
    own file or folder, and their number of quantisation levels (or None)."""
    if name not in DATASETS:
        if split is not None:
            raise UserError(
                f"--split applies to the built-in data sets, not to --data {name} "
                "(all its examples are scored)"
            )
        ds = load_dataset(name)
    elif split in (None, "test"):
        # a generated toy's held-out set: fresh points, drawn with another key
        ds = TEST_SPLITS[name]() if name in TEST_SPLITS else toy_test_split(name)
    else:
        ds = DATASETS[name]()
    if list(ds.data_shape) != list(data_meta["data_shape"]):
        raise UserError(
            f"--data {name} has examples of shape {tuple(ds.data_shape)}, but "
            f"--checkpoint was trained on {data_meta['name']} of shape "
            f"{tuple(data_meta['data_shape'])}"
        )
    return np.asarray(ds.x, np.float64), ds.levels


def run(args) -> int:
    # Checks and set-up
    out = None
    if args.out is not None:
        out = pathlib.Path(args.out)
        if out.suffix != ".npy":
            raise UserError(f"--out must name a .npy file, got {args.out!r}")
    divergence = parse_divergence(args.divergence)
    model, sde, data_meta = load_for_sampling(args.checkpoint)
    if not args.eps < sde.T:
        raise UserError(f"--eps must be below the SDE's end time T = {sde.T}")
    name = args.data or data_meta["name"]
    x, levels = _examples(name, args.split, data_meta)
    split = args.split or ("test" if name in DATASETS else "all")
    if args.num_examples is not None:
        if args.num_examples > len(x):
            raise UserError(
                f"--num-examples must be at most {len(x)} (the {split} examples), "
                f"got {args.num_examples}"
            )
        x = x[: args.num_examples]
    if out is not None:
        writable_dir(out.parent, "--out", named=False)

    # Dequantise (quantised data) into model units
    scale, shift = data_meta["scale"], data_meta["shift"]
    lo, hi = sorted((shift, scale + shift))
    key_deq, key_probe = jr.split(jr.key(args.seed))
    if levels is not None:
        k = np.round(x * (levels - 1))
        y = dequantize(key_deq, k, num_levels=levels, data_range=(lo, hi))
    else:
        y = np.asarray(x * scale + shift, np.float32)

    # Solve
    meter = solve_progress("likelihood", enabled=not args.quiet)
    res = log_likelihood(
        key_probe,
        sde,
        model,
        y,
        divergence=divergence,
        rtol=args.rtol,
        atol=args.atol,
        eps=args.eps,
        max_steps=args.max_steps,
        progress_meter=meter,
    )
    log_prob = np.asarray(res.log_prob, np.float64)
    if out is not None:
        save_npy(out, log_prob)

    # Report
    n = len(log_prob)
    se = float(np.std(log_prob, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    line = (
        f"{n} examples of {name} ({split}): "
        f"log-likelihood {log_prob.mean():.4f} +- {se:.4f} nats"
    )
    if levels is not None:
        bpd = np.asarray(
            bits_per_dim(res.log_prob, y, data_range=(lo, hi), num_levels=levels),
            np.float64,
        )
        bse = float(np.std(bpd, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        line += f", {bpd.mean():.4f} +- {bse:.4f} bits/dim ({levels} levels)"
    line += (
        f"; {int(res.stats['num_steps'])} steps, "
        f"{int(res.stats['num_score_evals'])} score evaluations"
    )
    print(line + (f" -> {out}" if out is not None else ""))
    sys.stdout.flush()
    return 0
