"""`bench_overhead.py` on two checkouts (before and after a change), alternated in one
run, each round pinned to one core when `taskset` exists, merged into one JSON.

    python benchmarks/overhead_before_after.py --before DIR --after DIR \\
        --rounds 3 --reps 7 --out benchmarks/results/overhead_clock_before_after.json

Each round runs the before tree, then the after tree (each with its own `PYTHONPATH`),
and each run times `sd.sample` and the bare `lax.scan` interleaved; the figure to
compare is the ratio sample/scan of each side (medians over rounds of the per-round
paired ratios), since both sides share the machine's noise. First, the XLA program
compiled for the benchmark's `sd.sample` is compared between the trees (its
instructions, source locations stripped): identical programs run identically, whatever
the timings' noise says. A benchmark, not a test.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


# Prints a digest of the instructions of the program compiled for `sample_fn`.
_DIGEST = """
import hashlib, re, sys
sys.path.insert(0, "benchmarks")
import jax.random as jr
import bench_overhead as b
text = b.sample_fn.lower(jr.key(0), b.PARAMS).compile().as_text()
text = text[text.index("\\n%"):]  # the computations, after the tables of sources
text = re.sub(r",? ?(metadata=\\{[^}]*\\}|stack_frame_id=\\d+)", "", text)
print(hashlib.sha256(text.encode()).hexdigest())
"""


def _in_tree(tree: Path, cpu: str | None, args: list, **kw):
    """Run this interpreter with `args` in `tree` (importing the package from it),
    pinned to core `cpu` when `taskset` exists."""
    cmd = [sys.executable, *args]
    if cpu is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", cpu, *cmd]
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run(cmd, cwd=tree, env=env, check=True, **kw)


def program_digest(tree: Path, cpu: str | None) -> str:
    """The digest of the program `tree` compiles for the benchmark's `sd.sample`."""
    out = _in_tree(tree, cpu, ["-c", _DIGEST], capture_output=True)
    return out.stdout.decode().split()[-1]


def _run(tree: Path, reps: int, out: Path, cpu: str | None) -> dict:
    args = ["benchmarks/bench_overhead.py", "--reps", str(reps), "--out", str(out)]
    _in_tree(tree, cpu, args)
    return json.loads(out.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, required=True)
    parser.add_argument("--before-name", default="before")
    parser.add_argument("--after-name", default="after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--cpu", default="0", help="core for taskset ('' for none)")
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.rounds < 1 or args.reps < 1:
        parser.error("--rounds and --reps must be at least 1")
    cpu = args.cpu or None

    digests = {
        side: program_digest(tree.resolve(), cpu)
        for side, tree in (("before", args.before), ("after", args.after))
    }
    print(f"compiled programs identical: {digests['before'] == digests['after']}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            for side, tree, name in (
                ("before", args.before, args.before_name),
                ("after", args.after, args.after_name),
            ):
                r = _run(tree.resolve(), args.reps, Path(tmp) / "run.json", cpu)
                runs.append(
                    dict(
                        side=side,
                        round=round_,
                        tree=name,
                        median_s=r["median_s"],
                        min_s=r["min_s"],
                        paired_ratio_median=r["paired_ratio_median"],
                        ratio_of_medians=r["ratio_sample_over_scan"],
                        ratio_of_mins=r["ratio_of_mins"],
                        samples_match=r["samples_match"],
                        reps=r["reps"],
                        times_s=r["times_s"],
                    )
                )
                platform, versions = r["platform"], r["versions"]
                print(
                    f"round {round_} {side}: sample/scan {r['paired_ratio_median']:.3f}"
                    f" (paired), {r['ratio_of_mins']:.3f} (of minima)",
                    flush=True,
                )

    def side(name, field):
        return [r[field] for r in runs if r["side"] == name]

    summary = {
        f"{field}_{name}": side(name, field)
        for name in ("before", "after")
        for field in ("paired_ratio_median", "ratio_of_mins")
    }
    for name in ("before", "after"):
        summary[f"median_paired_ratio_{name}"] = statistics.median(
            side(name, "paired_ratio_median")
        )
        summary[f"median_ratio_of_mins_{name}"] = statistics.median(
            side(name, "ratio_of_mins")
        )
    pin = f"taskset -c {cpu} " if cpu is not None else ""
    result = dict(
        command=(
            f"python benchmarks/overhead_before_after.py --before <{args.before_name}> "
            f"--after <{args.after_name}> --rounds {args.rounds} --reps {args.reps} "
            f"--cpu '{args.cpu}' --out {args.out.name}; each run: {pin}python "
            f"benchmarks/bench_overhead.py --reps {args.reps}"
        ),
        note=args.note,
        platform=platform,
        versions=versions,
        program_sha256=digests,
        programs_identical=digests["before"] == digests["after"],
        runs=runs,
        **summary,
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
