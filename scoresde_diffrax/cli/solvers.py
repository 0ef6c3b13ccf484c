"""`scoresde solvers`: the table of solver names (what `--solver` accepts)."""

from ._sampler_table import solvers_table


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "solvers",
        help="list the solvers of --solver: SDE/ODE, fixed/adaptive, score "
        "evaluations per step, order, reference",
    )
    parser.set_defaults(run=run)


def run(args) -> int:
    print(solvers_table())
    return 0
