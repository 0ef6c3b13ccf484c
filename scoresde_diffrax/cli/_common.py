"""What the commands share below their flags: the user error, and the objects that
flag values name (data sets, SDEs, models, the device mesh, a checkpoint to sample
from, the files samples are written to).

The checkpoint helpers of the library are imported here and nowhere else in the CLI.
"""

import pathlib
from collections.abc import Callable

import jax
import jax.random as jr
import numpy as np
from jax.sharding import Mesh

from .. import (
    data,
    EpsScore,
    load_checkpoint,
    nn,
    sde_from_description,
    SubVPSDE,
    VESDE,
    VPSDE,
)
from .._checkpoint import check_writable
from .._png import image_grid, scatter_image, write_png


class UserError(Exception):
    """A mistake in the command line: reported in one line, exit code 2."""


def writable_dir(path: pathlib.Path, flag: str) -> None:
    """Create the directory `path` if needed; a `UserError` naming `flag` if it cannot
    be created or written to."""
    try:
        check_writable(path, flag)
    except ValueError as e:
        raise UserError(str(e)) from e


# --------------------------------------------------------------------------- data sets


def _toy(fn_name: str, n: int = 8192) -> Callable[[], data.Dataset]:
    def make():
        x = getattr(data, fn_name)(jr.key(0), n)
        return data.Dataset(x, None, name=fn_name.replace("_", "-"))

    return make


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


def make_model(name: str, data_shape: tuple[int, ...], sde, key) -> EpsScore:
    """The score model of `--model name` for examples of `data_shape`: a network that
    predicts the noise. `ValueError`/`TypeError` if it does not fit the data."""
    if name == "mlp":
        big = len(data_shape) > 1
        net = nn.MLPScore(data_shape, width=256 if big else 128, depth=3, key=key)
    else:
        net = nn.UNet(data_shape, key=key)
    return EpsScore(net, sde)


# --------------------------------------------------------------------------- devices


def init_distributed(args, command: str) -> bool:
    """Check the multi-process flags of `add_distributed_flags` and call
    `jax.distributed.initialize` (before any JAX computation). Returns whether this
    is a multi-process run."""
    prog = f"scoresde {command}"
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
            f"{prog}: {', '.join(missing)} missing: --coordinator, "
            "--num-processes and --process-id go together"
        )
    host, sep, port = args.coordinator.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(
            f"{prog}: --coordinator must be HOST:PORT with a port in "
            f"1..65535 (e.g. 10.0.0.1:12345), got {args.coordinator!r}"
        )
    if args.process_id >= args.num_processes:
        raise UserError(
            f"{prog}: --process-id must be in 0..{args.num_processes - 1} "
            f"for --num-processes {args.num_processes}, got {args.process_id}"
        )
    try:
        jax.distributed.initialize(
            args.coordinator, args.num_processes, args.process_id
        )
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"{prog}: jax.distributed.initialize with --coordinator "
            f"{args.coordinator} failed: {e}"
        ) from e
    return True


def batch_mesh(command: str, flag: str, size: int, when: str) -> Mesh:
    """A one-axis mesh `("batch",)` over all devices (of all processes), to split a
    batch of `size` (set by `flag`) over; a `UserError` if it does not divide."""
    n = jax.device_count()
    if size % n != 0:
        raise UserError(
            f"scoresde {command}: {flag} {size} must be divisible by the number of "
            f"devices ({n}) {when}"
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


def check_sample_files(out: str, png: str | None) -> pathlib.Path:
    """Check `--out FILE.npy` and `--png FILE.png` (their directories are created);
    returns `--out` as a path."""
    path = pathlib.Path(out)
    if path.suffix != ".npy":
        raise UserError(f"--out must name a .npy file, got {str(path)!r}")
    writable_dir(
        path.parent if str(path.parent) else pathlib.Path("."), "--out's directory"
    )
    if png is not None:
        if pathlib.Path(png).suffix != ".png":
            raise UserError(f"--png must name a .png file, got {png!r}")
        writable_dir(pathlib.Path(png).parent, "--png's directory")
    return path


def save_samples(samples, data_meta: dict, out: pathlib.Path, png: str | None):
    """Write `samples` (model units) to `out` in data units (images clipped to
    `[0, 1]`), and a picture to `png` if given; returns what was written to `out`."""
    x = (np.asarray(samples) - data_meta["shift"]) / data_meta["scale"]
    images = len(data_meta["data_shape"]) == 3
    if images:
        x = np.clip(x, 0.0, 1.0)
    np.save(out, x)
    if png is not None:
        if images:
            pic = image_grid(x[:64])
        elif x.shape[1:] == (2,):
            pic = scatter_image(x)
        else:
            raise UserError("--png needs image data or 2-D points")
        write_png(png, pic)
    return x
