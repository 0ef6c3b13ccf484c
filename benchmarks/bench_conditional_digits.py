"""Class-conditional digits with classifier-free guidance (a benchmark, not a test):
the committed conditional VP U-Net `results/cond_digits_checkpoint` (`scoresde train
--conditional --cond-drop 0.1`), sampled through `scoresde sample --label all
--guidance-scale W` at several guidance scales.

    python benchmarks/bench_conditional_digits.py [--per-class 100] [--scales 0,1,3]
        [--solver dpm-solver++2m] [--steps 50]

For each guidance scale w: `--per-class` samples of each class (labels 0..9 cycling in
one batch), the accuracy of the FD-digits classifier on them against their labels (per
class, and overall), FD-digits of all samples against the test split beside
`sd.metrics.fd_digits_floor()` and beside as many real train digits (FD grows as the
sample shrinks), FD-digits of each class against that class's test digits divided by
that class's floor (as `bench_controllable.py guided` reports for classifier guidance),
score evaluations (each makes two network calls) and wall time. Writes
`results/conditional_digits.json` and one PNG per scale,
`results/conditional_digits_w<W>.png` (row c: ten samples of class c).
"""

import argparse
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
from bench_inverse_digits import run_cli  # noqa: E402  (the same in-process runner)

import scoresde_diffrax as sd  # noqa: E402
from scoresde_diffrax.pictures import image_grid, save_image  # noqa: E402


RESULTS = pathlib.Path(__file__).parent / "results"
SCORE = RESULTS / "cond_digits_checkpoint"


def per_class_fd(f_x, labels, f_train, train_y, f_test, test_y) -> list[dict]:
    """FD-digits of each class's samples against that class's test digits, beside the
    floor: as many train digits of that class (the first ones) against the same test
    digits."""
    out = []
    for c in range(10):
        mine = f_x[labels == c]
        fd = sd.metrics.frechet_distance(mine, f_test[test_y == c])
        floor = sd.metrics.frechet_distance(
            f_train[train_y == c][: len(mine)], f_test[test_y == c]
        )
        out.append(dict(fd=fd, floor=floor, ratio=fd / floor))
    return out


def rows_by_class(x: np.ndarray, labels: np.ndarray, ncols: int = 10) -> np.ndarray:
    """The first `ncols` samples of each class, class c in row c."""
    return np.concatenate([x[labels == c][:ncols] for c in range(10)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--scales", default="0,1,3")
    ap.add_argument("--solver", default="dpm-solver++2m")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = 10 * args.per_class
    labels = np.arange(n) % 10

    test_x, test_y = sd.data.digits_array("test")
    train_x, train_y = sd.data.digits_array("train")
    f_test = sd.metrics.digits_features(test_x)
    f_train = sd.metrics.digits_features(train_x)
    floor = sd.metrics.fd_digits_floor()  # 1,437 train digits against the test split
    floor_n = sd.metrics.frechet_distance(f_train[:n], f_test)  # as many as the samples
    print(f"FD-digits floor: {floor:.2f} (1437 train digits), {floor_n:.2f} ({n})")

    runs = []
    for w in [float(s) for s in args.scales.split(",")]:
        npy = RESULTS / f"conditional_digits_w{w:g}.npy"
        png = RESULTS / f"conditional_digits_w{w:g}.png"
        text, secs = run_cli(
            ["sample", "--checkpoint", SCORE, "--label", "all"]
            + ["--guidance-scale", w, "--num-samples", n]
            + ["--solver", args.solver, "--steps", args.steps, "--seed", args.seed]
            + ["--out", npy]
        )
        x = np.load(npy)
        npy.unlink()
        save_image(
            png,
            image_grid(rows_by_class(x, labels), ncols=10),
            title=f"w = {w:g}: row c = class c",
        )
        nfe = int(re.search(r"(\d+) score evaluations", text).group(1))
        acc = [
            sd.metrics.digits_accuracy(x[labels == c], labels[labels == c])
            for c in range(10)
        ]
        f_x = sd.metrics.digits_features(x)
        fd = sd.metrics.frechet_distance(f_x, f_test)
        fd_c = per_class_fd(f_x, labels, f_train, train_y, f_test, test_y)
        run = dict(
            guidance_scale=w,
            accuracy=sd.metrics.digits_accuracy(x, labels),
            accuracy_per_class=acc,
            fd_digits=fd,
            fd_ratio_to_floor_same_n=fd / floor_n,
            fd_per_class=fd_c,
            fd_per_class_ratio_mean=float(np.mean([r["ratio"] for r in fd_c])),
            score_evals=nfe,
            network_calls=2 * nfe,
            seconds=secs,
            png=str(png.relative_to(RESULTS.parent.parent)),
            printed=text.strip(),
        )
        runs.append(run)
        print(
            f"w={w:g}: accuracy {run['accuracy']:.3f} (worst class "
            f"{min(acc):.2f}: {int(np.argmin(acc))}), FD-digits {fd:.2f} "
            f"({fd / floor_n:.2f}x the {n}-digit floor), per-class FD ratio "
            f"{run['fd_per_class_ratio_mean']:.2f}, {nfe} evals, {secs:.0f} s",
            flush=True,
        )
    out = dict(
        command="python " + " ".join(sys.argv),
        what=f"classifier-free guidance, {args.per_class} samples per class (labels "
        f"0..9 cycling), {args.solver} {args.steps} steps, conditional VP U-Net "
        "(results/cond_digits_checkpoint); FD-digits of all samples against the 360 "
        "test digits",
        fd_digits_floor=floor,
        fd_digits_floor_same_n=floor_n,
        accuracy_of_test_digits=sd.metrics.digits_accuracy(test_x, test_y),
        runs=runs,
        conditions=dict(
            jax=jax.__version__,
            backend=jax.default_backend(),
            cpu_count=os.cpu_count(),
            python=platform.python_version(),
            loadavg_at_end=list(os.getloadavg()),
            date=time.strftime("%Y-%m-%d %H:%M"),
            checkpoint=sorted(p.name for p in SCORE.glob("*.json")),
        ),
    )
    (RESULTS / "conditional_digits.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
