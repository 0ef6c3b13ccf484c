"""What a solve plan asks a solver, answered by the solver itself (as diffrax's
`order` and `term_structure` are): the fewest steps of a fixed grid, whether it can
take a given grid, and the solves it runs once per solve besides its steps.

This package's solvers (and the wrappers, which answer for the solver they wrap)
subclass [`AbstractPlannedSolver`][]; a plain diffrax solver gets the defaults from
the functions below. A leaf: it imports nothing from the package, so the plan asks
these questions after its argument checks and before it counts evaluations
(`_nfe`), without climbing back up the layers.
"""

from typing import NamedTuple

import diffrax as dfx


class InnerSolves(NamedTuple):
    """Solves that a solver runs once per solve besides its steps (e.g. the ODE
    segments of `Restart`): `count` solves of `num_steps` steps each, of `solver` on
    the probability-flow ODE. The plan counts their score evaluations."""

    solver: dfx.AbstractSolver
    count: int
    num_steps: int


class AbstractPlannedSolver(dfx.AbstractSolver):
    """A solver of this package (or a wrapper of one) that answers for itself what a
    solve plan needs to know of a fixed grid, as diffrax's `order` answers for the
    solver's accuracy. Defaults: any grid of at least one step, no inner solves.
    Wrappers delegate to the solver they wrap (through [`min_grid_steps`][],
    [`check_grid`][] and [`inner_solves`][], so a plain diffrax solver inside gets
    the defaults)."""

    def min_grid_steps(self) -> int:
        """The fewest steps of a fixed grid this solver can take (a multistep solver:
        the number of stored evaluations a full-order step interpolates)."""
        return 1

    def check_grid(self, ts, start: float, end: float, arg: str) -> None:
        """Raise `ValueError` naming `arg` for a fixed grid it cannot take: `ts` in
        the user's clock (None if traced) from `start` to `end`. Default: nothing
        beyond [`min_grid_steps`][], which the plan checks."""
        del ts, start, end, arg

    def inner_solves(self) -> tuple[InnerSolves, ...]:
        """The solves it runs once per solve besides its steps, whose score
        evaluations the plan adds to the steps' (e.g. `Restart`'s segments).
        Default: none."""
        return ()


def min_grid_steps(solver: dfx.AbstractSolver) -> int:
    """`solver.min_grid_steps()` for this package's solvers, 1 for others."""
    if isinstance(solver, AbstractPlannedSolver):
        return solver.min_grid_steps()
    return 1


def check_grid(
    solver: dfx.AbstractSolver, ts, start: float, end: float, arg: str
) -> None:
    """`solver.check_grid(...)` for this package's solvers; others take any grid."""
    if isinstance(solver, AbstractPlannedSolver):
        solver.check_grid(ts, start, end, arg)


def inner_solves(solver: dfx.AbstractSolver) -> tuple[InnerSolves, ...]:
    """`solver.inner_solves()` for this package's solvers, none for others."""
    if isinstance(solver, AbstractPlannedSolver):
        return solver.inner_solves()
    return ()
