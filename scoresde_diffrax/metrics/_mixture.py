from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._exact import GaussianMixture


class MixtureReport(NamedTuple):
    """How well samples reproduce a [`GaussianMixture`][], with the standard error each
    figure would have for true samples of the same size (its noise floor).

    - `mode_weights`, `mode_weights_se`: fraction of samples assigned to each component
      (by the most probable component) and the binomial standard error
      $\\sqrt{w(1-w)/n}$ of that fraction around the true weight.
    - `variance_ratio`, `variance_ratio_se`: mean over components and dimensions of
      (within-mode sample variance) / (true component variance); 1 for true samples,
      standard error from $\\mathrm{Var}[\\hat\\sigma^2/\\sigma^2] = 2/(n_k - 1)$.
    - `mean_log_prob`, `mean_log_prob_se`: mean exact $\\log p_0$ of the samples and
      its standard error.
    - `num_samples`.
    """

    mode_weights: np.ndarray
    mode_weights_se: np.ndarray
    variance_ratio: float
    variance_ratio_se: float
    mean_log_prob: float
    mean_log_prob_se: float
    num_samples: int

    def weight_z(self, mixture: GaussianMixture) -> float:
        """Largest |observed - true weight| in units of its standard error."""
        w = np.asarray(mixture.weights)
        return float(np.max(np.abs(self.mode_weights - w) / self.mode_weights_se))


def mixture_report(
    mixture: GaussianMixture, samples: Float[ArrayLike, "n D"]
) -> MixtureReport:
    """Compare `samples` (shape `(n, D)`) with `mixture`: mode weights, within-mode
    variance ratio and mean exact log-density, each with its sampling standard error.
    """
    x = jnp.asarray(samples, dtype=mixture.means.dtype)
    if x.ndim != 2 or x.shape[1] != mixture.dim:
        raise ValueError(
            f"`samples` must have shape (n, {mixture.dim}) for this mixture, got "
            f"{x.shape}."
        )
    if x.shape[0] < 1 or not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError(
            f"`samples` must be finite and non-empty, got shape {x.shape} with "
            f"{int(jnp.sum(~jnp.isfinite(x)))} NaN or inf entries."
        )
    n = x.shape[0]
    labels = np.asarray(jax.vmap(mixture.classify)(x))
    logp = np.asarray(jax.vmap(mixture.log_prob)(x), dtype=np.float64)
    xs = np.asarray(x, dtype=np.float64)
    w = np.asarray(mixture.weights, dtype=np.float64)
    true_var = np.asarray(mixture.stds, dtype=np.float64) ** 2
    means = np.asarray(mixture.means, dtype=np.float64)
    k_total, d = means.shape
    counts = np.bincount(labels, minlength=k_total)
    ratios, inv_dof = [], []
    for k in range(k_total):
        if counts[k] < 2:
            continue
        v = np.var(xs[labels == k], axis=0, ddof=1)
        ratios.append(v / true_var[k])
        inv_dof.append(2.0 / (counts[k] - 1))
    ratios = np.stack(ratios) if ratios else np.full((1, d), np.nan)
    cells = ratios.size
    var_se = float(np.sqrt(d * np.sum(inv_dof)) / cells) if inv_dof else np.nan
    return MixtureReport(
        mode_weights=counts / n,
        mode_weights_se=np.sqrt(w * (1 - w) / n),
        variance_ratio=float(np.mean(ratios)),
        variance_ratio_se=var_se,
        mean_log_prob=float(np.mean(logp)),
        mean_log_prob_se=float(np.std(logp, ddof=1) / np.sqrt(n)),
        num_samples=int(n),
    )
