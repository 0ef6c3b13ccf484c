import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Scalar, ScalarLike
from .beta import AbstractBetaSDE


class VPSDE(AbstractBetaSDE):
    r"""Variance-preserving SDE (the continuous limit of DDPM), Song et al. (2021) eq. 11:

    $$\mathrm{d}x = -\tfrac12 \beta(t)\, x\, \mathrm{d}t + \sqrt{\beta(t)}\, \mathrm{d}w,
    \qquad \beta(t) = \beta_\min + \tfrac{t}{T} (\beta_\max - \beta_\min).$$

    With $B(t) = \int_0^t \beta$: $a(t) = e^{-B/2}$, $s(t)^2 = 1 - e^{-B}$. Prior
    $\mathcal{N}(0, I)$.

    **Arguments:**

    - `beta_min`: $\beta(0)$, > 0. Paper default 0.1.
    - `beta_max`: $\beta(T)$, >= `beta_min`. Paper default 20.
    - `T`: end time, > 0. Default 1.

    **Raises:** `ValueError` naming the field if a parameter is non-finite or out of
    range.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    T: float = 1.0

    def diffusion(self, t: ScalarLike) -> Scalar:
        return jnp.sqrt(self.beta(t))

    def std(self, t: ScalarLike) -> Scalar:
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))

    def integrated_beta_from_log_snr(
        self, log_snr: Float[ArrayLike, "*batch"]
    ) -> Float[Array, "*batch"]:
        # log_snr = -log(e^B - 1)  =>  B = log(1 + e^{-log_snr})
        return jnp.logaddexp(0.0, -jnp.asarray(log_snr))
