"""Likelihoods of exact Gaussian mixtures: NFE, wall time and error against the exact
log-density, for divergence estimators x data dimension x SDE x solver x batch x error
norm, side by side with a host-side SciPy RK45 stand-in of the paper's likelihood code.

    taskset -c 0 python benchmarks/bench_likelihood.py                 # every section
    taskset -c 0 python benchmarks/bench_likelihood.py --sections standin,norms
    taskset -c 0 python benchmarks/bench_likelihood.py --batches 1,256,4096

One CPU core: the script sets XLA's CPU flags for one thread before importing JAX
(`--threads all` leaves them); `taskset -c 0` pins the process to one core. Sections:

- `grid`: every estimator x D in {2, 16, 64} x VP/sub-VP/VE x `--batches`, defaults;
- `solvers`: Dopri5, Dopri8 and Heun-100 on VP (D = 2, 64);
- `norms`: D = 64, VP and VE, batch 256: the default per-example max-norm, diffrax's
  RMS over the whole state (the paper's SciPy norm), the max-norm without the
  log-density component, and per-example solves (`per_example=True`);
- `standin`: D = 64, VP and VE, batch 1 and 256, Rademacher and exact trace: our default
  against the SciPy stand-in on the same points, the same probes (ours, so the errors
  compare solve for solve) and the same tolerances, in one process; the speed-up is the
  ratio of the medians;
- `digits`: the digits checkpoint's bits/dim over `--digits-examples` test examples
  (default Rademacher, forward vs reverse mode).

For every configuration: batch points drawn from the exact p_eps (eps = 1e-5) of a
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
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path


if "--threads" not in sys.argv or sys.argv[sys.argv.index("--threads") + 1] != "all":
    # One thread for XLA:CPU (set before JAX starts); pin the process with taskset.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()

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
    "rademacher-vjp": sd.Hutchinson("rademacher", forward_mode=False),
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


def points(sde_name, dim, batch):
    """The SDE, the mixture, `batch` points of its exact p_eps and their exact
    log-density, and the exact log p_T."""
    sde, mix = SDES[sde_name], mixture(dim)
    m_eps = mix.marginal(sde, EPS)
    x = m_eps.sample(jr.key(0), batch)
    exact = np.asarray(jax.vmap(m_eps.log_prob)(x), np.float64)
    return sde, mix, x, exact, mix.marginal(sde, sde.T).log_prob


def run_case(
    sde_name, dim, est_name, solver_name, repeats, batch=BATCH, mode=None, **extra
):
    sde, mix, x, exact, log_pT = points(sde_name, dim, batch)
    kw = dict(SOLVERS[solver_name], divergence=ESTIMATORS[est_name], eps=EPS, **extra)
    score = mix.score(sde)

    def call():
        return sd.log_likelihood(jr.key(1), sde, score, x, prior_log_prob=log_pT, **kw)

    out, first, times = timed(call, repeats)
    err = np.asarray(out.log_prob, dtype=np.float64) - exact
    prior = np.asarray(jax.vmap(sde.prior_log_prob)(out.latent), dtype=np.float64)
    total = err - np.asarray(out.prior_log_prob, dtype=np.float64) + prior
    return dict(
        sde=sde_name,
        dim=dim,
        batch=batch,
        divergence=est_name,
        solver=solver_name,
        **({} if mode is None else dict(mode=mode)),
        nfe=float(np.mean(out.stats["num_score_evals"])),
        num_steps=float(np.mean(out.stats["num_steps"])),
        first_call_s=first,
        median_s=statistics.median(times),
        min_s=min(times),
        solve_err=float(np.mean(np.abs(err))) / dim,
        total_err=float(np.mean(np.abs(total))) / dim,
        bias=float(err.mean()),
        bias_se=_se(err),
        mae=float(np.mean(np.abs(err))),
        max_abs_err=float(np.max(np.abs(err))),
    )


def _se(err):
    return float(err.std(ddof=1) / np.sqrt(err.size)) if err.size > 1 else float("nan")


def _x_only_norm(y):
    """The per-example max-norm over the data component only (the log-density's error
    ignored)."""
    return sd.batch_max_rms_norm(y[0])


NORMS = {
    "max-norm (default)": {},
    "RMS over the state (the paper's SciPy norm)": dict(
        stepsize_controller=dfx.PIDController(**PID)
    ),
    "max-norm, data only": dict(
        stepsize_controller=dfx.PIDController(**PID, norm=_x_only_norm)
    ),
    "per-example solves": dict(per_example=True),
}


def standin(sde_name, dim, est_name, batch, repeats):
    """The paper's approach (its `likelihood.py`): SciPy RK45 on the host in float64,
    the batch as one flat state `(x, log-density)` (so SciPy's error norm is one RMS
    over the whole state), the drift and the divergence from one jitted call per
    evaluation (a device round trip each time) with reverse-mode products as the
    paper's `get_div_fn`: one VJP with the probe (Rademacher; our probes, so the errors
    compare solve for solve), or one VJP per basis vector (exact trace, the same
    `get_div_fn` applied to each basis vector, in a `lax.scan`)."""
    from scipy import integrate

    sde, mix, x, exact, log_pT = points(sde_name, dim, batch)
    score = mix.score(sde)
    if est_name == "exact":
        probes = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype), (batch, dim, dim))
    else:
        # example i's probes come from fold_in(key, i), as in sd.log_likelihood
        keys = jax.vmap(lambda i: jr.fold_in(jr.key(1), i))(jnp.arange(batch))
        probes = jax.vmap(ESTIMATORS[est_name].init)(keys, x)

    @jax.jit
    def f(t, y):
        xs = y[: batch * dim].reshape(batch, dim)

        def one(xi, vs):
            s, pull = jax.vjp(lambda z: score(t, z), xi)

            def body(total, v):
                (jv,) = pull(v)
                return total + jnp.sum(jv * v), None

            div, _ = jax.lax.scan(body, jnp.zeros((), s.dtype), vs)
            return s, div / (1 if est_name == "exact" else vs.shape[0])

        s, div_s = jax.vmap(one)(xs, probes)
        fc, g2 = sde.drift_coeff(t), sde.diffusion(t) ** 2
        dx = fc * xs - 0.5 * g2 * s
        dl = fc * dim - 0.5 * g2 * div_s
        return jnp.concatenate([dx.reshape(-1), dl])

    prior = jax.jit(jax.vmap(log_pT))

    def call():
        y0 = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(batch)])
        sol = integrate.solve_ivp(
            lambda t, y: np.asarray(f(jnp.float32(t), jnp.asarray(y, jnp.float32))),
            (EPS, sde.T),
            y0,
            rtol=PID["rtol"],
            atol=PID["atol"],
            method="RK45",
        )
        yT = sol.y[:, -1]
        xT = jnp.asarray(yT[: batch * dim].reshape(batch, dim), jnp.float32)
        return np.asarray(prior(xT), np.float64) + yT[batch * dim :], sol.nfev

    (logp, nfev), first, times = timed(call, repeats)
    err = logp - exact
    return dict(
        sde=sde_name,
        dim=dim,
        batch=batch,
        divergence=est_name,
        solver="scipy-rk45 (host, paper's approach)",
        nfe=float(nfev),
        num_steps=float("nan"),
        first_call_s=first,
        median_s=statistics.median(times),
        min_s=min(times),
        solve_err=float(np.mean(np.abs(err))) / dim,
        total_err=float("nan"),
        bias=float(err.mean()),
        bias_se=_se(err),
        mae=float(np.mean(np.abs(err))),
        max_abs_err=float(np.max(np.abs(err))),
    )


def digits(num_examples, repeats):
    """Bits/dim of the digits checkpoint on the first test examples, as `scoresde
    likelihood` computes them (one batched solve, Rademacher, rtol = atol = 1e-5)."""
    model, meta = sd.load_checkpoint(RESULTS.parent / "digits_checkpoint")
    model, sde = sd.nn.loop_friendly(model), sd.sde_from_description(meta["sde"])
    ds = sd.data.digits("test")
    scale, shift = meta["data"]["scale"], meta["data"]["shift"]
    lo, hi = sorted((shift, scale + shift))
    k = np.round(np.asarray(ds.x[:num_examples], np.float64) * (ds.levels - 1))
    key_deq, key_probe = jr.split(jr.key(0))
    y = sd.dequantize(key_deq, k, num_levels=ds.levels, data_range=(lo, hi))
    rows = []
    for name in ("rademacher", "rademacher-vjp"):

        def call(div=ESTIMATORS[name]):
            return sd.log_likelihood(key_probe, sde, model, y, divergence=div)

        out, first, times = timed(call, repeats)
        bpd = np.asarray(
            sd.bits_per_dim(out.log_prob, y, data_range=(lo, hi), num_levels=ds.levels),
            np.float64,
        )
        rows.append(
            dict(
                data="digits (test)",
                num_examples=int(y.shape[0]),
                divergence=name,
                nfe=int(out.stats["num_score_evals"]),
                num_steps=int(out.stats["num_steps"]),
                first_call_s=first,
                median_s=statistics.median(times),
                bits_per_dim=float(bpd.mean()),
                bits_per_dim_se=float(bpd.std(ddof=1) / math.sqrt(bpd.size)),
            )
        )
        print(rows[-1], flush=True)
    return rows


def fmt(r):
    return (
        f"| {r['sde']} | {r['dim']} | {r['batch']} | {r['divergence']} | {r['solver']}"
        f"{' ' + r['mode'] if 'mode' in r else ''} | {r['nfe']:.0f} | "
        f"{r['median_s']:.4f} | {r['min_s']:.4f} | {r['solve_err']:.1e} | "
        f"{r['total_err']:.1e} | {r['bias']:+.3f} ± {r['bias_se']:.3f} |"
    )


HEADER = (
    "| SDE | D | batch | divergence | solver | NFE | median s | min s | solve err/dim "
    "| total err/dim | bias ± se (nats) |\n|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--sections", default="grid,solvers,norms,standin,digits", help="see above"
    )
    parser.add_argument("--batches", default="1,256", help="batch sizes of `grid`")
    parser.add_argument("--dims", default="2,16,64", help="dimensions of `grid`")
    parser.add_argument("--digits-examples", type=int, default=64)
    parser.add_argument("--threads", choices=("one", "all"), default="one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = set(sections) - {"grid", "solvers", "norms", "standin", "digits"}
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}")
    batches = [int(b) for b in args.batches.split(",")]
    dims = [int(d) for d in args.dims.split(",")]

    rows, speedups, digit_rows = [], [], []
    print(HEADER, flush=True)

    def add(r):
        rows.append(r)
        print(fmt(r), flush=True)
        return r

    if "standin" in sections:
        # Ours and the stand-in alternate in one process, so the machine's load
        # changes hit both; the ratio is of the medians.
        for sde_name in ("vp", "ve"):
            for est in ("rademacher", "exact"):
                for batch in (1, 256):
                    ref = add(standin(sde_name, 64, est, batch, args.repeats))
                    ours = add(
                        run_case(sde_name, 64, est, "tsit5", args.repeats, batch)
                    )
                    speedups.append(
                        dict(
                            sde=sde_name,
                            dim=64,
                            divergence=est,
                            batch=batch,
                            speedup=ref["median_s"] / ours["median_s"],
                            nfe_ours=ours["nfe"],
                            nfe_standin=ref["nfe"],
                            mae_ours=ours["mae"],
                            mae_standin=ref["mae"],
                            max_err_ours=ours["max_abs_err"],
                            max_err_standin=ref["max_abs_err"],
                        )
                    )
                    print(speedups[-1], flush=True)
    if "norms" in sections:
        for sde_name in ("vp", "ve"):
            for est in ("rademacher", "exact"):
                for mode, extra in NORMS.items():
                    add(
                        run_case(
                            sde_name, 64, est, "tsit5", args.repeats, mode=mode, **extra
                        )
                    )
    if "grid" in sections:
        for batch in batches:
            for dim in dims:
                for sde_name in SDES:
                    for est in ESTIMATORS:
                        if est == "exact" and batch * dim > 256 * 64 and dim > 16:
                            reps = 1  # seconds a call: one timed repeat
                        else:
                            reps = args.repeats
                        add(run_case(sde_name, dim, est, "tsit5", reps, batch))
    if "solvers" in sections:
        for dim in (2, 64):
            for solver in ("dopri5", "dopri8", "heun-100"):
                for est in ("rademacher", "gaussian", "exact"):
                    add(run_case("vp", dim, est, solver, args.repeats))
    if "digits" in sections:
        digit_rows = digits(args.digits_examples, max(1, args.repeats // 2))

    result = dict(
        command=" ".join(
            [
                "PYTHONPATH=. taskset -c 0 python benchmarks/bench_likelihood.py",
                *sys.argv[1:],
            ]
        ),
        eps=EPS,
        tolerances=PID,
        conditions=dict(
            python=platform.python_version(),
            jax=jax.__version__,
            backend=jax.default_backend(),
            cpu_count=os.cpu_count(),
            xla_flags=os.environ.get("XLA_FLAGS", ""),
            affinity=sorted(os.sched_getaffinity(0)),
            load_average_at_end=os.getloadavg(),
            note="2 shared vCPUs, other engineers running tests at the same time; "
            "absolute times are noisy, compare within this run.",
        ),
        speedups=speedups,
        rows=rows,
        digits=digit_rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
