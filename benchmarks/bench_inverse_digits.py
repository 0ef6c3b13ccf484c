"""Linear inverse problems on digits (a benchmark, not a test): 2x super-resolution and
Gaussian blur of test digits, reconstructed with `scoresde inverse` by projection
(Song et al. 2022) and by DPS (Chung et al. 2023) around the paper's PC sampler at several
numbers of steps, with the committed VP U-Net `results/digits_checkpoint`.

    python benchmarks/bench_inverse_digits.py [--num N] [--steps 50,200]

For each operator, method and number of steps: PSNR of the results against the truth,
the accuracy of the FD-digits classifier on them against the true labels, the RMS
measurement residual ||A(x) - y|| / sqrt(m), score evaluations and wall time; beside
two baselines computed from the measurement alone: the pseudo-inverse A^+ y (the
low-resolution image upsampled by nearest neighbour for super-resolution) and the
truth. Writes `results/inverse_digits.json` and one PNG grid per cell
(measurement / result / truth).
"""

import argparse
import contextlib
import io
import json
import os
import pathlib
import platform
import re
import sys
import time

import jax
import numpy as np


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import scoresde_diffrax as sd  # noqa: E402
from scoresde_diffrax import cli  # noqa: E402


RESULTS = pathlib.Path(__file__).parent / "results"
SCORE = RESULTS / "digits_checkpoint"
OPERATORS = ("super-resolution:2", "blur:1")
NOISE_STD = 0.05  # model units ([-1, 1]): 0.025 in [0, 1]


def psnr(a, b) -> float:
    """Mean over images of the PSNR (dB) of images in [0, 1]."""
    err = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    mse = err.reshape(len(err), -1).mean(1)
    return float(np.mean(10 * np.log10(1.0 / np.maximum(mse, 1e-12))))


def run_cli(argv) -> tuple[str, float]:
    """Run a command in process; its printed output and wall time."""
    printed = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = cli.main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"scoresde {argv[0]} failed with code {code}")
    return printed.getvalue(), time.perf_counter() - t


def baseline(op_spec: str, truth: np.ndarray, seed: int) -> float:
    """PSNR of the pseudo-inverse of the noisy measurement (what the measurement alone
    gives), through the command's own operator and noise."""
    shape = truth.shape[1:]
    op = sd.operators.make_operator(op_spec, shape, seed, (2.0, -1.0))
    y = sd.operators.measure(op, truth * 2 - 1, NOISE_STD, seed)
    pinv = np.clip((np.asarray(op.pinv_image(y)) + 1) / 2, 0, 1)
    return psnr(pinv, truth)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=120, help="test digits (the first N)")
    ap.add_argument("--steps", default="50,200")
    args = ap.parse_args()
    truth, labels = sd.data.digits_array("test")
    truth, labels = truth[: args.num], labels[: args.num]
    rows = []
    for op in OPERATORS:
        base = dict(operator=op, pinv_psnr=baseline(op, truth, 0))
        print(f"{op}: pseudo-inverse PSNR {base['pinv_psnr']:.2f} dB", flush=True)
        for method in ("projection", "dps"):
            for steps in [int(s) for s in args.steps.split(",")]:
                tag = f"{op.replace(':', '')}_{method}_{steps}"
                npy, png = RESULTS / f"inv_{tag}.npy", RESULTS / f"inverse_{tag}.png"
                text, secs = run_cli(
                    ["inverse", "--checkpoint", SCORE, "--data", "digits"]
                    + [
                        "--operator",
                        op,
                        "--noise-std",
                        NOISE_STD,
                        "--algorithm",
                        method,
                    ]
                    + ["--solver", "pc", "--steps", steps, "--num-samples", args.num]
                    + ["--seed", 0, "--out", npy, "--png", png]
                )
                x = np.load(npy)
                npy.unlink()
                nfe = int(re.search(r"(\d+) score evaluations", text).group(1))
                resid = float(re.search(r"sqrt\(m\) (\S+)", text).group(1))
                row = dict(
                    base,
                    method=method,
                    steps=steps,
                    score_evals=nfe,
                    psnr=psnr(x, truth),
                    accuracy=float(sd.metrics.digits_accuracy(x, labels)),
                    residual=resid,
                    seconds=secs,
                    printed=text.strip(),
                )
                rows.append(row)
                print(
                    f"  {method:10s} {steps:4d} steps ({nfe} evals): PSNR "
                    f"{row['psnr']:.2f} dB, accuracy {row['accuracy']:.3f}, residual "
                    f"{resid:.3g}, {secs:.0f} s",
                    flush=True,
                )
    truth_acc = float(sd.metrics.digits_accuracy(truth, labels))
    out = dict(
        command="python " + " ".join(sys.argv),
        conditions=dict(
            jax=jax.__version__,
            backend=jax.default_backend(),
            cpu_count=os.cpu_count(),
            python=platform.python_version(),
            loadavg_at_end=list(os.getloadavg()),
            noise_std_model_units=NOISE_STD,
            num_test_digits=args.num,
            truth_accuracy=truth_acc,
        ),
        rows=rows,
    )
    (RESULTS / "inverse_digits.json").write_text(json.dumps(out, indent=1))
    print(f"classifier accuracy on the truth: {truth_acc:.3f}")


if __name__ == "__main__":
    main()
