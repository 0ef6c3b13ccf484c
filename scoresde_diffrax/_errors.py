"""Run-time failures, as exceptions whose message says what to change: the library
raises them, the CLI prints their first line (with the flags).

One path from a solve's outcome to an error, for every driver (`sample`,
`log_likelihood`, `encode`/`decode`, sharded or not): the solve runs with diffrax's
`throw=False`, and [`check_solve`][] maps its `RESULTS` and the finiteness of its
outputs to a [`SolveError`][] of one `kind`: on the host after the call, or, under an
outer `jit`/`vmap`/`grad` (traced outputs), inside the program with
`eqx.branched_error_if` and the same messages.
"""

import functools
from typing import Literal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree


SolveFailure = Literal["max_steps", "non_finite", "diverged"]

# The index of each failure in `failure_index`; 0 is success.
_KINDS: tuple[SolveFailure, ...] = ("max_steps", "non_finite", "diverged")


class SolveError(RuntimeError):
    """A solve that failed at run time: `sample`, `log_likelihood`, `encode` and
    `decode` raise it (after the call; under an outer `jit` the same message comes as
    an `EquinoxRuntimeError`). It is a `RuntimeError`, so code that caught those still
    catches it.

    **Fields:**

    - `kind`: `"max_steps"` (an adaptive solve needed more than `max_steps` steps),
        `"non_finite"` (the result holds NaN or inf) or `"diverged"` (the step-size
        controller gave up: every step rejected, or below its minimum step; or an
        implicit solver's root find diverged).
    - `max_steps`: the `max_steps` of the solve (or None).
    - `what`: what happened, without the fix (the message's first clause, which the
        CLI's one-line error repeats before its fix in terms of flags).

    The message's first sentence says what happened and what to change; diffrax's own
    message follows in parentheses where there is one.
    """

    def __init__(
        self, message: str, *, kind: SolveFailure, max_steps: int | None, what: str
    ):
        super().__init__(message)
        self.kind = kind
        self.max_steps = max_steps
        self.what = what


class OutOfMemoryError(MemoryError):
    """A program that does not fit in the device's memory: `sample` (too many samples
    at once) and `train` (too large a `batch_size`) raise it, saying how many would
    fit. It is a `MemoryError`, so `except MemoryError` still catches it.

    **Fields:**

    - `largest`: about the largest number (of samples for `sample`, of examples per
        batch for `train`) that fits, or None if it could not be measured.
    """

    def __init__(self, message: str, *, largest: int | None):
        super().__init__(message)
        self.largest = largest


def solve_error(
    where: str,
    kind: SolveFailure,
    *,
    max_steps: int | None,
    not_finite: str,
    diffrax_message: str | None = None,
) -> SolveError:
    """The [`SolveError`][] of a solve of `where` (`"sample"`, `"log_likelihood"`,
    `"encode"`, `"decode"`) that failed with `kind`. `not_finite` says what held NaN or
    inf (e.g. "the solve produced non-finite samples (NaN or inf)")."""
    if kind == "max_steps":
        what = f"the solve reached max_steps={max_steps} before its end time"
        fix = "raise max_steps, or loosen the step-size controller's rtol/atol"
        note = " (diffrax: the maximum number of solver steps was reached)"
    elif kind == "non_finite":
        what = f"{not_finite}: the solver diverged"
        fix = (
            "take more or smaller steps, or use another solver, and check the score "
            "on the whole time range"
        )
        note = ""
    else:
        cause = (diffrax_message or "").strip().split("\n")[0][:200]
        what = "the solver diverged (its step-size controller gave up" + (
            f": {cause})" if cause else ")"
        )
        fix = (
            "tighten rtol/atol or use another solver, and check the score on the "
            "whole time range"
        )
        note = ""
    return SolveError(
        f"{where}: {what}; {fix}.{note}", kind=kind, max_steps=max_steps, what=what
    )


def failure_index(result: dfx.RESULTS, finite, *, throw: bool):
    """Per solve: 0 if it succeeded, else `1 + _KINDS.index(kind)`. A failed
    `result` counts only with `throw` (with `throw=False` the caller inspects it);
    non-finite outputs (`finite` False) always count."""
    okay = dfx.is_okay(result)
    failed = jnp.where(result == dfx.RESULTS.max_steps_reached, 1, 3)
    if not throw:
        okay = jnp.ones_like(okay)
    index = jnp.where(okay, 0, failed)
    # max_steps (an adaptive solve rejecting NaN steps) first, then non-finite.
    return jnp.where((index != 1) & ~finite, 2, index)


def _all_finite(tree: PyTree):
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@functools.partial(jax.jit, static_argnames="throw")
def _failure_index_now(result: dfx.RESULTS, outputs: PyTree, throw: bool):
    """`failure_index` of concrete outputs as one compiled call (the host check of
    every solve: eager, its dozen small operations cost about a millisecond)."""
    return failure_index(result, _all_finite(outputs), throw=throw)


def _is_traced(tree: PyTree) -> bool:
    leaves = jax.tree_util.tree_leaves(tree)
    return any(isinstance(a, jax.core.Tracer) for a in leaves)


def check_solve(
    where: str,
    outputs: PyTree,
    result: dfx.RESULTS,
    *,
    throw: bool,
    max_steps: int | None,
    not_finite: str,
    in_program: bool = True,
) -> PyTree:
    """Raise the [`SolveError`][] of a solve run with diffrax's `throw=False`, whose
    `outputs` (arrays) must be finite and whose `result` must be okay if `throw`.
    Returns `outputs`.

    Called after the jitted solve. With concrete outputs the check runs here, on the
    host (blocking until the outputs are ready). With traced outputs (`sample` under
    an outer `jit`, `vmap` or `grad`) it is added to the program with
    `eqx.branched_error_if` (same messages), unless `in_program` is False (sharded
    solves: a raising callback inside a sharded program aborts the process, so there
    the check is left to the caller, who reads `.result`)."""
    msgs = [
        str(solve_error(where, k, max_steps=max_steps, not_finite=not_finite))
        for k in _KINDS
    ]
    if _is_traced((outputs, result)):
        if not in_program:
            return outputs
        index = failure_index(result, _all_finite(outputs), throw=throw)
        index = jnp.max(index)
        return eqx.branched_error_if(
            outputs, index > 0, jnp.maximum(index - 1, 0), msgs
        )
    index = np.asarray(_failure_index_now(result, outputs, throw=throw))
    if index.max() > 0:
        kind = _KINDS[int(index.max()) - 1]
        message = None
        if kind == "diverged":
            failed = np.reshape(np.asarray(index) == 3, -1)
            results = np.reshape(np.asarray(dfx.RESULTS[result]), -1)
            message = str(results[failed][0] if results.size > 1 else results[0])
        raise solve_error(
            where,
            kind,
            max_steps=max_steps,
            not_finite=not_finite,
            diffrax_message=message,
        )
    return outputs
