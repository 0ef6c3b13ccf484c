"""Learned time grids on the few-step leaderboard's exact mixtures (issue 21).

For VP, sub-VP and VE and the 2-D, 16-D and 64-D mixtures of `bench_fewstep.py`, the
winning few-step samplers at 5, 10 and 20 score evaluations, each on its fixed grid and
on a grid learned by `sd.learn_time_grid` (default settings: 256 training prior draws,
256 held-out ones, an adaptive Tsit5 teacher at rtol = atol = 1e-6, at most 200 Adam
steps), beside the paper's predictor-corrector sampler at 1000 steps (2000
evaluations), run in the same process. The grid is learned on prior draws of one key
and scored on 10,000 samples of another (never seen in learning), by the mean exact
log p0 gap as in `bench_fewstep.py`. Each learned row records the learning's cost
(seconds, teacher evaluations, optimiser steps). Writes
benchmarks/results/learned_grid[_<dims>].json and prints the table.

    python benchmarks/bench_learned_grid.py --dims 2,16      # the 2-D and 16-D cases
    python benchmarks/bench_learned_grid.py --dims 2 --sdes vp --n 2000   # a smoke run
"""

import argparse
import json
import math
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
sys.path.insert(0, os.path.dirname(__file__))
from bench_fewstep import eps_at_noise, evaluate, SDES, timed  # noqa: E402
from bench_samplers import mixture  # noqa: E402

import scoresde_diffrax as sd  # noqa: E402


BUDGETS = (5, 10, 20)
PC = sd.PredictorCorrector(sd.ReverseDiffusion(), sd.Langevin(0.16, norms="batch"))
PC_NAME = "PC paper: RD + Langevin(0.16, batch norms), 1000 steps"
# name: (solver, end noise level s/a of the fixed grid, denoise, learned variants):
# the leaderboard's winners at 10 and 20 evaluations (bench_fewstep.py's names), each
# on its fixed log-SNR grid and on the grids learned from it. A learned variant is a
# name suffix -> learn_time_grid's extra arguments.
LEARN = {"learned": dict()}
LEARN_END = {"learned end": dict(learn_end=True)}
SAMPLERS = {
    "UniPC-3 bh2, logsnr, s_end=0.01": (sd.UniPC(3), 0.01, False, LEARN),
    "UniPC-3 bh2, logsnr, s_end=0.03 + denoise": (sd.UniPC(3), 0.03, True, LEARN_END),
    "DPM-Solver++(3M), logsnr, s_end=0.01": (sd.DPMSolverPP3M(), 0.01, False, {}),
}


def run_one(ctx, name, budget, solver, kw, learn=None):
    case, mix, n, dim = ctx["case"], ctx["mix"], ctx["n"], ctx["case"]["dim"]
    out, wall = timed(
        lambda: sd.sample(
            jr.key(7), ctx["sde"], ctx["score"], (n, dim), solver=solver, **kw
        )
    )
    m = evaluate(mix, out.samples, case["truth"], ctx["ref"], jr.key(5))
    row = dict(
        case,
        sampler=name,
        budget=budget,
        nfe=int(out.stats["num_score_evals"]),
        wall_s=wall,
        **m,
    )
    if learn is not None:
        row["learn"] = learn
    extra = "" if learn is None else f" learn={learn['seconds']:.1f}s"
    print(
        f"{dim:2d}D {case['sde']:5s} {name:58s} nfe={row['nfe']:4d} "
        f"gap={m['gap']:+8.3f} (se {case['gap_se']:.3f}) "
        f"vr={m['variance_ratio']:.3f} sw2={m['sw2']:.4f} t={wall:.2f}s{extra}",
        flush=True,
    )
    return row


def learn(ctx, solver, budget, end, denoise, extra):
    sde = ctx["sde"]
    eps = eps_at_noise(sde, end)
    g = sd.learn_time_grid(
        jr.key(0),
        sde,
        ctx["score"],
        (ctx["num_train"], ctx["case"]["dim"]),
        solver=solver,
        num_evals=budget,
        eps=eps,
        denoise=denoise,
        **extra,
    )
    info = dict(
        seconds=g.seconds,
        teacher_seconds=g.teacher_seconds,
        teacher_evals=g.teacher_evals,
        optimiser_steps=g.optimiser_steps,
        best_iteration=g.best_iteration,
        initial=g.initial,
        held_out_initial=g.initial_held_out_loss,
        held_out_best=g.best_held_out_loss,
        ts=[float(t) for t in np.asarray(g.ts)],
    )
    return g, info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--num-train", type=int, default=256)
    ap.add_argument("--dims", default="2,16,64")
    ap.add_argument("--sdes", default="vp,subvp,ve")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--samplers", default=None, help="names of SAMPLERS, ';'-separated")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON")
    args = ap.parse_args()
    here = os.path.join(os.path.dirname(__file__), "results")
    if args.merge:
        runs = [json.load(open(p)) for p in args.merge]
        out = dict(
            command="python " + " ".join(sys.argv),
            runs=[dict(command=r["command"], conditions=r["conditions"]) for r in runs],
            rows=[row for r in runs for row in r["rows"]],
        )
        path = args.out or os.path.join(here, "learned_grid.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        print(table(out["rows"]))
        return
    samplers = SAMPLERS
    if args.samplers:
        samplers = {s.strip(): SAMPLERS[s.strip()] for s in args.samplers.split(";")}
    budgets = [int(b) for b in args.budgets.split(",")]
    path = args.out or os.path.join(
        here, f"learned_grid_{args.dims.replace(',', '_')}.json"
    )
    n, rows = args.n, []
    for dim in [int(d) for d in args.dims.split(",")]:
        mix = mixture(dim)
        big = mix.sample(jr.key(12345), 200_000)
        lp_big = jax.jit(jax.vmap(mix.log_prob))(big)
        truth = float(jnp.mean(lp_big))
        se = float(jnp.std(lp_big)) / n**0.5
        ref = mix.sample(jr.key(100), n)
        for sname in args.sdes.split(","):
            sde = SDES[sname]
            case = dict(dim=dim, sde=sname, truth=truth, gap_se=se)
            ctx = dict(
                case=case,
                mix=mix,
                sde=sde,
                score=mix.score(sde),
                n=n,
                ref=ref,
                num_train=args.num_train,
            )
            rows.append(run_one(ctx, PC_NAME, None, PC, dict(num_steps=1000)))
            for budget in budgets:
                for name, (solver, end, denoise, variants) in samplers.items():
                    eps = eps_at_noise(sde, end)
                    steps = budget - int(denoise)
                    if steps < solver.min_grid_steps():
                        continue
                    ts = sd.time_grid(sde, steps, "logsnr", eps=eps)
                    kw = dict(stepsize_controller=dfx.StepTo(ts), eps=eps)
                    rows.append(
                        run_one(ctx, name, budget, solver, kw | {"denoise": denoise})
                    )
                    for suffix, extra in variants.items():
                        t = time.perf_counter()
                        g, info = learn(ctx, solver, budget, end, denoise, extra)
                        info["wall_s"] = time.perf_counter() - t
                        rows.append(
                            run_one(
                                ctx,
                                f"{name}, {suffix}",
                                budget,
                                solver,
                                g.sample_kwargs(),
                                info,
                            )
                        )
            with open(path, "w") as f:  # each case as it completes
                json.dump(record(rows, args), f, indent=1)
    print(table(rows))


def record(rows, args):
    return dict(
        command="python " + " ".join(sys.argv),
        conditions=dict(
            jax=jax.__version__,
            backend=jax.default_backend(),
            cpu_count=os.cpu_count(),
            machine=platform.machine(),
            load_average=os.getloadavg(),
            num_samples=args.n,
            num_train=args.num_train,
            note="CPU cores shared with other jobs: wall times are noisy. gap = mean "
            "log p0 of 10,000 samples (key 7, never used in learning) minus the exact "
            "E[log p0]; gap_se its standard error. Grids learned on prior draws of "
            "key 0 (training and held-out halves).",
        ),
        rows=rows,
    )


def _fixed_best_at(case_rows, fewstep, dim, sname, budget):
    """The best |gap| of every fixed grid at `budget`: this run's fixed rows and the
    few-step leaderboard's (benchmarks/results/fewstep.json), if there."""
    cand = [
        r
        for r in case_rows
        if r.get("budget") == budget and "learned" not in r["sampler"]
    ]
    cand += [
        r
        for r in fewstep
        if r["dim"] == dim
        and r["sde"] == sname
        and r.get("budget") == budget
        and r["nfe"] <= budget
    ]
    return min(cand, key=lambda r: abs(r["gap"])) if cand else None


def table(rows) -> str:
    """Per case: PC at 2000, the best fixed grid at 10 (this run and the leaderboard),
    the best learned grid at 5/10/20; then the issue's two goals."""
    fs = os.path.join(os.path.dirname(__file__), "results", "fewstep.json")
    fewstep = json.load(open(fs))["rows"] if os.path.exists(fs) else []
    budgets = sorted({r["budget"] for r in rows if r.get("budget")})
    lines = [
        "| case (SE of gap) | PC paper, 2000 | best fixed at 10 | "
        + " | ".join(f"learned at {b}" for b in budgets)
        + " |",
        "|---|---:|---|" + "---|" * len(budgets),
    ]
    goals = [
        "| case | learned at 10 vs PC-2000 (abs gap) | met? | learned at 5 vs best "
        "fixed at 10 (abs gap) | beats it? | learning s (10 evals) |",
        "|---|---|---|---|---|---:|",
    ]
    for dim, sname in sorted({(r["dim"], r["sde"]) for r in rows}):
        sub = [r for r in rows if r["dim"] == dim and r["sde"] == sname]
        pc = next(r for r in sub if r["sampler"] == PC_NAME)
        se = sub[0]["gap_se"]
        f10 = _fixed_best_at(sub, fewstep, dim, sname, 10)
        cells = [f"{pc['gap']:+.3f}"]
        cells.append(f"{f10['sampler']}: {f10['gap']:+.3f}" if f10 else "-")
        best = {}
        for b in budgets:
            cand = [
                r for r in sub if r.get("budget") == b and "learned" in r["sampler"]
            ]
            if not cand:
                cells.append("-")
                continue
            r = best[b] = min(cand, key=lambda r: abs(r["gap"]))
            cells.append(
                f"{r['sampler']}: **{r['gap']:+.3f}** (vr {r['variance_ratio']:.3f}, "
                f"SW2 {r['sw2']:.3f}, learned in {r['learn']['seconds']:.0f} s)"
            )
        lines.append(f"| {dim}-D {sname} ({se:.3f}) | " + " | ".join(cells) + " |")
        se2 = math.sqrt(2) * se
        if 10 in best:
            g10, gpc = abs(best[10]["gap"]), abs(pc["gap"])
            met = "yes" if g10 <= gpc + se2 else f"no, {g10 / gpc:.1f}x"
            m5 = "-"
            if 5 in best and f10:
                g5, gf = abs(best[5]["gap"]), abs(f10["gap"])
                m5 = f"{g5:.3f} / {gf:.3f}"
                beat = "yes" if g5 < gf else "no"
                if g5 < gf and gf - g5 > se2:
                    beat += " (by more than 1 SE of the difference)"
                m5 = f"{m5} | {beat}"
            else:
                m5 = "- | -"
            goals.append(
                f"| {dim}-D {sname} | {g10:.3f} / {gpc:.3f} | {met} | {m5} | "
                f"{best[10]['learn']['seconds']:.0f} |"
            )
    return "\n".join(lines + [""] + goals)


if __name__ == "__main__":
    main()
