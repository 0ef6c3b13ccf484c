"""Overhead of `sd.sample` against a hand-written `jax.lax.scan`.

Both sides run the SAME Euler-Maruyama updates on the reversed clock r = -t, with the
same MLP score network, the same prior draws and the same Brownian increments (the scan
calls the very `PerSampleBrownianPath.evaluate(r0, r1)` that `sd.sample` builds), so
they pay identically for the network and for noise generation; the difference is what
`diffrax.diffeqsolve` (and `sd.sample` around it) adds.

    python benchmarks/bench_overhead.py                 # the headline comparison
    python benchmarks/bench_overhead.py --experiments   # + the variants of diffeqsolve

Writes `benchmarks/results/overhead.json` (with `--experiments`:
`benchmarks/results/overhead_experiments.json`, the headline run plus an `experiments`
field) and prints a table. A benchmark, not a test.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import scoresde_diffrax as sd


BATCH = 1024
STEPS = 1000
WIDTH = 128
DEPTH = 3
DATA_SHAPE = (2,)
ATOL = 1e-4
RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
RESULTS_EXPERIMENTS = RESULTS.with_name("overhead_experiments.json")


class MLPScore(eqx.Module):
    """A per-example score s(t, x) = MLP(concat(x, t))."""

    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(
            in_size=DATA_SHAPE[0] + 1,
            out_size=DATA_SHAPE[0],
            width_size=WIDTH,
            depth=DEPTH,
            activation=jax.nn.silu,
            key=key,
        )

    def __call__(self, t, x):
        return self.mlp(jnp.concatenate([x, jnp.reshape(t, (1,)).astype(x.dtype)]))


SDE = sd.VPSDE()
T = float(SDE.T)
EPS = SDE.default_eps
SHAPE = (BATCH, *DATA_SHAPE)
PARAMS, STATIC = eqx.partition(MLPScore(jr.key(1234)), eqx.is_array)


# --------------------------------------------------------------------------------------
# A: what a user gets from `sd.sample`.


@jax.jit
def sample_fn(key, params):
    score = eqx.combine(params, STATIC)
    return sd.sample(
        key, SDE, score, SHAPE, solver=dfx.Euler(), method="sde", num_steps=STEPS
    ).samples


# --------------------------------------------------------------------------------------
# B: the same updates, written as a `lax.scan`.


def _fold_keys(key, n):
    return jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(n))


def _prior_and_brownian(key):
    """The prior draws and the per-example Brownian path, built as `sd.sample` does:
    example i's prior from fold_in(fold_in(key, i), 0), its noise from the
    UnsafeBrownianPath keyed by fold_in(fold_in(key, 1), i)."""
    dtype = jnp.result_type(float)
    keys = _fold_keys(key, BATCH)
    prior_keys = jax.vmap(lambda k: jr.fold_in(k, 0))(keys)
    y0 = jax.vmap(lambda k: SDE.prior_sample(k, DATA_SHAPE))(prior_keys).astype(dtype)
    noise_keys = _fold_keys(jr.fold_in(key, 1), BATCH)
    template = dfx.UnsafeBrownianPath(
        shape=jax.ShapeDtypeStruct(DATA_SHAPE, dtype),
        key=noise_keys[0],
        levy_area=dfx.SpaceTimeLevyArea,
    )
    return y0, sd.PerSampleBrownianPath(template, noise_keys)


def _reversed_grid():
    # sd.sample: StepTo(ts=linspace(T, eps, N+1)) built in NumPy (float64, then cast),
    # solved on r = -t.
    return -jnp.asarray(np.linspace(T, EPS, STEPS + 1).astype(np.float32))


@jax.jit
def scan_fn(key, params):
    score = eqx.combine(params, STATIC)
    y0, bm = _prior_and_brownian(key)
    rs = _reversed_grid()

    def step(y, r01):
        r0, r1 = r01
        t = -r0
        s = jax.vmap(score, in_axes=(None, 0))(t, y)
        g = SDE.diffusion(t)
        drift = -(SDE.drift_coeff(t) * y - g**2 * s)  # drift on the reversed clock
        dw = bm.evaluate(r0, r1)
        y = y + (drift * (r1 - r0) + (g * jnp.ones_like(y)) * dw)
        return y, None

    y, _ = jax.lax.scan(step, y0, (rs[:-1], rs[1:]))
    return y


# --------------------------------------------------------------------------------------
# Timing.


def _time_once(fn, key, params):
    start = time.perf_counter()
    jax.block_until_ready(fn(key, params))
    return time.perf_counter() - start


def interleaved(fns: dict, reps: int, key) -> dict[str, list[float]]:
    """Time each of `fns` `reps` times, interleaved A, B, ..., A, B, ... (compiled
    beforehand by the caller)."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            times[name].append(_time_once(fn, key, PARAMS))
    return times


def _paired_ratio(a: list[float], b: list[float]) -> float:
    """The median over rounds of a[i] / b[i]."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def _cpu_info() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_rev() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


# --------------------------------------------------------------------------------------
# Point 4: variants, to see where any overhead comes from.


def _diffeqsolve_fn(adjoint, throw, controller="stepto", error_if=False):
    """`diffrax.diffeqsolve` on the same terms as `sd.sample`, without `sd.sample`
    around it (no finite check unless `error_if`), with one option changed."""

    @jax.jit
    def fn(key, params):
        score = eqx.combine(params, STATIC)
        y0, bm = _prior_and_brownian(key)
        terms = sd.reverse_sde_terms(SDE, score, bm)
        if controller == "stepto":
            kw = dict(stepsize_controller=dfx.StepTo(ts=_reversed_grid()), dt0=None)
        else:  # ConstantStepSize: other step times, hence other noise; timing only
            kw = dict(stepsize_controller=dfx.ConstantStepSize(), dt0=(T - EPS) / STEPS)
        sol = dfx.diffeqsolve(
            terms,
            dfx.Euler(),
            t0=-T,
            t1=-EPS,
            y0=y0,
            saveat=dfx.SaveAt(subs=[dfx.SubSaveAt(t1=True)]),
            adjoint=adjoint,
            max_steps=STEPS,
            throw=throw,
            **kw,
        )
        y = sol.ys[0][-1]
        if error_if:
            y = eqx.error_if(y, ~jnp.all(jnp.isfinite(y)), "non-finite")
        return y

    return fn


@jax.jit
def scan_iid_noise_fn(key, params):
    """The scan with dW from one `jr.normal` per step on a split key (NOT the same
    noise): the cost of the per-example Brownian wrapper."""
    score = eqx.combine(params, STATIC)
    y0, _ = _prior_and_brownian(key)
    rs = _reversed_grid()
    step_keys = jr.split(jr.fold_in(key, 2), STEPS)

    def step(y, inp):
        r0, r1, k = inp
        t = -r0
        s = jax.vmap(score, in_axes=(None, 0))(t, y)
        g = SDE.diffusion(t)
        drift = -(SDE.drift_coeff(t) * y - g**2 * s)
        dw = jnp.sqrt(r1 - r0) * jr.normal(k, y.shape, y.dtype)
        return y + (drift * (r1 - r0) + g * dw), None

    y, _ = jax.lax.scan(step, y0, (rs[:-1], rs[1:], step_keys))
    return y


@jax.jit
def scan_no_net_fn(key, params):
    """The scan with the score replaced by zeros: the cost of everything but the
    network (same noise as B)."""
    del params
    y0, bm = _prior_and_brownian(key)
    rs = _reversed_grid()

    def step(y, r01):
        r0, r1 = r01
        t = -r0
        g = SDE.diffusion(t)
        drift = -(SDE.drift_coeff(t) * y)
        return y + (drift * (r1 - r0) + g * bm.evaluate(r0, r1)), None

    y, _ = jax.lax.scan(step, y0, (rs[:-1], rs[1:]))
    return y


def _zero_score(t, x):
    return jnp.zeros_like(x)


@jax.jit
def sample_no_net_fn(key, params):
    """`sd.sample` with the score replaced by zeros (compare with `scan_no_net_fn`):
    diffrax's per-step bookkeeping against a much cheaper step."""
    del params
    return sd.sample(
        key, SDE, _zero_score, SHAPE, solver=dfx.Euler(), method="sde", num_steps=STEPS
    ).samples


def sample_unjitted_fn(key, params):
    """`sd.sample` called directly, without an outer `jax.jit` (it jits its solve)."""
    score = eqx.combine(params, STATIC)
    return sd.sample(
        key, SDE, score, SHAPE, solver=dfx.Euler(), method="sde", num_steps=STEPS
    ).samples


def _tiny_sample(key, params):
    """One example, one step: what remains is the per-call cost of `sd.sample`."""
    score = eqx.combine(params, STATIC)
    return sd.sample(
        key, SDE, score, (1, *DATA_SHAPE), solver=dfx.Euler(), method="sde", num_steps=1
    ).samples


tiny_sample_jit_fn = jax.jit(_tiny_sample)


def experiments(key, reps):
    # name: (function, the variant whose samples it should reproduce)
    variants = {
        "scan (B)": (scan_fn, "scan (B)"),
        "sd.sample (A)": (sample_fn, "scan (B)"),
        "sd.sample, no outer jit": (sample_unjitted_fn, "scan (B)"),
        "diffeqsolve ForwardMode throw=True": (
            _diffeqsolve_fn(dfx.ForwardMode(), True),
            "scan (B)",
        ),
        "diffeqsolve ForwardMode throw=True + error_if": (
            _diffeqsolve_fn(dfx.ForwardMode(), True, error_if=True),
            "scan (B)",
        ),
        "diffeqsolve ForwardMode throw=False": (
            _diffeqsolve_fn(dfx.ForwardMode(), False),
            "scan (B)",
        ),
        "diffeqsolve DirectAdjoint": (
            _diffeqsolve_fn(dfx.DirectAdjoint(), True),
            "scan (B)",
        ),
        "diffeqsolve ConstantStepSize (other noise)": (
            _diffeqsolve_fn(dfx.ForwardMode(), True, controller="constant"),
            "scan (B)",
        ),
        "scan, iid jr.normal noise (other noise)": (scan_iid_noise_fn, "scan (B)"),
        "scan, zero score (no network)": (
            scan_no_net_fn,
            "scan, zero score (no network)",
        ),
        "sd.sample, zero score (no network)": (
            sample_no_net_fn,
            "scan, zero score (no network)",
        ),
        "sd.sample (1, 2), 1 step, no outer jit": (
            _tiny_sample,
            "sd.sample (1, 2), 1 step, jitted",
        ),
        "sd.sample (1, 2), 1 step, jitted": (
            tiny_sample_jit_fn,
            "sd.sample (1, 2), 1 step, jitted",
        ),
    }
    outs = {
        name: np.asarray(jax.block_until_ready(fn(key, PARAMS)))
        for name, (fn, _) in variants.items()
    }
    same = {
        name: bool(np.allclose(outs[name], outs[ref], atol=ATOL))
        for name, (_, ref) in variants.items()
    }
    # The machine's speed may change during a run (here it flipped between two
    # speeds, about 2x apart, every few seconds), so each variant is timed in rounds
    # paired with its reference (ref, variant, ref, variant, ...) and compared through
    # the median of the per-round ratios.
    rows = []
    for name, (fn, ref) in variants.items():
        if name == ref:
            continue
        ref_fn = variants[ref][0]
        jax.block_until_ready(ref_fn(key, PARAMS))  # one more untimed call each
        jax.block_until_ready(fn(key, PARAMS))
        times = interleaved({"ref": ref_fn, "variant": fn}, reps, key)
        rows.append(
            dict(
                variant=name,
                reference=ref,
                times_s=times["variant"],
                reference_times_s=times["ref"],
                median_s=statistics.median(times["variant"]),
                reference_median_s=statistics.median(times["ref"]),
                min_s=min(times["variant"]),
                reference_min_s=min(times["ref"]),
                paired_ratio_median=_paired_ratio(times["variant"], times["ref"]),
                samples_equal_reference=same[name],
                max_abs_diff_to_reference=float(np.max(np.abs(outs[name] - outs[ref]))),
            )
        )
    return rows


# --------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--experiments", action="store_true")
    parser.add_argument("--experiment-reps", type=int, default=5)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="default results/overhead.json (results/overhead_experiments.json "
        "with --experiments)",
    )
    args = parser.parse_args()
    if args.out is None:
        args.out = RESULTS_EXPERIMENTS if args.experiments else RESULTS

    key = jr.key(0)
    # Compile both, and check that they draw the same samples.
    t0 = time.perf_counter()
    a = np.asarray(jax.block_until_ready(sample_fn(key, PARAMS)))
    compile_a = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = np.asarray(jax.block_until_ready(scan_fn(key, PARAMS)))
    compile_b = time.perf_counter() - t0
    max_abs_diff = float(np.max(np.abs(a - b)))
    match = bool(np.allclose(a, b, atol=ATOL))
    assert match, f"sd.sample and the scan differ: max |a - b| = {max_abs_diff}"
    assert np.all(np.isfinite(a))

    for fn in (sample_fn, scan_fn):  # one more untimed call each, then time
        jax.block_until_ready(fn(key, PARAMS))
    times = interleaved({"sample": sample_fn, "scan": scan_fn}, args.reps, key)
    med_a = statistics.median(times["sample"])
    med_b = statistics.median(times["scan"])
    ratio = med_a / med_b
    paired = _paired_ratio(times["sample"], times["scan"])
    min_ratio = min(times["sample"]) / min(times["scan"])

    cmd = " ".join(["python", "benchmarks/bench_overhead.py", *sys.argv[1:]])
    result = dict(
        command=cmd,
        git_rev=_git_rev(),
        versions=dict(
            python=platform.python_version(),
            jax=jax.__version__,
            jaxlib=jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
            diffrax=dfx.__version__,
            equinox=eqx.__version__,
            numpy=np.__version__,
        ),
        platform=dict(
            system=platform.platform(),
            machine=platform.machine(),
            cpu=_cpu_info(),
            cpu_count=os.cpu_count(),
            jax_backend=jax.default_backend(),
            jax_devices=[str(d) for d in jax.devices()],
        ),
        config=dict(
            sde="VPSDE()",
            eps=EPS,
            solver="diffrax.Euler()",
            method="sde",
            score=f"eqx.nn.MLP(concat(x, t) -> 2, width {WIDTH}, depth {DEPTH}, silu)",
            dtype=str(jnp.result_type(float)),
        ),
        batch=BATCH,
        steps=STEPS,
        reps=args.reps,
        first_call_s=dict(sample=compile_a, scan=compile_b),
        times_s=times,
        median_s=dict(sample=med_a, scan=med_b),
        ratio_sample_over_scan=ratio,
        paired_ratio_median=paired,
        min_s=dict(sample=min(times["sample"]), scan=min(times["scan"])),
        ratio_of_mins=min_ratio,
        samples_match=match,
        max_abs_diff=max_abs_diff,
        atol=ATOL,
    )

    print(f"backend {jax.default_backend()}, {_cpu_info()}, {os.cpu_count()} CPUs")
    print(f"batch {BATCH}, {STEPS} steps, {args.reps} interleaved repetitions")
    print(f"samples match: {match} (max |diff| {max_abs_diff:.2e}, atol {ATOL})")
    print(f"{'':<10}{'median (s)':>12}{'min (s)':>10}{'max (s)':>10}")
    for name, med in (("sd.sample", med_a), ("scan", med_b)):
        ts = times["sample" if name == "sd.sample" else "scan"]
        print(f"{name:<10}{med:>12.3f}{min(ts):>10.3f}{max(ts):>10.3f}")
    print(
        f"ratio sample/scan: {ratio:.3f} (of medians); {paired:.3f} (median of "
        f"per-round ratios); {min_ratio:.3f} (of minima)"
    )

    if args.experiments:
        rows = experiments(key, args.experiment_reps)
        result["experiments"] = dict(reps=args.experiment_reps, rows=rows)
        print()
        print(
            f"{'variant':<46}{'reference':<31}{'median (s)':>11}{'ref (s)':>9}"
            f"{'ratio':>7}  same samples"
        )
        for row in rows:
            print(
                f"{row['variant']:<46}{row['reference']:<31}{row['median_s']:>11.4f}"
                f"{row['reference_median_s']:>9.4f}{row['paired_ratio_median']:>7.3f}"
                f"  {row['samples_equal_reference']}"
            )
        print("ratio: median of per-round variant/reference")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
