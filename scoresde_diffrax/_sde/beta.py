import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Scalar, ScalarLike
from .._scalars import check_positive
from .base import AbstractSDE


class AbstractBetaSDE(AbstractSDE):
    r"""An SDE driven by the linear schedule
    $\beta(t) = \beta_\min + \tfrac{t}{T}(\beta_\max - \beta_\min)$ with drift
    $-\tfrac12\beta(t)\,x$, so $a(t) = e^{-B(t)/2}$ where $B(t) = \int_0^t \beta$.
    Shared by [`VPSDE`][] and [`SubVPSDE`][], which differ in the diffusion.
    """

    beta_min: eqx.AbstractVar[float]
    beta_max: eqx.AbstractVar[float]

    def __check_init__(self):
        name = type(self).__name__
        lo = check_positive("beta_min", self.beta_min, owner=name)
        hi = check_positive("beta_max", self.beta_max, owner=name)
        check_positive("T", self.T, owner=name)
        if lo is not None and hi is not None and hi < lo:
            raise ValueError(
                f"{name}: `beta_max` must be >= `beta_min`, got "
                f"beta_min={self.beta_min}, beta_max={self.beta_max}."
            )

    def beta(self, t: ScalarLike) -> Scalar:
        r"""$\beta(t) = \beta_\min + \tfrac{t}{T}(\beta_\max - \beta_\min)$."""
        t = jnp.asarray(t)
        return self.beta_min + (t / self.T) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: ScalarLike) -> Scalar:
        r"""$B(t) = \int_0^t \beta(u)\,\mathrm{d}u$."""
        t = jnp.asarray(t)
        return self.beta_min * t + 0.5 * t**2 / self.T * (self.beta_max - self.beta_min)

    @abc.abstractmethod
    def integrated_beta_from_log_snr(
        self, log_snr: Float[ArrayLike, "*batch"]
    ) -> Float[Array, "*batch"]:
        r"""$B$ as a function of the log-SNR (the inverse of $\lambda(B)$)."""

    def t_from_log_snr(
        self, log_snr: Float[ArrayLike, "*batch"]
    ) -> Float[Array, "*batch"]:
        # Solve B(t) = beta_min t + (beta_max - beta_min) t^2 / (2T) = B for t >= 0, in
        # the form that stays accurate for small B and for beta_max == beta_min.
        b = self.integrated_beta_from_log_snr(log_snr)
        slope = (self.beta_max - self.beta_min) / self.T
        return 2 * b / (self.beta_min + jnp.sqrt(self.beta_min**2 + 2 * slope * b))

    def drift_coeff(self, t: ScalarLike) -> Scalar:
        return -0.5 * self.beta(t)

    def mean_coeff(self, t: ScalarLike) -> Scalar:
        return jnp.exp(-0.5 * self.integrated_beta(t))

    @property
    def prior_std(self) -> float:
        return 1.0

    @property
    def default_eps(self) -> float:
        return 1e-3
