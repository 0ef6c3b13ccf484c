import math

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Scalar, ScalarLike
from .._scalars import check_positive
from .base import AbstractSDE


class VESDE(AbstractSDE):
    r"""Variance-exploding SDE (the continuous limit of SMLD/NCSN), Song et al. (2021)
    eq. 9, with $\sigma(t) = \sigma_\min (\sigma_\max / \sigma_\min)^t$:

    $$\mathrm{d}x = \sigma(t) \sqrt{2 \log(\sigma_\max / \sigma_\min)}\, \mathrm{d}w.$$

    $a(t) = 1$ and, exactly, $s(t)^2 = \sigma(t)^2 - \sigma_\min^2$ (the paper's code
    uses $\sigma(t)$, which ignores the $\sigma_\min^2$ present at $t = 0$). Prior
    $\mathcal{N}(0, \sigma_\max^2 I)$, as in the paper.

    **Arguments:**

    - `sigma_min`: > 0. Paper default 0.01.
    - `sigma_max`: > `sigma_min`. Paper default 50 (CIFAR-10; choose it near the
        largest pairwise distance of your data).
    - `T`: end time, > 0. Default 1.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    T: float = 1.0

    def __check_init__(self):
        lo = check_positive("sigma_min", self.sigma_min, owner="VESDE")
        hi = check_positive("sigma_max", self.sigma_max, owner="VESDE")
        check_positive("T", self.T, owner="VESDE")
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(
                "VESDE: `sigma_min` must be < `sigma_max`, got "
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}."
            )

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: ScalarLike) -> Scalar:
        """$\\sigma(t) = \\sigma_\\min (\\sigma_\\max/\\sigma_\\min)^{t/T}$."""
        t = jnp.asarray(t)
        return self.sigma_min * jnp.exp(self._log_ratio * t / self.T)

    def drift_coeff(self, t: ScalarLike) -> Scalar:
        return jnp.zeros_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def diffusion(self, t: ScalarLike) -> Scalar:
        return self.sigma(t) * jnp.sqrt(2 * self._log_ratio / self.T)

    def mean_coeff(self, t: ScalarLike) -> Scalar:
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def std(self, t: ScalarLike) -> Scalar:
        # sigma(t)^2 - sigma_min^2 = sigma_min^2 expm1(2 log(ratio) t / T)
        t = jnp.asarray(t)
        return self.sigma_min * jnp.sqrt(jnp.expm1(2 * self._log_ratio * t / self.T))

    def t_from_log_snr(
        self, log_snr: Float[ArrayLike, "*batch"]
    ) -> Float[Array, "*batch"]:
        # log_snr = -log(sigma_min^2 expm1(2 L t / T))
        x = jnp.exp(-jnp.asarray(log_snr)) / self.sigma_min**2
        return self.T * jnp.log1p(x) / (2 * self._log_ratio)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    @property
    def default_eps(self) -> float:
        return 1e-5
