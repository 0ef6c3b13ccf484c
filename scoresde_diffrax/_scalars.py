"""Scalar argument rules: ints, positive or non-negative numbers, intervals.

Each check raises a `ValueError` naming the argument (and, with `owner`, the class or
function it belongs to: `"VPSDE: `beta_min` must ..."`) and saying what is allowed.
Values that are traced (an entry point called inside an outer `jax.jit`) cannot be
checked at trace time and are let through. A leaf: it imports nothing from the
package, so the SDEs, the exact mixtures and the data sets use it as the argument
checks of `_checks` (which re-exports it) do.
"""

import math

import jax
import numpy as np


def is_concrete(*xs) -> bool:
    """Whether every one of `xs` has a value now (none is a tracer of an outer
    transformation)."""
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _named(name: str, owner: str | None) -> str:
    return f"`{name}`" if owner is None else f"{owner}: `{name}`"


def concrete_float(x, name: str, *, owner: str | None = None) -> float | None:
    """`float(x)`, or None if `x` is traced. A value that is not a real scalar raises
    a `ValueError` naming `name`."""
    arg = _named(name, owner)
    if isinstance(x, bool):
        raise ValueError(f"{arg} must be a real number, got {x!r}.")
    try:
        return float(x)
    except (TypeError, jax.errors.ConcretizationTypeError):
        if isinstance(x, jax.core.Tracer):
            return None
        raise ValueError(f"{arg} must be a real number, got {x!r}.") from None
    except Exception as e:  # noqa: BLE001 - e.g. a non-scalar array
        raise ValueError(f"{arg} must be a real scalar, got {x!r}.") from e


def check_int(
    name: str,
    value,
    minimum: int = 1,
    *,
    or_none: bool = False,
    owner: str | None = None,
) -> int | None:
    """`value` as an `int >= minimum` (bools refused); with `or_none`, None passes."""
    if or_none and value is None:
        return None
    arg, also = _named(name, owner), " or None" if or_none else ""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{arg} must be an int >= {minimum}{also}, got {value!r}.")
    if value < minimum:
        raise ValueError(f"{arg} must be an int >= {minimum}{also}, got {value}.")
    return int(value)


def check_unit_interval(name: str, value) -> float:
    """`value` as a float in `[0, 1)` (e.g. a decay)."""
    v = concrete_float(value, name)
    if v is None or not (0.0 <= v < 1.0):
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}.")
    return v


def check_positive(name: str, value, *, owner: str | None = None) -> float | None:
    """`value` as a finite float > 0 (None if traced)."""
    v = concrete_float(value, name, owner=owner)
    if v is not None and not (math.isfinite(v) and v > 0):
        raise ValueError(
            f"{_named(name, owner)} must be a finite number > 0, got {value!r}."
        )
    return v


def check_nonnegative(name: str, value, *, owner: str | None = None) -> float | None:
    """`value` as a finite float >= 0 (None if traced)."""
    v = concrete_float(value, name, owner=owner)
    if v is not None and not (math.isfinite(v) and v >= 0):
        raise ValueError(
            f"{_named(name, owner)} must be a finite number >= 0, got {value!r}."
        )
    return v


def check_nonzero(name: str, value) -> float | None:
    """`value` as a finite non-zero float (None if traced)."""
    v = concrete_float(value, name)
    if v is not None and not (math.isfinite(v) and v != 0):
        raise ValueError(f"`{name}` must be a finite non-zero number, got {value!r}.")
    return v
