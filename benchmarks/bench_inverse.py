"""Error of imputation against an exact posterior, by sampler and number of steps.

An 8-D Gaussian mixture (3 components, well separated in the last four coordinates)
is observed exactly on its first four coordinates, where two components overlap and
the third is far (exact posterior weights 0.47 / 0.53 / 0; prior 0.3 / 0.3 / 0.4); its posterior is known in closed form
(`GaussianMixture.condition_on_coordinates`). For each SDE (VP, VE), sampler and
number of steps, `sd.Impute(sampler, ...)` samples the unobserved coordinates with the
exact (unconditional) mixture score, and the samples are compared with the exact
posterior: component weights (total variation), per-component means (largest
|error| / std) and the within-component variance ratio, beside the noise floor of
exact posterior samples of the same size. The reference row samples the exact
posterior score directly (what a perfect conditional score would give).

    python benchmarks/bench_inverse.py             # -> results/inverse_exact.json
    python benchmarks/bench_inverse.py --quick     # VP, two samplers, 100 steps
"""

import argparse
import json
import os
import platform
import sys
import time

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np


sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import scoresde_diffrax as sd  # noqa: E402


def problem():
    """The mixture, the mask, the observation and the exact posterior (also used by
    tests/test_inverse.py)."""
    means = jnp.array(
        [
            [-0.6, -0.6, 0.6, 0.6, 3.0, 3.0, -3.0, 0.0],
            [0.6, 0.6, -0.6, -0.6, -3.0, 3.0, 3.0, 0.0],
            [3.0, -3.0, 3.0, 3.0, 0.0, -3.0, 0.0, 3.0],
        ]
    )
    stds = jnp.array(
        [
            [0.8, 0.9, 1.0, 0.7, 0.6, 0.8, 0.7, 0.9],
            [1.0, 0.7, 0.8, 0.9, 0.9, 0.6, 0.8, 0.7],
            [0.9, 0.8, 0.7, 1.0, 0.7, 0.9, 0.6, 0.8],
        ]
    )
    mix = sd.GaussianMixture(means, stds, jnp.array([0.3, 0.3, 0.4]))
    mask = np.array([1, 1, 1, 1, 0, 0, 0, 0], bool)
    x_obs = jnp.array([0.3, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0])
    return mix, mask, x_obs, mix.condition_on_coordinates(mask, x_obs)


def errors(post: sd.GaussianMixture, x) -> dict:
    """Weights (total variation), means (max |error| / std over coordinates and the
    components of posterior weight >= 0.05) and the within-component variance ratio
    (mean over the same) of samples `x` of the posterior `post` (each sample assigned
    to its most probable component)."""
    x = np.asarray(x, np.float64)
    labels = np.asarray(jax.vmap(post.classify)(jnp.asarray(x, jnp.float32)))
    w_true = np.asarray(post.weights, np.float64)
    k = w_true.size
    w = np.bincount(labels, minlength=k) / len(x)
    mean_err, ratios = 0.0, []
    for c in range(k):
        xc = x[labels == c]
        if len(xc) < 2 or w_true[c] < 0.05:
            continue
        sd_c = np.asarray(post.stds[c], np.float64)
        mean_err = max(
            mean_err,
            float(np.max(np.abs(xc.mean(0) - np.asarray(post.means[c])) / sd_c)),
        )
        ratios.append(xc.var(0, ddof=1) / sd_c**2)
    return {
        "weights": w.tolist(),
        "weights_tv": float(0.5 * np.abs(w - w_true).sum()),
        "mean_err_max": mean_err,
        "var_ratio": float(np.mean(ratios)),
    }


def samplers(quick: bool):
    pc = lambda k: sd.PredictorCorrector(  # noqa: E731
        sd.ReverseDiffusion(), sd.Langevin(snr=0.16, num_steps=k, batch_norm=True)
    )
    table = {
        "pc (rd + langevin 1)": (lambda: pc(1), "sde"),
        "reverse-diffusion": (sd.ReverseDiffusion, "sde"),
        "pc (rd + langevin 3)": (lambda: pc(3), "sde"),
        "ancestral": (sd.AncestralSampling, "sde"),
        "euler-maruyama": (dfx.Euler, "sde"),
        "ddim (ode, fixed noise)": (sd.DDIM, "ode"),
        "dpm-solver++2m (ode, fixed noise)": (sd.DPMSolverPP2M, "ode"),
    }
    if quick:
        return {k: table[k] for k in list(table)[:2]}
    return table


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--sdes", nargs="+", default=["vp", "ve"])
    parser.add_argument("--out", default="benchmarks/results/inverse_exact.json")
    args = parser.parse_args()
    if args.quick:
        args.sdes, args.steps = ["vp"], [100]

    mix, mask, x_obs, post = problem()
    n = args.n
    floor = errors(post, post.sample(jr.key(99), n))
    print(f"exact posterior weights {np.round(np.asarray(post.weights), 4).tolist()}")
    print(f"floor (exact samples, n={n}): {floor}")
    sdes = {"vp": sd.VPSDE(), "ve": sd.VESDE(sigma_min=0.01, sigma_max=20.0)}
    obs = jnp.broadcast_to(x_obs, (n, 8))
    rows = []
    header = f"{'sde':3} {'sampler':36} {'steps':>5} {'NFE':>5} {'w TV':>6} {'mean':>6} {'var':>6} {'s':>6}"
    print(header)
    for sde_name in args.sdes:
        sde = sdes[sde_name]
        score = mix.score(sde)
        for steps in args.steps:
            for name, (make, method) in samplers(args.quick).items():
                t = time.perf_counter()
                out = sd.sample(
                    jr.key(0),
                    sde,
                    score,
                    (n, 8),
                    solver=sd.Impute(make(), obs, mask),
                    method=method,
                    num_steps=steps,
                )
                x = np.asarray(out.samples)
                dt = time.perf_counter() - t
                e = errors(post, x[:, ~mask])
                rows.append(
                    dict(
                        sde=sde_name,
                        sampler=name,
                        steps=steps,
                        nfe=int(out.stats["num_score_evals"]),
                        seconds=dt,
                        known_max_abs=float(np.max(np.abs(x[:, mask] - x_obs[mask]))),
                        **e,
                    )
                )
                print(
                    f"{sde_name:3} {name:36} {steps:5d} {rows[-1]['nfe']:5d} "
                    f"{e['weights_tv']:6.3f} {e['mean_err_max']:6.3f} "
                    f"{e['var_ratio']:6.3f} {dt:6.1f}",
                    flush=True,
                )
            # Reference: the exact posterior score on the unobserved coordinates.
            t = time.perf_counter()
            out = sd.sample(
                jr.key(0),
                sde,
                post.score(sde),
                (n, 4),
                solver=sd.PredictorCorrector(
                    sd.ReverseDiffusion(), sd.Langevin(snr=0.16, batch_norm=True)
                ),
                num_steps=steps,
            )
            e = errors(post, out.samples)
            rows.append(
                dict(
                    sde=sde_name,
                    sampler="reference: exact posterior score, pc",
                    steps=steps,
                    nfe=int(out.stats["num_score_evals"]),
                    seconds=time.perf_counter() - t,
                    **e,
                )
            )
            print(
                f"{sde_name:3} {'reference: exact posterior score, pc':36} {steps:5d} "
                f"{rows[-1]['nfe']:5d} {e['weights_tv']:6.3f} {e['mean_err_max']:6.3f} "
                f"{e['var_ratio']:6.3f}",
                flush=True,
            )
    result = dict(
        problem="8-D mixture, 3 components, coordinates 0-3 observed exactly",
        posterior_weights=np.asarray(post.weights).tolist(),
        num_samples=n,
        floor=floor,
        rows=rows,
        conditions=dict(
            command="python benchmarks/bench_inverse.py",
            jax=jax.__version__,
            backend=jax.default_backend(),
            cpu_count=os.cpu_count(),
            python=platform.python_version(),
            date=time.strftime("%Y-%m-%d %H:%M"),
        ),
    )
    if not args.quick:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
