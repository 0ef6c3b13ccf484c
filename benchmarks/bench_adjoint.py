"""What differentiability costs when no gradient is taken: `sd.sample`'s default adjoints
against `diffrax.ForwardMode()`, side by side in one run.

Since issue "Tests with teeth" (gradients through sampling), fixed-step probability-flow
ODE solves default to `diffrax.RecursiveCheckpointAdjoint()` (so `jax.grad` works), and
a fixed-step SDE solve given a reverse-mode adjoint draws its noise from a per-example
`diffrax.VirtualBrownianTree` instead of the fast `diffrax.UnsafeBrownianPath` (which
stays the SDE default). This times, on the same MLP score, batch and steps:

- PF-ODE, Heun 100 steps and DPM-Solver++(2M) 20 steps: default vs ForwardMode;
- reverse SDE, Euler-Maruyama 1000 steps: fast path (default) vs
  RecursiveCheckpointAdjoint (Brownian tree).

    python benchmarks/bench_adjoint.py

Writes `benchmarks/results/adjoint.json` (medians of interleaved repeats and their
ratios) and prints a table. A benchmark, not a test.
"""

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import diffrax as dfx
import equinox as eqx
import jax
import jax.random as jr

import scoresde_diffrax as sd


BATCH, REPEATS = 1024, 7
RESULTS = Path(__file__).resolve().parent / "results" / "adjoint.json"


def main() -> None:
    sde = sd.VPSDE()
    model = sd.nn.MLPScore(data_shape=(2,), key=jr.key(0))
    score = sd.EpsScore(model, sde)
    shape = (BATCH, 2)
    cases = {
        "ode_heun_100": [
            ("default", dict(solver=dfx.Heun(), method="ode", num_steps=100)),
            (
                "forward_mode",
                dict(
                    solver=dfx.Heun(),
                    method="ode",
                    num_steps=100,
                    adjoint=dfx.ForwardMode(),
                ),
            ),
        ],
        "ode_dpm2m_20": [
            ("default", dict(solver=sd.DPMSolverPP2M(), num_steps=20)),
            (
                "forward_mode",
                dict(
                    solver=sd.DPMSolverPP2M(), num_steps=20, adjoint=dfx.ForwardMode()
                ),
            ),
        ],
        "sde_em_1000": [
            ("default", dict(solver=dfx.Euler(), method="sde", num_steps=1000)),
            (
                "checkpoint_tree",
                dict(
                    solver=dfx.Euler(),
                    method="sde",
                    num_steps=1000,
                    adjoint=dfx.RecursiveCheckpointAdjoint(),
                ),
            ),
        ],
    }
    out = {}
    for case, variants in cases.items():
        fns = {}
        for name, kw in variants:

            @eqx.filter_jit
            def run(key, kw=kw):
                return sd.sample(key, sde, score, shape, **kw).samples

            jax.block_until_ready(run(jr.key(1)))  # compile
            fns[name] = run
        times = {name: [] for name in fns}
        for r in range(REPEATS):  # interleaved, so load changes hit both alike
            for name, run in fns.items():
                t0 = time.perf_counter()
                jax.block_until_ready(run(jr.key(2 + r)))
                times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        base, other = list(med)
        out[case] = {
            "median_s": med,
            "ratio": med[other] / med[base],
            "ratio_of": f"{other} / {base}",
        }
        print(
            f"{case:14s} "
            + "  ".join(f"{k} {v * 1e3:8.1f} ms" for k, v in med.items())
            + f"  ratio {out[case]['ratio']:.3f}"
        )
    record = {
        "command": "python benchmarks/bench_adjoint.py",
        "batch": BATCH,
        "repeats": REPEATS,
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "cases": out,
    }
    RESULTS.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
