#!/usr/bin/env bash
# Run the benchmarks on an accelerator and collect the figures into one folder, each
# file tagged `_gpu`.
#
#     bash benchmarks/gpu_check.sh OUT_DIR [SECONDS]
#
# Works from a plain checkout (PYTHONPATH=., no install) on a machine whose python3 has
# jax with CUDA, equinox, diffrax, optax, jaxtyping, einops, scikit-learn and tqdm.
# Steps run in priority order (samplers, overhead, memory, likelihood, training), each
# with its own time limit, and stop before SECONDS (default 540) have passed; a step
# that fails or times out is logged and skipped.
set -uo pipefail
out=${1:?usage: gpu_check.sh OUT_DIR [SECONDS]}
budget=${2:-540}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
start=$(date +%s)
log="$out/gpu_check_log.txt"

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local left=$((budget - ($(date +%s) - start)))
    if ((left < 20)); then
        echo "== $name: skipped (time budget spent)" | tee -a "$log"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s)" | tee -a "$log"
    local t0=$(date +%s)
    timeout "$limit" "$@" >>"$log" 2>&1
    echo "== $name: exit $? after $(($(date +%s) - t0))s" | tee -a "$log"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import jax, diffrax, equinox, optax; print('jax', jax.__version__, 'diffrax', diffrax.__version__, 'equinox', equinox.__version__, 'optax', optax.__version__); print(jax.devices())"
} >"$out/env_gpu.txt" 2>&1

step samplers 150 python3 benchmarks/bench_samplers.py --sdes vp --dims 64 --one-budget --n 20000 --out "$out/samplers_gpu.json"
step overhead 90 python3 benchmarks/bench_overhead.py --reps 10 --out "$out/overhead_gpu.json"
step memory 120 python3 benchmarks/bench_memory.py --out "$out/memory_gpu.json"
step likelihood 100 python3 benchmarks/bench_likelihood.py --repeats 3 --out "$out/likelihood_gpu.json"
step training-toy 60 python3 benchmarks/bench_training.py toy
cp benchmarks/results/training_toy.json "$out/training_toy_gpu.json" 2>/dev/null
# the paper's networks: forward pass at batch 8 (this package only; the PyTorch side
# needs --official-repo/--torch-python) and one FFHQ-1024 reverse-SDE step's memory
step official-nets 150 python3 benchmarks/bench_official_nets.py --reps 5 --out "$out/official_nets_gpu.json"
echo "total $(($(date +%s) - start))s" | tee -a "$log"
