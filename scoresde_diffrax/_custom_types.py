"""Type aliases shared across the package (jaxtyping)."""

from collections.abc import Callable
from typing import TypeAlias

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = float | Float[ArrayLike, ""]
Data: TypeAlias = Float[Array, "*shape"]
Batch: TypeAlias = Float[Array, " batch *shape"]

# A score is anything called as `score(t, x)` on ONE example: `t` a scalar, `x` of the
# data's shape; it returns an array of `x`'s shape (the gradient of log p_t at `x`).
ScoreFn: TypeAlias = Callable[[ScalarLike, Data], Data]

__all__ = [
    "Array",
    "Batch",
    "Data",
    "PRNGKeyArray",
    "Scalar",
    "ScalarLike",
    "ScoreFn",
]
