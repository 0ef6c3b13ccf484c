"""Likelihoods of exact Gaussian mixtures: NFE, wall time and error against the exact
log-density, for divergence estimators x data dimension x SDE x solver x batch x error
norm, side by side with a host-side SciPy RK45 stand-in of the paper's likelihood code.

    taskset -c 0 python benchmarks/bench_likelihood.py                 # every section
    taskset -c 0 python benchmarks/bench_likelihood.py --sections standin,norms
    taskset -c 0 python benchmarks/bench_likelihood.py --batches 1,256,4096

One CPU core: the script sets XLA's CPU flags for one thread before importing JAX
(`--threads all` leaves them); `taskset -c 0` pins the process to one core. Sections:

- `grid`: every estimator x D in {2, 16, 64} x VP/sub-VP/VE x `--batches`, defaults;
- `solvers`: Dopri5, Dopri8 and Heun-100 on VP (D = 2, 64);
- `norms`: D = 64, VP and VE, batch 256: the default per-example max-norm, diffrax's
  RMS over the whole state (the paper's SciPy norm), the max-norm without the
  log-density component, and per-example solves (`per_example=True`);
- `standin`: D = 64, VP and VE, batch 1 and 256, Rademacher and exact trace: our default
  against the SciPy stand-in on the same points, the same probes (ours, so the errors
  compare solve for solve) and the same tolerances, in one process; the speed-up is the
  ratio of the medians;
- `digits`: the digits checkpoint's bits/dim over `--digits-examples` test examples
  (default Rademacher, forward vs reverse mode);
- `official`: the paper's own `likelihood.py` (yang-song/score_sde_pytorch, run by
  `--torch-python` from `--official-repo`) against ours, D = 64, VP and VE, Rademacher
  and exact trace, `--official-batches`; see `official` below.

For every configuration: batch points drawn from the exact p_eps (eps = 1e-5) of a
mixture (2-D: three modes; 64-D: four modes with diagonal stds), one compile call, then
`--repeats` timed calls (`block_until_ready`); we report the median and the minimum.
Errors are against `GaussianMixture.marginal(sde, eps).log_prob`:

- `solve_err`: mean |log_prob - exact| per dimension with the EXACT log p_T at T
  (the error of the solve and, for Hutchinson, the estimator's noise);
- `total_err`: the same with the SDE's prior at T (what a user gets; adds the prior
  mismatch log p_T - log prior, which no solver removes);
- `bias`, `bias_se`: mean signed error of the solve (exact p_T) and its standard error.

Extra rows: the batched state with diffrax's default RMS norm vs our max-norm vs
per-example solves; and the paper's approach (SciPy RK45 on the host, one device
round-trip per evaluation) as a reference for the speed-up.

Writes `benchmarks/results/likelihood.json` (with the command and the conditions) and
prints a table. A benchmark, not a test.
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


if "--threads" not in sys.argv or sys.argv[sys.argv.index("--threads") + 1] != "all":
    # One thread for XLA:CPU (set before JAX starts); pin the process with taskset.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()

import diffrax as dfx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from bench_official_nets import command_line, TorchChild

import scoresde_diffrax as sd


BATCH = 256
EPS = 1e-5
RESULTS = Path(__file__).resolve().parent / "results" / "likelihood.json"

SDES = {
    "ve": sd.VESDE(sigma_min=0.01, sigma_max=50.0),
    "vp": sd.VPSDE(),
    "subvp": sd.SubVPSDE(),
}
ESTIMATORS = {
    "rademacher": sd.Hutchinson("rademacher"),
    "rademacher-vjp": sd.Hutchinson("rademacher", forward_mode=False),
    "gaussian": sd.Hutchinson("gaussian"),
    "exact": sd.ExactDivergence(),
}
PID = dict(rtol=1e-5, atol=1e-5)
SOLVERS = {
    "tsit5": dict(solver=dfx.Tsit5(), **PID),
    "dopri5": dict(solver=dfx.Dopri5(), **PID),
    "dopri8": dict(solver=dfx.Dopri8(), **PID),
    "heun-100": dict(solver=dfx.Heun(), num_steps=100),
}


def mixture(dim: int) -> sd.GaussianMixture:
    if dim == 2:
        means = jnp.array([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]])
        return sd.GaussianMixture(
            means, jnp.array([0.5, 0.8, 0.6]), jnp.array([0.2, 0.5, 0.3])
        )
    km, ks = jr.split(jr.key(1234))
    means = 3.0 * jr.normal(km, (4, dim))
    stds = jr.uniform(ks, (4, dim), minval=0.4, maxval=1.0)
    return sd.GaussianMixture(means, stds, jnp.array([0.1, 0.2, 0.3, 0.4]))


def timed(fn, repeats):
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return out, first, times


def points(sde_name, dim, batch):
    """The SDE, the mixture, `batch` points of its exact p_eps and their exact
    log-density, and the exact log p_T."""
    sde, mix = SDES[sde_name], mixture(dim)
    m_eps = mix.marginal(sde, EPS)
    x = m_eps.sample(jr.key(0), batch)
    exact = np.asarray(jax.vmap(m_eps.log_prob)(x), np.float64)
    return sde, mix, x, exact, mix.marginal(sde, sde.T).log_prob


def run_case(
    sde_name, dim, est_name, solver_name, repeats, batch=BATCH, mode=None, **extra
):
    sde, mix, x, exact, log_pT = points(sde_name, dim, batch)
    kw = dict(SOLVERS[solver_name], divergence=ESTIMATORS[est_name], eps=EPS, **extra)
    score = mix.score(sde)

    def call():
        return sd.log_likelihood(jr.key(1), sde, score, x, prior_log_prob=log_pT, **kw)

    out, first, times = timed(call, repeats)
    err = np.asarray(out.log_prob, dtype=np.float64) - exact
    prior = np.asarray(jax.vmap(sde.prior_log_prob)(out.latent), dtype=np.float64)
    total = err - np.asarray(out.prior_log_prob, dtype=np.float64) + prior
    return dict(
        sde=sde_name,
        dim=dim,
        batch=batch,
        divergence=est_name,
        solver=solver_name,
        **({} if mode is None else dict(mode=mode)),
        nfe=float(np.mean(out.stats["num_score_evals"])),
        num_steps=float(np.mean(out.stats["num_steps"])),
        first_call_s=first,
        median_s=statistics.median(times),
        min_s=min(times),
        solve_err=float(np.mean(np.abs(err))) / dim,
        total_err=float(np.mean(np.abs(total))) / dim,
        bias=float(err.mean()),
        bias_se=_se(err),
        mae=float(np.mean(np.abs(err))),
        max_abs_err=float(np.max(np.abs(err))),
    )


def _se(err):
    return float(err.std(ddof=1) / np.sqrt(err.size)) if err.size > 1 else float("nan")


def _x_only_norm(y):
    """The per-example max-norm over the data component only (the log-density's error
    ignored)."""
    return sd.batch_max_rms_norm(y[0])


NORMS = {
    "max-norm (default)": {},
    "RMS over the state (the paper's SciPy norm)": dict(
        stepsize_controller=dfx.PIDController(**PID)
    ),
    "max-norm, data only": dict(
        stepsize_controller=dfx.PIDController(**PID, norm=_x_only_norm)
    ),
    "per-example solves": dict(per_example=True),
}


def standin(sde_name, dim, est_name, batch, repeats):
    """The paper's approach (its `likelihood.py`): SciPy RK45 on the host in float64,
    the batch as one flat state `(x, log-density)` (so SciPy's error norm is one RMS
    over the whole state), the drift and the divergence from one jitted call per
    evaluation (a device round trip each time) with reverse-mode products as the
    paper's `get_div_fn`: one VJP with the probe (Rademacher; our probes, so the errors
    compare solve for solve), or one VJP per basis vector (exact trace, the same
    `get_div_fn` applied to each basis vector, in a `lax.scan`)."""
    from scipy import integrate

    sde, mix, x, exact, log_pT = points(sde_name, dim, batch)
    score = mix.score(sde)
    if est_name == "exact":
        probes = jnp.broadcast_to(jnp.eye(dim, dtype=x.dtype), (batch, dim, dim))
    else:
        # example i's probes come from fold_in(key, i), as in sd.log_likelihood
        keys = jax.vmap(lambda i: jr.fold_in(jr.key(1), i))(jnp.arange(batch))
        probes = jax.vmap(ESTIMATORS[est_name].init)(keys, x)

    @jax.jit
    def f(t, y):
        xs = y[: batch * dim].reshape(batch, dim)

        def one(xi, vs):
            s, pull = jax.vjp(lambda z: score(t, z), xi)

            def body(total, v):
                (jv,) = pull(v)
                return total + jnp.sum(jv * v), None

            div, _ = jax.lax.scan(body, jnp.zeros((), s.dtype), vs)
            return s, div / (1 if est_name == "exact" else vs.shape[0])

        s, div_s = jax.vmap(one)(xs, probes)
        fc, g2 = sde.drift_coeff(t), sde.diffusion(t) ** 2
        dx = fc * xs - 0.5 * g2 * s
        dl = fc * dim - 0.5 * g2 * div_s
        return jnp.concatenate([dx.reshape(-1), dl])

    prior = jax.jit(jax.vmap(log_pT))

    def call():
        y0 = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(batch)])
        sol = integrate.solve_ivp(
            lambda t, y: np.asarray(f(jnp.float32(t), jnp.asarray(y, jnp.float32))),
            (EPS, sde.T),
            y0,
            rtol=PID["rtol"],
            atol=PID["atol"],
            method="RK45",
        )
        yT = sol.y[:, -1]
        xT = jnp.asarray(yT[: batch * dim].reshape(batch, dim), jnp.float32)
        return np.asarray(prior(xT), np.float64) + yT[batch * dim :], sol.nfev

    (logp, nfev), first, times = timed(call, repeats)
    err = logp - exact
    return dict(
        sde=sde_name,
        dim=dim,
        batch=batch,
        divergence=est_name,
        solver="scipy-rk45 (host, paper's approach)",
        nfe=float(nfev),
        num_steps=float("nan"),
        first_call_s=first,
        median_s=statistics.median(times),
        min_s=min(times),
        solve_err=float(np.mean(np.abs(err))) / dim,
        total_err=float("nan"),
        bias=float(err.mean()),
        bias_se=_se(err),
        mae=float(np.mean(np.abs(err))),
        max_abs_err=float(np.max(np.abs(err))),
    )


# The official side: the paper's `likelihood.py` run by a torch interpreter in a child
# process, on a torch module that returns the exact mixture score in the official
# conventions (VP: the network gets 999 t and returns -std(t) * score; VE: it gets
# sigma(t) and returns the score). The probes are ours: `torch.randint_like`, which
# `likelihood_fn` calls once for its Rademacher probes, returns them during the call.
# For the exact trace the official `get_div_fn` is summed over the D basis vectors
# (one forward and one backward pass of the model each): the official code has no
# exact trace, and this is how its divergence gives one. It computes the first
# solve's latent and integrated divergence, says "ready", then runs one timed
# likelihood per "run" line on stdin until "quit".
_OFFICIAL_CHILD = r"""
import json, math, sys, time
import numpy as np
import torch
repo, data_path, estimator, out_path = sys.argv[1:5]
torch.set_num_threads(1)
sys.path.insert(0, repo)
import likelihood
import sde_lib
d = np.load(data_path)
kind = str(d["kind"])
x = torch.from_numpy(d["x"].astype(np.float32))
batch, dim = x.shape[0], x[0].numel()
if kind == "ve":
    sde = sde_lib.VESDE(sigma_min=float(d["sigma_min"]), sigma_max=float(d["sigma_max"]))
else:
    sde = sde_lib.VPSDE(beta_min=float(d["beta_min"]), beta_max=float(d["beta_max"]))
class ExactMixture(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.means = torch.from_numpy(d["means"].astype(np.float32))
        self.var0 = torch.from_numpy((d["stds"] ** 2).astype(np.float32))
        self.logw = torch.from_numpy(np.log(d["weights"]).astype(np.float32))
    def forward(self, x, labels):
        flat = x.reshape(x.shape[0], -1)
        if kind == "ve":
            a = torch.ones_like(labels)
            std = torch.sqrt(labels ** 2 - sde.sigma_min ** 2)
        else:
            t = labels / 999
            lmc = -0.25 * t ** 2 * (sde.beta_1 - sde.beta_0) - 0.5 * t * sde.beta_0
            a, std = torch.exp(lmc), torch.sqrt(1.0 - torch.exp(2.0 * lmc))
        var = a[:, None, None] ** 2 * self.var0 + std[:, None, None] ** 2
        diff = flat[:, None, :] - a[:, None, None] * self.means
        logp = self.logw - 0.5 * torch.sum(diff ** 2 / var + torch.log(2 * math.pi * var), -1)
        score = torch.sum(torch.softmax(logp, -1)[..., None] * (-diff / var), 1)
        out = score if kind == "ve" else -std[:, None] * score
        return out.reshape(x.shape)
model = ExactMixture().eval()
fn = likelihood.get_likelihood_fn(
    sde, lambda v: v, rtol=float(d["rtol"]), atol=float(d["atol"]), eps=float(d["eps"]))
if estimator == "exact":
    one_probe = likelihood.get_div_fn
    def exact_div_fn(f):
        div = one_probe(f)
        def total(xx, tt, eps):
            out = 0.0
            for i in range(dim):
                e = torch.zeros(dim)
                e[i] = 1.0
                out = out + div(xx, tt, e.reshape(xx.shape[1:]).expand_as(xx))
            return out
        return total
    likelihood.get_div_fn = exact_div_fn
bits = torch.from_numpy(((d["probes"] + 1) / 2).astype(np.float32))
randint_like = torch.randint_like
def call():
    torch.randint_like = lambda data, low, high: bits.clone()
    try:
        return fn(model, x)
    finally:
        torch.randint_like = randint_like
t0 = time.perf_counter()
bpd, z, nfe = call()
# bpd = -(prior + delta) / (D log 2) + 8 with the identity inverse scaler
delta = -(bpd.double() - 8.0) * dim * math.log(2) - sde.prior_logp(z).double()
np.savez(out_path, z=z.numpy().reshape(batch, -1), delta=delta.numpy())
print(json.dumps({"ready": True, "first_s": time.perf_counter() - t0, "nfe": int(nfe),
                  "torch": torch.__version__, "threads": torch.get_num_threads()}), flush=True)
for line in sys.stdin:
    if line.strip() != "run":
        break
    c0, t0 = time.process_time(), time.perf_counter()
    _, _, nfe = call()
    t1, c1 = time.perf_counter(), time.process_time()
    print(json.dumps({"wall_s": t1 - t0, "cpu_s": c1 - c0, "nfe": int(nfe)}), flush=True)
"""


def x64_reference(data_path: Path, out_path: Path):
    """The same-probe Hutchinson log-likelihoods to float64 precision (run in a child
    with `JAX_ENABLE_X64`): Dopri8 at rtol = atol = 1e-11 on the probability-flow ODE
    with the probes of `data_path` fixed per example. The Rademacher rows' solve error
    is measured against these (the estimator's own noise, the same on both sides,
    taken out)."""
    d = np.load(data_path)
    sde = SDES[str(d["kind"])]
    f64 = {k: jnp.asarray(np.asarray(d[k], np.float64)) for k in d.files if k != "kind"}
    mix = sd.GaussianMixture(f64["means"], f64["stds"], f64["weights"])
    x = f64["x"].reshape(d["x"].shape[0], -1)
    probes = f64["probes"].reshape(x.shape)
    score = mix.score(sde)

    def field(t, y, args):
        def one(xi, v):
            s, jv = jax.jvp(lambda z: score(t, z), (xi,), (v,))
            return s, jnp.sum(jv * v)

        s, div = jax.vmap(one)(y[0], probes)
        f, g2 = sde.drift_coeff(t), sde.diffusion(t) ** 2
        return f * y[0] - 0.5 * g2 * s, f * x.shape[1] - 0.5 * g2 * div

    sol = dfx.diffeqsolve(
        dfx.ODETerm(field), dfx.Dopri8(), EPS, sde.T, None,
        (x, jnp.zeros(x.shape[0], x.dtype)),
        stepsize_controller=dfx.PIDController(
            rtol=1e-11, atol=1e-11, norm=sd.batch_max_rms_norm
        ),
        max_steps=100_000,
    )  # fmt: skip
    log_pT = jax.vmap(mix.marginal(sde, sde.T).log_prob)(sol.ys[0][-1])
    np.save(out_path, np.asarray(log_pT + sol.ys[1][-1], np.float64))


# Ours at other tolerances and controllers, for the equal-error comparison: the first
# (fewest score evaluations) whose mean and largest solve errors are both no larger
# than the official code's is timed beside it.
MATCHED = [
    (f"{name} rtol=atol={tol:g}", tol, coeffs)
    for tol in (3e-4, 1e-4, 3e-5, 1e-5)
    for name, coeffs in (("I", {}), ("PI 0.3/0.4", dict(pcoeff=0.3, icoeff=0.4)))
]


def official(args, sde_name, est_name, batch, work: Path):
    """The paper's likelihood code against ours on the same points and probes, one
    core, the two taking turns call by call. Errors: for the exact trace against the
    exact log-density; for Rademacher, the solve error against the same-probe float64
    reference (`x64_reference`) and the total against the exact log-density. Ours at
    the default settings and at the cheapest `MATCHED` setting with no larger mean
    and largest solve errors than the official code's."""
    sde, mix, x, exact, log_pT = points(sde_name, 64, batch)
    keys = jax.vmap(lambda i: jr.fold_in(jr.key(1), i))(jnp.arange(batch))
    probes = np.asarray(jax.vmap(ESTIMATORS["rademacher"].init)(keys, x))[:, 0]
    sde_fields = (
        dict(sigma_min=sde.sigma_min, sigma_max=sde.sigma_max)
        if sde_name == "ve"
        else dict(beta_min=sde.beta_min, beta_max=sde.beta_max)
    )
    data = work / f"{sde_name}_{est_name}_{batch}.npz"
    np.savez(
        data, kind=sde_name, x=np.asarray(x).reshape(batch, 1, 1, 64),
        probes=probes.reshape(batch, 1, 1, 64), means=np.asarray(mix.means),
        stds=np.asarray(mix.stds), weights=np.asarray(mix.weights), eps=EPS,
        **PID, **sde_fields,
    )  # fmt: skip
    if est_name == "exact":
        truth = exact
    else:
        ref_path = data.with_suffix(".ref.npy")
        subprocess.run(
            [sys.executable, __file__, "--x64-reference", str(data), str(ref_path)],
            env=dict(os.environ, JAX_ENABLE_X64="1"), check=True,
        )  # fmt: skip
        truth = np.load(ref_path)

    child = TorchChild(
        args.torch_python,
        _OFFICIAL_CHILD,
        [args.official_repo, str(data), est_name, str(data.with_suffix(".out.npz"))],
    )
    try:
        out = np.load(data.with_suffix(".out.npz"))
        z = jnp.asarray(out["z"], jnp.float32)
        off_lp = np.asarray(jax.vmap(log_pT)(z), np.float64) + out["delta"]
        off_err = off_lp - truth
        off_mae, off_max = (
            float(np.mean(np.abs(off_err))),
            float(np.max(np.abs(off_err))),
        )

        score, div = mix.score(sde), ESTIMATORS[est_name]

        def ours(controller=None):
            kw = {} if controller is None else dict(stepsize_controller=controller)
            return lambda: sd.log_likelihood(
                jr.key(1), sde, score, x, divergence=div, prior_log_prob=log_pT, **kw
            )

        def errors(fn):
            res = jax.block_until_ready(fn())
            e = np.asarray(res.log_prob, np.float64) - truth
            nfe = int(res.stats["num_score_evals"])
            tot = np.asarray(res.log_prob, np.float64) - exact
            return nfe, float(np.mean(np.abs(e))), float(np.max(np.abs(e))), tot

        candidates = []
        for name, tol, coeffs in MATCHED:
            ctrl = dfx.PIDController(
                rtol=tol, atol=tol, norm=sd.batch_max_rms_norm, **coeffs
            )
            nfe, mae, mx, _ = errors(ours(ctrl))
            candidates.append(dict(setting=name, nfe=nfe, solve_mae=mae, solve_max=mx))
            candidates[-1]["fn"] = ours(ctrl)
        ok = [
            c
            for c in candidates
            if c["solve_mae"] <= off_mae and c["solve_max"] <= off_max
        ]
        matched = min(ok, key=lambda c: c["nfe"]) if ok else None
        sides = {"default (rtol=atol=1e-5)": ours()}
        if matched is not None and matched["setting"] != "I rtol=atol=1e-05":
            sides[f"equal error ({matched['setting']})"] = matched["fn"]
        info = {name: errors(fn) for name, fn in sides.items()}

        # Timed: the sides take turns; who goes first rotates.
        times = {"official": [], **{name: [] for name in sides}}
        order = ["official", *sides]
        for r in range(args.repeats):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                if name == "official":
                    times[name].append(child.run()["wall_s"])
                else:
                    t0 = time.perf_counter()
                    jax.block_until_ready(sides[name]())
                    times[name].append(time.perf_counter() - t0)
    finally:
        child.close()

    off_t = statistics.median(times["official"])
    row = dict(
        sde=sde_name, dim=64, batch=batch, divergence=est_name,
        error_against="exact log-density" if est_name == "exact"
        else "same-probe float64 solve",
        official=dict(
            nfe=child.info["nfe"], median_s=off_t, times_s=times["official"],
            solve_mae=off_mae, solve_max=off_max,
            total_mae=float(np.mean(np.abs(off_lp - exact))),
            torch=child.info["torch"], threads=child.info["threads"],
        ),
        ours={},
        candidates=[{k: v for k, v in c.items() if k != "fn"} for c in candidates],
    )  # fmt: skip
    for name in sides:
        nfe, mae, mx, tot = info[name]
        t = statistics.median(times[name])
        row["ours"][name] = dict(
            nfe=nfe, median_s=t, times_s=times[name], solve_mae=mae, solve_max=mx,
            total_mae=float(np.mean(np.abs(tot))), speedup=off_t / t,
            speedup_per_pair=[a / b for a, b in zip(times["official"], times[name], strict=True)],
        )  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def digits(num_examples, repeats, rtols=()):
    """Bits/dim of the digits checkpoint on the first test examples, as `scoresde
    likelihood` computes them (one batched solve, Rademacher, rtol = atol = 1e-5), in
    forward and reverse mode, and in forward mode at each of `rtols` (rtol = atol)
    with the per-example difference from the default's bits/dim."""
    model, meta = sd.load_checkpoint(RESULTS.parent / "digits_checkpoint")
    model, sde = sd.nn.loop_friendly(model), sd.sde_from_description(meta["sde"])
    ds = sd.data.digits("test")
    scale, shift = meta["data"]["scale"], meta["data"]["shift"]
    lo, hi = sorted((shift, scale + shift))
    k = np.round(np.asarray(ds.x[:num_examples], np.float64) * (ds.levels - 1))
    key_deq, key_probe = jr.split(jr.key(0))
    y = sd.dequantize(key_deq, k, num_levels=ds.levels, data_range=(lo, hi))
    rows, default_bpd = [], None
    settings = [(name, 1e-5) for name in ("rademacher", "rademacher-vjp")]
    settings += [("rademacher", r) for r in rtols if r != 1e-5]
    for name, rtol in settings:

        def call(div=ESTIMATORS[name], tol=rtol):
            return sd.log_likelihood(
                key_probe, sde, model, y, divergence=div, rtol=tol, atol=tol
            )

        out, first, times = timed(call, repeats)
        bpd = np.asarray(
            sd.bits_per_dim(out.log_prob, y, data_range=(lo, hi), num_levels=ds.levels),
            np.float64,
        )
        rows.append(
            dict(
                data="digits (test)",
                num_examples=int(y.shape[0]),
                divergence=name,
                nfe=int(out.stats["num_score_evals"]),
                num_steps=int(out.stats["num_steps"]),
                first_call_s=first,
                median_s=statistics.median(times),
                rtol_atol=rtol,
                bits_per_dim=float(bpd.mean()),
                bits_per_dim_se=float(bpd.std(ddof=1) / math.sqrt(bpd.size)),
            )
        )
        if default_bpd is None:
            default_bpd = bpd
        diff = bpd - default_bpd
        rows[-1].update(
            diff_from_default_mean=float(diff.mean()),
            diff_from_default_max_abs=float(np.abs(diff).max()),
        )
        print(rows[-1], flush=True)
    return rows


def fmt(r):
    return (
        f"| {r['sde']} | {r['dim']} | {r['batch']} | {r['divergence']} | {r['solver']}"
        f"{' ' + r['mode'] if 'mode' in r else ''} | {r['nfe']:.0f} | "
        f"{r['median_s']:.4f} | {r['min_s']:.4f} | {r['solve_err']:.1e} | "
        f"{r['total_err']:.1e} | {r['bias']:+.3f} ± {r['bias_se']:.3f} |"
    )


HEADER = (
    "| SDE | D | batch | divergence | solver | NFE | median s | min s | solve err/dim "
    "| total err/dim | bias ± se (nats) |\n|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"
)


def _positive_list(kind):
    """An argparse type: a comma-separated list of positive `kind` (int or float)."""

    def parse(text):
        try:
            values = [kind(v) for v in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) <= 0:
            raise argparse.ArgumentTypeError(
                f"expected positive {kind.__name__}s separated by commas, got {text!r}"
            )
        return values

    return parse


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--sections", default="grid,solvers,norms,standin,digits", help="see above"
    )
    ints, floats = _positive_list(int), _positive_list(float)
    parser.add_argument("--batches", type=ints, default="1,256", help="of `grid`")
    parser.add_argument("--dims", type=ints, default="2,16,64", help="of `grid`")
    parser.add_argument("--digits-examples", type=int, default=64)
    parser.add_argument(
        "--digits-rtols", type=floats, default="1e-5,1e-4", help="of `digits`"
    )
    parser.add_argument("--threads", choices=("one", "all"), default="one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--official-repo", help="a checkout of yang-song/score_sde_pytorch (`official`)"
    )
    parser.add_argument("--torch-python", help="an interpreter with torch and scipy")
    parser.add_argument("--official-batches", type=ints, default="1,256")
    parser.add_argument("--x64-reference", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.x64_reference:
        return x64_reference(*args.x64_reference)
    sections = args.sections.split(",")
    if "official" in sections and not (args.official_repo and args.torch_python):
        parser.error("--sections official needs --official-repo and --torch-python")
    if "official" in sections:
        if not (Path(args.official_repo) / "likelihood.py").is_file():
            parser.error(
                f"--official-repo: no likelihood.py in {args.official_repo}; give a "
                "checkout of yang-song/score_sde_pytorch"
            )
        if not os.access(args.torch_python, os.X_OK):
            parser.error(f"--torch-python: {args.torch_python} is not an executable")
    known = {"grid", "solvers", "norms", "standin", "digits", "official"}
    unknown = set(sections) - known
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}")
    batches, dims = args.batches, args.dims

    rows, speedups, digit_rows, official_rows = [], [], [], []
    print(HEADER, flush=True)

    def add(r):
        rows.append(r)
        print(fmt(r), flush=True)
        return r

    if "standin" in sections:
        # Ours and the stand-in alternate in one process, so the machine's load
        # changes hit both; the ratio is of the medians.
        for sde_name in ("vp", "ve"):
            for est in ("rademacher", "exact"):
                for batch in (1, 256):
                    ref = add(standin(sde_name, 64, est, batch, args.repeats))
                    ours = add(
                        run_case(sde_name, 64, est, "tsit5", args.repeats, batch)
                    )
                    speedups.append(
                        dict(
                            sde=sde_name,
                            dim=64,
                            divergence=est,
                            batch=batch,
                            speedup=ref["median_s"] / ours["median_s"],
                            nfe_ours=ours["nfe"],
                            nfe_standin=ref["nfe"],
                            mae_ours=ours["mae"],
                            mae_standin=ref["mae"],
                            max_err_ours=ours["max_abs_err"],
                            max_err_standin=ref["max_abs_err"],
                        )
                    )
                    print(speedups[-1], flush=True)
    if "norms" in sections:
        for sde_name in ("vp", "ve"):
            for est in ("rademacher", "exact"):
                for mode, extra in NORMS.items():
                    add(
                        run_case(
                            sde_name, 64, est, "tsit5", args.repeats, mode=mode, **extra
                        )
                    )
    if "grid" in sections:
        for batch in batches:
            for dim in dims:
                for sde_name in SDES:
                    for est in ESTIMATORS:
                        if est == "exact" and batch * dim > 256 * 64 and dim > 16:
                            reps = 1  # seconds a call: one timed repeat
                        else:
                            reps = args.repeats
                        add(run_case(sde_name, dim, est, "tsit5", reps, batch))
    if "solvers" in sections:
        for dim in (2, 64):
            for solver in ("dopri5", "dopri8", "heun-100"):
                for est in ("rademacher", "gaussian", "exact"):
                    add(run_case("vp", dim, est, solver, args.repeats))
    if "digits" in sections:
        digit_rows = digits(
            args.digits_examples, max(1, args.repeats // 2), args.digits_rtols
        )
    if "official" in sections:
        with tempfile.TemporaryDirectory() as work:
            for batch in args.official_batches:
                for sde_name in ("vp", "ve"):
                    for est in ("rademacher", "exact"):
                        official_rows.append(
                            official(args, sde_name, est, batch, Path(work))
                        )

    result = dict(
        command="PYTHONPATH=. taskset -c 0 " + command_line(),
        eps=EPS,
        tolerances=PID,
        conditions=dict(
            python=platform.python_version(),
            jax=jax.__version__,
            backend=jax.default_backend(),
            cpu_count=os.cpu_count(),
            xla_flags=os.environ.get("XLA_FLAGS", ""),
            affinity=sorted(os.sched_getaffinity(0)),
            load_average_at_end=os.getloadavg(),
            note="2 shared vCPUs; absolute times are noisy (see the load average), "
            "compare within this run.",
        ),
        speedups=speedups,
        rows=rows,
        digits=digit_rows,
        official=official_rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
