"""Run-time failures of a solve, as one exception with a message that says what to
change: the library raises it, the CLI prints its first line (with the flags)."""

from typing import Literal


SolveFailure = Literal["max_steps", "non_finite", "diverged"]

_MAX_STEPS = "maximum number of solver steps was reached"
_DIVERGED = ("dt_min", "rejected", "nonfinite", "non-finite", "NaN")


class SolveError(RuntimeError):
    """A solve that failed at run time: `sample` or `log_likelihood` raises it where
    diffrax (or a finiteness check) would raise an `EquinoxRuntimeError`. It is a
    `RuntimeError`, so code that caught those still catches it.

    **Fields:**

    - `kind`: `"max_steps"` (an adaptive solve needed more than `max_steps` steps),
        `"non_finite"` (the result holds NaN or inf) or `"diverged"` (the step-size
        controller gave up: every step rejected, or below its minimum step).
    - `max_steps`: the `max_steps` of the solve (or None).
    - `what`: what happened, without the fix (the message's first clause, which the
        CLI's one-line error repeats before its fix in terms of flags).

    The message's first sentence says what happened and what to change; diffrax's own
    message follows in parentheses.
    """

    def __init__(
        self, message: str, *, kind: SolveFailure, max_steps: int | None, what: str
    ):
        super().__init__(message)
        self.kind = kind
        self.max_steps = max_steps
        self.what = what


def solve_error(
    where: str, error: Exception, *, max_steps: int | None, not_finite: str
) -> SolveError | None:
    """The `SolveError` for an exception `error` raised by the solve of `where`
    (`"sample"`, `"log_likelihood"`), or None if it is not a solve failure."""
    text = str(error)
    original = _first_message(text)
    if _MAX_STEPS in text:
        what = f"the solve reached max_steps={max_steps} before its end time"
        return SolveError(
            f"{where}: {what}; raise max_steps, or loosen the step-size controller's rtol/atol. "
            "(diffrax: the maximum number of solver steps was reached)",
            kind="max_steps",
            max_steps=max_steps,
            what=what,
        )
    if not_finite in text or "non-finite" in text:
        noun = {"sample": "samples", "log_likelihood": "log-density"}.get(
            where, "values"
        )
        what = f"the solve produced non-finite {noun} (NaN or inf): the solver diverged"
        return SolveError(
            f"{where}: {what}; take more or smaller steps, or use another solver, and check "
            "the score on the whole time range.",
            kind="non_finite",
            max_steps=max_steps,
            what=what,
        )
    if any(s in text for s in _DIVERGED):
        what = f"the solver diverged (its step-size controller gave up: {original})"
        return SolveError(
            f"{where}: {what}; tighten rtol/atol or use another solver, and check the score on the "
            "whole time range.",
            kind="diverged",
            max_steps=max_steps,
            what=what,
        )
    return None


def _first_message(text: str) -> str:
    """The first line of an `EquinoxRuntimeError`'s text that is not its stack."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("Above is the stack", "File ", "^", "Below")):
            if "stack" not in line:
                return line[:200]
    return text.strip()[:200]
