import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._sde import AbstractSDE


_KINDS = ("uniform", "quadratic", "logsnr", "edm")


def time_grid(
    sde: AbstractSDE,
    num_steps: int,
    kind: str = "uniform",
    eps: float | None = None,
    rho: float = 7.0,
    start: float | None = None,
) -> Float[Array, " n"]:
    r"""Times for a fixed-step sampler, decreasing from `sde.T` (or `start`) to `eps`
    (both included exactly), for `diffrax.StepTo(ts)` in [`sample`][].

    - `"uniform"`: uniform in $t$ (what `sample(num_steps=...)` uses).
    - `"quadratic"`: uniform in $\sqrt{t - \epsilon}$, i.e.
        $t_i = \epsilon + (T - \epsilon)(1 - i/N)^2$ (DDIM's "quadratic" schedule:
        small steps near the data).
    - `"logsnr"`: uniform in the log-SNR $\lambda(t)$ (DPM-Solver's choice).
    - `"edm"`: Karras et al.'s noise levels $\sigma_i = (\sigma_\max^{1/\rho} +
        \tfrac{i}{N}(\sigma_\min^{1/\rho} - \sigma_\max^{1/\rho}))^\rho$ with
        $\sigma = s(t)/a(t)$, between $\sigma(T)$ and $\sigma(\epsilon)$.

    Times come back from log-SNR through `sde.t_from_log_snr`, in closed form.

    **Arguments:**

    - `sde`: the forward SDE.
    - `num_steps`: number of steps, >= 1 (the grid has `num_steps + 1` times).
    - `kind`: `"uniform"`, `"quadratic"`, `"logsnr"` or `"edm"`.
    - `eps`: the last time, `0 < eps < T`. Default `sde.default_eps`.
    - `rho`: the EDM exponent, > 0 (default 7).
    - `start`: the first time, `eps < start <= T` (default `sde.T`): grids in pieces,
        e.g. one through a [`Restart`][]'s `t_min`:
        `jnp.concatenate([time_grid(sde, 6, eps=t_min), time_grid(sde, 4, start=t_min)[1:]])`.

    **Returns:** an array of shape `(num_steps + 1,)`.

    **Example:**

    ```python
    ts = sd.time_grid(sde, 20, kind="logsnr")
    x = sd.sample(key, sde, score, (1000, 2), solver=sd.DPMSolverPP2M(),
                  stepsize_controller=diffrax.StepTo(ts)).samples
    ```

    For few steps (10-20 score evaluations) of the exponential integrators
    ([`DPMSolverPP2M`][], [`DPMSolverPP3M`][], [`UniPC`][]) `"logsnr"` was the best of
    these kinds on exact mixtures, and the end matters: for [`VESDE`][] the paper's
    `eps = 1e-5` ends at the noise level $s(\epsilon) = 1.3 \times 10^{-4}$ (the exact
    marginal std $\sqrt{\sigma(t)^2 - \sigma_\min^2}$; the paper's code would end at
    $\sigma_\min = 0.01$), which spends a third of a log-SNR grid below any data's
    resolution; `eps` with $s(\epsilon) \approx \sigma_\min$ ($t \approx 0.041$ for
    `VESDE(0.01, 50)`) is better there (`benchmarks/README.md`).

    **Reference:** Karras et al., *Elucidating the Design Space of Diffusion-Based
    Generative Models*, NeurIPS 2022, eq. 5; Lu et al., *DPM-Solver*, NeurIPS 2022;
    Song, Meng, Ermon, *Denoising Diffusion Implicit Models*, ICLR 2021 (quadratic).
    """
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"`sde` must be an AbstractSDE, got {type(sde).__name__}.")
    if (
        isinstance(num_steps, bool)
        or not isinstance(num_steps, (int, np.integer))
        or num_steps < 1
    ):
        raise ValueError(f"`num_steps` must be an int >= 1, got {num_steps!r}.")
    if kind not in _KINDS:
        raise ValueError(
            f"`kind` must be 'uniform', 'quadratic', 'logsnr' or 'edm', got {kind!r}."
        )
    T = float(sde.T)
    eps = sde.default_eps if eps is None else float(eps)
    if not (0 < eps < T):
        raise ValueError(f"`eps` must satisfy 0 < eps < T = {T}, got {eps}.")
    if start is not None:
        start = float(start)
        if not (eps < start <= T):
            raise ValueError(
                f"`start` must satisfy eps < start <= T, i.e. {eps} < start <= {T}, "
                f"got {start}."
            )
        T = start
    if not (rho > 0 and math.isfinite(rho)):
        raise ValueError(f"`rho` must be a finite number > 0, got {rho!r}.")
    n = int(num_steps)
    frac = jnp.arange(n + 1) / n
    if kind == "uniform":
        ts = T + (eps - T) * frac
    elif kind == "quadratic":
        ts = eps + (T - eps) * (1 - frac) ** 2
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
