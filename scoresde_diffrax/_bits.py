"""Discrete data: dequantisation, and log-likelihoods in bits per dimension."""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Integer, PRNGKeyArray

from ._brownian import per_sample_keys
from ._checks import is_concrete


def _check_range(data_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError) as e:
        raise ValueError(
            "`data_range` must be a pair (low, high) of numbers, e.g. (0.0, 1.0) or "
            f"(-1.0, 1.0), got {data_range!r}."
        ) from e
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(
            f"`data_range` must be (low, high) with low < high, got {data_range!r}."
        )
    return lo, hi


def _check_bits(num_bits) -> int:
    if (
        isinstance(num_bits, bool)
        or not isinstance(num_bits, (int, np.integer))
        or not 1 <= num_bits <= 16
    ):
        raise ValueError(f"`num_bits` must be an int in [1, 16], got {num_bits!r}.")
    return int(num_bits)


def _check_levels(num_levels, num_bits) -> int:
    """The number of quantisation levels from `num_levels` or `num_bits` (at most one
    given; neither: 8 bits, 256 levels)."""
    if num_levels is not None and num_bits is not None:
        raise ValueError(
            "Pass `num_levels` or `num_bits`, not both (num_bits=n means "
            f"num_levels=2**n), got num_levels={num_levels!r}, num_bits={num_bits!r}."
        )
    if num_levels is None:
        return 2 ** _check_bits(8 if num_bits is None else num_bits)
    if (
        isinstance(num_levels, bool)
        or not isinstance(num_levels, (int, np.integer))
        or not 2 <= num_levels <= 2**16
    ):
        raise ValueError(
            "`num_levels` must be an int in [2, 65536] (e.g. 17 for the 0..16 "
            f"digits, 256 for 8-bit images), got {num_levels!r}."
        )
    return int(num_levels)


def dequantize(
    key: PRNGKeyArray,
    x: Integer[ArrayLike, " batch *shape"] | Float[ArrayLike, " batch *shape"],
    *,
    num_bits: int | None = None,
    data_range: Sequence[float] = (0.0, 1.0),
    num_levels: int | None = None,
) -> Float[Array, " batch *shape"]:
    r"""Uniform dequantisation of integer data, scaled to `data_range`:

    $$y = \ell + (h - \ell)\,\frac{k + u}{L}, \qquad u \sim U[0, 1)^D,$$

    for integer pixels $k \in \{0, \dots, L - 1\}$ ($L$ levels: `num_levels`, or
    $2^n$ for `num_bits` $= n$) and `data_range` $= (\ell, h)$.
    Example `i` draws its noise from `fold_in(key, i)`. A density model of $y$ then
    gives a bound on the discrete data's code length through [`bits_per_dim`][]
    (Theis, van den Oord, Bethge, *A note on the evaluation of generative models*, 2016).

    **Arguments:**

    - `key`: a JAX PRNG key.
    - `x`: integer-valued data in $\{0, \dots, L - 1\}$, shape
        `(batch, *data_shape)` (a signed or unsigned integer dtype such as `uint8`,
        or floats holding integers).
    - `num_bits`: $n$, the bit depth ($L = 2^n$); the alternative to `num_levels`.
        Default 8 when neither is given.
    - `data_range`: $(\ell, h)$ the dequantised data are scaled to, e.g. `(0.0, 1.0)`
        (default) or `(-1.0, 1.0)`.
    - `num_levels`: $L$, the number of quantisation levels (e.g. 17 for the 0..16
        digits); not together with `num_bits`.

    **Returns:** floating data in $[\ell, h)$, of `x`'s shape.
    """
    lo, hi = _check_range(data_range)
    levels = _check_levels(num_levels, num_bits)
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(
            f"`x` must have shape (batch, *data_shape), got {x.shape}. For one example "
            "use x[None]."
        )
    if is_concrete(x):
        xn = np.asarray(x)
        if not (
            np.all(np.isfinite(xn))
            and np.all(xn == np.round(xn))
            and np.all(xn >= 0)
            and np.all(xn <= levels - 1)
        ):
            raise ValueError(
                f"`x` must hold integers in [0, {levels - 1}] ({levels} levels), got "
                f"values in [{xn.min()}, {xn.max()}]"
                + ("" if np.all(xn == np.round(xn)) else " that are not all integers")
                + "."
            )
    dtype = jnp.result_type(float)
    keys = per_sample_keys(key, x.shape[0])
    u = jax.vmap(lambda k: jr.uniform(k, x.shape[1:], dtype=dtype))(keys)
    z = (x.astype(dtype) + u) / levels
    return (lo + (hi - lo) * z).astype(dtype)


def bits_per_dim(
    log_prob: Float[ArrayLike, " batch"],
    x: Float[ArrayLike, " batch *shape"],
    *,
    data_range: Sequence[float] = (0.0, 1.0),
    num_bits: int | None = None,
    num_levels: int | None = None,
) -> Float[Array, " batch"]:
    r"""Bits per dimension of data quantised to $L$ levels ($L = 2^n$ for $n$-bit
    data, 17 for the 0..16 digits) from the log-density of its dequantised, scaled
    version.

    With $k$ the integer data, $z = k + u \in [0, L)^D$ the dequantised data in
    pixel units, and $y = \ell + (h - \ell) z / L$ the data the model sees (what
    [`dequantize`][] returns), the change of variables gives
    $\log p(z) = \log p(y) + D \log\frac{h - \ell}{L}$, and

    $$\mathrm{bpd} = -\frac{\log p(z)}{D \ln 2}
    = -\frac{\log p(y)}{D \ln 2} + \log_2 L - \log_2(h - \ell),$$

    an upper bound, in expectation over $u$, on the discrete data's
    $-\log_2 P(k) / D$. (For 8 bits this is the paper's "+8" offset for $[0, 1]$ and
    "+7" for $[-1, 1]$; here the log-Jacobian of whatever `data_range` is counted.)

    **Arguments:**

    - `log_prob`: $\log p(y)$ in nats per example, shape `(batch,)` (e.g.
        `log_likelihood(...).log_prob`).
    - `x`: the dequantised, scaled data $y$ the log-densities are of, shape
        `(batch, *data_shape)`; gives $D$ and is checked to lie in `data_range`.
    - `data_range`: $(\ell, h)$ the data were scaled to. Default `(0.0, 1.0)`.
    - `num_bits`: $n$, the bit depth of the raw data ($L = 2^n$); the alternative
        to `num_levels`. Default 8 when neither is given.
    - `num_levels`: $L$, the number of quantisation levels of the raw data (e.g. 17
        for the digits, whose pixels are 0..16); not together with `num_bits`.

    **Returns:** bits per dimension per example, shape `(batch,)`; average it over the
    data set.

    **Raises:** `ValueError` if `x` lies outside `data_range`, the shapes disagree, or
    both `num_bits` and `num_levels` are given.
    """
    lo, hi = _check_range(data_range)
    levels = _check_levels(num_levels, num_bits)
    x = jnp.asarray(x)
    log_prob = jnp.asarray(log_prob)
    if x.ndim < 2:
        raise ValueError(f"`x` must have shape (batch, *data_shape), got {x.shape}.")
    if log_prob.shape != x.shape[:1]:
        raise ValueError(
            f"`log_prob` must have shape (batch,) = {x.shape[:1]} to match `x` "
            f"{x.shape}, got {log_prob.shape}."
        )
    if is_concrete(x):
        xn = np.asarray(x)
        if not (np.all(np.isfinite(xn)) and xn.min() >= lo and xn.max() <= hi):
            raise ValueError(
                f"`x` must lie in `data_range` = [{lo}, {hi}] (dequantised data "
                f"scaled to it), got values in [{xn.min()}, {xn.max()}]. Pass the "
                "data_range your data were scaled to."
            )
    d = math.prod(x.shape[1:])
    dtype = jnp.result_type(log_prob, float)
    log_jac = d * (math.log(hi - lo) - math.log(levels))
    return (-(log_prob.astype(dtype) + log_jac) / (d * math.log(2.0))).astype(dtype)
