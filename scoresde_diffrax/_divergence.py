import abc
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from ._custom_types import Scalar


class AbstractDivergence(eqx.Module):
    r"""An estimator of the divergence $\nabla_x \cdot F(x) = \mathrm{tr}\, \partial F/\partial x$
    of a function $F$ on ONE example, for [`log_likelihood`][].

    An estimator has a per-example state drawn once per example (e.g. the probe vectors
    of [`Hutchinson`][]) and held fixed along the whole ODE path, and a call that
    returns $F(x)$ and the divergence estimate together, so that the vector field and
    its divergence come from one evaluation of $F$.

    To write your own, subclass this (the subclass is final) and implement:

    - `init(key, x) -> state`: the per-example state for one example `x`, drawn from
        `key` (which [`log_likelihood`][] makes as `fold_in(key, i)` for example `i`,
        so an example's estimate does not depend on the rest of its batch). Return
        `None` if there is none.
    - `__call__(fn, x, state) -> (fn(x), divergence)`: `fn` maps one example to an
        array of its shape (the score at a fixed time); return `fn(x)` and a scalar
        estimate of $\mathrm{tr}\,\partial\,\mathrm{fn}/\partial x$ at `x`.

    Both act on one example; the batch is vmapped by the caller.
    """

    @abc.abstractmethod
    def init(self, key: PRNGKeyArray, x: Float[Array, "*shape"]) -> PyTree:
        """The per-example state (fixed along the path) for one example `x`."""

    @abc.abstractmethod
    def __call__(
        self,
        fn: Callable[[Float[Array, "*shape"]], Float[Array, "*shape"]],
        x: Float[Array, "*shape"],
        state: PyTree,
    ) -> tuple[Float[Array, "*shape"], Scalar]:
        """Return `(fn(x), divergence estimate of fn at x)`."""


_DISTRIBUTIONS = ("rademacher", "gaussian")


class Hutchinson(AbstractDivergence):
    r"""Hutchinson's (Skilling's) unbiased trace estimator,
    $\nabla \cdot F(x) \approx \frac1M \sum_{m=1}^M v_m^\top \frac{\partial F}{\partial x} v_m$,
    with $\mathbb{E}[v v^\top] = I$.

    $F(x)$ and all $\partial F/\partial x\, v_m$ come from ONE linearisation of $F$ per
    evaluation: by default forward mode (`jax.jvp` for one probe; `jax.linearize`
    once, then the linear map applied to each of the $M$ probes), or with
    `forward_mode=False` one `jax.vjp` (one forward pass, then its pullback applied
    to each probe). Both give $v^\top J v$, the same estimate to round-off; forward
    mode was 1.15-1.2x faster on CPU for 64-D mixtures (no residuals stored and
    transposed; `benchmarks/bench_likelihood.py`). So with one probe a likelihood
    costs about twice a sampling solve per evaluation, not one network call for the
    drift plus one for the estimate. The probes are drawn once per example and held
    fixed along the path (so the integral of the estimate is itself an unbiased
    estimate of the integral of the divergence).

    Rademacher probes ($\pm 1$) have the smaller variance,
    $2 \sum_{i \neq j} J_{ij}^2$ against $2 \|J\|_F^2$ for Gaussian probes
    (Hutchinson 1989).

    **Arguments:**

    - `distribution`: `"rademacher"` (default) or `"gaussian"`.
    - `num_probes`: number $M \geq 1$ of probes per example; the estimates average,
        so the variance falls as $1/M$. Default 1.
    - `forward_mode`: `True` (default) for Jacobian-vector products (forward-mode
        autodiff), `False` for vector-Jacobian products (reverse mode, as the paper's
        code). Use `False` for a score that forward mode cannot differentiate (one
        with a `jax.custom_vjp` inside).

    **Raises:** `ValueError` for an unknown `distribution`, `num_probes < 1`, or a
    `forward_mode` that is not a bool.

    **References:**

    - Hutchinson, *A stochastic estimator of the trace of the influence matrix for
      Laplacian smoothing splines*, 1989.
    - Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud, *FFJORD*, ICLR 2019.
    """

    # `str`, not a Literal, so that a wrong name gets the ValueError below (also under
    # run-time type checking).
    distribution: str = eqx.field(static=True, default="rademacher")
    num_probes: int = eqx.field(static=True, default=1)
    forward_mode: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.distribution not in _DISTRIBUTIONS:
            raise ValueError(
                "Hutchinson: `distribution` must be 'rademacher' or 'gaussian', got "
                f"{self.distribution!r}."
            )
        n = self.num_probes
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(
                f"Hutchinson: `num_probes` must be an int >= 1, got {n!r}."
            )
        if not isinstance(self.forward_mode, (bool, np.bool_)):
            raise ValueError(
                "Hutchinson: `forward_mode` must be True (Jacobian-vector products) or "
                f"False (vector-Jacobian products), got {self.forward_mode!r}."
            )

    def init(
        self, key: PRNGKeyArray, x: Float[Array, "*shape"]
    ) -> Float[Array, " probes *shape"]:
        shape = (int(self.num_probes),) + tuple(x.shape)
        if self.distribution == "rademacher":
            return jr.rademacher(key, shape, dtype=x.dtype)
        return jr.normal(key, shape, dtype=x.dtype)

    def __call__(
        self,
        fn: Callable[[Float[Array, "*shape"]], Float[Array, "*shape"]],
        x: Float[Array, "*shape"],
        state: Float[Array, " probes *shape"],
    ) -> tuple[Float[Array, "*shape"], Scalar]:
        if self.forward_mode:
            return self._forward(fn, x, state)
        out, pullback = jax.vjp(fn, x)
        probes = state.astype(out.dtype)
        # The pullback is applied once per probe in a (static, unrolled) loop rather
        # than under `jax.vmap`: on CPU a vmapped pullback of a batched score was ~10x
        # slower than one pullback (benchmarks/README.md).
        total = jnp.zeros((), out.dtype)
        for m in range(probes.shape[0]):
            (vjp,) = pullback(probes[m])
            total = total + jnp.sum(vjp * probes[m])
        return out, total / probes.shape[0]

    def _forward(self, fn, x, state):
        probes = state.astype(x.dtype)
        if probes.shape[0] == 1:
            out, jv = jax.jvp(fn, (x,), (probes[0],))
            return out, jnp.sum(jv * probes[0]).astype(out.dtype)
        # One linearisation (the primal and its residuals once), then the linear map
        # per probe in a static loop, as the pullback above.
        out, jvp = jax.linearize(fn, x)
        total = jnp.zeros((), out.dtype)
        for m in range(probes.shape[0]):
            total = total + jnp.sum(jvp(probes[m]) * probes[m])
        return out, total / probes.shape[0]


class ExactDivergence(AbstractDivergence):
    r"""The exact divergence $\mathrm{tr}\,\partial F/\partial x$ from the full Jacobian.

    One forward pass, then $D$ Jacobian-vector products in a loop (`jax.linearize`,
    `lax.scan`, one per basis vector) per evaluation, $D$ the number of elements of an
    example. Exact (no variance), so for small $D$ and for testing; its cost grows
    linearly in $D$. In float32 it is exact to round-off: log-likelihoods of 16-D
    mixtures within ~2e-6 nats per dimension of the truth at `rtol = atol = 1e-5`
    (VP; 1e-5 VE), as in float64.

    Why a loop and not one batched forward-mode pass (`jax.vmap` of the JVP over all
    $D$ basis vectors, i.e. `jax.jacfwd`): on one CPU core, 64-D VP mixture, batch
    256, the batched pass was slower (0.38 s against 0.28 s per likelihood) and, in
    float32 on XLA:CPU, inexact (mean error 8.6e-4 nats against 7.7e-5: passes of 16
    or more tangents at once lose precision); passes of 2-8 tangents inside the loop
    were precise but no faster beyond the machine's noise
    (`benchmarks/bench_likelihood.py`).
    """

    def init(self, key: PRNGKeyArray, x: Float[Array, "*shape"]) -> None:
        del key, x
        return None

    def __call__(
        self,
        fn: Callable[[Float[Array, "*shape"]], Float[Array, "*shape"]],
        x: Float[Array, "*shape"],
        state: None,
    ) -> tuple[Float[Array, "*shape"], Scalar]:
        del state
        n = x.size
        basis = jnp.eye(n, dtype=x.dtype).reshape((n,) + tuple(x.shape))
        # Forward mode, one Jacobian-vector product per basis vector, in a loop:
        # the primal and its residuals once (`jax.linearize`), then e_i . J e_i summed
        # over a `lax.scan`. Not `jax.vmap` over the basis: on XLA:CPU in float32 a
        # vmapped JVP of a batched mixture score returned traces off by up to 10 %
        # for some examples (those at the end of batches of >= 256 examples, with 16
        # basis vectors: one AVX-512 register of float32), which cost ~4e-4 nats per
        # dimension in likelihoods; float64 was unaffected (tests/test_likelihood.py).
        out, jvp = jax.linearize(fn, x)

        def body(total, e):
            return total + jnp.sum(e * jvp(e)), None

        trace, _ = jax.lax.scan(body, jnp.zeros((), out.dtype), basis)
        return out, trace
