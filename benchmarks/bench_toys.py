"""Every embedded 2-D toy, trained from the shell with the defaults (issue: "every 2-D
toy learned to its shape").

    python benchmarks/bench_toys.py                    # the table: each toy at its steps
    python benchmarks/bench_toys.py rings 20000        # one toy at N steps
    python benchmarks/bench_toys.py --ablation         # rings: what the defaults add

For each toy it runs, in process, exactly what a user types:

    scoresde train --data NAME --sde vp --model mlp --steps N --out DIR --quiet
    scoresde sample --checkpoint DIR --num-samples 2000 --solver euler-maruyama \
        --seed 0 --out x.npy

and scores the 2000 samples by their sliced W2 distance to 2000 fresh samples of the
toy, as a multiple of the floor: the distance between two independent sets of 2000
true samples. Both are averaged over 5 reference sets (keys 100-104, the second true
sets 200-204, projections 300-304, 512 each), which makes the ratio repeatable to a
few per cent. Writes `results/toys.json` (with the command, the load and the times)
and, per toy, `results/toy_<name>.png`: the data (left) beside the samples (right),
on the same axes.

`--ablation` trains rings with `sd.train` directly, with the CLI's settings but one
change at a time back to the old defaults (no input Fourier features; learning rate
1e-3), and also records the relative error of the learned score against the exact
score of the rings (a circle convolved with a Gaussian, by quadrature) at several t.
"""

import json
import math
import os
import pathlib
import sys
import tempfile
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import scoresde_diffrax as sd
from scoresde_diffrax import cli
from scoresde_diffrax.pictures import save_scatter


HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results"
# Steps of each toy in the README's table (<= 2 minutes of training on 2 CPU cores).
STEPS = {
    "moons": 10000,
    "swiss-roll": 20000,
    "checkerboard": 20000,
    "rings": 20000,
    "gaussian-mixture": 10000,
}
TOYS = {
    "moons": sd.data.moons,
    "swiss-roll": sd.data.swiss_roll,
    "checkerboard": sd.data.checkerboard,
    "rings": sd.data.rings,
    "gaussian-mixture": sd.data.gaussian_mixture,
}
N = 2000
REPS = 5


def conditions() -> dict:
    return {
        "command": "python " + " ".join(sys.argv),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def sw2_ratio(name: str, x: np.ndarray) -> dict:
    """Sliced W2 of `x` to true samples, and the floor of true samples, averaged over
    `REPS` reference sets; their ratio."""
    gen = TOYS[name]
    model, floor = [], []
    for r in range(REPS):
        ref, other = gen(jr.key(100 + r), N), gen(jr.key(200 + r), N)
        kp = jr.key(300 + r)
        sw = sd.metrics.sliced_wasserstein
        floor.append(float(sw(kp, other, ref, num_projections=512)))
        model.append(float(sw(kp, x[:N], ref, num_projections=512)))
    return {
        "sw2": float(np.mean(model)),
        "sw2_floor": float(np.mean(floor)),
        "ratio": float(np.mean(model) / np.mean(floor)),
    }


def side_by_side(name: str, x: np.ndarray, path: pathlib.Path) -> None:
    """The samples over the data (grey), on the same axes."""
    truth = np.asarray(TOYS[name](jr.key(100), N))
    save_scatter(path, x, reference=truth, title=f"{name}: samples over the data")


def _cli(argv: list[str]) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    if code != 0:
        raise SystemExit(f"scoresde {' '.join(argv)} exited with {code}")
    return out.getvalue().strip()


def one_toy(name: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        ck, npy = pathlib.Path(d) / "ck", pathlib.Path(d) / "x.npy"
        train = ["train", "--data", name, "--sde", "vp", "--model", "mlp"]
        train += ["--steps", str(steps), "--out", str(ck), "--quiet"]
        sample = ["sample", "--checkpoint", str(ck), "--num-samples", str(N)]
        sample += ["--solver", "euler-maruyama", "--seed", "0", "--out", str(npy)]
        t = time.perf_counter()
        train_line = _cli(train)
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        _cli(sample)
        sample_s = time.perf_counter() - t
        x = np.load(npy)
    png = RESULTS / f"toy_{name}.png"
    side_by_side(name, x, png)
    row = {
        "steps": steps,
        "train": "scoresde " + " ".join(train[:-3] + ["--out", "DIR", "--quiet"]),
        "sample": "scoresde "
        + " ".join(sample[:2] + ["DIR"] + sample[3:-1] + ["x.npy"]),
        "train_s": train_s,
        "sample_s": sample_s,
        "train_report": train_line,
        "load_at_end": os.getloadavg()[0],
        "png": str(png.relative_to(HERE.parent)),
        **sw2_ratio(name, x),
    }
    print(json.dumps({name: row}), flush=True)
    return row


# --------------------------------------------------------------------------- ablation


def rings_logp(sde, t, x, noise=0.05, n_angles=720):
    """Exact log-density (up to a constant) of the rings at time t: each ring a circle
    convolved with N(0, noise^2), pushed through the SDE (quadrature over angles)."""
    a, s = sde.mean_coeff(t), sde.std(t)
    var = (a * noise) ** 2 + s**2
    th = jnp.arange(n_angles) * (2 * math.pi / n_angles)
    u = jnp.stack([jnp.cos(th), jnp.sin(th)], 1)
    centres = jnp.concatenate([a * r * u for r in (0.5, 1.0, 1.5)])
    d2 = jnp.sum((x[None] - centres) ** 2, -1)
    return jax.nn.logsumexp(-0.5 * d2 / var) - jnp.log(var)


def score_errors(sde, model, ts=(0.001, 0.01, 0.05, 0.1, 0.3, 1.0)) -> dict:
    """Relative RMS error of `model`'s score against the exact one at each t."""
    out = {}
    x0 = sd.data.rings(jr.key(7), N)
    for t in ts:
        t = jnp.asarray(t)
        mean, std = sde.marginal(t, x0)
        xt = mean + std * jr.normal(jr.key(8), x0.shape)
        true = jax.vmap(jax.grad(rings_logp, argnums=2), (None, None, 0))(sde, t, xt)
        est = jax.vmap(model, (None, 0))(t, xt)
        err = jnp.sum((est - true) ** 2, -1).mean() / jnp.sum(true**2, -1).mean()
        out[f"{float(t):g}"] = float(jnp.sqrt(err))
    return out


def ablation(steps: int = 20000) -> dict:
    from scoresde_diffrax.cli import DATASETS, default_lr, default_warmup

    variants = {
        "defaults (64 input Fourier features, lr 2e-3)": {},
        "no input Fourier features (old network)": dict(input_fourier_features=0),
        "lr 1e-3 (old default)": dict(lr=1e-3),
        "old defaults (no features, lr 1e-3)": dict(input_fourier_features=0, lr=1e-3),
    }
    sde, data = sd.VPSDE(), DATASETS["rings"]()
    rows = {}
    for label, change in variants.items():
        change = dict(change)
        lr = change.pop("lr", default_lr("mlp"))
        net = sd.nn.MLPScore((2,), width=128, depth=3, key=jr.key(1), **change)
        res = sd.train(
            jr.key(0),
            sd.EpsScore(net, sde),
            sde,
            data,
            num_steps=steps,
            batch_size=128,
            learning_rate=lr,
            warmup_steps=default_warmup(steps),
            ema_decay=0.999,
            progress=False,
        )
        x = sd.sample(
            jr.key(0),
            sde,
            res.ema_model,
            (N, 2),
            solver=dfx.Euler(),
            method="sde",
            num_steps=1000,
        ).samples
        rows[label] = {
            "train_s": res.wall_time,
            "relative_score_error_at_t": score_errors(sde, res.ema_model),
            **sw2_ratio("rings", np.asarray(x)),
        }
        print(json.dumps({label: rows[label]}), flush=True)
    return rows


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:]
    if args[:1] == ["--ablation"]:
        out = {
            "what": "rings, VPSDE, EpsScore(MLPScore 128x3), batch 128, EMA 0.999, "
            "20000 steps, one change at a time; Euler-Maruyama 1000 steps, 2000 samples",
            "variants": ablation(),
            "conditions": conditions(),
        }
        (RESULTS / "toys_ablation.json").write_text(json.dumps(out, indent=2) + "\n")
    else:
        todo = {args[0]: int(args[1])} if args else STEPS
        rows = {name: one_toy(name, steps) for name, steps in todo.items()}
        out = {
            "what": "each toy trained with `scoresde train` defaults (VPSDE, MLP) and "
            f"sampled with Euler-Maruyama (1000 steps, {N} samples); sliced W2 to "
            f"{N} true samples as a multiple of the floor of {N} true samples "
            f"(means over {REPS} reference sets)",
            "toys": rows,
            "conditions": conditions(),
        }
        name = "toys.json" if not args else f"toys_{args[0]}.json"
        (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
