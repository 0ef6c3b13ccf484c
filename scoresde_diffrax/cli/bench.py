"""`scoresde bench`: compare solvers on a problem at budgets of score evaluations
(`sd.bench` from the shell); writes JSON lines, a markdown table and a PNG."""

import dataclasses
import pathlib
import sys

import jax.random as jr
import numpy as np

from .. import bench, data, SubVPSDE, VESDE, VPSDE
from ._args import MAKES_DIR, positive_float, positive_int
from ._common import load_for_sampling, UserError, writable_dir
from ._controllable import TEST_SPLITS
from ._sampler_table import choose_solver
from .learn_grid import ode_solvers


PROBLEMS = "mixture:D=N,K=N[,sde=vp|subvp|ve][,seed=S] or checkpoint:DIR"
_MIXTURE_SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": lambda: VESDE(0.01, 50.0)}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="compare solvers on an exact mixture or a checkpoint at budgets of "
        "score evaluations",
    )
    parser.add_argument(
        "--problem",
        required=True,
        action="append",
        metavar="SPEC",
        help=f"{PROBLEMS}; repeat for several. A mixture is sd.bench.mixture_preset "
        "(exact score; metrics against the mixture); a checkpoint is compared with "
        "its data's test split (the 2-D toys: fresh points)",
    )
    parser.add_argument(
        "--solvers",
        required=True,
        metavar="NAME,...",
        help="solvers of `scoresde solvers`, comma-separated; NAME:sde or NAME:ode "
        "for a solver that serves both; NAME@learned for a fixed-step ODE solver on "
        "a grid learned per problem and budget (sd.learn_time_grid, on prior draws "
        "other than the scored ones; @learned-end: its end time too)",
    )
    parser.add_argument(
        "--nfe",
        default="5,10,20,50",
        metavar="N,...",
        help="budgets of score evaluations per sample (default 5,10,20,50); an "
        "adaptive solver runs once, at its tolerances",
    )
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        default=1000,
        metavar="N",
        help="samples per solve, and the size of the true samples of the floor "
        "(default 1000)",
    )
    parser.add_argument(
        "--metrics",
        default=None,
        metavar="NAME,...",
        help="mixtures: "
        + ", ".join(bench.MIXTURE_METRICS)
        + "; checkpoints: "
        + ", ".join(bench.DATA_METRICS)
        + " (fd_digits for 8x8 digits only; default all that apply)",
    )
    parser.add_argument(
        "--rtol", type=positive_float, default=None, help="adaptive solvers' rtol"
    )
    parser.add_argument(
        "--atol", type=positive_float, default=None, help="adaptive solvers' atol"
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        default=4096,
        metavar="M",
        help="adaptive solvers' maximum steps (default 4096)",
    )
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed")
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help=f"writes DIR/records.jsonl, DIR/table.md, DIR/plot.png (DIR {MAKES_DIR})",
    )
    parser.set_defaults(run=run)


def _int_list(flag: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{flag} must be integers >= 1, comma-separated, got {text!r}")
    return values


def parse_problem(spec: str, num_samples: int):
    """`--problem spec` -> an `sd.bench` problem."""
    kind, _, rest = spec.partition(":")
    if kind == "mixture":
        fields = {}
        for item in filter(None, rest.split(",")):
            k, eq, v = item.partition("=")
            if not eq or k not in ("D", "K", "sde", "seed"):
                raise UserError(
                    f"--problem {spec!r}: {item!r} is not D=N, K=N, sde=NAME or seed=S"
                )
            fields[k] = v
        try:
            dim, k = int(fields.get("D", "")), int(fields.get("K", ""))
            seed = int(fields.get("seed", "1234"))
        except ValueError:
            raise UserError(
                f"--problem {spec!r}: a mixture needs integers D >= 1 and K >= 1, "
                "e.g. mixture:D=64,K=4"
            ) from None
        if dim < 1 or k < 1:
            raise UserError(f"--problem {spec!r}: D and K must be >= 1")
        sde_name = fields.get("sde", "vp")
        if sde_name not in _MIXTURE_SDES:
            raise UserError(
                f"--problem {spec!r}: sde must be one of {', '.join(_MIXTURE_SDES)}"
            )
        mix = bench.mixture_preset(dim, k, seed=seed)
        name = f"mixture D={dim},K={k},{sde_name}"
        return bench.MixtureProblem(mix, _MIXTURE_SDES[sde_name](), name)
    if kind == "checkpoint" and rest:
        model, sde, meta = load_for_sampling(rest)
        x = _held_data(meta, 2 * num_samples)
        # A fixed shuffle, so that the reference (first half) and the floor's held
        # examples (second half) are exchangeable even if the split is stored in
        # some order (for the digits' test split it made no clear difference: FD-digits
        # of its two halves at 180 each is 35 in order, 21-37 over three shuffles).
        x = x[np.random.default_rng(0).permutation(len(x))]
        y = np.asarray(x, np.float32) * meta["scale"] + meta["shift"]
        lo = meta["shift"]
        return bench.DataProblem(
            sde, model, y, f"{meta['name']} ({rest})", (lo, lo + meta["scale"])
        )
    raise UserError(f"--problem must be {PROBLEMS}, got {spec!r}")


def _held_data(meta: dict, n: int) -> np.ndarray:
    """Data the checkpoint was not trained on, in data units: the test split, or
    for a generated 2-D toy `n` fresh points."""
    name = meta["name"]
    if name in TEST_SPLITS:
        return np.asarray(TEST_SPLITS[name]().x)
    fn = getattr(data, name.replace("-", "_"), None)
    if fn is None:
        raise UserError(f"--problem: no held-out data for the data set {name!r}")
    return np.asarray(fn(jr.key(1), n))


# `sd.bench.BenchArgumentError.argument` -> the flag that sets it
_FLAGS = {
    "nfe_budgets": "--nfe",
    "metrics": "--metrics",
    "num_samples": "--num-samples",
    "evals_per_step": "--solvers",
}


def _sampler(item: str, args, least_budget: int) -> bench.Sampler:
    """`--solvers` item `NAME` or `NAME:METHOD` -> its `sd.bench.Sampler` (the
    table's, with the method and the adaptive flags applied), checked against the
    least `--nfe` budget."""
    base, _, variant = item.partition("@")
    name, _, method = base.partition(":")
    choice = choose_solver(
        name, method or None, prog="scoresde bench", flag="--solvers"
    )
    s = choice.sampler
    label = choice.name + (f":{choice.method}" if len(s.all_methods) > 1 else "")
    if variant:
        s, label = _learned(item, choice, variant), f"{label}@{variant}"
    s = dataclasses.replace(
        s,
        name=label,
        rtol=s.rtol if args.rtol is None else args.rtol,
        atol=s.atol if args.atol is None else args.atol,
        max_steps=args.max_steps,
    )
    try:
        s.check_budget(least_budget)
    except bench.BenchArgumentError as err:
        raise UserError(f"{_FLAGS[err.argument]}: {err}") from None
    return s


_LEARNED = {"learned": False, "learned-end": True}  # NAME@... -> learn the end too


def _learned(item: str, choice, variant: str) -> bench.Sampler:
    """`--solvers NAME@learned` (or `@learned-end`): the sampler with its grid learned
    per problem and budget (`sd.bench.LearnGrid`)."""
    if variant not in _LEARNED:
        raise UserError(
            f"--solvers {item}: after @ comes learned or learned-end (a grid learned "
            "by sd.learn_time_grid, the end time too for learned-end)"
        )
    if choice.name not in ode_solvers() or choice.method != "ode":
        raise UserError(
            f"--solvers {item}: a grid is learned for a fixed-step solver of the "
            f"probability-flow ODE: {', '.join(ode_solvers())}"
        )
    learn = bench.LearnGrid(learn_end=_LEARNED[variant])
    return dataclasses.replace(choice.sampler, learn_grid=learn)


def run(args) -> int:
    # Checks and set-up
    budgets = _int_list("--nfe", args.nfe)
    samplers = [_sampler(item, args, min(budgets)) for item in args.solvers.split(",")]
    metrics = None if args.metrics is None else args.metrics.split(",")
    if metrics is not None:
        known = (*bench.MIXTURE_METRICS, *bench.DATA_METRICS)
        bad = [m for m in metrics if m not in known]
        if bad:
            raise UserError(
                f"--metrics: unknown {', '.join(bad)}; choose from "
                f"{', '.join(dict.fromkeys(known))}"
            )
    problems = [parse_problem(p, args.num_samples) for p in args.problem]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError(
            "--out: the plot needs matplotlib (pip install matplotlib)"
        ) from None
    out = pathlib.Path(args.out)
    writable_dir(out, "--out")

    # Run
    def report(r: bench.BenchRecord) -> None:
        print(
            f"scoresde bench: {r.problem}: {r.sampler}, {r.nfe} score evaluations "
            f"({r.compile_s:.1f} s compile, {r.run_s:.2f} s run)",
            file=sys.stderr,
        )

    try:
        records = bench.run(
            jr.key(args.seed),
            problems,
            samplers,
            budgets,
            num_samples=args.num_samples,
            metrics=metrics,
            callback=report,
        )
    except bench.BenchArgumentError as err:
        raise UserError(f"{_FLAGS[err.argument]}: {err}") from None

    # Write
    table = bench.to_markdown(records)
    (out / "records.jsonl").write_text(bench.to_json_lines(records))
    (out / "table.md").write_text(table)
    bench.plot(records, str(out / "plot.png"))
    print(table)
    print(f"-> {out / 'records.jsonl'}, {out / 'table.md'}, {out / 'plot.png'}")
    return 0
