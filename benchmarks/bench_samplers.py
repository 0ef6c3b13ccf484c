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

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import scoresde_diffrax as sd  # noqa: E402


def mixture(dim: int) -> sd.GaussianMixture:
    if dim == 2:
        means = jnp.array([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]])
        return sd.GaussianMixture(means, jnp.array([0.5, 0.8, 0.6]), [0.2, 0.5, 0.3])
    return sd.bench.mixture_preset(dim, 4)  # seed 1234, weights 0.1, 0.2, 0.3, 0.4


def pid_sde(tol):
    return dfx.PIDController(rtol=tol, atol=tol, dcoeff=0.0)


PC = sd.PredictorCorrector(sd.ReverseDiffusion(), sd.Langevin(snr=0.16))
PC_BATCH = sd.PredictorCorrector(
    sd.ReverseDiffusion(), sd.Langevin(snr=0.16, batch_norm=True)
)
# name: (solver, method, time grid, score evaluations per step, fixed step counts)
FIXED = {
    "Euler-Maruyama": (dfx.Euler(), "sde", "uniform", 1, (50, 200, 1000)),
    "ReverseDiffusion": (sd.ReverseDiffusion(), "sde", "uniform", 1, (50, 200, 1000)),
    "AncestralSampling": (
        sd.AncestralSampling(),
        "sde",
        "uniform",
        1,
        (50, 200, 1000),
    ),
    "PC RD+Langevin(0.16)": (PC, "sde", "uniform", 2, (25, 100, 1000)),
    "PC RD+Langevin(0.16, batch norm)": (
        PC_BATCH,
        "sde",
        "uniform",
        2,
        (25, 100, 1000),
    ),
    "DDIM (eta=0), logsnr grid": (sd.DDIM(), "ode", "logsnr", 1, (10, 25, 50, 100)),
    "DPMSolverPP2M, logsnr grid": (
        sd.DPMSolverPP2M(),
        "ode",
        "logsnr",
        1,
        (10, 25, 50, 100),
    ),
    "EDMHeun, edm grid": (sd.EDMHeun(), "ode", "edm", 2, (5, 12, 25, 50)),
    "EDMHeun churn=0.1, edm grid": (
        sd.StochasticEDMHeun(churn=0.1),
        "sde",
        "edm",
        2,
        (12, 25, 50),
    ),
}
# name: (solver, method, tolerances, controller of a tolerance, max steps)
ADAPTIVE = {
    "ShARK adaptive (SDE)": (dfx.ShARK(), "sde", (1e-1, 3e-2, 1e-2), pid_sde, 16384),
    "SRA1 adaptive (SDE)": (dfx.SRA1(), "sde", (1e-1, 3e-2), pid_sde, 16384),
    "Tsit5 adaptive (PF ODE)": (
        dfx.Tsit5(),
        "ode",
        (1e-3, 1e-5),
        lambda t: dfx.PIDController(rtol=t, atol=t),
        4096,
    ),
}
SAMPLERS = [*FIXED, *ADAPTIVE]


def runs(one_budget: bool):
    """(name, [sd.bench.Sampler], NFE budgets) per sampler of the tables above."""
    for name, (solver, method, grid, per_step, steps) in FIXED.items():
        if one_budget:
            steps = [steps[len(steps) // 2]]
        sampler = sd.bench.Sampler(name, solver, method, grid, per_step)
        yield name, [sampler], [n * per_step for n in steps]
    for name, (solver, method, tols, controller, max_steps) in ADAPTIVE.items():
        if one_budget:
            tols = [tols[len(tols) // 2]]
        samplers = [
            sd.bench.Sampler(
                name,
                solver,
                method,
                adaptive=True,
                max_steps=max_steps,
                stepsize_controller=controller(t),
            )
            for t in tols
        ]
        yield name, samplers, [1]


# The runner's metrics -> this file's columns (errors as absolute values, as before).
def _columns(metrics: dict) -> dict:
    (vr, vr_se), (gap, gap_se) = metrics["variance_ratio"], metrics["log_prob_gap"]
    (w, w_se), (sw, sw_se) = metrics["weight_error"], metrics["sliced_w2"]
    return dict(
        variance_ratio_err=abs(vr - 1),
        logp_gap=abs(gap),
        weight_err=w,
        sw2=sw,
        variance_ratio_se=vr_se,
        logp_gap_se=gap_se,
        weight_err_se=w_se,
        sw2_se=sw_se,
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
        for sname, sde in sdes.items():
            problem = sd.bench.MixtureProblem(mix, sde, f"{dim}-D {sname}")
            for _, samplers, budgets in runs(args.one_budget):
                # One key for every call: the same reference, floor and projections.
                records = sd.bench.run(
                    jr.key(7), [problem], samplers, budgets, num_samples=n
                )
                for r in records:
                    m, floor = _columns(r.metrics), _columns(r.floor)
                    row = dict(
                        dim=dim,
                        sde=sname,
                        sampler=r.sampler,
                        nfe=r.nfe,
                        steps=r.steps,
                        wall_s=r.run_s,
                        compile_and_run_s=r.compile_s + r.run_s,
                        **m,
                        **{"floor_" + k: v for k, v in floor.items()},
                    )
                    rows.append(row)
                    print(
                        f"{dim:3d}D {sname:5s} {r.sampler:34s} nfe={r.nfe:5d} "
                        f"|vr-1|={m['variance_ratio_err']:.3f} "
                        f"({floor['variance_ratio_err']:.3f}) "
                        f"logp={m['logp_gap']:.3f} ({floor['logp_gap']:.3f}) "
                        f"w={m['weight_err']:.3f} ({floor['weight_err']:.3f}) "
                        f"sw2={m['sw2']:.4f} ({floor['sw2']:.4f}) t={r.run_s:.2f}s",
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
            "reference sample. Run by sd.bench.run; *_se are standard errors (sw2's "
            "over its random projections).",
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
