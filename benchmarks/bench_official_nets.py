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
"""

import os


# one CPU thread for XLA, before jax is imported
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
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

_TORCH_CHILD = r"""
import ast, json, sys, time, types
import torch
repo, name, batch, reps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(1)
sys.path.insert(0, repo)
from models import ncsnpp
def ns(d):
    return types.SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v
                                    for k, v in d.items()})
entry = json.load(open(sys.argv[5]))["full"][name]
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
    model(x, labels)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        model(x, labels)
        times.append(time.perf_counter() - t0)
print(json.dumps({"times_s": times, "torch": torch.__version__,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def time_jax(config: str, batch: int, reps: int) -> dict:
    net = sd.nn.NCSNpp(config=sd.nn.network_config(config), key=jr.key(0))
    cfg = net.config
    x = jr.uniform(jr.key(1), (batch, 3, cfg.image_size, cfg.image_size))
    hi = 50.0 if cfg.embedding_type == "fourier" else 999.0
    labels = jr.uniform(jr.key(2), (batch,)) * hi + 0.01
    forward = eqx.filter_jit(eqx.filter_vmap(net))
    t0 = time.perf_counter()
    jax.block_until_ready(forward(labels, x))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(forward(labels, x))
        times.append(time.perf_counter() - t0)
    params = sum(
        a.size for a in jax.tree_util.tree_leaves(eqx.filter(net, eqx.is_array))
    )
    return {"times_s": times, "compile_s": compile_s, "params": int(params)}


def time_torch(args, name: str) -> dict:
    out = subprocess.run(
        [args.torch_python, "-c", _TORCH_CHILD, args.official_repo, name,
         str(args.batch), str(args.reps), OFFICIAL_MODELS],
        capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "?"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def ffhq_step_memory() -> dict:
    """Compiled memory of one Euler-Maruyama step of the reverse SDE with the FFHQ
    1024 NCSN++ (VE, sigma_max 1348) at batch 1, weights included as arguments."""
    config = "ve/ffhq_ncsnpp_continuous"
    net = eqx.filter_eval_shape(
        sd.nn.NCSNpp, config=sd.nn.network_config(config), key=jr.key(0)
    )
    sde = sd.nn.official_sde(config)

    def step(net, x, t, z):
        score = sd.nn.OfficialScore(net, sde)
        dt = 1e-3
        g = sde.diffusion(t)
        drift = -(g**2) * jax.vmap(score, in_axes=(None, 0))(t, x)
        return x - drift * dt + g * jnp.sqrt(dt) * z

    shape = jax.ShapeDtypeStruct((1, 3, 1024, 1024), jnp.float32)
    t = jax.ShapeDtypeStruct((), jnp.float32)
    t0 = time.perf_counter()
    compiled = eqx.filter_jit(step).lower(net, shape, t, shape).compile()
    m = compiled.compiled.memory_analysis()
    weights = sum(a.size * 4 for a in jax.tree_util.tree_leaves(net))
    return {
        "config": config,
        "batch": 1,
        "argument_mib": m.argument_size_in_bytes / 2**20,
        "output_mib": m.output_size_in_bytes / 2**20,
        "temp_mib": m.temp_size_in_bytes / 2**20,
        "total_mib": (
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        )
        / 2**20,
        "weights_mib": weights / 2**20,
        "compile_s": time.perf_counter() - t0,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official-repo", default=None, metavar="DIR")
    p.add_argument("--torch-python", default=None, metavar="PYTHON")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--nets", default=",".join(NETS), help="ncsnpp_ve,ddpmpp_vp")
    p.add_argument("--no-ffhq", action="store_true", help="skip the FFHQ memory")
    p.add_argument("--out", default="benchmarks/results/official_nets.json")
    args = p.parse_args()
    rows = []
    for key in args.nets.split(","):
        config = NETS[key]
        row = {"net": key, "config": config, "batch": args.batch}
        row["jax"] = time_jax(config, args.batch, args.reps)
        row["jax_median_s"] = float(np.median(row["jax"]["times_s"]))
        if args.official_repo and args.torch_python:
            row["torch"] = time_torch(args, config.replace("/", "."))
            if "times_s" in row["torch"]:
                row["torch_median_s"] = float(np.median(row["torch"]["times_s"]))
                row["jax_over_torch"] = row["jax_median_s"] / row["torch_median_s"]
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "command": "python " + " ".join(sys.argv),
        "threads": 1,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
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
