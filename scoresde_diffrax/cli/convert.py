"""`scoresde convert`: an official checkpoint of the paper (yang-song/score_sde_pytorch,
`checkpoint_*.pth`) as a checkpoint of this package, so that `sample`, `likelihood`,
`bench`, `inpaint`, `colorize` and `inverse` run on it unchanged."""

import pathlib

import jax.numpy as jnp
import jax.random as jr

from .. import nn
from .._checkpoint import describe_model, describe_sde, save_checkpoint
from .._train import TrainState
from ._args import MAKES_DIR
from ._common import UserError, writable_dir


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an official checkpoint of the paper (PyTorch .pth, read "
        "without torch) into a checkpoint directory of this package",
    )
    parser.add_argument(
        "--official",
        required=True,
        metavar="PATH",
        help="the official checkpoint (checkpoint_*.pth of score_sde_pytorch)",
    )
    parser.add_argument(
        "--config",
        required=True,
        metavar="NAME|FILE.json",
        help="its official config: one of "
        + ", ".join(nn.OFFICIAL_CONFIGS)
        + ", or the config as a JSON file (sections model, data, training)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help=f"checkpoint directory to write ({MAKES_DIR})",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    out = pathlib.Path(args.out)
    config = args.config
    if config not in nn.OFFICIAL_CONFIGS and not pathlib.Path(config).is_file():
        raise UserError(
            f"--config: {config!r} is neither an official config name ("
            f"{', '.join(nn.OFFICIAL_CONFIGS)}) nor a JSON file"
        )
    if not pathlib.Path(args.official).is_file():
        raise UserError(f"--official: no such file {args.official!r}")
    writable_dir(out, "--out")
    try:
        sde = nn.official_sde(config)
        net_config = nn.network_config(config)
        ema_net, raw_net, step = nn.load_official_checkpoint(args.official, config)
        ema, raw = nn.OfficialScore(ema_net, sde), nn.OfficialScore(raw_net, sde)
    except ValueError as e:
        flag = "--official" if isinstance(e, nn.CheckpointError) else "--config"
        raise UserError(f"{flag}: {e}") from None
    name = pathlib.Path(config).stem if config.endswith(".json") else config
    c, size = net_config.num_channels, net_config.image_size
    centered = net_config.centered
    data = {
        "name": f"official:{name}",
        "data_shape": [c, size, size],
        # data units [0, 1]; model units [-1, 1] when centered
        "scale": 2.0 if centered else 1.0,
        "shift": -1.0 if centered else 0.0,
        "levels": 256,
        "num_examples": 0,
        "summary": None,
    }
    meta = {
        "model": describe_model(ema),
        "sde": describe_sde(sde),
        "data": data,
        "official": {"checkpoint": pathlib.Path(args.official).name, "config": config},
    }
    state = TrainState(
        model=raw, ema=ema, opt_state=None, step=jnp.asarray(step), key=jr.key(0)
    )
    path = save_checkpoint(out, state, meta)
    print(f"wrote {path} ({sde}, {size}x{size}, step {step})")
    return 0
