"""Controllable generation on digits (benchmarks, not tests): class-conditional
sampling by classifier guidance, inpainting and colorization, through the CLI.

    python benchmarks/bench_controllable.py guided      # accuracy and FD-digits per class
    python benchmarks/bench_controllable.py inpaint     # left half, centre square
    python benchmarks/bench_controllable.py colorize    # coloured digits
    python benchmarks/bench_controllable.py all

Checkpoints (committed): `results/digits_checkpoint` (the VP U-Net of
bench_training.py), `results/digits_classifier` (`scoresde train-classifier --data
digits --sde vp --steps 3000 ...`), `results/colored_digits_checkpoint` (`scoresde
train --data colored-digits --sde vp --model unet --steps 6000 ...`). Each part writes
`results/controllable_<part>.json` and PNG grids.
"""

import json
import os
import pathlib
import platform
import sys
import time

import jax
import numpy as np


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import scoresde_diffrax as sd  # noqa: E402
from scoresde_diffrax import cli  # noqa: E402
from scoresde_diffrax.pictures import image_grid, save_image  # noqa: E402


RESULTS = pathlib.Path(__file__).parent / "results"
SCORE = RESULTS / "digits_checkpoint"
CLASSIFIER = RESULTS / "digits_classifier"
COLOR = RESULTS / "colored_digits_checkpoint"


def _conditions(command: str) -> dict:
    return dict(
        command=command,
        jax=jax.__version__,
        backend=jax.default_backend(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
        loadavg_at_end=list(os.getloadavg()),
        date=time.strftime("%Y-%m-%d %H:%M"),
    )


def _run(argv):
    t = time.perf_counter()
    code = cli.main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"scoresde {argv[0]} failed with code {code}")
    return time.perf_counter() - t


def psnr(a, b) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1], over the whole batch."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float(10 * np.log10(1.0 / mse))


def per_class_fd(x, labels) -> dict:
    """FD-digits of the samples of each class against the test images of that class,
    beside the floor: as many train images of that class (the first ones) against the
    same test images (FD grows as the samples shrink, so the floor uses as many)."""
    test_x, test_y = sd.data.digits_array("test")
    train_x, train_y = sd.data.digits_array("train")
    f_test = sd.metrics.digits_features(test_x)
    f_train = sd.metrics.digits_features(train_x)
    f_x = sd.metrics.digits_features(x)
    out = {}
    for c in range(10):
        mine = f_x[labels == c]
        fd = sd.metrics.frechet_distance(mine, f_test[test_y == c])
        floor = sd.metrics.frechet_distance(
            f_train[train_y == c][: len(mine)], f_test[test_y == c]
        )
        out[str(c)] = dict(fd=fd, floor=floor, ratio=fd / floor)
    return out


def guided(per_class: int = 50, scales=(1.0, 3.0), steps: int = 200):
    n = 10 * per_class
    rows = {}
    for scale in scales:
        npy = RESULTS / f"controllable_guided_scale{scale:g}.npy"
        png = RESULTS / f"controllable_guided_scale{scale:g}.png"
        secs = _run(
            ["sample", "--checkpoint", SCORE, "--classifier", CLASSIFIER]
            + ["--label", "all", "--guidance-scale", scale, "--num-samples", n]
            + ["--solver", "euler-maruyama", "--steps", steps, "--seed", 0]
            + ["--out", npy, "--png", png]
        )
        x = np.load(npy)
        npy.unlink()
        # One column per class (the CLI's picture has 8 columns).
        save_image(png, image_grid(x[:100], ncols=10))
        labels = np.arange(n) % 10
        acc = [
            sd.metrics.digits_accuracy(x[labels == c], labels[labels == c])
            for c in range(10)
        ]
        fd = per_class_fd(x, labels)
        rows[f"scale {scale:g}"] = dict(
            accuracy_mean_over_classes=float(np.mean(acc)),
            accuracy_per_class=acc,
            fd_per_class=fd,
            fd_ratio_mean=float(np.mean([v["ratio"] for v in fd.values()])),
            seconds=secs,
            png=str(png.relative_to(RESULTS.parent.parent)),
        )
        print(
            f"scale {scale:g}: accuracy {np.mean(acc):.3f}, FD ratio "
            f"{rows[f'scale {scale:g}']['fd_ratio_mean']:.2f}, {secs:.0f} s",
            flush=True,
        )
    test_x, test_y = sd.data.digits_array("test")
    out = dict(
        what=f"classifier guidance, {per_class} samples per class (labels 0..9 cycling), "
        f"Euler-Maruyama {steps} steps, VP U-Net (results/digits_checkpoint) + "
        "noise-conditional classifier (results/digits_classifier)",
        accuracy_of_test_images=sd.metrics.digits_accuracy(test_x, test_y),
        runs=rows,
        conditions=_conditions("python benchmarks/bench_controllable.py guided"),
    )
    (RESULTS / "controllable_guided.json").write_text(json.dumps(out, indent=1))


def inpaint(n: int = 360, steps: int = 200):
    truth, labels = sd.data.digits_array("test")
    truth, labels = truth[:n], labels[:n]
    rows = {}
    for mask in ("left-half", "centre-square"):
        npy = RESULTS / f"controllable_inpaint_{mask}.npy"
        png = RESULTS / f"controllable_inpaint_{mask}.png"
        secs = _run(
            ["inpaint", "--checkpoint", SCORE, "--data", "digits", "--mask", mask]
            + ["--num-samples", n, "--seed", 0, "--solver", "pc", "--steps", steps]
            + ["--out", npy, "--png", png]
        )
        x = np.load(npy)
        npy.unlink()
        known = sd.operators.inpainting_mask(mask, truth.shape[1:], n, 0)
        hole = np.broadcast_to(~known, truth.shape)
        filled_zero = np.where(hole, 0.0, truth)
        rows[mask] = dict(
            accuracy=sd.metrics.digits_accuracy(x, labels),
            accuracy_truth=sd.metrics.digits_accuracy(truth, labels),
            accuracy_hole_zero=sd.metrics.digits_accuracy(filled_zero, labels),
            psnr=psnr(x, truth),
            psnr_hole=psnr(x[hole], truth[hole]),
            psnr_hole_zero=psnr(filled_zero[hole], truth[hole]),
            seconds=secs,
            png=str(png.relative_to(RESULTS.parent.parent)),
        )
        print(mask, {k: v for k, v in rows[mask].items() if k != "png"}, flush=True)
    out = dict(
        what=f"inpainting the first {n} test digits, the paper's PC sampler "
        f"({steps} steps, 2 evaluations each) with replacement, VP U-Net "
        "(results/digits_checkpoint); accuracy of the FD-digits classifier against "
        "the true labels; PSNR against the truth (whole image, and the hole only); "
        "baselines: the truth, and the hole filled with 0 (background)",
        runs=rows,
        conditions=_conditions("python benchmarks/bench_controllable.py inpaint"),
    )
    (RESULTS / "controllable_inpaint.json").write_text(json.dumps(out, indent=1))


def colorize(n: int = 360, steps: int = 200):
    npy = RESULTS / "controllable_colorize.npy"
    png = RESULTS / "controllable_colorize.png"
    secs = _run(
        ["colorize", "--checkpoint", COLOR, "--data", "colored-digits"]
        + ["--num-samples", n, "--seed", 0, "--solver", "pc", "--steps", steps]
        + ["--out", npy, "--png", png]
    )
    x = np.load(npy)
    npy.unlink()
    truth = np.asarray(sd.data.colored_digits("test").x[:n])
    grey = np.repeat(truth.mean(1, keepdims=True), 3, axis=1)
    out = dict(
        what=f"colorizing the grey versions of the first {n} coloured test digits, "
        f"the paper's PC sampler ({steps} steps) with the orthogonal grey/colour "
        "decoupling, VP U-Net trained on colored-digits "
        "(results/colored_digits_checkpoint)",
        psnr=psnr(x, truth),
        psnr_grey_baseline=psnr(grey, truth),
        max_abs_grey_error=float(np.max(np.abs(x.mean(1) - truth.mean(1)))),
        seconds=secs,
        png=str(png.relative_to(RESULTS.parent.parent)),
        conditions=_conditions("python benchmarks/bench_controllable.py colorize"),
    )
    print({k: v for k, v in out.items() if k != "conditions"}, flush=True)
    (RESULTS / "controllable_colorize.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    part = sys.argv[1] if len(sys.argv) > 1 else "all"
    parts = dict(guided=guided, inpaint=inpaint, colorize=colorize)
    if part not in (*parts, "all"):
        raise SystemExit(f"unknown part {part!r}: {', '.join(parts)}, all")
    for name, fn in parts.items():
        if part in (name, "all"):
            fn()
