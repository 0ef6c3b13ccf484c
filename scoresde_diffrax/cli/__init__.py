"""The `scoresde` command: `scoresde train ...`, `scoresde sample ...`, `scoresde
likelihood ...`, `scoresde bench ...`, `scoresde solvers`, `scoresde convert` (the
paper's official checkpoints), and the controllable-generation commands
`train-classifier`, `inpaint`, `colorize`, `inverse`. The console script enters through
`scoresde_cli` (Ctrl-C, the compilation cache), then `main` here.

This package is the one place where names (strings) map to objects: data sets, SDEs,
models and solvers. Each command is a module with `add_parser(subparsers)` and
`run(args) -> int`, listed in `COMMANDS`; `build_parser` assembles them.

- `_common.py`: the user error and the objects that flag values name (data sets,
    SDEs, models, the device mesh, checkpoints, sample files written atomically);
- `_sampler_table.py`: the solver names of `--solver`, each an `sd.bench.Sampler`
    (`SOLVERS`; `register_solver`);
- `_args.py`: the parser with one-line errors, number arguments, shared flags;
- `_controllable.py`: what the controllable-generation commands share (classifier checkpoints
    and their pairing, test splits, inpainting masks, side-by-side pictures);
- `train.py`, `sample.py`, `learn_grid.py` (a learned time grid for `sample --grid`),
    `likelihood.py`, `bench.py`, `train_classifier.py`,
    `inpaint.py`, `colorize.py`, `inverse.py` (y = A(x) + noise: super-resolution,
    blur, mask, random projection; projection or DPS), `solvers.py`, `convert.py`: the
    commands.
"""

import argparse
import sys
from collections.abc import Callable, Sequence

from .._errors import SolveError
from . import (
    bench as bench,
    colorize as colorize,
    convert as convert,
    inpaint as inpaint,
    inverse as inverse,
    learn_grid as learn_grid,
    likelihood as likelihood,
    sample as sample,
    solvers as solvers,
    train as train,
    train_classifier as train_classifier,
)
from ._args import Parser
from ._common import (
    DATASETS as DATASETS,
    INTERRUPT_HOOKS,
    UserError as UserError,
)
from ._sampler_table import (
    register_solver as register_solver,
    SolverEntry as SolverEntry,
    SOLVERS as SOLVERS,
)
from .train import (
    default_lr as default_lr,
    default_warmup as default_warmup,
    RunSettings as RunSettings,
)


# in the order of `scoresde --help`
COMMANDS = (
    train,
    sample,
    learn_grid,
    likelihood,
    bench,
    train_classifier,
    inpaint,
    colorize,
    inverse,
    convert,
    solvers,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="scoresde",
        description="Score-based generative modelling with SDEs: train a score model on "
        "embedded data, sample from it, score data (likelihood), compare solvers "
        "(bench).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `scoresde` command with `argv` (default `sys.argv[1:]`); returns the
    exit code. User errors, and failures the user can fix (a diverging loss, too
    little memory), print one line `scoresde COMMAND: error: ...` to stderr and return
    2; an interrupt (Ctrl-C) returns 130."""
    parser = build_parser()
    prog = "scoresde"
    try:
        args = parser.parse_args(argv)
        prog = f"scoresde {args.command}"
        return args.run(args)
    except UserError as e:
        prog, msg = e.prog or prog, str(e)
    except SolveError as e:
        msg = solve_failure(e)
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as e:
        msg = str(e)
    except KeyboardInterrupt:
        INTERRUPT_HOOKS["report"](prog)
        return 130
    msg = " ".join(msg.split())  # one line
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


# A failed solve, in terms of the flags that fix it.
_FIXES = {
    "max_steps": "raise --max-steps, or loosen --rtol/--atol",
    "non_finite": "use more --steps or another --solver (tighter --rtol/--atol for "
    "an adaptive one), and check the checkpoint",
    "diverged": "tighten --rtol/--atol or use another --solver",
}


def solve_failure(error: SolveError) -> str:
    """The one-line message of a failed solve: what happened (the library's words),
    then the flags to change."""
    what = error.what.replace(
        f"max_steps={error.max_steps}", f"--max-steps {error.max_steps}"
    )
    return f"{what}; {_FIXES[error.kind]}"


def set_interrupt_hooks(
    report: Callable[[str], bool], writing: Callable[[str, bool], None]
) -> None:
    """Used by the entry point (`scoresde_cli`): `report(prog)` prints the one line of
    an interrupt (once per process), `writing(path, start)` is told of every temporary
    file a command writes while it writes it."""
    INTERRUPT_HOOKS["report"] = report
    INTERRUPT_HOOKS["writing"] = writing


def console_main() -> None:  # pragma: no cover - an older console-script entry point
    """`sys.exit(main())`, for scripts installed before the entry point moved to
    `scoresde_cli.console_main` (which also handles Ctrl-C during the imports and
    inside JAX, and turns on the compilation cache)."""
    sys.exit(main())
