"""The paper's networks (`sd.nn.NCSNpp`) against the official PyTorch code: the forward
pass of CIFAR-10 NCSN++ (VE) and DDPM++ (VP) at batch 8 on ONE CPU thread, and the
memory of one reverse-SDE step of the FFHQ 1024x1024 NCSN++ at batch 1 (XLA's compiled
memory analysis: arguments + outputs + temporaries, nothing allocated).

    python benchmarks/bench_official_nets.py \
        --official-repo PATH/score_sde_pytorch --torch-python PATH/bin/python

`--official-repo` is a checkout of yang-song/score_sde_pytorch (its `models/` and
`sde_lib.py`; on a machine without CUDA its `op/upfirdn2d.py` must fall back to its
native CPU path, `upfirdn2d_native`); `--torch-python` an interpreter with torch and
numpy. Without them only this package's side runs. Random weights (timing only). Writes
`benchmarks/results/official_nets.json` with the command that made it.

The two sides take turns, one forward pass each (the official model waits in a child
process for its turn), so the changing load of a shared machine falls on both alike;
which side goes first alternates from pair to pair. For each pass: the wall time and the
CPU time of its process (all threads: a CPU time no larger than the wall time means one
thread was used). The medians of both, and the load average at the start and end of
each net.
"""

import os


# one CPU thread for XLA, before jax is imported
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import scoresde_diffrax as sd  # noqa: E402


NETS = {
    "ncsnpp_ve": "ve/cifar10_ncsnpp_continuous",
    "ddpmpp_vp": "vp/cifar10_ddpmpp_continuous",
}
OFFICIAL_MODELS = os.path.join(
    os.path.dirname(__file__), "..", "tests", "data", "official_score_sde",
    "official_models.json",
)  # fmt: skip

# The official side: builds the model, runs one warm-up pass, says "ready", then runs
# one timed forward pass per "run" line on stdin until "quit".
_TORCH_CHILD = r"""
import ast, json, sys, time, types
import torch
repo, name, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(1)
sys.path.insert(0, repo)
from models import ncsnpp
def ns(d):
    return types.SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v
                                    for k, v in d.items()})
entry = json.load(open(sys.argv[4]))["full"][name]
config = entry["config"]
config = ast.literal_eval(config) if isinstance(config, str) else config
config["device"] = "cpu"
cfg = ns(config)
model = ncsnpp.NCSNpp(cfg).eval()
size = cfg.data.image_size
torch.manual_seed(0)
x = torch.rand(batch, 3, size, size)
labels = torch.rand(batch) * (50.0 if cfg.model.embedding_type == "fourier" else 999.0) + 0.01
with torch.no_grad():
    t0 = time.perf_counter()
    model(x, labels)
    print(json.dumps({"ready": True, "first_s": time.perf_counter() - t0,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "params": sum(p.numel() for p in model.parameters())}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        c0, t0 = time.process_time(), time.perf_counter()
        model(x, labels)
        t1, c1 = time.perf_counter(), time.process_time()
        print(json.dumps({"wall_s": t1 - t0, "cpu_s": c1 - c0}), flush=True)
"""


class TorchChild:
    """Python `code` run by `torch_python` with `argv` in a child process, one
    torch thread: it prints one JSON line when ready (`info`), then one JSON line per
    "run" sent on its stdin (`run()`), until "quit" (`close()`)."""

    def __init__(self, torch_python: str, code: str, argv: list[str]):
        self.proc = subprocess.Popen(
            [torch_python, "-c", code, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"),
        )  # fmt: skip
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            raise RuntimeError(err[-1] if err else "the torch child exited")
        return json.loads(line)

    def run(self) -> dict:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def jax_side(config: str, batch: int):
    """This package's net, compiled; a function running one timed forward pass."""
    net = sd.nn.NCSNpp(config=sd.nn.network_config(config), key=jr.key(0))
    cfg = net.config
    x = jr.uniform(jr.key(1), (batch, 3, cfg.image_size, cfg.image_size))
    hi = 50.0 if cfg.embedding_type == "fourier" else 999.0
    labels = jr.uniform(jr.key(2), (batch,)) * hi + 0.01
    forward = eqx.filter_jit(eqx.filter_vmap(net))
    t0 = time.perf_counter()
    jax.block_until_ready(forward(labels, x))
    compile_s = time.perf_counter() - t0
    params = sum(
        a.size for a in jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_array))
    )

    def run() -> dict:
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(forward(labels, x))
        t1, c1 = time.perf_counter(), time.process_time()
        return {"wall_s": t1 - t0, "cpu_s": c1 - c0}

    return run, {"compile_s": compile_s, "params": int(params)}


def _summary(passes: list) -> dict:
    wall = [p["wall_s"] for p in passes]
    cpu = [p["cpu_s"] for p in passes]
    return {
        "times_s": wall,
        "cpu_s": cpu,
        "median_s": float(np.median(wall)),
        "median_cpu_s": float(np.median(cpu)),
    }


def time_net(args, key: str) -> dict:
    config = NETS[key]
    row = {"net": key, "config": config, "batch": args.batch}
    row["loadavg_start"] = list(os.getloadavg())
    run_jax, row["jax"] = jax_side(config, args.batch)
    torch_side = None
    if args.official_repo and args.torch_python:
        try:
            torch_side = TorchChild(
                args.torch_python,
                _TORCH_CHILD,
                [args.official_repo, config.replace("/", "."), str(args.batch),
                 OFFICIAL_MODELS],
            )  # fmt: skip
            row["torch"] = dict(torch_side.info)
            del row["torch"]["ready"]
        except RuntimeError as e:
            row["torch"] = {"error": str(e)}
    run_jax()  # one untimed pass each, after compiling / the first call
    if torch_side is not None:
        torch_side.run()
    jax_passes, torch_passes = [], []
    for i in range(args.reps):
        if torch_side is None:
            jax_passes.append(run_jax())
        elif i % 2 == 0:
            jax_passes.append(run_jax())
            torch_passes.append(torch_side.run())
        else:
            torch_passes.append(torch_side.run())
            jax_passes.append(run_jax())
    if torch_side is not None:
        torch_side.close()
    row["loadavg_end"] = list(os.getloadavg())
    row["jax"].update(_summary(jax_passes))
    row["jax_median_s"] = row["jax"]["median_s"]
    if torch_passes:
        row["torch"].update(_summary(torch_passes))
        row["torch_median_s"] = row["torch"]["median_s"]
        row["jax_over_torch"] = row["jax_median_s"] / row["torch_median_s"]
        row["jax_over_torch_cpu"] = (
            row["jax"]["median_cpu_s"] / row["torch"]["median_cpu_s"]
        )
        # the same pair of passes, side by side: the spread of the ratio
        pair = [
            j["wall_s"] / t["wall_s"]
            for j, t in zip(jax_passes, torch_passes, strict=True)
        ]
        row["jax_over_torch_per_pair"] = pair
    return row


def ffhq_step_memory() -> dict:
    """Compiled memory of one Euler-Maruyama step of the reverse SDE with the FFHQ
    1024 NCSN++ (VE, sigma_max 1348) at batch 1, weights included as arguments."""
    config = "ve/ffhq_ncsnpp_continuous"
    net = eqx.filter_eval_shape(
        sd.nn.NCSNpp, config=sd.nn.network_config(config), key=jr.key(0)
    )
    sde = sd.nn.official_sde(config)

    # the weights are abstract (shapes only): they go in as jit arguments
    def is_shape(a):
        return isinstance(a, jax.ShapeDtypeStruct)

    weights, static = eqx.partition(net, is_shape, is_leaf=is_shape)

    def step(weights, x, t, z):
        score = sd.nn.OfficialScore(eqx.combine(weights, static, is_leaf=is_shape), sde)
        dt = 1e-3
        g = sde.diffusion(t)
        drift = -(g**2) * jax.vmap(score, in_axes=(None, 0))(t, x)
        return x - drift * dt + g * jnp.sqrt(dt) * z

    shape = jax.ShapeDtypeStruct((1, 3, 1024, 1024), jnp.float32)
    t = jax.ShapeDtypeStruct((), jnp.float32)
    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(weights, shape, t, shape).compile()
    m = compiled.memory_analysis()
    leaves = jax.tree_util.tree_leaves(weights, is_leaf=is_shape)
    return {
        "config": config,
        "batch": 1,
        "params": int(sum(a.size for a in leaves)),
        "argument_mib": m.argument_size_in_bytes / 2**20,
        "output_mib": m.output_size_in_bytes / 2**20,
        "temp_mib": m.temp_size_in_bytes / 2**20,
        "total_mib": (
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        )
        / 2**20,
        "weights_mib": sum(a.size * a.dtype.itemsize for a in leaves) / 2**20,
        "compile_s": time.perf_counter() - t0,
    }


def command_line() -> str:
    """The command line, with the machine's paths of the official side left out."""
    argv, out = list(sys.argv), []
    names = {
        "--official-repo": "PATH/score_sde_pytorch",
        "--torch-python": "PATH/bin/python",
    }
    i = 0
    while i < len(argv):
        a = argv[i]
        flag = a.split("=", 1)[0]
        if flag in names and "=" in a:
            out.append(f"{flag}={names[flag]}")
        elif flag in names and i + 1 < len(argv):
            out += [a, names[flag]]
            i += 1
        else:
            out.append(a)
        i += 1
    return "python " + " ".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-repo", default=None, metavar="DIR")
    p.add_argument("--torch-python", default=None, metavar="PYTHON")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--nets", default=",".join(NETS), help="ncsnpp_ve,ddpmpp_vp")
    p.add_argument("--no-ffhq", action="store_true", help="skip the FFHQ memory")
    p.add_argument("--out", default="benchmarks/results/official_nets.json")
    p.add_argument(
        "--cpu", default="0", help="the one core both sides run on ('' for no pinning)"
    )
    args = p.parse_args()
    if args.cpu != "" and hasattr(os, "sched_setaffinity"):
        # One core for both sides (they take turns): XLA:CPU may run independent
        # operations on a thread pool whatever its flags say; the torch child
        # inherits the affinity. Set before JAX starts its backend.
        os.sched_setaffinity(0, {int(args.cpu)})
    rows = []
    for key in args.nets.split(","):
        row = time_net(args, key)
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "command": command_line(),
        "threads": 1,
        "affinity": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "interleaved": True,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "forward": rows,
    }
    if not args.no_ffhq:
        result["ffhq_1024_reverse_sde_step"] = ffhq_step_memory()
        print(json.dumps(result["ffhq_1024_reverse_sde_step"]), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
