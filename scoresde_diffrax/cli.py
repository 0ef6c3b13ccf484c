"""The `scoresde` command: `scoresde train ...` and `scoresde sample ...`.

This is the one place where names (strings) map to objects: data sets, SDEs, models
and solvers. Other commands and solvers plug in by adding entries to the tables
(`DATASETS`, `SDES`, `SOLVERS`, via `register_solver`) and subcommands to
`build_parser`.
"""

import argparse
import dataclasses
import math
import os
import pathlib
import sys
from collections.abc import Callable, Sequence


# --------------------------------------------------------------------------- tables


def _toy(fn_name: str, n: int = 8192):
    def make():
        import jax.random as jr

        from . import data

        x = getattr(data, fn_name)(jr.key(0), n)
        return data.Dataset(x, None, name=fn_name.replace("_", "-"))

    return make


def _digits(colored: bool, pad: bool):
    def make():
        from . import data

        fn = data.colored_digits if colored else data.digits
        return fn("train", pad_to_16=pad)

    return make


DATASETS: dict[str, Callable] = {
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


def _max_pairwise_distance(x) -> float:
    import numpy as np

    x = np.asarray(x, np.float64).reshape(len(x), -1)[:1000]
    sq = (x**2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2 * x @ x.T
    return float(np.sqrt(max(d2.max(), 1e-12)))


def _make_sde(name: str, dataset):
    from . import SubVPSDE, VESDE, VPSDE

    if name == "vp":
        return VPSDE()
    if name == "subvp":
        return SubVPSDE()
    # VE: sigma_max ~ the largest distance between training examples (Song & Ermon
    # 2020, technique 1).
    sigma_max = float(f"{_max_pairwise_distance(dataset.model_data()):.3g}")
    return VESDE(sigma_min=0.01, sigma_max=max(sigma_max, 1.0))


SDES = ("vp", "subvp", "ve")
MODELS = ("mlp", "unet")


def _make_model(name: str, data_shape, sde, key):
    from . import EpsScore, nn

    if name == "mlp":
        big = len(data_shape) > 1
        net = nn.MLPScore(data_shape, width=256 if big else 128, depth=3, key=key)
    else:
        net = nn.UNet(data_shape, key=key)
    return EpsScore(net, sde)


@dataclasses.dataclass(frozen=True)
class SolverEntry:
    """How a solver name of the CLI maps to `sd.sample` arguments.

    - `make`: builds the diffrax (or scoresde_diffrax) solver object.
    - `method`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    - `adaptive`: PID step-size control with `rtol`/`atol` (then `--steps` is the
        maximum number of steps), else `--steps` fixed steps.
    - `help`: one line for `--help`.
    - `grid`: for fixed steps, the `sd.time_grid` kind (`"uniform"`, `"logsnr"`,
        `"edm"`) of the `--steps` steps.
    """

    make: Callable
    method: str
    adaptive: bool = False
    rtol: float = 1e-5
    atol: float = 1e-5
    help: str = ""
    grid: str = "uniform"


SOLVERS: dict[str, SolverEntry] = {}


def register_solver(name: str, entry: SolverEntry) -> None:
    """Add (or replace) a solver name of `scoresde sample --solver`."""
    SOLVERS[name] = entry


def _dfx(name: str) -> Callable:
    def make():
        import diffrax

        return getattr(diffrax, name)()

    return make


for _name, _entry in {
    "euler-maruyama": SolverEntry(
        _dfx("Euler"),
        "sde",
        help="Euler-Maruyama on the reverse SDE, K steps (paper baseline)",
    ),
    "euler-heun-sde": SolverEntry(
        _dfx("EulerHeun"), "sde", help="Euler-Heun on the reverse SDE, K steps"
    ),
    "heun-sde": SolverEntry(
        _dfx("Heun"), "sde", help="Heun on the reverse SDE, K steps"
    ),
    "shark-adaptive": SolverEntry(
        _dfx("ShARK"),
        "sde",
        True,
        1e-2,
        1e-2,
        "ShARK on the reverse SDE, adaptive (rtol=atol=1e-2)",
    ),
    "sra1-adaptive": SolverEntry(
        _dfx("SRA1"),
        "sde",
        True,
        1e-2,
        1e-2,
        "SRA1 on the reverse SDE, adaptive (rtol=atol=1e-2)",
    ),
    "ode-euler": SolverEntry(
        _dfx("Euler"), "ode", help="Euler on the probability-flow ODE, K steps"
    ),
    "heun-ode": SolverEntry(
        _dfx("Heun"), "ode", help="Heun on the probability-flow ODE, K steps"
    ),
    "midpoint-ode": SolverEntry(
        _dfx("Midpoint"), "ode", help="midpoint on the probability-flow ODE, K steps"
    ),
    "ode-tsit5": SolverEntry(
        _dfx("Tsit5"),
        "ode",
        True,
        help="Tsit5 on the probability-flow ODE, adaptive (rtol=atol=1e-5)",
    ),
    "dopri5-ode": SolverEntry(
        _dfx("Dopri5"),
        "ode",
        True,
        help="Dopri5 (RK45) on the probability-flow ODE, adaptive (rtol=atol=1e-5)",
    ),
}.items():
    register_solver(_name, _entry)


def _ours(name: str, *args: Callable) -> Callable:
    def make():
        from . import _solver

        return getattr(_solver, name)(*(a() for a in args))

    return make


def _batch_norm_langevin():
    from ._solver import Langevin

    return Langevin(snr=0.16, batch_norm=True)


for _name, _entry in {
    "pc": SolverEntry(
        _ours("PredictorCorrector", _ours("ReverseDiffusion"), _batch_norm_langevin),
        "sde",
        help="the paper's predictor-corrector: reverse diffusion + Langevin "
        "(snr=0.16, batch-averaged norms as in the paper's code), K steps "
        "(2 evaluations each)",
    ),
    "reverse-diffusion": SolverEntry(
        _ours("ReverseDiffusion"), "sde", help="reverse-diffusion predictor, K steps"
    ),
    "ancestral": SolverEntry(
        _ours("AncestralSampling"), "sde", help="ancestral sampling, K steps"
    ),
    "ddim": SolverEntry(
        _ours("DDIM"), "ode", help="DDIM (eta=0), K steps uniform in t"
    ),
    "dpm-solver++2m": SolverEntry(
        _ours("DPMSolverPP2M"),
        "ode",
        help="DPM-Solver++(2M), K steps uniform in log-SNR (try K=25)",
        grid="logsnr",
    ),
    "edm-heun": SolverEntry(
        _ours("EDMHeun"),
        "ode",
        help="Karras et al.'s Heun, K steps on the EDM rho=7 grid (2 evaluations each)",
        grid="edm",
    ),
}.items():
    register_solver(_name, _entry)


# --------------------------------------------------------------------------- errors


class UserError(Exception):
    """A mistake in the command line: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        raise UserError(f"{self.prog}: {message}")


def _number(convert: Callable, ok: Callable, allowed: str) -> Callable:
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


_positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
_nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: 0 < v < math.inf, "a finite number > 0")
_unit_float = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def _writable_dir(path: pathlib.Path, flag: str) -> None:
    from ._checkpoint import check_writable

    try:
        check_writable(path, flag)
    except ValueError as e:
        raise UserError(str(e)) from e


# --------------------------------------------------------------------------- commands


def _init_distributed(args) -> bool:
    """Check the multi-process flags and call `jax.distributed.initialize` (before any
    JAX computation). Returns whether this is a multi-process run."""
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
            f"scoresde train: {', '.join(missing)} missing: --coordinator, "
            "--num-processes and --process-id go together"
        )
    host, sep, port = args.coordinator.rpartition(":")
    if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
        raise UserError(
            "scoresde train: --coordinator must be HOST:PORT with a port in "
            f"1..65535 (e.g. 10.0.0.1:12345), got {args.coordinator!r}"
        )
    if args.process_id >= args.num_processes:
        raise UserError(
            f"scoresde train: --process-id must be in 0..{args.num_processes - 1} "
            f"for --num-processes {args.num_processes}, got {args.process_id}"
        )
    import jax

    try:
        jax.distributed.initialize(
            args.coordinator, args.num_processes, args.process_id
        )
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"scoresde train: jax.distributed.initialize with --coordinator "
            f"{args.coordinator} failed: {e}"
        ) from e
    return True


def cmd_train(args) -> int:
    distributed = _init_distributed(args)  # first: before any JAX computation

    import jax
    import jax.random as jr

    from . import train

    out = pathlib.Path(args.out)
    _writable_dir(out, "--out")
    mesh = None
    if args.data_parallel or distributed:
        n = jax.device_count()  # global: every process's devices
        if args.batch_size % n != 0:
            raise UserError(
                f"scoresde train: --batch-size {args.batch_size} must be divisible by "
                f"the number of devices ({n}) for data-parallel training"
            )
        mesh = jax.make_mesh((n,), ("batch",))
    dataset = DATASETS[args.data]()
    sde = _make_sde(args.sde, dataset)
    try:
        model = _make_model(args.model, dataset.data_shape, sde, jr.key(args.seed + 1))
    except (ValueError, TypeError) as e:
        raise UserError(
            f"--model {args.model} does not fit --data {args.data} (examples of shape "
            f"{dataset.data_shape}): {e}"
        ) from e
    lr = args.lr if args.lr is not None else (2e-4 if args.model == "unet" else 1e-3)
    warmup = (
        args.warmup if args.warmup is not None else min(5000, max(1, args.steps // 10))
    )
    res = train(
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
    n = len(res.losses)
    last = float(res.losses[-min(n, 100) :].mean()) if n else float("nan")
    where = (
        f"checkpoint in {out}"
        if jax.process_index() == 0
        else f"process {jax.process_index()}: checkpoints are written by process 0"
    )
    devices = f" on {jax.device_count()} devices" if mesh is not None else ""
    print(
        f"trained {args.model} on {args.data} ({args.sde}){devices}: {n} steps in "
        f"{res.wall_time:.1f} s, final loss {last:.4g}; {where}"
    )
    return 0


def cmd_sample(args) -> int:
    import jax
    import jax.random as jr
    import numpy as np

    from . import load_checkpoint, sample, sde_from_description
    from ._png import image_grid, scatter_image, write_png

    out = pathlib.Path(args.out)
    if out.suffix != ".npy":
        raise UserError(f"--out must name a .npy file, got {str(out)!r}")
    _writable_dir(
        out.parent if str(out.parent) else pathlib.Path("."), "--out's directory"
    )
    if args.png is not None:
        if pathlib.Path(args.png).suffix != ".png":
            raise UserError(f"--png must name a .png file, got {args.png!r}")
        _writable_dir(pathlib.Path(args.png).parent, "--png's directory")
    try:
        model, meta = load_checkpoint(args.checkpoint)
    except FileNotFoundError as e:
        raise UserError(f"--checkpoint: {e}") from e
    except ValueError as e:
        raise UserError(f"--checkpoint: {e}") from e
    from .nn import loop_friendly

    model = loop_friendly(model)  # convolutions that stay fast inside the solver loop
    sde = sde_from_description(meta["sde"])
    if args.eps is not None and not args.eps < sde.T:
        raise UserError(
            f"--eps must be below the SDE's end time T = {sde.T}, got {args.eps}"
        )
    mesh = None
    if args.data_parallel:
        n = jax.device_count()
        if args.num_samples % n != 0:
            raise UserError(
                f"scoresde sample: --num-samples {args.num_samples} must be divisible by "
                f"the number of devices ({n}) with --data-parallel"
            )
        mesh = jax.make_mesh((n,), ("batch",))
    data_meta = meta["data"]
    shape = (args.num_samples, *data_meta["data_shape"])
    entry = SOLVERS[args.solver]
    kwargs = {}
    if entry.adaptive:
        import diffrax

        kwargs = dict(
            stepsize_controller=diffrax.PIDController(rtol=entry.rtol, atol=entry.atol),
            max_steps=args.steps,
        )
    elif entry.grid == "uniform":
        kwargs = dict(num_steps=args.steps)
    else:
        import diffrax

        from ._solver import time_grid

        ts = time_grid(sde, args.steps, kind=entry.grid, eps=args.eps)
        kwargs = dict(stepsize_controller=diffrax.StepTo(ts))
    res = sample(
        jr.key(args.seed),
        sde,
        model,
        shape,
        solver=entry.make(),
        method=entry.method,
        denoise=args.denoise,
        eps=args.eps,
        sharding=mesh,
        **kwargs,
    )
    x = (np.asarray(res.samples) - data_meta["shift"]) / data_meta["scale"]
    images = len(data_meta["data_shape"]) == 3
    if images:
        x = np.clip(x, 0.0, 1.0)
    np.save(out, x)
    if args.png is not None:
        if images:
            pic = image_grid(x[:64])
        elif x.shape[1:] == (2,):
            pic = scatter_image(x)
        else:
            raise UserError("--png needs image data or 2-D points")
        write_png(args.png, pic)
    nfe = int(res.stats["num_score_evals"])
    print(
        f"{args.num_samples} samples ({args.solver}, {int(res.stats['num_steps'])} steps, "
        f"{nfe} score evaluations each) -> {out}"
        + (f", {args.png}" if args.png else "")
    )
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="scoresde",
        description="Score-based generative modelling with SDEs: train a score model on "
        "embedded data, then sample from it.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    t = sub.add_parser("train", help="train a score model; writes checkpoints to --out")
    t.add_argument(
        "--data",
        required=True,
        choices=list(DATASETS),
        metavar="NAME",
        help=f"data set: {', '.join(DATASETS)}",
    )
    t.add_argument(
        "--sde",
        required=True,
        choices=SDES,
        help="forward SDE: vp (VPSDE), subvp (SubVPSDE), ve (VESDE with "
        "sigma_max = largest distance between training examples)",
    )
    t.add_argument(
        "--model",
        required=True,
        choices=MODELS,
        help="network: mlp (MLPScore, any data) or unet (UNet, images); both "
        "predict the noise (EpsScore)",
    )
    t.add_argument(
        "--steps",
        required=True,
        type=_positive_int,
        metavar="N",
        help="total optimiser steps (with --resume: including those done)",
    )
    t.add_argument(
        "--batch-size",
        type=_positive_int,
        default=128,
        metavar="B",
        help="examples per step (default 128)",
    )
    t.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the initial weights, batches and noise (default 0)",
    )
    t.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="checkpoint directory (created; must be empty unless --resume)",
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest complete checkpoint in --out",
    )
    t.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="peak learning rate (default 2e-4 for unet, 1e-3 for mlp)",
    )
    t.add_argument(
        "--warmup",
        type=_positive_int,
        default=None,
        help="learning-rate warm-up steps (default min(5000, N/10))",
    )
    t.add_argument(
        "--ema",
        type=_unit_float,
        default=0.999,
        help="EMA decay of the weights (default 0.999)",
    )
    t.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        default=1000,
        metavar="K",
        help="steps between checkpoints (default 1000; also at the end)",
    )
    t.add_argument(
        "--steps-per-call",
        type=_positive_int,
        default=100,
        metavar="K",
        help="steps per jit-compiled call (default 100)",
    )
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--data-parallel",
        action="store_true",
        help="split each batch over all devices (of all processes), parameters "
        "replicated (jax.sharding); --batch-size must be divisible by the number "
        "of devices",
    )
    t.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="several processes (hosts): address of process 0, passed to "
        "jax.distributed.initialize; needs --num-processes and --process-id, implies "
        "--data-parallel; start the same command on every process (to --resume, "
        "--out must be on a file system they all see)",
    )
    t.add_argument(
        "--num-processes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="number of processes (with --coordinator)",
    )
    t.add_argument(
        "--process-id",
        type=_nonnegative_int,
        default=None,
        metavar="I",
        help="this process's index, 0..N-1 (with --coordinator); process 0 writes "
        "the checkpoints",
    )
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="draw samples from a trained checkpoint")
    s.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="checkpoint directory written by `scoresde train`",
    )
    s.add_argument(
        "--num-samples",
        required=True,
        type=_positive_int,
        metavar="N",
        help="number of samples",
    )
    s.add_argument(
        "--solver",
        required=True,
        choices=list(SOLVERS),
        metavar="NAME",
        help="; ".join(f"{k}: {v.help}" for k, v in SOLVERS.items()),
    )
    s.add_argument(
        "--steps",
        type=_positive_int,
        default=1000,
        metavar="K",
        help="fixed steps, or the maximum for adaptive solvers (default 1000)",
    )
    s.add_argument(
        "--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)"
    )
    s.add_argument(
        "--out",
        required=True,
        metavar="FILE.npy",
        help="samples in data units (images in [0, 1]), shape (N, *data_shape)",
    )
    s.add_argument(
        "--png",
        default=None,
        metavar="FILE.png",
        help="also write a picture: an image grid (first 64) or a 2-D histogram",
    )
    s.add_argument(
        "--eps",
        type=_positive_float,
        default=None,
        help="end time of sampling (default: the SDE's, 1e-3 VP / 1e-5 VE)",
    )
    s.add_argument(
        "--denoise", action="store_true", help="finish with Tweedie's denoising step"
    )
    s.add_argument(
        "--data-parallel",
        action="store_true",
        help="split the samples over all devices (jax.sharding; the same samples as "
        "on one device); --num-samples must be divisible by the number of devices",
    )
    s.set_defaults(func=cmd_sample)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `scoresde` command with `argv` (default `sys.argv[1:]`); returns the
    exit code. User errors print one line to stderr and return 2."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args)
    except UserError as e:
        msg = str(e)
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as e:
        msg = f"scoresde: error: {e}"
    except KeyboardInterrupt:
        print("scoresde: interrupted (completed checkpoints are kept)", file=sys.stderr)
        return 130
    msg = " ".join(msg.split())  # one line
    if not msg.startswith("scoresde"):
        msg = f"scoresde: error: {msg}"
    print(msg, file=sys.stderr)
    return 2


def console_main() -> None:  # pragma: no cover - the console-script entry point
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console_main()

_ = os
