"""What JAX's persistent compilation cache saves a second identical `scoresde` call.

Trains nothing: writes an untrained checkpoint (an MLP score on moons, or the digits
U-Net with `--digits`), then runs the same `scoresde sample` command four times as a
user would, from a fresh process each: twice with the cache off
(`SCORESDE_COMPILATION_CACHE=0`), then twice with the cache on in a new, empty
directory (the first of these fills it, the second loads from it). All in one run, so
the figures compare side by side; wall time of the whole process, imports included.

    python benchmarks/bench_compile_cache.py                  # moons MLP, Tsit5
    python benchmarks/bench_compile_cache.py --digits --solver ddim --steps 20 \
        --num-samples 16                                       # digits U-Net

Writes `benchmarks/results/compile_cache[_digits].json` and prints a table. A
benchmark, not a test.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import jax.random as jr

import scoresde_diffrax as sd


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _checkpoint(directory: pathlib.Path, digits: bool) -> None:
    vp = sd.VPSDE()
    if digits:
        data = sd.data.digits()
        make = lambda k: sd.nn.UNet((1, 8, 8), key=k)  # noqa: E731
    else:
        data = sd.data.Dataset(sd.data.moons(jr.key(1), 512), None, name="moons")
        make = lambda k: sd.nn.MLPScore((2,), width=128, depth=3, key=k)  # noqa: E731
    model = sd.EpsScore(make(jr.key(0)), vp)
    state = sd.TrainState(
        model=model, ema=model, opt_state=None, step=jnp.asarray(1), key=jr.key(0)
    )
    meta = {
        "model": sd.describe_model(model),
        "sde": sd.describe_sde(vp),
        "data": data.metadata(),
    }
    sd.save_checkpoint(directory, state, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", action="store_true")
    parser.add_argument("--solver", default="tsit5")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=None, help="fixed-step solvers")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_compile_cache_"))
    ck = tmp / "ck"
    _checkpoint(ck, args.digits)
    scoresde = pathlib.Path(sys.executable).parent / "scoresde"
    entry = (
        [str(scoresde)] if scoresde.exists() else [sys.executable, "-m", "scoresde_cli"]
    )
    cmd = [*entry, "sample", "--checkpoint", str(ck), "--solver", args.solver]
    cmd += ["--num-samples", str(args.num_samples), "--out", str(tmp / "x.npy")]
    cmd += ["--quiet"] + ([] if args.steps is None else ["--steps", str(args.steps)])
    runs = []
    for label, cache in (
        ("cache off, 1st", None),
        ("cache off, 2nd", None),
        ("cache on (empty), 1st", tmp / "cache"),
        ("cache on, 2nd", tmp / "cache"),
    ):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
        if cache is None:
            env["SCORESDE_COMPILATION_CACHE"] = "0"
        else:
            env["SCORESDE_COMPILATION_CACHE"] = "1"
            env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        runs.append({"run": label, "wall_s": round(wall, 2)})
        print(f"{label:>24}: {wall:6.2f} s")
    off = (runs[0]["wall_s"] + runs[1]["wall_s"]) / 2
    result = {
        "command": "python "
        + " ".join([f"benchmarks/{pathlib.Path(__file__).name}", *sys.argv[1:]]),
        "sample_command": " ".join(["scoresde", *cmd[len(entry) :]])
        .replace(str(ck), "CKPT")
        .replace(str(tmp / "x.npy"), "OUT.npy"),
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "runs": runs,
        "second_call_speedup": round(off / runs[3]["wall_s"], 2),
        "cache_entries": len(list((tmp / "cache").iterdir())),
    }
    print(f"second identical call: {result['second_call_speedup']}x faster")
    name = "compile_cache_digits.json" if args.digits else "compile_cache.json"
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
