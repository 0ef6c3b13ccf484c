"""`scoresde learn-grid`: learn the time grid of a fixed-step probability-flow solver
for a checkpoint and a budget of score evaluations (`sd.learn_time_grid`), saved as a
small JSON file for `scoresde sample --grid`."""

import pathlib
import sys

import jax.random as jr

from .. import learn_time_grid, LearnedGrid
from .._checkpoint import describe_sde
from ._args import positive_float, positive_int
from ._common import atomic_output, load_for_sampling, UserError
from ._sampler_table import choose_solver, SOLVERS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "learn-grid",
        help="learn a fixed-step ODE solver's time grid for a checkpoint (for "
        "sample --grid)",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="DIR",
        help="checkpoint directory written by `scoresde train`",
    )
    parser.add_argument(
        "--solver",
        required=True,
        metavar="NAME",
        help="a fixed-step solver of the probability-flow ODE: "
        + ", ".join(ode_solvers()),
    )
    parser.add_argument(
        "--nfe",
        required=True,
        type=positive_int,
        metavar="N",
        help="score evaluations per sample (the denoising step's included)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE.json",
        help="the learned grid (JSON; its directory must exist)",
    )
    parser.add_argument(
        "--num-samples",
        type=positive_int,
        default=256,
        metavar="N",
        help="training prior draws, and as many held-out ones (default 256)",
    )
    parser.add_argument(
        "--iters",
        type=positive_int,
        default=200,
        metavar="K",
        help="most optimiser steps (default 200; stops early when the held-out "
        "loss stops improving)",
    )
    parser.add_argument(
        "--eps",
        type=positive_float,
        default=None,
        help="end time (default: the SDE's, 1e-3 VP / 1e-5 VE)",
    )
    parser.add_argument(
        "--denoise",
        action="store_true",
        help="learn for a solve that ends with Tweedie's denoising step",
    )
    parser.add_argument(
        "--learn-end",
        action="store_true",
        help="learn the grid's end time too (the teacher still ends at --eps)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="the prior draws' seed"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr"
    )
    parser.set_defaults(run=run)


def ode_solvers() -> list[str]:
    """The `--solver` names whose grid can be learned: fixed-step solvers of the
    probability-flow ODE with a grid of their own."""
    return [
        k
        for k, v in SOLVERS.items()
        if "ode" in v.all_methods and not v.adaptive and v.plan is None
    ]


def check_ode_solver(name: str, prog: str, flag: str = "--solver"):
    """The solver object of `flag NAME`, if its grid can be learned; else a
    `UserError` naming `flag` and the names that can."""
    choice = choose_solver(name, None, prog=prog, flag=flag, fixed_only=True)
    if name not in ode_solvers():
        raise UserError(
            f"{flag} {name}: a grid is learned for a fixed-step solver of the "
            f"probability-flow ODE: {', '.join(ode_solvers())}"
        )
    return choice.sampler.solver


def run(args) -> int:
    # Checks and set-up
    out = pathlib.Path(args.out)
    if out.suffix != ".json":
        raise UserError(f"--out must name a .json file, got {args.out}")
    if not out.parent.is_dir():
        raise UserError(f"--out: the directory {out.parent} does not exist")
    solver = check_ode_solver(args.solver, "scoresde learn-grid")
    model, sde, data_meta = load_for_sampling(args.checkpoint)
    if args.eps is not None and not args.eps < sde.T:
        raise UserError(
            f"--eps must be below the SDE's end time T = {sde.T}, got {args.eps}"
        )
    shape = (args.num_samples, *data_meta["data_shape"])

    # Learn
    try:
        grid = learn_time_grid(
            jr.key(args.seed),
            sde,
            model,
            shape,
            solver=solver,
            num_evals=args.nfe,
            eps=args.eps,
            denoise=args.denoise,
            learn_end=args.learn_end,
            num_iters=args.iters,
            progress=not args.quiet,
        )
    except ValueError as e:
        raise UserError(_flags(str(e))) from None
    with atomic_output(out) as tmp:
        grid.save(tmp)

    # Report
    print(summary(grid, args.solver) + f" -> {out}")
    return 0


def summary(grid: LearnedGrid, name: str) -> str:
    """One line: what was learned, from what, how well and at what cost."""
    return (
        f"{name}: a grid of {grid.num_steps} steps ({grid.num_evals} score "
        f"evaluations{', denoised' if grid.denoise else ''}), from the "
        f"{grid.initial} grid; held-out distance to the teacher "
        f"{grid.initial_held_out_loss:.4g} -> {grid.best_held_out_loss:.4g}; "
        f"learned in {grid.seconds:.1f} s ({grid.teacher_evals} teacher "
        f"evaluations, {grid.optimiser_steps} optimiser steps)"
    )


_ARGUMENT_FLAGS = {"`num_evals`": "--nfe", "`eps`": "--eps", "`solver`": "--solver"}


def _flags(msg: str) -> str:
    """`learn_time_grid`'s error in terms of this command's flags."""
    for arg, flag in _ARGUMENT_FLAGS.items():
        msg = msg.replace(arg, flag)
    return msg


def load_grid(path: str, flag: str = "--grid") -> LearnedGrid:
    """A grid file written by `learn-grid` (a `UserError` naming `flag` if not)."""
    try:
        return LearnedGrid.load(path)
    except (OSError, ValueError, KeyError) as e:
        msg = str(e).replace("`path`: ", "")
        raise UserError(f"{flag}: {msg}") from None


def grid_sample_kwargs(args, choice, sde) -> dict:
    """`sample --grid FILE`: the `sd.sample` step arguments of the grid, checked
    against `--solver`, `--steps`, `--eps`, `--denoise` and the checkpoint's SDE."""
    grid = load_grid(args.grid)
    solver = choice.sampler.solver
    if choice.method != "ode" or choice.sampler.adaptive:
        raise UserError(
            f"--grid is for fixed-step solvers of the probability-flow ODE; "
            f"--solver {choice.label} is not one"
        )
    if type(solver).__name__ != grid.solver:
        names = [
            k for k in ode_solvers() if type(SOLVERS[k].solver).__name__ == grid.solver
        ]
        hint = f"; pass --solver {names[0]}" if names else ""
        raise UserError(
            f"--grid: {args.grid} was learned for {grid.solver}, not --solver "
            f"{choice.name}{hint}"
        )
    if args.steps is not None:
        raise UserError(
            f"--steps: the grid {args.grid} fixes the steps ({grid.num_steps}); "
            "leave --steps out"
        )
    if args.eps is not None and abs(args.eps - grid.eps) > 1e-5 * grid.eps:
        raise UserError(
            f"--eps: the grid {args.grid} ends at {grid.eps:g}; leave --eps out"
        )
    if args.denoise and not grid.denoise:
        raise UserError(
            f"--denoise: the grid {args.grid} was learned without the denoising "
            "step; learn one with `scoresde learn-grid --denoise`"
        )
    if grid.sde is not None and grid.sde != describe_sde(sde):
        raise UserError(
            f"--grid: {args.grid} was learned for the SDE {grid.sde}, the "
            f"checkpoint's is {describe_sde(sde)}"
        )
    if abs(float(grid.ts[0]) - float(sde.T)) > 1e-5 * float(sde.T):
        raise UserError(
            f"--grid: {args.grid} starts at {float(grid.ts[0])}, the checkpoint's "
            f"SDE at T = {sde.T}"
        )
    if grid.denoise and not args.denoise:
        print(
            "scoresde sample: note: the grid was learned with the denoising step, "
            "which is applied",
            file=sys.stderr,
        )
    return dict(method="ode", solver=solver) | grid.sample_kwargs()
