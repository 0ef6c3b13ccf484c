"""Peak memory of solves: does it grow with the number of steps, and does a
1024x1024x3 image sample on a CPU?

    python benchmarks/bench_memory.py            # everything (~3 minutes on 2 CPUs)
    python benchmarks/bench_memory.py --quick    # skips the 1024x1024 runs

Every configuration runs in a FRESH Python process (so the process's peak resident
memory, `ru_maxrss`, belongs to that configuration alone) and reports:

- `temp_mib`: XLA's buffer assignment for the compiled solve (`memory_analysis()`,
  temporaries: the working memory of the whole solve, known before it runs);
- `peak_rss_mib`: the peak resident memory of the process after compiling and
  running the solve once (includes the JAX runtime, about 300-900 MiB, and the
  compiler);
- `device_peak_mib`: on an accelerator, the device allocator's peak (`None` on CPU);
- `wall_s`: the run time of the compiled solve (after compilation).

Rows:

1. `steps`: a batch of 4096 x 64 (1 MiB of float32 state) from an exact 64-D mixture
   with only the final state saved: Euler-Maruyama at 100 / 1000 / 10000 fixed steps,
   Tsit5 (PF-ODE, adaptive) with `max_steps` 100 / 1000 / 10000, and a likelihood
   (Tsit5 + Hutchinson) with `max_steps` 100 / 1000 / 10000. The control: Euler-Maruyama
   saving every step (`SaveAt(steps=True)`), whose memory must grow with the steps
   (it does: the measurement can see growth).
2. `image`: one 1024x1024x3 sample with a tiny `sd.nn.UNet` (8 levels of 4 channels,
   15.6k parameters, middle attention at 8x8), VE SDE, 4 and 16 Euler-Maruyama steps.

Writes `benchmarks/results/memory.json` (with the command and conditions) and prints a
table. A benchmark, not a test (tests/test_memory.py checks the compiled memory).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path


RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"
MIB = 2.0**20


def _worker(case: str, steps: int) -> dict:
    import diffrax as dfx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import scoresde_diffrax as sd

    key = jr.key(0)
    em = dict(solver=dfx.Euler(), method="sde", num_steps=steps)
    if case == "image":
        sde = sd.VESDE()
        net = sd.nn.UNet(
            (3, 1024, 1024),
            channels=4,
            channel_mult=(1,) * 8,
            attn_resolutions=(),
            groups=2,
            key=jr.key(1),
        )
        score = sd.EpsScore(sd.nn.loop_friendly(net), sde)
        shape = (1, 3, 1024, 1024)
    else:
        sde = sd.VPSDE()
        km, ks = jr.split(jr.key(3))
        gm = sd.GaussianMixture(
            3.0 * jr.normal(km, (4, 64)),
            jr.uniform(ks, (4, 64), minval=0.4, maxval=1.0),
        )
        score = gm.score(sde)
        shape = (4096, 64)
    sample_kw = {
        "image": em,
        "em": em,
        "em-save-every-step": dict(em, saveat=dfx.SaveAt(steps=True)),
        "tsit5-ode": dict(
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-5),
            max_steps=steps,
        ),
    }
    if case == "likelihood":
        x = gm.marginal(sde, 1e-5).sample(jr.key(4), shape[0])

        def run(k):
            return sd.log_likelihood(
                k, sde, score, x, eps=1e-5, max_steps=steps
            ).log_prob

    elif case in sample_kw:

        def run(k):
            r = sd.sample(k, sde, score, shape, **sample_kw[case])
            return r.samples, r.trajectory

    else:
        raise ValueError(f"unknown case {case!r}")

    t0 = time.perf_counter()
    compiled = jax.jit(run).lower(key).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(key))
    wall_s = time.perf_counter() - t0
    first = jax.tree_util.tree_leaves(out)[0]
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU; bytes on GPUs
    return {
        "device_peak_mib": stats.get("peak_bytes_in_use", 0) / MIB or None,
        "case": case,
        "steps": steps,
        "temp_mib": mem.temp_size_in_bytes / MIB,
        "output_mib": mem.output_size_in_bytes / MIB,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "compile_s": compile_s,
        "wall_s": wall_s,
        "finite": bool(jnp.all(jnp.isfinite(first))),
    }


def _run_fresh(case: str, steps: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", case, str(steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} {steps} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip the 1024x1024 image")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--worker", nargs=2, metavar=("CASE", "STEPS"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker[0], int(args.worker[1]))))
        return

    plan = [("em", n) for n in (100, 1000, 10000)]
    if not args.quick:
        plan += [("image", 4), ("image", 16)]
    plan += [(c, n) for c in ("tsit5-ode", "likelihood") for n in (100, 1000, 10000)]
    plan += [("em-save-every-step", 100), ("em-save-every-step", 1000)]
    rows = []
    print(f"{'case':<20}{'steps':>7}{'temp MiB':>11}{'peak RSS MiB':>14}{'run s':>9}")
    for case, n in plan:
        r = _run_fresh(case, n)
        rows.append(r)
        print(
            f"{case:<20}{n:>7}{r['temp_mib']:>11.2f}{r['peak_rss_mib']:>14.1f}"
            f"{r['wall_s']:>9.3f}",
            flush=True,
        )
        out = _write(rows, args)  # after every row: a killed run keeps what it measured
    for k, v in out["summary"].items():
        print(f"{k}: {v:.3f}")
    print(f"wrote {args.out}")


def _write(rows: list[dict], args) -> dict:
    def ratio(case, key, a, b):
        by = {r["steps"]: r[key] for r in rows if r["case"] == case}
        return by[b] / by[a] if a in by and b in by and by[a] else None

    summary = {
        f"{c}_{k}_ratio_{b}_vs_{a}": ratio(c, k, a, b)
        for c, a, b in (
            ("em", 100, 10000),
            ("tsit5-ode", 100, 10000),
            ("likelihood", 100, 10000),
            ("em-save-every-step", 100, 1000),
            ("image", 4, 16),
        )
        for k in ("temp_mib", "peak_rss_mib", "device_peak_mib")
    }
    import jax

    out = {
        "command": "python benchmarks/bench_memory.py"
        + (" --quick" if args.quick else ""),
        "conditions": {
            "python": platform.python_version(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "summary": {k: v for k, v in summary.items() if v is not None},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
