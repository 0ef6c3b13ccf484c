"""What the test modules share: the SDEs and exact mixtures they test against, the
statistical check of generated samples against an exact mixture, the Gaussian case with
a closed-form probability-flow map, a score that counts its calls, and the command
line run in process with checkpoints written without training.

Test modules import from here (`from helpers import ...`), never from each other.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from scipy import special as scipy_special, stats as scipy_stats

import scoresde_diffrax as sd
from scoresde_diffrax import cli
from scoresde_diffrax._checkpoint import describe_model, describe_sde


SDES = {
    "vp": sd.VPSDE(),
    "subvp": sd.SubVPSDE(),
    "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0),
}


def mixture_2d() -> sd.GaussianMixture:
    """Three well-separated modes, unequal isotropic widths and weights."""
    means = jnp.array([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]])
    stds = jnp.array([0.5, 0.8, 0.6])
    return sd.GaussianMixture(means, stds, jnp.array([0.2, 0.5, 0.3]))


def mixture_16d() -> sd.GaussianMixture:
    """Four modes in 16-D with diagonal (per-dimension) standard deviations."""
    key = jax.random.key(1234)
    km, ks = jax.random.split(key)
    means = 3.0 * jax.random.normal(km, (4, 16))
    stds = jax.random.uniform(ks, (4, 16), minval=0.4, maxval=1.0)
    return sd.GaussianMixture(means, stds, jnp.array([0.1, 0.2, 0.3, 0.4]))


MIXTURES = {"2d": mixture_2d, "16d": mixture_16d}


# --------------------------------------------------------------------------------------
# Generated samples against an exact mixture
# --------------------------------------------------------------------------------------

# False-alarm rate of one `check_reproduces` call on true samples: ~60 sampler tests
# call it, so a change that redraws all their noise fails one of them spuriously with
# probability about 6 %. Half of it goes to the pooled within-mode variance (the most
# powerful test against the commonest sampler bias, a spread off by a few per cent:
# 3.5 standard errors), the other half equally to the six other families of tests; each
# family splits its share equally over its tests (Bonferroni).
ALPHA = 1e-3
_ALPHA_SHARE = {"variance": 0.5}
_ALPHA_SHARE_OTHERS = 0.5 / 6


def _two_sided_chi2(stat, dof):
    """Two-sided p-value of a chi-square statistic (too small or too large)."""
    lo = scipy_stats.chi2.cdf(stat, dof)
    hi = scipy_stats.chi2.sf(stat, dof)
    return np.minimum(1.0, 2 * np.minimum(lo, hi))


def _component_log_probs(mix: sd.GaussianMixture, x: np.ndarray) -> np.ndarray:
    """`log w_k + log N(x_i; mu_k, diag(sigma_k^2))`, shape `(n, K)`, in float64."""
    means = np.asarray(mix.means, np.float64)
    stds = np.asarray(mix.stds, np.float64)
    w = np.asarray(mix.weights, np.float64)
    z = (x[:, None, :] - means[None]) / stds[None]
    log_norm = np.sum(np.log(stds), -1) + 0.5 * means.shape[1] * math.log(2 * math.pi)
    return np.log(w)[None] - 0.5 * np.sum(z**2, -1) - log_norm[None]


def mixture_tests(mix: sd.GaussianMixture, x, key) -> dict[str, list]:
    """The tests behind [`check_reproduces`][], as `{family: [(p_value, what), ...]}`.

    Each p-value is exact or asymptotic for true samples (independent draws from `mix`),
    with well-separated modes:

    - `weights`: chi-square goodness of fit of the counts per mode (each sample in its
      most probable mode);
    - `log_prob`: mean exact log p_0 against as many true samples drawn with `key`
      (a z-test on the difference of the two means);
    - `variance`: all within-mode variances together: sum over modes k and dimensions d
      of (n_k - 1) v_kd / sigma_kd^2, chi-square with sum_k d (n_k - 1) degrees of
      freedom; v_kd the within-mode sample variance;
    - `mode_mean`: per mode, sum_d z_kd^2 with z_kd = (m_kd - mu_kd) / (sigma_kd /
      sqrt(n_k)), chi-square with d degrees of freedom; m_k the within-mode mean;
    - `mode_mean_coord`: per mode and dimension, z_kd against N(0, 1);
    - `mode_variance`: per mode, sum_d (n_k - 1) v_kd / sigma_kd^2 against chi-square
      with d (n_k - 1) degrees of freedom;
    - `mode_variance_coord`: per mode and dimension, (n_k - 1) v_kd / sigma_kd^2
      against chi-square with n_k - 1 degrees of freedom.

    Within-mode means and variances weigh each sample by its exact posterior
    responsibility r_k(x) (so n_k = sum_i r_k(x_i)): E[r_k(X) g(X)] = w_k E_k[g(X)]
    holds exactly for true samples however the modes overlap, and for well-separated
    modes the weights are 0 or 1 and the usual standard errors sigma_kd / sqrt(n_k)
    and sqrt(2 / (n_k - 1)) apply.
    """
    x = np.asarray(x, np.float64)
    n, d = x.shape
    if d != mix.dim or not np.all(np.isfinite(x)):
        raise AssertionError(
            f"samples of shape {x.shape}, finite: {np.isfinite(x).all()}"
        )
    means = np.asarray(mix.means, np.float64)
    stds = np.asarray(mix.stds, np.float64)
    w = np.asarray(mix.weights, np.float64)
    w = w / w.sum()  # float32 weights sum to 1 only to round-off
    k_total = means.shape[0]

    clp = _component_log_probs(mix, x)
    log_p = scipy_special.logsumexp(clp, axis=1)
    resp = np.exp(clp - log_p[:, None])  # (n, K)
    counts = np.bincount(np.argmax(clp, axis=1), minlength=k_total)

    tests: dict[str, list] = {}
    p = scipy_stats.chisquare(counts, w * n).pvalue
    tests["weights"] = [(p, f"mode counts {counts.tolist()} vs {np.round(w * n, 1)}")]

    x_true = np.asarray(mix.sample(key, n), np.float64)
    log_p_true = scipy_special.logsumexp(_component_log_probs(mix, x_true), axis=1)
    diff = log_p.mean() - log_p_true.mean()
    se = math.hypot(log_p.std(ddof=1), log_p_true.std(ddof=1)) / math.sqrt(n)
    p = 2 * scipy_stats.norm.sf(abs(diff) / se)
    tests["log_prob"] = [
        (
            p,
            f"mean log p0 {log_p.mean():.4f} vs {log_p_true.mean():.4f} for true "
            f"samples, difference +- {se:.4f} (1 SE)",
        )
    ]

    nk = resp.sum(0)  # (K,)
    ok = nk > 2
    m = (resp.T @ x) / np.maximum(nk, 1e-300)[:, None]  # (K, D)
    sq = np.einsum("ik,ikd->kd", resp, (x[:, None, :] - m[None]) ** 2)
    dof = nk - 1  # (K,)
    chi = sq / stds**2  # (K, D): (n_k - 1) v_kd / sigma_kd^2
    z = (m - means) / (stds / np.sqrt(np.maximum(nk, 1e-300))[:, None])

    total_dof = d * np.sum(dof[ok])
    ratio = np.sum(chi[ok]) / total_dof
    p = _two_sided_chi2(np.sum(chi[ok]), total_dof)
    se = math.sqrt(2 / total_dof)
    tests["variance"] = [(p, f"variance ratio {ratio:.4f} +- {se:.4f} (1 SE)")]
    tests["mode_mean"], tests["mode_mean_coord"] = [], []
    tests["mode_variance"], tests["mode_variance_coord"] = [], []
    for k in np.flatnonzero(ok):
        stat = float(np.sum(z[k] ** 2))
        tests["mode_mean"].append(
            (scipy_stats.chi2.sf(stat, d), f"mode {k}: sum z^2 = {stat:.1f} (d = {d})")
        )
        for j in range(d):
            tests["mode_mean_coord"].append(
                (
                    2 * scipy_stats.norm.sf(abs(z[k, j])),
                    f"mode {k}, dim {j}: mean {m[k, j]:.4f} vs {means[k, j]:.4f}, "
                    f"z = {z[k, j]:.2f}",
                )
            )
        p = _two_sided_chi2(np.sum(chi[k]), d * dof[k])
        tests["mode_variance"].append(
            (
                p,
                f"mode {k}: variance ratio {np.sum(chi[k]) / (d * dof[k]):.4f} +- "
                f"{math.sqrt(2 / (d * dof[k])):.4f} (n_k = {nk[k]:.0f})",
            )
        )
        for j in range(d):
            tests["mode_variance_coord"].append(
                (
                    _two_sided_chi2(chi[k, j], dof[k]),
                    f"mode {k}, dim {j}: variance ratio {chi[k, j] / dof[k]:.4f} +- "
                    f"{math.sqrt(2 / dof[k]):.4f}",
                )
            )
    return tests


def failed_tests(mix: sd.GaussianMixture, x, key, alpha: float = ALPHA) -> list[str]:
    """The tests of [`mixture_tests`][] that reject at family-wise level `alpha`
    (Bonferroni: half of `alpha` to the pooled variance, the rest equally to the other
    families, each of a family's tests an equal share of its family's); an empty list
    for samples that reproduce the mixture."""
    tests = mixture_tests(mix, x, key)
    assert len(tests) == 7, tests.keys()
    out = []
    for family, results in tests.items():
        share = _ALPHA_SHARE.get(family, _ALPHA_SHARE_OTHERS)
        level = alpha * share / max(len(results), 1)
        out += [
            f"{family}: {what} (p = {p:.2e} < {level:.1e})"
            for p, what in results
            if not p >= level  # NaN fails
        ]
    return out


def check_reproduces(mix: sd.GaussianMixture, x, key, alpha: float = ALPHA) -> None:
    """Assert that the samples `x` (shape `(n, D)`) are indistinguishable from `n` draws
    of `mix`: mode weights, mean log-density, within-mode variances pooled, and each
    mode's mean and variance, pooled over dimensions and per dimension (see
    [`mixture_tests`][]); false-alarm rate `alpha` for true samples."""
    failed = failed_tests(mix, x, key, alpha)
    assert not failed, "samples do not reproduce the mixture:\n" + "\n".join(failed)


# --------------------------------------------------------------------------------------
# Gaussian data: the probability-flow map in closed form
# --------------------------------------------------------------------------------------

GAUSS_MEAN, GAUSS_STD = jnp.array([1.0, -2.0, 0.5]), 0.7


def gaussian_case(sde):
    """Gaussian data N(mu, s0^2 I): the probability-flow ODE map from time u to time t
    is affine, in closed form: x_t = a(t) mu + (sig_t / sig_u) (x_u - a(u) mu),
    sig_t^2 = a(t)^2 s0^2 + s(t)^2. Returns the data and `exact(x_T, t)`."""
    mu, s0 = GAUSS_MEAN, GAUSS_STD
    mix = sd.GaussianMixture(mu[None], jnp.array([s0]))

    def exact(x_T, t):
        def sig(u):
            return jnp.sqrt((sde.mean_coeff(u) * s0) ** 2 + sde.std(u) ** 2)

        ratio = sig(t) / sig(sde.T)
        m_t, m_T = sde.mean_coeff(t) * mu, sde.mean_coeff(sde.T) * mu
        return m_t[None] + ratio * (x_T - m_T[None])

    return mix, exact


def gaussian_posterior_mean(sde, x_t, t):
    """E[x_0 | x_t] for the data of [`gaussian_case`][]: with x_t = a x_0 + s z,
    mu + a s0^2 / (a^2 s0^2 + s^2) (x_t - a mu) (Tweedie's formula, in closed form)."""
    mu, s0 = GAUSS_MEAN, GAUSS_STD
    a, s = sde.mean_coeff(t), sde.std(t)
    gain = a * s0**2 / (a**2 * s0**2 + s**2)
    return mu[None] + gain * (x_t - a * mu[None])


# --------------------------------------------------------------------------------------
# Scores that count
# --------------------------------------------------------------------------------------


class CountingCalls(eqx.Module):
    """An exact mixture score that counts its evaluations at run time."""

    inner: sd.MixtureScore
    counter: list = eqx.field(static=True)

    def __call__(self, t, x):
        jax.debug.callback(lambda: self.counter.append(1))
        return self.inner(t, x)


def restart_grid(sde, n_before: int, t_min: float, n_after: int):
    """A log-SNR grid through `t_min` (where a `Restart` jumps back)."""
    before = sd.time_grid(sde, n_before, "logsnr", eps=t_min)
    after = sd.time_grid(sde, n_after, "logsnr", start=t_min)
    return jnp.concatenate([before, after[1:]])


def inverse_mixture() -> sd.GaussianMixture:
    """The 8-D mixture of the inverse-problem tests (and `benchmarks/bench_inverse.py`):
    components 0 and 1 overlap on coordinates 0-3 and are far apart on 4-7;
    component 2 is far on 0-3. Weights 0.3 / 0.3 / 0.4."""
    means = [
        [-0.6, -0.6, 0.6, 0.6, 3.0, 3.0, -3.0, 0.0],
        [0.6, 0.6, -0.6, -0.6, -3.0, 3.0, 3.0, 0.0],
        [3.0, -3.0, 3.0, 3.0, 0.0, -3.0, 0.0, 3.0],
    ]
    stds = [
        [0.8, 0.9, 1.0, 0.7, 0.6, 0.8, 0.7, 0.9],
        [1.0, 0.7, 0.8, 0.9, 0.9, 0.6, 0.8, 0.7],
        [0.9, 0.8, 0.7, 1.0, 0.7, 0.9, 0.6, 0.8],
    ]
    return sd.GaussianMixture(
        jnp.array(means), jnp.array(stds), jnp.array([0.3, 0.3, 0.4])
    )


# --------------------------------------------------------------------------- the CLI


def cli_args(command: str, **flags) -> list[str]:
    """The argument list of `scoresde COMMAND --flag value ...`: one flag per keyword,
    in order, its underscores made dashes (`num_samples=8` -> `--num-samples 8`);
    `True` gives the bare flag, `False` and None leave it out; values as strings.

    `cli_args("sample", checkpoint=ck, num_samples=8, denoise=True)` is
    `["sample", "--checkpoint", str(ck), "--num-samples", "8", "--denoise"]`."""
    argv = [command]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        argv.append("--" + name.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


def run_cli(argv, capsys):
    """`scoresde ARGV` in process: its exit code, stdout and stderr (what was printed
    before the call is discarded)."""
    capsys.readouterr()
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    """Whether a command's stderr is one line and no traceback."""
    return err.count("\n") == 1 and "Traceback" not in err


def write_checkpoint(directory, model, sde, dataset):
    """An untrained checkpoint of `model` (what `load_checkpoint` reads), written
    without a training run (no compilation)."""
    state = sd.TrainState(
        model=model, ema=model, opt_state=None, step=jnp.asarray(1), key=jr.key(0)
    )
    meta = {
        "model": describe_model(model),
        "sde": describe_sde(sde),
        "data": dataset.metadata(),
    }
    sd.save_checkpoint(directory, state, meta)


def zero_weights(make):
    """The module `make(key)` builds, with zero weights, computed from its structure
    alone (`eqx.filter_eval_shape`: nothing compiles)."""
    like = eqx.filter_eval_shape(make, jr.key(0))
    return jax.tree_util.tree_map(
        lambda x: (
            jnp.zeros(x.shape, x.dtype) if isinstance(x, jax.ShapeDtypeStruct) else x
        ),
        like,
    )
