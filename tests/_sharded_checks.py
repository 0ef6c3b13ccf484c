"""Sharded sampling and likelihoods on 8 simulated CPU devices, all checks in one
process (JAX fixes its device count at start-up). Run by tests/test_sharding.py as

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \\
        python tests/_sharded_checks.py

It prints one JSON object: case name -> measurements (how the output is sharded, its
difference from the same call with `sharding=None`, or the error raised). The tests
assert on it per case.
"""

import json
import os
import sys
import time

import jax


# Import the package beside this file (the checkout under test), not an installed one.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if jax.device_count() != 8:
    sys.exit(
        f"needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8), "
        f"got {jax.device_count()}"
    )
# As tests/conftest.py and pyproject's addopts: strict ranks, runtime type checks.
jax.config.update("jax_numpy_rank_promotion", "raise")
from jaxtyping import install_import_hook  # noqa: E402


with install_import_hook("scoresde_diffrax", "beartype.beartype"):
    import scoresde_diffrax as sd

import diffrax as dfx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P  # noqa: E402


B, D, STEPS = 16, 2, 20
SDE = sd.VPSDE()
MIX = sd.GaussianMixture(
    jnp.array([[-3.0, 0.0], [3.0, 1.0], [0.0, -3.5]]),
    jnp.array([0.5, 0.8, 0.6]),
    jnp.array([0.2, 0.5, 0.3]),
)
SCORE = MIX.score(SDE)
PID = dfx.PIDController(rtol=1e-4, atol=1e-4)
EXPLICIT = jax.make_mesh((8,), ("batch",))  # jax 0.10: Explicit axes by default
AUTO = Mesh(EXPLICIT.devices, ("batch",), axis_types=(AxisType.Auto,))
MESH_2D = jax.make_mesh((4, 2), ("x", "y"))
X = MIX.sample(jr.key(3), B)


def describe(a) -> dict:
    """How the array `a` is laid out, and its values."""
    return {
        "devices": len(a.sharding.device_set),
        "replicated": bool(a.sharding.is_fully_replicated),
        "shard_shapes": sorted({tuple(s.data.shape) for s in a.addressable_shards}),
        "spec": str(getattr(a.sharding, "spec", None)),
    }


def compare(a, ref) -> dict:
    a, ref = np.asarray(a), np.asarray(ref)
    diff = np.abs(a - ref)
    return {
        "shape": list(a.shape),
        "finite": bool(np.all(np.isfinite(a))),
        "bitwise": bool(np.array_equal(a, ref)),
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float((diff / np.maximum(np.abs(ref), 1e-30)).max()),
    }


def case(fn):
    """Run `fn() -> (sharded output, reference)` (or a dict) into a JSON record."""
    t = time.perf_counter()
    try:
        out = fn()
        if isinstance(out, dict):
            rec = out
        else:
            jax.block_until_ready(out[0])
            rec = {**describe(out[0]), **compare(*out)}
    except Exception as e:  # noqa: BLE001
        rec = {
            "error": type(e).__name__,
            "error_types": [c.__name__ for c in type(e).__mro__],
            "message": str(e)[:2000],
        }
    rec["seconds"] = round(time.perf_counter() - t, 2)
    return rec


def no_error(fn) -> dict:
    jax.block_until_ready(fn())
    return {"no_error": True}


def sample(sharding, **kw):
    return sd.sample(jr.key(0), SDE, SCORE, (B, D), sharding=sharding, **kw).samples


EM = dict(solver=dfx.Euler(), method="sde", num_steps=STEPS)
ODE = dict(solver=dfx.Tsit5(), stepsize_controller=PID)
SDE_ADAPTIVE = dict(solver=dfx.ShARK(), stepsize_controller=PID)


def ll(sharding, x=X, **kw):
    return sd.log_likelihood(jr.key(1), SDE, SCORE, x, sharding=sharding, **kw)


def ll_case(x, sharding, **kw):
    out, ref = ll(sharding, x, **kw), ll(None, X, **kw)
    rec = {**describe(out.log_prob), **compare(out.log_prob, ref.log_prob)}
    rec["latent"] = {**describe(out.latent), **compare(out.latent, ref.latent)}
    rec["prior_log_prob"] = compare(out.prior_log_prob, ref.prior_log_prob)
    steps = [np.asarray(r.stats["num_steps"]).tolist() for r in (out, ref)]
    rec["num_steps"] = steps
    return rec


def encode_decode(sharding):
    z = sd.encode(SDE, SCORE, X, sharding=sharding, num_steps=STEPS)
    x = sd.decode(SDE, SCORE, z, sharding=sharding)  # adaptive; keeps z's sharding
    z_ref = sd.encode(SDE, SCORE, X, num_steps=STEPS)
    x_ref = sd.decode(SDE, SCORE, z_ref)
    return {
        "encode": {**describe(z), **compare(z, z_ref)},
        "decode": {**describe(x), **compare(x, x_ref)},
    }


def mlp_case():
    net = sd.nn.MLPScore((D,), width=16, depth=2, time_dim=8, key=jr.key(7))
    out = sd.sample(jr.key(0), SDE, net, (B, D), sharding=AUTO, **EM).samples
    ref = sd.sample(jr.key(0), SDE, net, (B, D), **EM).samples
    return out, ref


def sampled_and_sharded_input(sharding):
    xs = jax.device_put(X, NamedSharding(sharding, P("batch")))
    return ll_case(xs, None, num_steps=STEPS)


def cli_sample() -> dict:
    """`scoresde sample --data-parallel` vs the same command on one device, from a
    checkpoint trained for a few steps; then an indivisible --num-samples."""
    import contextlib
    import io
    import tempfile

    from scoresde_diffrax import cli

    def main(argv):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(argv)
        return code, err.getvalue()

    with tempfile.TemporaryDirectory() as d:
        ck = os.path.join(d, "ck")
        train = ["train", "--data", "moons", "--sde", "vp", "--model", "mlp"]
        main(train + ["--steps", "4", "--batch-size", "16", "--out", ck, "--quiet"])
        samp = ["sample", "--checkpoint", ck, "--solver", "euler-maruyama"]
        samp += ["--steps", str(STEPS)]
        outs = {}
        for name, extra in (("one", []), ("dp", ["--data-parallel"])):
            path = os.path.join(d, name + ".npy")
            code, _ = main(samp + ["--num-samples", str(B), "--out", path] + extra)
            outs[name] = np.load(path) if code == 0 else None
        bad = main(samp + ["--num-samples", "12", "--out", os.path.join(d, "x.npy")])
        bad_dp = main(
            samp
            + ["--num-samples", "12", "--out", os.path.join(d, "y.npy")]
            + ["--data-parallel"]
        )
    return {
        **compare(outs["dp"], outs["one"]),
        "indivisible_without_flag_code": bad[0],
        "indivisible_code": bad_dp[0],
        "indivisible_stderr": bad_dp[1],
    }


CASES = {
    "cli_sample_data_parallel": cli_sample,
    "sample_em_fixed": lambda: (sample(AUTO, **EM), sample(None, **EM)),
    "sample_ode_adaptive": lambda: (sample(AUTO, **ODE), sample(None, **ODE)),
    "sample_sde_adaptive": lambda: (
        sample(AUTO, **SDE_ADAPTIVE),
        sample(None, **SDE_ADAPTIVE),
    ),
    "loglik_hutchinson_fixed": lambda: ll_case(X, AUTO, num_steps=STEPS),
    "loglik_hutchinson_adaptive": lambda: ll_case(X, AUTO, rtol=1e-4, atol=1e-4),
    "loglik_per_example_adaptive": lambda: ll_case(
        X, AUTO, rtol=1e-4, atol=1e-4, per_example=True
    ),
    "loglik_input_sharded": lambda: sampled_and_sharded_input(AUTO),
    "encode_decode": lambda: encode_decode(AUTO),
    "explicit_mesh_sample_ode_adaptive": lambda: (
        sample(EXPLICIT, **ODE),
        sample(None, **ODE),
    ),
    "explicit_mesh_loglik_adaptive": lambda: ll_case(X, EXPLICIT, rtol=1e-4, atol=1e-4),
    "explicit_mesh_loglik_input_sharded": lambda: sampled_and_sharded_input(EXPLICIT),
    "mesh_2d_all_axes_sample_em": lambda: (sample(MESH_2D, **EM), sample(None, **EM)),
    "mesh_2d_first_axis_loglik_adaptive": lambda: ll_case(
        X, NamedSharding(MESH_2D, P("x")), rtol=1e-4, atol=1e-4
    ),
    "mlp_score_sample_em": mlp_case,
    # Under an outer jit.
    # (An outer jit moves the bits of the one-device result too: compare jit to jit.)
    "jit_wrapped_sample_em_explicit": lambda: (
        jax.jit(lambda k: sd.sample(k, SDE, SCORE, (B, D), sharding=EXPLICIT, **EM))(
            jr.key(0)
        ).samples,
        jax.jit(lambda k: sd.sample(k, SDE, SCORE, (B, D), **EM))(jr.key(0)).samples,
    ),
    "jit_wrapped_loglik_input_sharded": lambda: (
        jax.jit(lambda x: ll(None, x, num_steps=STEPS).log_prob)(
            jax.device_put(X, NamedSharding(AUTO, P("batch")))
        ),
        ll(None, X, num_steps=STEPS).log_prob,
    ),
    # Errors: the record has "error" and "message", or "no_error".
    "batch_12_on_8_devices": lambda: no_error(
        lambda: sd.sample(jr.key(0), SDE, SCORE, (12, D), sharding=AUTO, **EM)
    ),
    "batch_12_on_8_devices_loglik": lambda: no_error(
        lambda: ll(AUTO, X[:12], num_steps=STEPS)
    ),
    "junk_sharding": lambda: no_error(lambda: sample("batch", **EM)),
    # Run-time failures raise when sharded too (checked after the call).
    "nan_score_raises": lambda: no_error(
        lambda: sd.sample(
            jr.key(0), SDE, lambda t, x: x / 0.0, (B, D), sharding=AUTO, **EM
        )
    ),
    "max_steps_raises": lambda: no_error(lambda: sample(AUTO, max_steps=2, **ODE)),
}


def main():
    which = sys.argv[1:] or list(CASES)
    results = {"devices": jax.device_count(), "package": sd.__file__}
    for name in which:
        results[name] = case(CASES[name])
    print(json.dumps(results))


if __name__ == "__main__":
    main()
