"""What the conditional commands (`sample --classifier`, `inpaint`, `colorize`,
`train-classifier`) share: telling score and classifier checkpoints apart and pairing
them, the test split of a data set, inpainting masks by name, the inverse-problem
flags, and side-by-side pictures."""

import argparse

import numpy as np

from .. import data, Impute, load_checkpoint, nn, operators, sde_from_description
from .._pictures import save_rows
from ..operators import MASKS as MASKS
from ._args import MAKES_PARENT, positive_int
from ._common import atomic_output, UserError
from ._sampler_table import choose_solver, SOLVERS


CLASSIFIER = "NoiseConditionalClassifier"


# --------------------------------------------------------------------------- checkpoints


def load_classifier(path: str, sde, data_meta: dict):
    """The EMA classifier of the checkpoint `path` (with loop-friendly convolutions),
    after checking that it is a classifier trained on the same data set (`data_meta`)
    and SDE (`sde`) as the score model of `--checkpoint`."""
    try:
        model, meta = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--classifier: {e}") from e
    if meta["model"]["class"] != CLASSIFIER:
        raise UserError(
            f"--classifier: {path} holds a score model ({meta['model']['class']}), not "
            "a classifier; give a checkpoint written by `scoresde train-classifier`"
        )
    keys = ("name", "data_shape", "scale", "shift")
    mine = {k: meta["data"].get(k) for k in keys}
    theirs = {k: data_meta.get(k) for k in keys}
    if mine != theirs:
        raise UserError(
            f"--classifier: trained on data {mine}, but --checkpoint on {theirs}; "
            "train the classifier on the same --data"
        )
    if sde_from_description(meta["sde"]) != sde:
        raise UserError(
            f"--classifier: trained with the SDE {meta['sde']['class']} "
            f"{meta['sde']['params']}, but --checkpoint with {sde}; train the "
            "classifier with the same --sde and --data"
        )
    return nn.loop_friendly(model), meta


# --------------------------------------------------------------------------- data


def _test_split(fn, pad: bool):
    return lambda: fn("test", pad_to_16=pad)


TEST_SPLITS = {
    "digits": _test_split(data.digits, False),
    "digits16": _test_split(data.digits, True),
    "colored-digits": _test_split(data.colored_digits, False),
    "colored-digits16": _test_split(data.colored_digits, True),
}


def test_examples(name: str, n: int, data_meta: dict):
    """The first `n` examples of the test split of `--data name`, in data units, and
    their labels; `UserError`s name `--data` or `--num-samples`."""
    if name not in TEST_SPLITS:
        raise UserError(
            f"--data {name} has no test split; use one of {', '.join(TEST_SPLITS)} "
            "(or your own with --observations and --mask-file)"
        )
    ds = TEST_SPLITS[name]()
    if list(ds.data_shape) != list(data_meta["data_shape"]):
        raise UserError(
            f"--data {name} has examples of shape {ds.data_shape}, but --checkpoint "
            f"was trained on {data_meta['name']} of shape {tuple(data_meta['data_shape'])}"
        )
    if n > len(ds):
        raise UserError(
            f"--num-samples must be at most {len(ds)} (the test split of {name}), got {n}"
        )
    return np.asarray(ds.x[:n]), np.asarray(ds.labels[:n])


def to_model(x, data_meta: dict):
    return np.asarray(x, np.float32) * data_meta["scale"] + data_meta["shift"]


def to_data(x, data_meta: dict):
    return (np.asarray(x) - data_meta["shift"]) / data_meta["scale"]


# --------------------------------------------------------------------------- masks


def flag_error(flag: str, error: ValueError) -> UserError:
    """A library `ValueError` about the argument `spec` (`sd.operators`) as the
    `UserError` of the flag that gave it."""
    return UserError(flag + str(error).removeprefix("spec"))


def inpainting_mask(spec: str, data_shape, n: int, seed: int) -> np.ndarray:
    """`sd.operators.inpainting_mask` of `--mask spec` (errors name `--mask`)."""
    try:
        return operators.inpainting_mask(spec, data_shape, n, seed)
    except ValueError as e:
        raise flag_error("--mask", e) from e


def load_mask_file(path: str, data_shape, n: int) -> np.ndarray:
    """`--mask-file`: a binary array, 1 (True) where known, of shape `data_shape` or
    `(n, *data_shape)`."""
    try:
        m = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"--mask-file: cannot read {path!r}: {e}") from e
    shapes = (tuple(data_shape), (n, *data_shape))
    if m.shape not in shapes:
        raise UserError(
            f"--mask-file: the mask must have shape {shapes[0]} or {shapes[1]} (the "
            f"data's), got {m.shape}"
        )
    if m.dtype != bool and not np.all((m == 0) | (m == 1)):
        raise UserError(
            "--mask-file: the mask must be binary (0/1 or booleans; 1 = known)"
        )
    return m.astype(bool)


def load_observations(path: str, data_meta: dict) -> np.ndarray:
    """`--observations`: examples in data units, shape `(N, *data_shape)`."""
    try:
        x = np.load(path)
    except (OSError, ValueError) as e:
        raise UserError(f"--observations: cannot read {path!r}: {e}") from e
    shape = tuple(data_meta["data_shape"])
    if x.ndim != len(shape) + 1 or x.shape[1:] != shape or len(x) < 1:
        raise UserError(
            f"--observations must have shape (N, *data_shape) = (N, {', '.join(map(str, shape))}) "
            f"for --checkpoint's data, got {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise UserError("--observations must be finite")
    return x.astype(np.float32)


# --------------------------------------------------------------------------- flags


def add_inverse_flags(
    parser: argparse.ArgumentParser,
    default_steps: int = 500,
    method_flag: str = "--method",
) -> None:
    """The flags `inpaint`, `colorize` and `inverse` share; the solver's SDE/ODE
    choice is `method_flag` (`inverse` names it `--solver-method`: its `--method` is
    the inverse-problem method), read into `args.solver_method`."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="score checkpoint directory written by `scoresde train`",
    )
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        default=None,
        metavar="N",
        help="number of examples (the first N of the test split)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="seed (default 0)"
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE.npy",
        help="results in data units (images in [0, 1]), in the order of the "
        "observations; " + MAKES_PARENT,
    )
    parser.add_argument(
        "--png",
        default=None,
        metavar="FILE.png",
        help="also write a picture of the first 16 examples: a row of observations, "
        "one of results and one of truths, each named on its left; " + MAKES_PARENT,
    )
    fixed = [k for k, v in SOLVERS.items() if not v.adaptive]
    parser.add_argument(
        "--solver",
        default="pc",
        metavar="NAME",
        help="a fixed-step solver (default pc, the paper's): " + ", ".join(fixed),
    )
    parser.add_argument(
        method_flag,
        dest="solver_method",
        choices=("sde", "ode"),
        default=None,
        help="reverse-time SDE or probability-flow ODE, for a solver that serves "
        "both (heun)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=default_steps,
        metavar="K",
        help=f"solver steps (default {default_steps})",
    )


def solve_kwargs(args, sde) -> dict:
    """`sd.sample` arguments of `--solver` / `--method` / `--steps` (the solver not
    yet wrapped). Sets `args.solver` to the name in the one scheme."""
    choice = choose_solver(
        args.solver,
        args.solver_method,
        prog=f"scoresde {args.command}",
        fixed_only=True,
    )
    args.solver = choice.label
    return choice.sampler.step_kwargs(sde, args.steps)


def impute_solver(kwargs: dict, observation, mask) -> dict:
    return dict(kwargs, solver=Impute(kwargs["solver"], observation, mask))


# --------------------------------------------------------------------------- pictures


def side_by_side(
    groups,
    names,
    png: str,
    limit: int = 16,
    per_row: int = 8,
    title: str | None = None,
) -> None:
    """Write the first `limit` examples of each of `groups` (observation, result,
    truth: arrays `(n, C, H, W)` in [0, 1]; grey ones shown in the others' channels)
    as rows named on their left by `names`, `per_row` examples to a block of rows,
    under `title`."""
    with atomic_output(png) as tmp:
        save_rows(tmp, [g[:limit] for g in groups], names, per_row=per_row, title=title)
