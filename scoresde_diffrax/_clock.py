"""The integration clock: the one place where the user's time `t` becomes the time
`diffrax.diffeqsolve` integrates, and back.

Every solve of this package runs forwards on its solver clock `r = sign * t`, from
`r0 = sign * start` up to `r1 = sign * end`: sampling and decoding on [`REVERSED`][]
(`r = -t`, from `-T` up to `-eps`), likelihoods and encoding on [`FORWARD`][]
(`r = t`, from `eps` up to `T`). Why not let diffrax integrate from `T` down to `eps`
directly: its stochastic Runge-Kutta solvers (`SRA1`, `ShARK`, `SEA`, `SPaRK`) ignore
the time direction in the drift's control and negate the Levy area when `t1 < t0`, and
then diverge; on a forward clock every diffrax SDE solver is correct.

The conversions are exact (a negation or nothing), work on Python numbers, NumPy and
JAX arrays alike, and keep NumPy grids in NumPy (`UnsafeBrownianPath` keys its noise
on the bits of the step times, so a grid must be the same with and without `jit`).
A leaf: it imports nothing from the package.
"""

import diffrax as dfx
import equinox as eqx
import jax
from jaxtyping import PyTree


class Clock(eqx.Module):
    """The solver clock `r = sign * t` of a solve (see the module's docstring).

    **Fields:**

    - `sign`: +1 (the solver's clock is the user's) or -1 (reversed: `r = -t`).
    """

    sign: int = eqx.field(static=True)

    def __check_init__(self):
        if self.sign not in (1, -1):
            raise ValueError(f"`sign` must be +1 or -1, got {self.sign!r}.")

    @staticmethod
    def running(increasing: bool) -> "Clock":
        """The clock on which a solve whose user time is `increasing` (or not) runs
        forwards."""
        return FORWARD if increasing else REVERSED

    @property
    def reversed(self) -> bool:
        return self.sign < 0

    def to_solver(self, t):
        """User time(s) `t` (a number, or a grid of times) on the solver clock."""
        return -t if self.reversed else t

    def to_user(self, r):
        """Solver time(s) `r` on the user's clock."""
        return -r if self.reversed else r

    def to_solver_rate(self, v):
        """A rate of change in user time, `dx/dt`, as one in solver time, `dx/dr`."""
        return -v if self.reversed else v

    def to_solver_step(self, dt):
        """A step size given in the user's clock, of either sign, as the solver's
        (positive: the solver's clock always runs forwards)."""
        return abs(dt)

    def to_solver_saveat(self, subs: PyTree) -> PyTree:
        """The `diffrax.SubSaveAt`s in `subs` (their `ts` in user time) on the solver
        clock; each `fn` is still called with user time."""
        if not self.reversed:
            return subs

        def one(sub):
            if sub.ts is not None:
                sub = eqx.tree_at(lambda x: x.ts, sub, self.to_solver(sub.ts))
            fn = sub.fn
            return eqx.tree_at(
                lambda x: x.fn, sub, lambda r, y, args: fn(self.to_user(r), y, args)
            )

        return jax.tree_util.tree_map(
            one, subs, is_leaf=lambda x: isinstance(x, dfx.SubSaveAt)
        )


FORWARD = Clock(1)
REVERSED = Clock(-1)
