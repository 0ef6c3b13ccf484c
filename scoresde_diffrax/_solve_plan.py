"""A solve's plan: how it steps on its solver clock and how its score evaluations are
counted ([`SolvePlan`][], made by `_plan.plan_solve`), and the choices of a sampling
solve that follow from it (its adjoint and Brownian path). Below the plan's rules and
the drivers, so that a driver reading its plan never climbs back up to the rules."""

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Int

from ._clock import Clock
from ._custom_types import Method
from ._scalars import is_concrete


class SolvePlan(eqx.Module):
    """How one solve steps, on its solver clock `r = clock.to_solver(t)` (running
    from `r0` up to `r1`, so always forwards).

    - `method`: the terms the solver integrates, `"sde"` or `"ode"`.
    - `clock`: the solve's [`Clock`][].
    - `controller`: the diffrax controller on the solver clock.
    - `adaptive`: whether the controller adapts the steps.
    - `max_steps`: the bound handed to `diffrax.diffeqsolve`.
    - `dt0`: the initial step on the solver clock (positive) or None.
    - `r0`, `r1`: the integration interval on the solver clock.
    - `first_evals`, `evals_per_step`: score evaluations of `init` plus the first
      step, and of each later step (-1 if not constant).
    - `min_step`: the smallest step of a concrete `StepTo` grid, else None.
    - `extra_evals`: score evaluations once per solve beyond the steps' (the
      segments of `Restart`).
    """

    method: Method = eqx.field(static=True)
    clock: Clock = eqx.field(static=True)
    controller: dfx.AbstractStepSizeController
    adaptive: bool = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)
    dt0: float | Array | None
    r0: float | Array
    r1: float | Array
    first_evals: int = eqx.field(static=True)
    evals_per_step: int = eqx.field(static=True)
    min_step: float | None = eqx.field(static=True)
    extra_evals: int = eqx.field(static=True, default=0)

    def num_score_evals(self, num_steps: Int[Array, "*batch"]) -> Int[Array, "*batch"]:
        """Score evaluations per example of a solve that took `num_steps` steps."""
        if self.first_evals < 0 or self.extra_evals < 0:
            return jnp.full_like(num_steps, -1)
        steps = self.evals_per_step * jnp.maximum(num_steps - 1, 0)
        return self.first_evals + steps + self.extra_evals

    def sampling_noise(
        self,
        adjoint: dfx.AbstractAdjoint | None,
        brownian_tol: float | Array | None,
        span: float | Array,
    ) -> tuple[dfx.AbstractAdjoint, str, float | Array | None]:
        """For a sampling solve of this plan over a time `span` (T - eps): the
        adjoint (default: reverse mode, except the fast forward-mode path of
        fixed-step SDE solves), the Brownian path that goes with it ("none" for the
        ODE, "fast" = UnsafeBrownianPath, "tree" = VirtualBrownianTree) and the
        tree's tolerance (default: `span * 2**-12`, at most a sixteenth of a fixed
        grid's smallest step)."""
        if adjoint is None:
            fast = self.method == "sde" and not self.adaptive
            adjoint = dfx.ForwardMode() if fast else dfx.RecursiveCheckpointAdjoint()
        if self.method == "ode":
            brownian = "none"
        elif self.adaptive or not isinstance(adjoint, dfx.ForwardMode):
            brownian = "tree"
        else:
            brownian = "fast"
        if brownian_tol is None:
            brownian_tol = span * 2.0**-12
            if self.min_step is not None:  # `span` is traced with a traced eps
                brownian_tol = jnp.minimum(brownian_tol, self.min_step / 16)
                if is_concrete(span):
                    brownian_tol = float(brownian_tol)
        return adjoint, brownian, brownian_tol
