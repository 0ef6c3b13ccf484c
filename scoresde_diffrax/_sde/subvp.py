import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._custom_types import Scalar, ScalarLike
from .beta import AbstractBetaSDE


class SubVPSDE(AbstractBetaSDE):
    r"""Sub-variance-preserving SDE, Song et al. (2021) eq. 12:

    $$\mathrm{d}x = -\tfrac12 \beta(t)\, x\, \mathrm{d}t
    + \sqrt{\beta(t)\,(1 - e^{-2B(t)})}\, \mathrm{d}w,$$

    with $\beta$ and $B$ as for [`VPSDE`][]: $a(t) = e^{-B/2}$, $s(t) = 1 - e^{-B}$
    (its variance is below the VP one at every $t > 0$). Prior $\mathcal{N}(0, I)$.

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
        return jnp.sqrt(self.beta(t) * -jnp.expm1(-2 * self.integrated_beta(t)))

    def std(self, t: ScalarLike) -> Scalar:
        return -jnp.expm1(-self.integrated_beta(t))

    def integrated_beta_from_log_snr(
        self, log_snr: Float[ArrayLike, "*batch"]
    ) -> Float[Array, "*batch"]:
        # With u = e^{-B/2}: e^{log_snr/2} = u / (1 - u^2), so u = 2q / (1 + sqrt(1 + 4q^2))
        # (q = e^{log_snr/2}) and B = -2 log u = 2 asinh(e^{-log_snr/2} / 2).
        return 2 * jnp.arcsinh(0.5 * jnp.exp(-0.5 * jnp.asarray(log_snr)))
