"""Type aliases shared across the package (jaxtyping)."""

from collections.abc import Callable
from typing import Literal, TypeAlias

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = float | Float[ArrayLike, ""]
Data: TypeAlias = Float[Array, "*shape"]
Batch: TypeAlias = Float[Array, " batch *shape"]

# A score is anything called as `score(t, x)` on ONE example: `t` a scalar, `x` of the
# data's shape; it returns an array of `x`'s shape (the gradient of log p_t at `x`).
ScoreFn: TypeAlias = Callable[[ScalarLike, Data], Data]

# The terms a solve integrates: the reverse-time SDE or the probability-flow ODE.
Method: TypeAlias = Literal["sde", "ode"]

__all__ = [
    "Array",
    "Batch",
    "Data",
    "Method",
    "PRNGKeyArray",
    "Scalar",
    "ScalarLike",
    "ScoreFn",
]
