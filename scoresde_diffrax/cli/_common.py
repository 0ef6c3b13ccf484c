"""What the commands share below their flags: the user error, and the objects that
flag values name (data sets, SDEs, models, the device mesh, a checkpoint to sample
from, the files samples are written to).

The checkpoint helpers of the library are imported here and nowhere else in the CLI.
"""

import contextlib
import math
import os
import pathlib
import shlex
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator

import jax
import jax.random as jr
import numpy as np
from jax.sharding import Mesh

from .. import (
    data,
    EpsScore,
    load_checkpoint,
    nn,
    read_metadata,
    sde_from_description,
    SubVPSDE,
    VESDE,
    VPSDE,
)
from .._checkpoint import (
    check_writable,
    list_checkpoints,
    model_from_description,
    SCORE_MODEL as SCORE_MODEL,
)
from .._checks import MAX_BATCH
from .._pictures import image_grid, save_image, save_scatter


class UserError(Exception):
    """A mistake in the command line, or a failure the user can fix: reported in one
    line (`scoresde COMMAND: error: ...`), exit code 2. `prog` overrides the command
    named in the prefix (the parser's own errors)."""

    def __init__(self, message: str, *, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


# ------------------------------------------------------------------ interrupts, writing


def _print_interrupt(prog: str) -> bool:
    print(f"{prog}: interrupted", file=sys.stderr, flush=True)
    return True


# What happens on Ctrl-C: the entry point (`scoresde_cli`) replaces these with its own,
# which print the line once per process and remove registered files if it must end
# the process while JAX still runs (see `set_interrupt_hooks`).
INTERRUPT_HOOKS: dict[str, Callable] = {
    "report": _print_interrupt,
    "writing": lambda path, start: None,
}


@contextlib.contextmanager
def atomic_output(path: str | pathlib.Path) -> Iterator[str]:
    """Yields a temporary file name beside `path` (same suffix, so writers that go by
    it still do); once the block ends, the file is renamed over `path`. `path` is
    never half written: an error or an interrupt removes the temporary file."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}"
    )
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; the result is a normal file
    os.close(fd)
    INTERRUPT_HOOKS["writing"](tmp, True)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        INTERRUPT_HOOKS["writing"](tmp, False)


def save_npy(path: str | pathlib.Path, array) -> None:
    """`np.save` to `path`, atomically (see `atomic_output`)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def missing_ancestor(path: pathlib.Path) -> pathlib.Path | None:
    """The outermost directory of `path` (itself included) that does not exist yet:
    what creating `path` creates; None if `path` exists."""
    created = None
    p = path.absolute()
    while not p.exists():
        created, p = p, p.parent
    return created


def remove_if_empty(path: pathlib.Path, created: pathlib.Path | None) -> None:
    """Remove the directories this command created on the way to `path`, if empty."""
    if created is None:
        return
    p = path.absolute()
    while True:
        try:
            p.rmdir()  # only if empty
        except OSError:
            return
        if p == created:
            return
        p = p.parent


def writable_dir(path: pathlib.Path, flag: str, *, named: bool = True) -> None:
    """Create the directory `path` if needed; a `UserError` naming `flag` if it cannot
    be created or written to.

    Missing directories are created only under the current directory. Elsewhere a
    missing directory is an error naming it (so a mistyped path grows no tree of
    directories in odd places), except `path` itself where the flag names it
    (`named`: `train --out DIR`), not where it is the directory of a file the flag
    names (`sample --out FILE.npy`)."""
    name = flag if named else f"{flag}'s directory"
    first = missing_ancestor(path)
    cwd = pathlib.Path.cwd().resolve()
    if first is not None and not first.resolve().is_relative_to(cwd):
        if not named or first != path.absolute():
            needed = path.parent if named else path
            what = f"{name} {str(path)!r}" + (
                f": its parent {str(needed)!r}" if named else ""
            )
            also = "" if first == needed.absolute() else f" ({str(first)!r} either)"
            raise UserError(
                f"{what} does not exist{also}, and outside the current directory "
                "missing directories are not created: create it first (mkdir -p "
                f"{shlex.quote(str(needed))}), or check the path"
            )
    try:
        check_writable(path, name)
    except ValueError as e:
        raise UserError(str(e)) from e


# --------------------------------------------------------------------------- data sets


# The toys whose points come in classes (moons: 2, rings: 3, gaussian-mixture: 8), so
# that `train --conditional` and `sample --label` work on them.
_LABELLED_TOYS = ("moons", "rings", "gaussian_mixture")


def _toy(fn_name: str, n: int = 8192) -> Callable[[], data.Dataset]:
    def make():
        fn = getattr(data, fn_name)
        if fn_name in _LABELLED_TOYS:
            x, labels = fn(jr.key(0), n, return_labels=True)
        else:
            x, labels = fn(jr.key(0), n), None
        return data.Dataset(x, labels, name=fn_name.replace("_", "-"))

    return make


def toy_test_split(name: str, n: int = 2048) -> data.Dataset:
    """A held-out set of the generated 2-D toy `name` (a `DATASETS` name): `n` fresh
    points drawn with another key than the 8192 training points."""
    fn_name = name.replace("-", "_")
    fn = getattr(data, fn_name)
    if fn_name in _LABELLED_TOYS:
        x, labels = fn(jr.key(1), n, return_labels=True)
    else:
        x, labels = fn(jr.key(1), n), None
    return data.Dataset(x, labels, name=name)


def _digits(colored: bool, pad: bool) -> Callable[[], data.Dataset]:
    def make():
        fn = data.colored_digits if colored else data.digits
        return fn("train", pad_to_16=pad)

    return make


DATASETS: dict[str, Callable[[], data.Dataset]] = {
    "moons": _toy("moons"),
    "swiss-roll": _toy("swiss_roll"),
    "checkerboard": _toy("checkerboard"),
    "rings": _toy("rings"),
    "gaussian-mixture": _toy("gaussian_mixture"),
    "digits": _digits(False, False),
    "digits16": _digits(False, True),
    "colored-digits": _digits(True, False),
    "colored-digits16": _digits(True, True),
}


def load_dataset(
    name: str, data_range: str | None = None, image_size: int | None = None
) -> data.Dataset:
    """`--data`'s data set: a built-in one by name, or your own file or folder (with
    `--data-range` / `--image-size`), described in one printed line."""
    if name in DATASETS:
        for flag, value in (("--data-range", data_range), ("--image-size", image_size)):
            if value is not None:
                raise UserError(
                    f"{flag} applies to your own data (--data PATH), not to the "
                    f"built-in --data {name}"
                )
        return DATASETS[name]()
    bounds = None
    if data_range is not None:
        bounds = tuple(float(v) for v in data_range.split(","))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", data.DataConversionWarning)
        try:
            ds = data.load_data(name, data_range=bounds, image_size=image_size)
        except data.DataFileError as e:
            raise UserError(f"--data {e}") from e
    x = np.asarray(ds.x)
    kind = "images" if x.ndim == 4 else "vectors"
    labels = "" if ds.labels is None else f", {int(ds.labels.max()) + 1} classes"
    print(
        f"data: {name}: {len(x)} {kind} of shape {tuple(x.shape[1:])}{labels}, values "
        f"in [{x.min():.4g}, {x.max():.4g}] -> model units "
        + (
            "as they are"
            if (ds.scale, ds.shift) == (1, 0)
            else affine_text(ds.scale, ds.shift)
        )
    )
    for w in caught:
        if issubclass(w.category, data.DataConversionWarning):
            print(f"data: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds


def affine_text(scale: float, shift: float) -> str:
    """`x * scale + shift` as a reader writes it: `x * 2 - 1`, `x` for the identity."""
    text = "x" if scale == 1 else f"x * {scale:g}"
    if shift:
        text += f" {'-' if shift < 0 else '+'} {abs(shift):g}"
    return text


# --------------------------------------------------------------------------- SDEs, models

SDES = ("vp", "subvp", "ve")
MODELS = ("mlp", "unet")


def _max_pairwise_distance(x) -> float:
    x = np.asarray(x, np.float64).reshape(len(x), -1)[:1000]
    sq = (x**2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * x @ x.T
    return float(np.sqrt(max(d2.max(), 1e-12)))


def make_sde(name: str, dataset: data.Dataset):
    """The SDE of `--sde name`; VE's `sigma_max` comes from `dataset`."""
    if name == "vp":
        return VPSDE()
    if name == "subvp":
        return SubVPSDE()
    # VE: sigma_max ~ the largest distance between training examples (Song & Ermon
    # 2020, technique 1).
    sigma_max = float(f"{_max_pairwise_distance(dataset.model_data()):.3g}")
    return VESDE(sigma_min=0.01, sigma_max=max(sigma_max, 1.0))


def make_model(
    name: str, data_shape: tuple[int, ...], sde, key, *, num_classes: int = 0
) -> EpsScore:
    """The score model of `--model name` for examples of `data_shape`: a network that
    predicts the noise (conditional on a label with `num_classes` > 0).
    `ValueError`/`TypeError` if it does not fit the data."""
    if name == "mlp":
        big = len(data_shape) > 1
        net = nn.MLPScore(
            data_shape,
            width=256 if big else 128,
            depth=3,
            num_classes=num_classes,
            key=key,
        )
    else:
        net = nn.UNet(data_shape, num_classes=num_classes, key=key)
    return EpsScore(net, sde)


# --------------------------------------------------------------------------- devices


def init_distributed(args) -> bool:
    """Check the multi-process flags of `add_distributed_flags` and call
    `jax.distributed.initialize` (before any JAX computation). Returns whether this
    is a multi-process run."""
    flags = {
        "--coordinator": args.coordinator,
        "--num-processes": args.num_processes,
        "--process-id": args.process_id,
    }
    if all(v is None for v in flags.values()):
        return False
    missing = [f for f, v in flags.items() if v is None]
    if missing:
        raise UserError(
            f"{', '.join(missing)} missing: --coordinator, "
            "--num-processes and --process-id go together"
        )
    host, sep, port = args.coordinator.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(
            "--coordinator must be HOST:PORT with a port in "
            f"1..65535 (e.g. 10.0.0.1:12345), got {args.coordinator!r}"
        )
    if args.process_id >= args.num_processes:
        raise UserError(
            f"--process-id must be in 0..{args.num_processes - 1} "
            f"for --num-processes {args.num_processes}, got {args.process_id}"
        )
    try:
        jax.distributed.initialize(
            args.coordinator, args.num_processes, args.process_id
        )
    except Exception as e:  # noqa: BLE001
        raise UserError(
            "jax.distributed.initialize with --coordinator "
            f"{args.coordinator} failed: {e}"
        ) from e
    return True


def batch_mesh(flag: str, size: int, when: str) -> Mesh:
    """A one-axis mesh `("batch",)` over all devices (of all processes), to split a
    batch of `size` (set by `flag`) over; a `UserError` if it does not divide."""
    n = jax.device_count()
    if size % n != 0:
        raise UserError(
            f"{flag} {size} must be divisible by the number of devices ({n}) {when}"
        )
    return jax.make_mesh((n,), ("batch",))


# What a command reports after running on a mesh: read from its results, not from the
# mesh it asked for.


def devices_holding(tree) -> int:
    """How many devices (of all processes) hold the arrays of `tree`."""
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if isinstance(x, jax.Array)]
    return len(set().union(*(x.sharding.device_set for x in leaves)))


def devices_splitting(x: jax.Array) -> int:
    """Over how many devices the leading (batch) axis of `x` is split."""
    return x.shape[0] // x.sharding.shard_shape(x.shape)[0]


# --------------------------------------------------------------------------- checkpoints


def checkpoint_steps(directory: pathlib.Path) -> list[int]:
    """Steps of the complete checkpoints in `directory`, ascending."""
    return list_checkpoints(directory)


def newest_checkpoint(out: pathlib.Path) -> dict | None:
    """The metadata of the newest complete checkpoint in `out` (`--out`), or None."""
    if not list_checkpoints(out):
        return None
    try:
        return read_metadata(out)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--out: {e}") from e


def checkpoint_model(meta: dict):
    """The SDE and the network (freshly initialised) a checkpoint's metadata
    describes: what a resumed run trains."""
    sde = sde_from_description(meta["sde"])
    return sde, model_from_description(meta["model"], sde)


# --------------------------------------------------------------------------- sampling


def load_for_sampling(checkpoint: str):
    """The EMA model of the newest checkpoint in `checkpoint` (with convolutions that
    stay fast inside the solver loop), its SDE, and its data's metadata."""
    try:
        model, meta = load_checkpoint(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--checkpoint: {e}") from e
    if meta["model"]["class"] == "NoiseConditionalClassifier":
        raise UserError(
            f"--checkpoint: {checkpoint} holds a classifier (written by `scoresde "
            "train-classifier`), not a score model; give a checkpoint written by "
            "`scoresde train` (a classifier goes to `sample --classifier`)"
        )
    return nn.loop_friendly(model), sde_from_description(meta["sde"]), meta["data"]


def check_sample_suffixes(out: str, png: str | None) -> pathlib.Path:
    """`--out` names a `.npy` file and `--png` a `.png` file; returns `--out`."""
    path = pathlib.Path(out)
    if path.suffix != ".npy":
        raise UserError(f"--out must name a .npy file, got {str(path)!r}")
    if png is not None and pathlib.Path(png).suffix != ".png":
        raise UserError(f"--png must name a .png file, got {png!r}")
    return path


def check_sample_files(out: str, png: str | None) -> pathlib.Path:
    """`check_sample_suffixes`, then `make_sample_dirs`: for the commands that write
    their files once at the end (inpaint, colorize); returns `--out`."""
    path = check_sample_suffixes(out, png)
    make_sample_dirs(path, png)
    return path


def make_sample_dirs(
    out: pathlib.Path, png: str | None
) -> list[tuple[pathlib.Path, pathlib.Path]]:
    """Create the directories of `--out` and `--png` (with their parents) if needed,
    checking they are writable; returns those created as `(directory, outermost
    created)` pairs, for `remove_if_empty`."""
    created = []
    for file, flag in ((out, "--out"), (png, "--png")):
        if file is None:
            continue
        directory = pathlib.Path(file).parent
        first = missing_ancestor(directory)
        try:
            writable_dir(directory, flag, named=False)
        except UserError:
            for done, outermost in created:  # --out's, when --png's fails
                remove_if_empty(done, outermost)
            raise
        if first is not None:
            created.append((directory, first))
    return created


def check_room(shape: tuple[int, ...], out: pathlib.Path) -> None:
    """`--num-samples` within what one call can index, and its samples (float32)
    within the free space of `--out`'s file system."""
    if shape[0] > MAX_BATCH:
        raise UserError(
            f"--num-samples must be at most {MAX_BATCH} per run (each sample's noise "
            f"is indexed by a 32-bit number), got {shape[0]}; run again with other "
            "--seed values for more"
        )
    size = 4 * math.prod(shape) + 128  # float32 and the .npy header
    free = shutil.disk_usage(out.parent if str(out.parent) else ".").free
    if size > free:
        per = 4 * math.prod(shape[1:])
        raise UserError(
            f"--num-samples {shape[0]}: the samples take {size / 2**30:.3g} GiB, but "
            f"--out's file system has {free / 2**30:.3g} GiB free; at most about "
            f"{free // per} fit there"
        )


def _reference_points(name: str) -> np.ndarray | None:
    """The training data of a 2-D model, to draw under its samples: a built-in set,
    or your own file if it is still there."""
    if name in DATASETS:
        return np.asarray(DATASETS[name]().x)
    if name.endswith((".npy", ".npz")) and pathlib.Path(name).exists():
        try:
            return np.asarray(data.load_data(name).x)
        except data.DataFileError:
            return None
    return None


def save_samples(
    samples,
    data_meta: dict,
    out: pathlib.Path,
    png: str | None,
    title: str | None = None,
    labels=None,
    ncols: int | None = None,
):
    """Write `samples` (model units) to `out` in data units (images clipped to
    `[0, 1]`), and a picture to `png` if given (the first 64 images in a grid of
    `ncols` columns, or 2-D points over the training data when it is one of the
    built-in sets, coloured by their `labels` if given), titled `title`; returns what
    was written to `out`."""
    x = (np.asarray(samples) - data_meta["shift"]) / data_meta["scale"]
    images = len(data_meta["data_shape"]) == 3
    if images:
        x = np.clip(x, 0.0, 1.0)
    if png is not None and not images and x.shape[1:] != (2,):
        raise UserError("--png needs image data or 2-D points")
    save_npy(out, x)
    if png is not None:
        with atomic_output(png) as tmp:
            if images:
                save_image(tmp, image_grid(x[:64], ncols=ncols), title=title)
            else:
                reference = _reference_points(data_meta.get("name", ""))
                if labels is not None:
                    labels = np.asarray(labels)
                save_scatter(tmp, x, reference=reference, labels=labels, title=title)
    return x
