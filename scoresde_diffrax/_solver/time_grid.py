import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._sde import AbstractSDE


def time_grid(
    sde: AbstractSDE,
    num_steps: int,
    kind: str = "uniform",
    eps: float | None = None,
    rho: float = 7.0,
) -> Float[Array, " n"]:
    r"""Times for a fixed-step sampler, decreasing from `sde.T` to `eps` (both
    included exactly), for `diffrax.StepTo(ts)` in [`sample`][].

    - `"uniform"`: uniform in $t$ (what `sample(num_steps=...)` uses).
    - `"logsnr"`: uniform in the log-SNR $\lambda(t)$ (DPM-Solver's choice).
    - `"edm"`: Karras et al.'s noise levels $\sigma_i = (\sigma_\max^{1/\rho} +
        \tfrac{i}{N}(\sigma_\min^{1/\rho} - \sigma_\max^{1/\rho}))^\rho$ with
        $\sigma = s(t)/a(t)$, between $\sigma(T)$ and $\sigma(\epsilon)$.

    Times come back from log-SNR through `sde.t_from_log_snr`, in closed form.

    **Arguments:**

    - `sde`: the forward SDE.
    - `num_steps`: number of steps, >= 1 (the grid has `num_steps + 1` times).
    - `kind`: `"uniform"`, `"logsnr"` or `"edm"`.
    - `eps`: the last time, `0 < eps < T`. Default `sde.default_eps`.
    - `rho`: the EDM exponent, > 0 (default 7).

    **Returns:** an array of shape `(num_steps + 1,)`.

    **Example:**

    ```python
    ts = sd.time_grid(sde, 20, kind="logsnr")
    x = sd.sample(key, sde, score, (1000, 2), solver=sd.DPMSolverPP2M(),
                  stepsize_controller=diffrax.StepTo(ts)).samples
    ```

    **Reference:** Karras et al., *Elucidating the Design Space of Diffusion-Based
    Generative Models*, NeurIPS 2022, eq. 5; Lu et al., *DPM-Solver*, NeurIPS 2022.
    """
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"`sde` must be an AbstractSDE, got {type(sde).__name__}.")
    if (
        isinstance(num_steps, bool)
        or not isinstance(num_steps, (int, np.integer))
        or num_steps < 1
    ):
        raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
    if kind not in ("uniform", "logsnr", "edm"):
        raise ValueError(f"`kind` must be 'uniform', 'logsnr' or 'edm', got {kind!r}.")
    T = float(sde.T)
    eps = sde.default_eps if eps is None else float(eps)
    if not (0 < eps < T):
        raise ValueError(f"`eps` must satisfy 0 < eps < T = {T}, got {eps}.")
    if not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"`rho` must be a finite number > 0, got {rho!r}.")
    n = int(num_steps)
    frac = jnp.arange(n + 1) / n
    if kind == "uniform":
        ts = T + (eps - T) * frac
    else:
        lam_T, lam_eps = sde.log_snr(T), sde.log_snr(eps)
        if kind == "logsnr":
            lam = lam_T + (lam_eps - lam_T) * frac
        else:
            # sigma = s / a = exp(-lambda / 2)
            hi = jnp.exp(-lam_T / (2 * rho))
            lo = jnp.exp(-lam_eps / (2 * rho))
            lam = -2 * rho * jnp.log(hi + (lo - hi) * frac)
        ts = sde.t_from_log_snr(lam)
    dtype = jnp.result_type(float)
    ts = jnp.asarray(ts, dtype).at[0].set(T).at[-1].set(eps)
    return ts
