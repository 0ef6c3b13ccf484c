"""Training benchmark (issue 5): a 2-D toy and the 8x8 digits, trained from scratch.

    python benchmarks/bench_training.py toy              # <= 2 min: SW2 vs the true-sample floor
    python benchmarks/bench_training.py digits-train     # <= 15 min: U-Net, checkpoint
    python benchmarks/bench_training.py digits-eval      # FD-digits of samples vs the floor, PNG grid

Each part writes JSON to benchmarks/results/ with the command, the times and the load.
"""

import json
import os
import pathlib
import sys
import time

import diffrax as dfx
import jax
import jax.random as jr
import numpy as np

import scoresde_diffrax as sd
from scoresde_diffrax.pictures import image_grid, save_image


HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results"
CKPT = RESULTS / "digits_checkpoint"


def conditions() -> dict:
    return {
        "command": "python " + " ".join(sys.argv),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def toy():
    sde = sd.VPSDE()
    data = sd.data.moons(jr.key(0), 20000)
    model = sd.EpsScore(sd.nn.MLPScore((2,), width=128, depth=3, key=jr.key(1)), sde)
    res = sd.train(
        jr.key(2),
        model,
        sde,
        data,
        num_steps=12000,
        batch_size=512,
        learning_rate=2e-3,
        warmup_steps=200,
        ema_decay=0.999,
        steps_per_call=500,
        progress=False,
    )
    n = 4000
    truth = sd.data.moons(jr.key(10), n)
    other = sd.data.moons(jr.key(11), n)
    kp = jr.key(12)
    floor = float(sd.metrics.sliced_wasserstein(kp, other, truth, num_projections=512))
    rows = {}
    for name, kw in {
        "euler-maruyama 1000": dict(solver=dfx.Euler(), method="sde", num_steps=1000),
        "ode-tsit5 1e-5": dict(
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=1e-5, atol=1e-5),
        ),
    }.items():
        t = time.perf_counter()
        out = sd.sample(jr.key(3), sde, res.ema_model, (n, 2), **kw)
        x = np.asarray(out.samples)
        sw = float(sd.metrics.sliced_wasserstein(kp, x, truth, num_projections=512))
        rows[name] = {
            "sw2": sw,
            "ratio_to_floor": sw / floor,
            "sample_s": time.perf_counter() - t,
            "nfe": int(out.stats["num_score_evals"]),
        }
    prior = float(
        sd.metrics.sliced_wasserstein(
            kp, jr.normal(jr.key(4), (n, 2)), truth, num_projections=512
        )
    )
    out = {
        "what": "MLPScore (128x3, eps) on moons, VPSDE, DSM sigma^2, 12000 steps, batch 512, lr 2e-3",
        "train_s": res.wall_time,
        "steps_per_s": 12000 / res.wall_time,
        "final_loss": float(res.losses[-500:].mean()),
        "sw2_floor_true_vs_true": floor,
        "sw2_prior": prior,
        "samplers": rows,
        "conditions": conditions(),
    }
    (RESULTS / "training_toy.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def digits_train(num_steps: int = 6000):
    sde = sd.VPSDE()
    data = sd.data.digits("train")
    net = sd.nn.UNet((1, 8, 8), key=jr.key(1))
    model = sd.EpsScore(net, sde)
    res = sd.train(
        jr.key(0),
        model,
        sde,
        data,
        num_steps=num_steps,
        batch_size=128,
        learning_rate=1e-3,
        warmup_steps=200,
        ema_decay=0.999,
        checkpoint_dir=CKPT,
        checkpoint_every=1000,
        keep_checkpoints=1,
        resume=True,
        progress=True,
    )
    out = {
        "what": f"UNet (defaults: channels 16, mult (1,2), attention at 4x4) on digits train split, VPSDE, eps, DSM, {num_steps} steps, batch 128, lr 1e-3, warmup 200, EMA 0.999",
        "train_s_this_call": res.wall_time,
        "steps_this_call": int(len(res.losses)),
        "steps_per_s": len(res.losses) / res.wall_time if len(res.losses) else None,
        "final_loss": float(res.losses[-200:].mean()) if len(res.losses) else None,
        "conditions": conditions(),
    }
    (RESULTS / "training_digits_train.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


def digits_eval(num_samples: int = 1437):
    model, meta = sd.load_checkpoint(CKPT)
    sde = sd.sde_from_description(meta["sde"])
    floor = sd.metrics.fd_digits_floor()
    rows = {}
    for name, kw in {
        "ode-tsit5 1e-3": dict(
            solver=dfx.Tsit5(),
            stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3),
        ),
        "euler-maruyama 200": dict(solver=dfx.Euler(), method="sde", num_steps=200),
    }.items():
        t = time.perf_counter()
        out = sd.sample(
            jr.key(5), sde, sd.nn.loop_friendly(model), (num_samples, 1, 8, 8), **kw
        )
        x = np.clip((np.asarray(out.samples) + 1) / 2, 0, 1)
        fd = sd.metrics.fd_digits(x)
        rows[name] = {
            "fd_digits": fd,
            "ratio_to_floor": fd / floor,
            "sample_s": time.perf_counter() - t,
            "nfe": int(out.stats["num_score_evals"]),
        }
        png = RESULTS / f"digits_samples_{name.split()[0]}.png"
        real = sd.data.digits_array("test")[0][:64]
        gap = np.full((64, 1, 8, 8), 0.5, np.float32)[:8]
        save_image(png, image_grid(np.concatenate([x[:64], gap, real]), ncols=8))
        rows[name]["png"] = str(png.relative_to(HERE.parent))
    out = {
        "checkpoint_step": meta["step"],
        "fd_digits_floor_train_vs_test": floor,
        "num_samples": num_samples,
        "samplers": rows,
        "conditions": conditions(),
    }
    (RESULTS / "training_digits_eval.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    part = sys.argv[1] if len(sys.argv) > 1 else "toy"
    if part == "toy":
        toy()
    elif part == "digits-train":
        digits_train(int(sys.argv[2]) if len(sys.argv) > 2 else 6000)
    elif part == "digits-eval":
        digits_eval()
    else:
        raise SystemExit(f"unknown part {part!r}: toy, digits-train, digits-eval")
