"""Command-line arguments: the parser with one-line errors, number arguments, and the
flags several commands share, each group added by one function."""

import argparse
import math
import pathlib
import textwrap
from collections.abc import Callable

from ._common import DATASETS, MODELS, SDES, UserError
from ._sampler_table import DEFAULT_MAX_STEPS, DEFAULT_STEPS, SOLVERS


class _Formatter(argparse.HelpFormatter):
    """Help text wrapped at spaces only: a name like `euler-maruyama` or
    `dpm-solver++2m` stays on one line (argparse breaks on hyphens by default)."""

    def _split_lines(self, text, width):
        text = self._whitespace_matcher.sub(" ", text).strip()
        return textwrap.wrap(text, width, break_on_hyphens=False)


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one `UserError` line, no usage dump,
    prefixed like every other error of the command (`scoresde train: error: ...`);
    its help never splits a hyphenated name."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(message, prog=self.prog)


def number(convert: Callable, ok: Callable, allowed: str) -> Callable:
    """An argparse `type=` that converts with `convert` and accepts values with `ok`;
    its errors say what is `allowed` (argparse adds the flag)."""

    def parse(s: str):
        try:
            v = convert(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {s!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {s}")
        return v

    return parse


# Where --out and --png may create directories (`_common.writable_dir`).
MAKES_DIR = (
    "created if missing: under the current directory with its parents, elsewhere "
    "only if its parent exists"
)
MAKES_PARENT = (
    "its directory is created if missing under the current directory (with its "
    "parents); elsewhere it must exist"
)

positive_int = number(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = number(float, lambda v: 0 < v < math.inf, "a finite number > 0")
unit_float = number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
nonnegative_float = number(float, lambda v: 0 <= v < math.inf, "a finite number >= 0")


def _add_data_parallel_flag(parser, splits: str, flag: str) -> None:
    parser.add_argument(
        "--data-parallel",
        action="store_true",
        help=f"split {splits}; {flag} must be divisible by the number of devices",
    )


# --------------------------------------------------------------------------- training


# Training flags that define the run default to None here, so that a flag given on
# the command line can be told from one left out: with --resume, the settings come
# from the checkpoint and a given flag must agree with it. `train.run` fills in the
# defaults of a new run (`RUN_DEFAULTS`).
_WITH_RESUME = "; with --resume: the checkpoint's"


def data_name_or_path(s: str) -> str:
    """`--data`: a built-in data set's name, or a `.npy`/`.npz` file or a folder of
    images (returned as an absolute path, so that a resumed run can compare it)."""
    if s in DATASETS:
        return s
    p = pathlib.Path(s)
    if p.suffix in (".npy", ".npz") or p.is_dir():
        if not p.exists():
            raise argparse.ArgumentTypeError(f"{s}: no such file or folder")
        return str(p.resolve())
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(DATASETS)}, or a .npy/.npz file or a folder of "
        f"PNG/JPEG images, got {s!r}"
    )


def data_range(s: str) -> str:
    """`--data-range LOW,HIGH` with HIGH > LOW (kept as the text given)."""
    try:
        low, high = (float(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be LOW,HIGH (two numbers), got {s!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise argparse.ArgumentTypeError(f"must be LOW,HIGH with HIGH > LOW, got {s}")
    return f"{low:g},{high:g}"


def add_data_flag(parser) -> None:
    """`--data NAME|PATH`, one of `DATASETS` or your own file or folder, with
    `--data-range` and `--image-size` for your own."""
    parser.add_argument(
        "--data",
        type=data_name_or_path,
        metavar="NAME|PATH",
        help=f"data set: {', '.join(DATASETS)}, or your own: a .npy file of examples, "
        "a .npz file with examples 'x' (and integer labels 'y'), or a folder of "
        "PNG/JPEG images; vectors (n, d), grey (n, H, W) or channel-first images "
        f"(n, C, H, W) (required{_WITH_RESUME})",
    )
    parser.add_argument(
        "--data-range",
        type=data_range,
        metavar="LOW,HIGH",
        help="your own data: the range its values lie in, mapped to [-1, 1] for the "
        "model; write --data-range=-5,5 when LOW is negative (default: images in "
        f"[0, 1], or 0-255 as uint8; vectors as they are{_WITH_RESUME})",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        metavar="N",
        help=f"a folder of images: resize every image to N x N (default: they must "
        f"all be the same size{_WITH_RESUME})",
    )


def add_sde_flag(parser) -> None:
    """`--sde {vp,subvp,ve}`."""
    parser.add_argument(
        "--sde",
        choices=SDES,
        help="forward SDE: vp (VPSDE), subvp (SubVPSDE), ve (VESDE with "
        f"sigma_max = largest distance between training examples) (required"
        f"{_WITH_RESUME})",
    )


def add_model_flag(parser) -> None:
    """`--model {mlp,unet}`, a score network."""
    parser.add_argument(
        "--model",
        choices=MODELS,
        help="network: mlp (MLPScore, any data) or unet (UNet, images); both "
        f"predict the noise (EpsScore) (required{_WITH_RESUME})",
    )


def add_training_flags(parser) -> None:
    """The run of `sd.train`: steps, batch, seed, checkpoints, optimiser, EMA."""
    parser.add_argument(
        "--steps",
        type=positive_int,
        metavar="N",
        help="total optimiser steps, counting those done before a --resume "
        "(required; with --resume: default the checkpoint's, and it may grow)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="B",
        help=f"examples per step (default 128{_WITH_RESUME})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help=f"seed of the initial weights, batches and noise (default 0"
        f"{_WITH_RESUME})",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help=f"checkpoint directory ({MAKES_DIR}; must hold no checkpoint unless "
        "--resume)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run whose newest complete checkpoint is in --out, with "
        "its settings (a flag that contradicts them is refused; --steps may grow, "
        "and --checkpoint-every, --steps-per-call, --quiet, --data-parallel may "
        "change); without a checkpoint, start it",
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        help=f"peak learning rate (default 2e-4 for unet, 2e-3 for mlp{_WITH_RESUME})",
    )
    parser.add_argument(
        "--warmup",
        type=nonnegative_int,
        metavar="W",
        help=f"learning-rate warm-up steps, 0 for none (default min(5000, N/10)"
        f"{_WITH_RESUME})",
    )
    parser.add_argument(
        "--ema",
        type=unit_float,
        help=f"EMA decay of the weights (default 0.999{_WITH_RESUME})",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=1000,
        metavar="K",
        help="steps between checkpoints (default 1000; also at the end, and on Ctrl-C)",
    )
    parser.add_argument(
        "--steps-per-call",
        type=positive_int,
        default=None,
        metavar="K",
        help="steps per jit-compiled call (default: sd.train's, 50, or 2 for "
        "models with convolutions, whose steps are unrolled: compile time and "
        "memory grow with K)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress report on stderr"
    )


def add_distributed_flags(parser) -> None:
    """`--data-parallel` for training, and the multi-process flags read by
    `init_distributed`."""
    _add_data_parallel_flag(
        parser,
        "each batch over all devices (of all processes), parameters replicated "
        "(jax.sharding)",
        "--batch-size",
    )
    parser.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="several processes (hosts): address of process 0, passed to "
        "jax.distributed.initialize; needs --num-processes and --process-id, implies "
        "--data-parallel; start the same command on every process (to --resume, "
        "--out must be on a file system they all see)",
    )
    parser.add_argument(
        "--num-processes",
        type=positive_int,
        default=None,
        metavar="N",
        help="number of processes (with --coordinator)",
    )
    parser.add_argument(
        "--process-id",
        type=nonnegative_int,
        default=None,
        metavar="I",
        help="this process's index, 0..N-1 (with --coordinator); process 0 writes "
        "the checkpoints",
    )


# --------------------------------------------------------------------------- sampling


def add_solver_flags(
    parser, *, required: bool, default: str | None = None, why: str = ""
) -> None:
    """`--solver NAME` (its `default` described by `why`), `--method`, `--steps`
    (fixed-step solvers), `--max-steps`, `--rtol`, `--atol` (adaptive ones); checked
    by `_sampler_table.choose_solver` and `check_step_flags`."""
    parser.add_argument(
        "--solver",
        required=required,
        default=default,
        metavar="NAME",
        help="the solver (`scoresde solvers` prints the table): "
        + ", ".join(SOLVERS)
        + (f" (default {default}{': ' + why if why else ''})" if default else ""),
    )
    parser.add_argument(
        "--method",
        choices=("sde", "ode"),
        default=None,
        help="reverse-time SDE or probability-flow ODE, for a solver that serves "
        "both (heun; default ode)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        metavar="K",
        help=f"fixed steps of a fixed-step solver (default {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=None,
        metavar="M",
        help="most steps an adaptive solver may take before giving up (default "
        f"{DEFAULT_MAX_STEPS})",
    )
    parser.add_argument(
        "--rtol",
        type=positive_float,
        default=None,
        help="relative tolerance of an adaptive solver (default: the solver's)",
    )
    parser.add_argument(
        "--atol",
        type=positive_float,
        default=None,
        help="absolute tolerance of an adaptive solver (default: the solver's)",
    )


def add_sampling_flags(parser) -> None:
    """Drawing samples from a checkpoint: the checkpoint, how many, the solver and its
    steps, the seed, the output files, the end time, `--data-parallel`, the progress
    bar."""
    progress = parser.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        help="a progress bar of the solve on stderr, even when it is not a terminal "
        "(by default: a bar on a terminal, else a plain line per tenth of the solve)",
    )
    progress.add_argument(
        "--quiet", action="store_true", help="no progress report, even on a terminal"
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="checkpoint directory written by `scoresde train`",
    )
    parser.add_argument(
        "--num-samples",
        required=True,
        type=positive_int,
        metavar="N",
        help="number of samples",
    )
    add_solver_flags(
        parser,
        required=False,
        default="pc",
        why="the paper's predictor-corrector sampler, 2 score evaluations per step, "
        "as in inpaint, colorize and inverse",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE.npy",
        help="samples in data units (images in [0, 1]), shape (N, *data_shape); "
        + MAKES_PARENT,
    )
    parser.add_argument(
        "--png",
        default=None,
        metavar="FILE.png",
        help="also write a picture: an image grid (first 64) or a 2-D scatter over "
        "the training data; " + MAKES_PARENT,
    )
    parser.add_argument(
        "--eps",
        type=positive_float,
        default=None,
        help="end time of sampling (default: the SDE's, 1e-3 VP / 1e-5 VE)",
    )
    parser.add_argument(
        "--denoise", action="store_true", help="finish with Tweedie's denoising step"
    )
    _add_data_parallel_flag(
        parser,
        "the samples over all devices (jax.sharding; the same samples as on one "
        "device)",
        "--num-samples",
    )


def add_guidance_flags(parser) -> None:
    """Class-conditional sampling: `--classifier`, `--label`, `--guidance-scale`."""
    parser.add_argument(
        "--classifier",
        default=None,
        metavar="DIR",
        help="classifier checkpoint written by `scoresde train-classifier` on the same "
        "--data and --sde: sample class-conditionally by classifier guidance",
    )
    parser.add_argument(
        "--label",
        default=None,
        metavar="L|all",
        help="the class of every sample, or 'all': labels 0..K-1 cycling over the "
        "samples in order (with --classifier, or for a checkpoint trained with "
        "--conditional)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=nonnegative_float,
        default=None,
        metavar="S",
        help="guidance scale >= 0: with --classifier, gamma (default 1: Bayes' "
        "rule; > 1 sharpens); for a --conditional checkpoint, the classifier-free "
        "w in (1 + w) s(x, label) - w s(x) (default 0: conditional sampling)",
    )
