"""NFE vs error of every sampler on exact Gaussian mixtures (issue #4).

For VP, sub-VP and VE, 2-D and 64-D mixtures, and a range of score-evaluation budgets:
within-mode variance ratio, mean exact log p0 gap, mode-weight error and sliced
Wasserstein-2, each beside the floor of true samples of the same size, and wall time.
Writes benchmarks/results/samplers.json and benchmarks/results/samplers.png.

    python benchmarks/bench_samplers.py            # full run
    python benchmarks/bench_samplers.py --quick    # a smoke run (2-D VP only)
    python benchmarks/bench_samplers.py --sdes vp --dims 64 --one-budget --n 20000
                                                   # one compile per sampler (GPU check)
"""

import argparse
import json
import os
import platform
import sys
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import scoresde_diffrax as sd  # noqa: E402


def mixture(dim: int) -> sd.GaussianMixture:
    if dim == 2:
        means = jnp.array([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]])
        return sd.GaussianMixture(means, jnp.array([0.5, 0.8, 0.6]), [0.2, 0.5, 0.3])
    km, ks = jr.split(jr.key(1234))
    means = 3.0 * jr.normal(km, (4, dim))
    stds = jr.uniform(ks, (4, dim), minval=0.4, maxval=1.0)
    return sd.GaussianMixture(means, stds, jnp.array([0.1, 0.2, 0.3, 0.4]))


def grid(kind, n):
    return lambda sde: dict(stepsize_controller=dfx.StepTo(sd.time_grid(sde, n, kind)))


def steps(n):
    return lambda sde: dict(num_steps=n)


def pid(tol):
    return lambda sde: dict(stepsize_controller=dfx.PIDController(rtol=tol, atol=tol))


def pid_sde(tol):
    return lambda sde: dict(
        stepsize_controller=dfx.PIDController(rtol=tol, atol=tol, dcoeff=0.0),
        max_steps=16384,
    )


PC = sd.PredictorCorrector(sd.ReverseDiffusion(), sd.Langevin(snr=0.16))
PC_BATCH = sd.PredictorCorrector(
    sd.ReverseDiffusion(), sd.Langevin(snr=0.16, batch_norm=True)
)
SAMPLERS = {
    # name: (solver, method, [settings])
    "Euler-Maruyama": (dfx.Euler(), "sde", [steps(n) for n in (50, 200, 1000)]),
    "ReverseDiffusion": (
        sd.ReverseDiffusion(),
        "sde",
        [steps(n) for n in (50, 200, 1000)],
    ),
    "AncestralSampling": (
        sd.AncestralSampling(),
        "sde",
        [steps(n) for n in (50, 200, 1000)],
    ),
    "PC RD+Langevin(0.16)": (PC, "sde", [steps(n) for n in (25, 100, 1000)]),
    "PC RD+Langevin(0.16, batch norm)": (
        PC_BATCH,
        "sde",
        [steps(n) for n in (25, 100, 1000)],
    ),
    "DDIM (eta=0), logsnr grid": (
        sd.DDIM(),
        "ode",
        [grid("logsnr", n) for n in (10, 25, 50, 100)],
    ),
    "DPMSolverPP2M, logsnr grid": (
        sd.DPMSolverPP2M(),
        "ode",
        [grid("logsnr", n) for n in (10, 25, 50, 100)],
    ),
    "EDMHeun, edm grid": (
        sd.EDMHeun(),
        "ode",
        [grid("edm", n) for n in (5, 12, 25, 50)],
    ),
    "EDMHeun churn=0.1, edm grid": (
        sd.StochasticEDMHeun(churn=0.1),
        "sde",
        [grid("edm", n) for n in (12, 25, 50)],
    ),
    "ShARK adaptive (SDE)": (
        dfx.ShARK(),
        "sde",
        [pid_sde(t) for t in (1e-1, 3e-2, 1e-2)],
    ),
    "SRA1 adaptive (SDE)": (dfx.SRA1(), "sde", [pid_sde(t) for t in (1e-1, 3e-2)]),
    "Tsit5 adaptive (PF ODE)": (dfx.Tsit5(), "ode", [pid(t) for t in (1e-3, 1e-5)]),
}


def metrics(mix, x, ref, key):
    rep = sd.metrics.mixture_report(mix, x)
    true = sd.metrics.mixture_report(mix, ref)
    return dict(
        variance_ratio_err=abs(rep.variance_ratio - 1),
        logp_gap=abs(rep.mean_log_prob - true.mean_log_prob),
        weight_err=float(np.max(np.abs(rep.mode_weights - np.asarray(mix.weights)))),
        sw2=float(sd.metrics.sliced_wasserstein(key, x, ref)),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="2-D VP only")
    ap.add_argument("--sdes", default="vp,subvp,ve", help="comma-separated subset")
    ap.add_argument("--dims", default="2,64", help="comma-separated subset of 2,64")
    ap.add_argument(
        "--one-budget",
        action="store_true",
        help="only the middle NFE budget of each sampler (one compile each)",
    )
    ap.add_argument("--out", default=None, help="JSON path (PNG beside it)")
    args = ap.parse_args()
    all_sdes = {"vp": sd.VPSDE(), "subvp": sd.SubVPSDE(), "ve": sd.VESDE(0.01, 50.0)}
    sdes = {k: all_sdes[k] for k in args.sdes.split(",")}
    dims = [int(d) for d in args.dims.split(",")]
    if args.quick:
        sdes, dims = {"vp": all_sdes["vp"]}, [2]
    n = args.n
    rows = []
    for dim in dims:
        mix = mixture(dim)
        ref = mix.sample(jr.key(100), n)  # the reference "truth" sample
        floor = metrics(mix, mix.sample(jr.key(101), n), ref, jr.key(5))
        for sname, sde in sdes.items():
            score = mix.score(sde)
            for name, (solver, method, settings) in SAMPLERS.items():
                if args.one_budget:
                    settings = [settings[len(settings) // 2]]
                for make in settings:
                    kw = make(sde)
                    times = []
                    for _ in range(2):  # the first call compiles
                        t = time.perf_counter()
                        out = sd.sample(
                            jr.key(7),
                            sde,
                            score,
                            (n, dim),
                            solver=solver,
                            method=method,
                            **kw,
                        )
                        out.samples.block_until_ready()
                        times.append(time.perf_counter() - t)
                    t_first, wall = times
                    m = metrics(mix, out.samples, ref, jr.key(5))
                    row = dict(
                        dim=dim,
                        sde=sname,
                        sampler=name,
                        nfe=int(out.stats["num_score_evals"]),
                        steps=int(out.stats["num_steps"]),
                        wall_s=wall,
                        compile_and_run_s=t_first,
                        **m,
                        **{"floor_" + k: v for k, v in floor.items()},
                    )
                    rows.append(row)
                    print(
                        f"{dim:3d}D {sname:5s} {name:34s} nfe={row['nfe']:5d} "
                        f"|vr-1|={m['variance_ratio_err']:.3f} ({floor['variance_ratio_err']:.3f}) "
                        f"logp={m['logp_gap']:.3f} ({floor['logp_gap']:.3f}) "
                        f"w={m['weight_err']:.3f} ({floor['weight_err']:.3f}) "
                        f"sw2={m['sw2']:.4f} ({floor['sw2']:.4f}) t={wall:.2f}s",
                        flush=True,
                    )
    out = dict(
        command="python " + " ".join(sys.argv),
        conditions=dict(
            jax=jax.__version__,
            diffrax=dfx.__version__ if hasattr(dfx, "__version__") else "",
            backend=jax.default_backend(),
            cpu_count=os.cpu_count(),
            machine=platform.machine(),
            num_samples=n,
            note="2 CPU cores shared with other jobs: wall times are noisy; compare "
            "within one run. Floors are true samples of the same size vs the same "
            "reference sample.",
        ),
        rows=rows,
    )
    if args.out is None:
        here = os.path.join(os.path.dirname(__file__), "results")
        name = "samplers_quick" if args.quick else "samplers"
        args.out = os.path.join(here, name + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    plot(rows, os.path.splitext(args.out)[0] + ".png")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    combos = sorted({(r["dim"], r["sde"]) for r in rows})
    fig, axes = plt.subplots(
        2, len(combos), figsize=(4 * len(combos), 7), squeeze=False
    )
    for j, (dim, sname) in enumerate(combos):
        sub = [r for r in rows if r["dim"] == dim and r["sde"] == sname]
        for i, key in enumerate(["sw2", "variance_ratio_err"]):
            ax = axes[i, j]
            for name in SAMPLERS:
                pts = sorted((r["nfe"], r[key]) for r in sub if r["sampler"] == name)
                if pts:
                    ax.plot(*zip(*pts, strict=True), "o-", ms=3, label=name)
            ax.axhline(
                sub[0]["floor_" + key], color="k", ls="--", lw=1, label="true samples"
            )
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("score evaluations")
            ax.set_title(f"{dim}-D {sname}: {key}")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
