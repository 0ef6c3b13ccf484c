"""Likelihoods of exact Gaussian mixtures: NFE, wall time and error against the exact
log-density, for divergence estimators x data dimension x SDE x solver.

    python benchmarks/bench_likelihood.py               # full grid, 5 timed repeats
    python benchmarks/bench_likelihood.py --repeats 3   # faster

For every configuration: batch 256 points drawn from the exact p_eps (eps = 1e-5) of a
mixture (2-D: three modes; 64-D: four modes with diagonal stds), one compile call, then
`--repeats` timed calls (`block_until_ready`); we report the median and the minimum.
Errors are against `GaussianMixture.marginal(sde, eps).log_prob`:

- `solve_err`: mean |log_prob - exact| per dimension with the EXACT log p_T at T
  (the error of the solve and, for Hutchinson, the estimator's noise);
- `total_err`: the same with the SDE's prior at T (what a user gets; adds the prior
  mismatch log p_T - log prior, which no solver removes);
- `bias`, `bias_se`: mean signed error of the solve (exact p_T) and its standard error.

Extra rows: the batched state with diffrax's default RMS norm vs our max-norm vs
per-example solves; and the paper's approach (SciPy RK45 on the host, one device
round-trip per evaluation) as a reference for the speed-up.

Writes `benchmarks/results/likelihood.json` (with the command and the conditions) and
prints a table. A benchmark, not a test.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import scoresde_diffrax as sd


BATCH = 256
EPS = 1e-5
RESULTS = Path(__file__).resolve().parent / "results" / "likelihood.json"

SDES = {
    "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0),
    "vp": sd.VPSDE(),
    "subvp": sd.SubVPSDE(),
}
ESTIMATORS = {
    "rademacher": sd.Hutchinson("rademacher"),
    "gaussian": sd.Hutchinson("gaussian"),
    "exact": sd.ExactDivergence(),
}
PID = dict(rtol=1e-5, atol=1e-5)
SOLVERS = {
    "tsit5": dict(solver=dfx.Tsit5(), **PID),
    "dopri5": dict(solver=dfx.Dopri5(), **PID),
    "dopri8": dict(solver=dfx.Dopri8(), **PID),
    "heun-100": dict(solver=dfx.Heun(), num_steps=100),
}


def mixture(dim: int) -> sd.GaussianMixture:
    if dim == 2:
        means = jnp.array([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]])
        return sd.GaussianMixture(
            means, jnp.array([0.5, 0.8, 0.6]), jnp.array([0.2, 0.5, 0.3])
        )
    km, ks = jr.split(jr.key(1234))
    means = 3.0 * jr.normal(km, (4, dim))
    stds = jr.uniform(ks, (4, dim), minval=0.4, maxval=1.0)
    return sd.GaussianMixture(means, stds, jnp.array([0.1, 0.2, 0.3, 0.4]))


def timed(fn, repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return out, first, times


def run_case(sde_name, dim, est_name, solver_name, repeats, **extra):
    sde, mix = SDES[sde_name], mixture(dim)
    m_eps = mix.marginal(sde, EPS)
    x = m_eps.sample(jr.key(0), BATCH)
    exact = jax.vmap(m_eps.log_prob)(x)
    log_pT = mix.marginal(sde, sde.T).log_prob
    kw = dict(SOLVERS[solver_name], divergence=ESTIMATORS[est_name], eps=EPS, **extra)
    score = mix.score(sde)

    def call():
        return sd.log_likelihood(jr.key(1), sde, score, x, prior_log_prob=log_pT, **kw)

    out, first, times = timed(call, repeats)
    err = np.asarray(out.log_prob - exact, dtype=np.float64)
    prior = np.asarray(jax.vmap(sde.prior_log_prob)(out.latent), dtype=np.float64)
    total = err - np.asarray(out.prior_log_prob, dtype=np.float64) + prior
    return dict(
        sde=sde_name,
        dim=dim,
        divergence=est_name,
        solver=solver_name,
        nfe=float(np.mean(out.stats["num_score_evals"])),
        num_steps=float(np.mean(out.stats["num_steps"])),
        first_call_s=first,
        median_s=statistics.median(times),
        min_s=min(times),
        solve_err=float(np.mean(np.abs(err))) / dim,
        total_err=float(np.mean(np.abs(total))) / dim,
        bias=float(err.mean()),
        bias_se=float(err.std(ddof=1) / np.sqrt(err.size)),
        max_abs_err=float(np.max(np.abs(err))),
        **{k: str(v) for k, v in extra.items()},
    )


def scipy_reference(dim, repeats):
    """The paper's approach: SciPy RK45 on the host, the batch as one flat state, the
    drift and the Hutchinson estimate from one jitted call per evaluation (a device
    round trip each time)."""
    from scipy import integrate

    sde, mix = SDES["vp"], mixture(dim)
    m_eps = mix.marginal(sde, EPS)
    x = m_eps.sample(jr.key(0), BATCH)
    exact = np.asarray(jax.vmap(m_eps.log_prob)(x))
    score = mix.score(sde)
    probes = jr.rademacher(jr.key(1), x.shape, dtype=x.dtype)

    @jax.jit
    def f(t, y):
        xs = y[: BATCH * dim].reshape(BATCH, dim)

        def one(xi, v):
            s, pull = jax.vjp(lambda z: score(t, z), xi)
            (jv,) = pull(v)
            return s, jnp.sum(jv * v)

        s, div_s = jax.vmap(one)(xs, probes)
        fc, g2 = sde.drift_coeff(t), sde.diffusion(t) ** 2
        dx = fc * xs - 0.5 * g2 * s
        dl = fc * dim - 0.5 * g2 * div_s
        return jnp.concatenate([dx.reshape(-1), dl])

    log_pT = jax.vmap(mix.marginal(sde, sde.T).log_prob)

    def call():
        y0 = np.concatenate([np.asarray(x).reshape(-1), np.zeros(BATCH)])
        sol = integrate.solve_ivp(
            lambda t, y: np.asarray(f(jnp.float32(t), jnp.asarray(y, jnp.float32))),
            (EPS, sde.T),
            y0,
            rtol=1e-5,
            atol=1e-5,
            method="RK45",
        )
        yT = sol.y[:, -1]
        xT = jnp.asarray(yT[: BATCH * dim].reshape(BATCH, dim), jnp.float32)
        return np.asarray(log_pT(xT)) + yT[BATCH * dim :], sol.nfev

    (logp, nfev), first, times = timed(call, repeats)
    err = logp - exact
    return dict(
        sde="vp",
        dim=dim,
        divergence="rademacher",
        solver="scipy-rk45 (host, paper's approach)",
        nfe=float(nfev),
        num_steps=float("nan"),
        first_call_s=first,
        median_s=statistics.median(times),
        min_s=min(times),
        solve_err=float(np.mean(np.abs(err))) / dim,
        total_err=float("nan"),
        bias=float(err.mean()),
        bias_se=float(err.std(ddof=1) / np.sqrt(err.size)),
        max_abs_err=float(np.max(np.abs(err))),
    )


def fmt(r):
    return (
        f"| {r['sde']} | {r['dim']} | {r['divergence']} | {r['solver']}"
        f"{' ' + r['mode'] if 'mode' in r else ''} | {r['nfe']:.0f} | "
        f"{r['median_s']:.4f} | {r['min_s']:.4f} | {r['solve_err']:.1e} | "
        f"{r['total_err']:.1e} | {r['bias']:+.3f} ± {r['bias_se']:.3f} |"
    )


HEADER = (
    "| SDE | D | divergence | solver | NFE | median s | min s | solve err/dim "
    "| total err/dim | bias ± se (nats) |\n|---|---:|---|---|---:|---:|---:|---:|---:|---:|"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    rows = []
    print(HEADER, flush=True)

    def add(r):
        rows.append(r)
        print(fmt(r), flush=True)

    # Every estimator x dimension x SDE, with Tsit5 at rtol = atol = 1e-5.
    for dim in (2, 64):
        for sde_name in SDES:
            for est in ESTIMATORS:
                add(run_case(sde_name, dim, est, "tsit5", args.repeats))
    # Other solvers, on VP.
    for dim in (2, 64):
        for solver in ("dopri5", "dopri8", "heun-100"):
            for est in ESTIMATORS:
                add(run_case("vp", dim, est, solver, args.repeats))
    # Batched state: diffrax's default RMS norm vs our max-norm vs per-example solves.
    for est in ("rademacher", "exact"):
        for mode, extra in (
            ("batched, RMS norm", dict(stepsize_controller=dfx.PIDController(**PID))),
            ("per-example (vmap)", dict(per_example=True)),
        ):
            kw = dict(extra)
            r = run_case("vp", 64, est, "tsit5", args.repeats, **kw)
            r.pop("stepsize_controller", None)
            r["mode"] = f"[{mode}]"
            add(r)
    add(scipy_reference(64, max(1, args.repeats // 2)))

    result = dict(
        command=" ".join(
            ["PYTHONPATH=. python benchmarks/bench_likelihood.py", *sys.argv[1:]]
        ),
        batch=BATCH,
        eps=EPS,
        conditions=dict(
            python=platform.python_version(),
            jax=jax.__version__,
            backend=jax.default_backend(),
            cpu_count=os.cpu_count(),
            load_average_at_end=os.getloadavg(),
            note="2 shared vCPUs, two other engineers working in parallel; "
            "absolute times are noisy, compare within this run.",
        ),
        rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
