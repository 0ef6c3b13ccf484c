"""What [`learn_time_grid`][] returns, and its file: a learned grid is data, saved as a
small JSON file beside a checkpoint and read back by `scoresde sample --grid`."""

import json
import math
import os

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


FORMAT = "scoresde_diffrax.learned_grid"
VERSION = 1


class LearnedGrid(eqx.Module):
    """A time grid learned by [`learn_time_grid`][] for one solver and budget, with the
    record of how it was learned and what it cost.

    Use it as `sd.sample(..., solver=solver, **grid.sample_kwargs())` (the grid's
    `diffrax.StepTo`, its end time and its `denoise`), or by hand as
    `stepsize_controller=diffrax.StepTo(grid.ts), eps=grid.eps`.

    **Fields:**

    - `ts`: the times, strictly decreasing from `sde.T` to the end time `eps`.
    - `solver`: the solver's class name (for the record; the solver itself is not
        stored).
    - `num_evals`: the score evaluations per example a solve on this grid takes
        (with the denoising step's, if any).
    - `denoise`: whether the grid was learned for a solve that ends with Tweedie's
        denoising step (`sample(..., denoise=True)`).
    - `initial`: the grid it started from (`"uniform"`, `"quadratic"`, `"logsnr"`,
        `"edm"`, or `"given"` for times passed in).
    - `losses`: the training loss after each optimiser step (the mean distance to the
        teacher on the training draws).
    - `held_out_iterations`, `held_out_losses`: the optimiser steps at which the
        held-out loss was measured (0: the initial grid) and its values.
    - `best_iteration`: the optimiser step whose grid is `ts` (lowest held-out loss).
    - `teacher_evals`: score evaluations spent on the teacher's solves (all examples,
        training and held-out).
    - `optimiser_steps`: optimiser steps taken.
    - `seconds`: wall time of the whole learning, teacher included;
        `teacher_seconds` the teacher's part.
    - `sde`: the SDE's description (class and parameters, as a checkpoint stores
        it), or None for an SDE outside this package.
    """

    ts: Float[Array, " n"]
    solver: str
    num_evals: int
    denoise: bool
    initial: str
    losses: Float[Array, " steps"]
    held_out_iterations: Int[Array, " checks"]
    held_out_losses: Float[Array, " checks"]
    best_iteration: int
    teacher_evals: int
    optimiser_steps: int
    seconds: float
    teacher_seconds: float
    sde: dict | None = None

    @property
    def eps(self) -> float:
        """The end time, `ts[-1]`."""
        return float(self.ts[-1])

    @property
    def num_steps(self) -> int:
        """The number of steps, `len(ts) - 1`."""
        return int(self.ts.shape[0]) - 1

    @property
    def initial_held_out_loss(self) -> float:
        """The held-out loss of the initial grid."""
        return float(self.held_out_losses[0])

    @property
    def best_held_out_loss(self) -> float:
        """The held-out loss of the learned grid `ts`."""
        return float(jnp.min(self.held_out_losses))

    def sample_kwargs(self) -> dict:
        """The [`sample`][] arguments of this grid: `stepsize_controller`
        (`diffrax.StepTo(ts)`), `eps` and `denoise`."""
        return dict(
            stepsize_controller=dfx.StepTo(self.ts),
            eps=self.eps,
            denoise=self.denoise,
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the grid and its record as JSON (times in full float precision).

        **Arguments:**

        - `path`: the file to write (conventionally `*.json`, beside a checkpoint).
        """
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")

    def to_dict(self) -> dict:
        """The JSON-able dict that [`save`][scoresde_diffrax.LearnedGrid.save]
        writes."""
        return dict(
            format=FORMAT,
            version=VERSION,
            ts=[float(t) for t in np.asarray(self.ts, np.float64)],
            solver=self.solver,
            num_evals=int(self.num_evals),
            denoise=bool(self.denoise),
            initial=self.initial,
            sde=self.sde,
            cost=dict(
                teacher_evals=int(self.teacher_evals),
                optimiser_steps=int(self.optimiser_steps),
                seconds=float(self.seconds),
                teacher_seconds=float(self.teacher_seconds),
            ),
            best_iteration=int(self.best_iteration),
            losses=[float(v) for v in np.asarray(self.losses)],
            held_out=dict(
                iterations=[int(i) for i in np.asarray(self.held_out_iterations)],
                losses=[float(v) for v in np.asarray(self.held_out_losses)],
            ),
        )

    @staticmethod
    def load(path: str | os.PathLike) -> "LearnedGrid":
        """Read a grid that [`save`][scoresde_diffrax.LearnedGrid.save] wrote.

        **Arguments:**

        - `path`: the JSON file.

        **Returns:** the [`LearnedGrid`][].

        **Raises:** `ValueError` naming `path` if the file is not a learned grid (or
        its times do not decrease strictly).
        """
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"`path`: {path} is not JSON ({e}).") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(
                f"`path`: {path} is not a learned time grid (no "
                f"'format': '{FORMAT}'); make one with sd.learn_time_grid or "
                "`scoresde learn-grid`."
            )
        if d.get("version", 0) > VERSION:
            raise ValueError(
                f"`path`: {path} is a learned grid of format version "
                f"{d['version']}; this version reads {VERSION}: upgrade the package."
            )
        ts = np.asarray(d["ts"], np.float64)
        if ts.ndim != 1 or ts.size < 2 or not np.all(np.diff(ts) < 0):
            raise ValueError(
                f"`path`: the times of {path} must decrease strictly (at least 2)."
            )
        if not all(math.isfinite(t) for t in ts) or ts[-1] <= 0:
            raise ValueError(f"`path`: the times of {path} must be finite and > 0.")
        cost, held = d["cost"], d["held_out"]
        return LearnedGrid(
            ts=jnp.asarray(ts, jnp.result_type(float)),
            solver=str(d["solver"]),
            num_evals=int(d["num_evals"]),
            denoise=bool(d["denoise"]),
            initial=str(d["initial"]),
            losses=jnp.asarray(d["losses"], jnp.result_type(float)),
            held_out_iterations=jnp.asarray(held["iterations"], int),
            held_out_losses=jnp.asarray(held["losses"], jnp.result_type(float)),
            best_iteration=int(d["best_iteration"]),
            teacher_evals=int(cost["teacher_evals"]),
            optimiser_steps=int(cost["optimiser_steps"]),
            seconds=float(cost["seconds"]),
            teacher_seconds=float(cost["teacher_seconds"]),
            sde=d.get("sde"),
        )
