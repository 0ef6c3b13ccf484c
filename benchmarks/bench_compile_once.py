"""What sharing one compiled program across a sampler's budgets saves `sd.bench.run`.

`sd.bench.run` pads each fixed-step sampler's time grids to its largest budget's
number of steps, so its budgets run one compiled program (the same steps and the same
samples as unpadded grids: checked in `tests/test_bench.py`). This runs the same bench
both ways, each in a fresh process with JAX's persistent compilation cache off, one
after the other in one run so the figures compare side by side:

- the mixture bench a new user ran (`scoresde bench --problem mixture:D=16,K=4
  --solvers euler-maruyama,pc,dpm-solver++2m,unipc,tsit5 --nfe 10,20,50
  --num-samples 500`);
- with `--digits`, also the shipped digits model (`--problem
  checkpoint:benchmarks/results/digits_checkpoint --solvers
  euler-maruyama,dpm-solver++2m,tsit5 --nfe 10,20,50 --metrics fd_digits,sliced_w2
  --num-samples 180`, the README's digits bench).

    python benchmarks/bench_compile_once.py [--digits]

Reports the wall time of each process (imports included) and the sum of the records'
compile times; writes `benchmarks/results/compile_once.json`. A benchmark, not a test.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time


ROOT = pathlib.Path(__file__).resolve().parents[1]

BENCHES = {
    "mixture": dict(
        problem="mixture:D=16,K=4",
        solvers="euler-maruyama,pc,dpm-solver++2m,unipc,tsit5",
        nfe=(10, 20, 50),
        num_samples=500,
        metrics=None,
    ),
    "digits": dict(
        problem="checkpoint:benchmarks/results/digits_checkpoint",
        solvers="euler-maruyama,dpm-solver++2m,tsit5",
        nfe=(10, 20, 50),
        num_samples=180,
        metrics=("fd_digits", "sliced_w2"),
    ),
}


def _child(name: str, share: bool) -> None:
    """Run one bench in this process and print its records' compile times as JSON."""
    import jax.random as jr

    from scoresde_diffrax import bench
    from scoresde_diffrax.cli import SOLVERS
    from scoresde_diffrax.cli.bench import parse_problem

    spec = BENCHES[name]
    problem = parse_problem(spec["problem"], spec["num_samples"])
    samplers = [SOLVERS[s] for s in spec["solvers"].split(",")]
    records = bench.run(
        jr.key(0),
        [problem],
        samplers,
        spec["nfe"],
        num_samples=spec["num_samples"],
        metrics=spec["metrics"],
        share_programs=share,
    )
    print(
        json.dumps(
            {
                "compile_s": sum(r.compile_s for r in records),
                "run_s": sum(r.run_s for r in records),
                "solves": len(records),
            }
        )
    )


def _measure(name: str, share: bool) -> dict:
    env = dict(os.environ, SCORESDE_COMPILATION_CACHE="0")
    cmd = [sys.executable, __file__, "--child", name, "--share", str(int(share))]
    t = time.perf_counter()
    out = subprocess.run(
        cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return dict(figures, wall_s=wall, shared=share)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", action="store_true", help="also the digits bench")
    parser.add_argument("--child", choices=sorted(BENCHES), help=argparse.SUPPRESS)
    parser.add_argument("--share", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks/results/compile_once.json")
    )
    args = parser.parse_args()
    if args.child:
        _child(args.child, bool(args.share))
        return
    names = ["mixture", "digits"] if args.digits else ["mixture"]
    results = {}
    for name in names:
        per_budget = _measure(name, share=False)
        shared = _measure(name, share=True)
        results[name] = dict(
            spec=BENCHES[name],
            one_program_per_budget=per_budget,
            one_program_per_sampler=shared,
            wall_ratio=per_budget["wall_s"] / shared["wall_s"],
            compile_ratio=per_budget["compile_s"] / max(shared["compile_s"], 1e-9),
        )
        print(
            f"{name}: one program per budget {per_budget['wall_s']:.1f} s "
            f"(compile {per_budget['compile_s']:.1f} s), per sampler "
            f"{shared['wall_s']:.1f} s (compile {shared['compile_s']:.1f} s): "
            f"{results[name]['wall_ratio']:.2f}x wall, "
            f"{results[name]['compile_ratio']:.2f}x compile"
        )
    record = dict(
        command="python benchmarks/bench_compile_once.py"
        + (" --digits" if args.digits else ""),
        machine=f"{platform.machine()}, {os.cpu_count()} CPU cores",
        results=results,
    )
    pathlib.Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
