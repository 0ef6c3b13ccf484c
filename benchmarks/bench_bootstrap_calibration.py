"""Calibration of a paired bootstrap for the solver comparison of `sd.bench` (issue
23 item 1; not yet wired into `sd.bench.run`).

The statistic is the sliced W2 distance of a sample set to a reference set (256 random
unit directions); its sampling noise comes from a bootstrap of 200 resamples of the
samples and of the reference, with the SAME resample indices for every figure of a
problem, so differences between figures are paired. On the 2-D mixture
`sd.bench.mixture_preset(2, 2)` with n = 200 points per set, over 100 repetitions
(vmapped): (a) an exact sampler (true samples) against the floor (an independent true
set, measured against the same reference): how often its paired z stays below 1.96
("at the floor"); (b) two identical samplers with independent draws: how often
|z| >= 1.96 ("called different"; two-sided 5%). Writes
benchmarks/results/bootstrap_calibration.json.

    python benchmarks/bench_bootstrap_calibration.py 200   # n = 200 (~13 min on 2 busy cores)
"""

import json
import math
import platform
import sys
import time

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

import scoresde_diffrax as sd


NUM_RESAMPLES = 200
Z_CRITICAL = 1.959964  # two-sided 5%
TEST = (
    f"paired bootstrap ({NUM_RESAMPLES} resamples of the samples and the reference, "
    "the same indices for every sampler and the floor), two-sided 5%"
)


def _sorted_projections(x: Array, theta: Array) -> Array:
    return jnp.sort(x @ theta.T, axis=0)


def _sw2_of_sorted(px: Array, pr: Array) -> Array:
    """Sliced W2 of two sets of sorted projections `(n, P)`, `(m, P)`: the quantile
    functions compared on a grid of `max(n, m)` points."""
    n_q = max(px.shape[0], pr.shape[0])
    q = (jnp.arange(n_q) + 0.5) / n_q

    def quantiles(s: Array) -> Array:
        idx = jnp.clip((q * s.shape[0]).astype(jnp.int32), 0, s.shape[0] - 1)
        return s[idx]

    return jnp.sqrt(jnp.mean((quantiles(px) - quantiles(pr)) ** 2))


@jax.jit
def _sw2_bootstrap(
    theta: Float[Array, "P D"],
    idx: Int[Array, "B n"],
    idx_ref: Int[Array, "B m"],
    x: Float[Array, "n D"],
    ref: Float[Array, "m D"],
) -> tuple[Float[Array, ""], Float[Array, " B"]]:
    """Sliced W2 of `x` to `ref` along the unit directions `theta`, and its value
    on each bootstrap resample (`x[idx[b]]` against `ref[idx_ref[b]]`)."""
    px, pr = x @ theta.T, ref @ theta.T
    value = _sw2_of_sorted(jnp.sort(px, axis=0), jnp.sort(pr, axis=0))

    def one(ij):
        i, j = ij
        return _sw2_of_sorted(jnp.sort(px[i], axis=0), jnp.sort(pr[j], axis=0))

    return value, jax.lax.map(one, (idx, idx_ref))


def bootstrap_indices(
    key: PRNGKeyArray, n: int, m: int, num_resamples: int = NUM_RESAMPLES
) -> tuple[Int[Array, "B n"], Int[Array, "B m"]]:
    """The resamples (with replacement) of `n` samples and `m` reference points that
    every figure of one problem uses, so that differences are paired."""
    ki, kj = jr.split(key)
    return (
        jr.randint(ki, (num_resamples, n), 0, n),
        jr.randint(kj, (num_resamples, m), 0, m),
    )


def paired_z(a: tuple[float, np.ndarray], b: tuple[float, np.ndarray]) -> float:
    """`(value_a - value_b) / sd` with `sd` the standard deviation of the paired
    bootstrap differences (`a`, `b`: `(value, replicates)` on the same resamples);
    0 where both are identical."""
    diff = float(a[0]) - float(b[0])
    sd = float(np.std(np.asarray(a[1], np.float64) - np.asarray(b[1]), ddof=1))
    if sd == 0.0:
        return 0.0 if diff == 0.0 else math.copysign(math.inf, diff)
    return diff / sd


def main(n: int, repetitions: int = 100) -> dict:
    mix = sd.bench.mixture_preset(2, 2)

    def rep(key):
        kx, kf, kr, ka, kb, kt, ki = jr.split(key, 7)
        theta = jr.normal(kt, (256, 2))
        theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
        idx, idr = bootstrap_indices(ki, n, n)
        ref = mix.sample(kr, n)
        return [
            _sw2_bootstrap(theta, idx, idr, mix.sample(k, n), ref)
            for k in (kx, kf, ka, kb)
        ]

    t = time.perf_counter()
    res = jax.jit(jax.vmap(rep))(jr.split(jr.key(0), repetitions))
    res = jax.tree_util.tree_map(np.asarray, res)
    seconds = time.perf_counter() - t
    at_floor = different = 0
    zs = []
    for r in range(repetitions):
        g = [(res[i][0][r], res[i][1][r]) for i in range(4)]
        z = paired_z(g[0], g[1])
        zs.append(z)
        at_floor += z < Z_CRITICAL
        different += abs(paired_z(g[2], g[3])) >= Z_CRITICAL
    return dict(
        command=" ".join(["python", *sys.argv]),
        machine=platform.processor() or platform.machine(),
        n=n,
        repetitions=repetitions,
        exact_sampler_at_floor=int(at_floor),
        identical_samplers_called_different=int(different),
        z_exact_vs_floor_mean=float(np.mean(zs)),
        z_exact_vs_floor_sd=float(np.std(zs)),
        seconds=seconds,
    )


if __name__ == "__main__":
    out = main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
    print(json.dumps(out, indent=1))
    with open("benchmarks/results/bootstrap_calibration.json", "w") as f:
        json.dump(out, f, indent=1)
