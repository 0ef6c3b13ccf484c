import abc

import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._custom_types import Scalar, ScalarLike


class AbstractSDE(eqx.Module):
    r"""A linear forward SDE with isotropic noise,

    $$\mathrm{d}x = f(t)\, x\, \mathrm{d}t + g(t)\, \mathrm{d}w, \qquad t \in [0, T],$$

    whose transition from data $x_0$ is Gaussian in closed form:
    $x_t \mid x_0 \sim \mathcal{N}(a(t) x_0, s(t)^2 I)$ with mean coefficient
    $a(t) = \exp\int_0^t f$ and variance $s(t)^2 = a(t)^2 \int_0^t g^2 / a^2$.

    Subclasses are final and implement `drift_coeff` ($f$), `diffusion` ($g$),
    `mean_coeff` ($a$), `std` ($s$), `prior_std` and `default_eps`. Everything else
    (drift, marginals, prior sampling and log-density, log-SNR) follows here.

    All methods act on ONE example (or on scalars); batch them with `jax.vmap`.
    """

    T: eqx.AbstractVar[float]

    @abc.abstractmethod
    def drift_coeff(self, t: ScalarLike) -> Scalar:
        """$f(t)$: the drift is $f(t)\\,x$."""

    @abc.abstractmethod
    def diffusion(self, t: ScalarLike) -> Scalar:
        """$g(t)$, the (scalar, isotropic) diffusion coefficient."""

    @abc.abstractmethod
    def mean_coeff(self, t: ScalarLike) -> Scalar:
        """$a(t)$: the marginal mean of $x_t$ given $x_0$ is $a(t)\\,x_0$."""

    @abc.abstractmethod
    def std(self, t: ScalarLike) -> Scalar:
        """$s(t)$: the standard deviation of $x_t$ given $x_0$."""

    @abc.abstractmethod
    def t_from_log_snr(
        self, log_snr: Float[ArrayLike, "*batch"]
    ) -> Float[Array, "*batch"]:
        """The time $t$ at which `self.log_snr(t)` equals `log_snr`: the inverse of the
        (decreasing) log-SNR, in closed form. Used for time grids uniform in log-SNR or
        in noise level, and by solvers that step in noise level (EDM)."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior $p_T$ (mean zero)."""

    @property
    @abc.abstractmethod
    def default_eps(self) -> float:
        """End time of sampling used in the paper (1e-3 for VP/sub-VP, 1e-5 for VE)."""

    def drift(
        self, t: ScalarLike, x: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        """Forward drift $f(t)\\,x$ on one example."""
        return self.drift_coeff(t) * jnp.asarray(x)

    def marginal(
        self, t: ScalarLike, x0: Float[ArrayLike, "*shape"]
    ) -> tuple[Float[Array, "*shape"], Scalar]:
        """Mean $a(t) x_0$ and standard deviation $s(t)$ of $x_t$ given $x_0$."""
        return self.mean_coeff(t) * jnp.asarray(x0), self.std(t)

    def log_snr(self, t: ScalarLike) -> Scalar:
        """$\\lambda(t) = \\log(a(t)^2 / s(t)^2)$, decreasing in $t$."""
        return 2 * (jnp.log(self.mean_coeff(t)) - jnp.log(self.std(t)))

    def transition(self, t_from: ScalarLike, t_to: ScalarLike) -> tuple[Scalar, Scalar]:
        r"""The Gaussian transition of the forward SDE over $[t_\text{from}, t_\text{to}]$
        ($t_\text{from} < t_\text{to}$): $x_{t_\text{to}} \mid x_{t_\text{from}}
        \sim \mathcal{N}(r\, x_{t_\text{from}}, v\, I)$ with
        $r = a(t_\text{to}) / a(t_\text{from})$ and
        $v = s(t_\text{to})^2 - r^2 s(t_\text{from})^2$.

        These are the discrete coefficients of the SDE over an actual step (for VP,
        $r = \sqrt{1 - \beta_i}$ and $v = \beta_i$ of DDPM), so samplers built on them
        work for any step grid.

        **Returns:** `(r, v)`.
        """
        r = self.mean_coeff(t_to) / self.mean_coeff(t_from)
        v = self.std(t_to) ** 2 - (r * self.std(t_from)) ** 2
        return r, v

    def prior_sample(
        self, key: PRNGKeyArray, shape: tuple[int, ...]
    ) -> Float[Array, "*shape"]:
        """Draw one sample (of the given data shape) from the prior $p_T$."""
        return self.prior_std * jr.normal(key, shape)

    def prior_log_prob(self, x: Float[ArrayLike, "*shape"]) -> Scalar:
        """Log-density of the prior $\\mathcal{N}(0, \\sigma_T^2 I)$ at one example."""
        x = jnp.asarray(x)
        var = self.prior_std**2
        return -0.5 * (jnp.sum(x**2) / var + x.size * jnp.log(2 * jnp.pi * var))
