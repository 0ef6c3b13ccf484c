"""Sampling, likelihoods and encode/decode with the batch sharded over 8 devices.

JAX fixes its device count at start-up, so `tests/_sharded_checks.py` runs once, in a
subprocess with `--xla_force_host_platform_device_count=8`, and prints a JSON record
per case; the tests below assert on it case by case. Each sharded call is compared
with the same call with `sharding=None` in that process (one device).

Measured (jax 0.10.2, CPU): fixed-step samples, latents and encodings of the exact
mixture score are bitwise equal to the one-device results (with a network, only to
float32 round-off: see NETWORK_TOL); so, here, were the adaptive samples and decodings. The
likelihood's log-density differs by float32 round-off (~1e-6 relative) even with fixed
steps (the score's VJP compiles differently for a shard than for the whole batch), and
with adaptive steps that difference enters the error norm, so steps and results move
within the solve's tolerance (~1e-5, rtol = atol = 1e-4 here).
"""

import json
import os
import subprocess
import sys

import pytest


HERE = os.path.dirname(os.path.abspath(__file__))
DEVICES = 8
BATCH = 16


@pytest.fixture(scope="module")
def run():
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "_sharded_checks.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture(scope="module")
def results(run):
    return run[0]


def _record(results, name):
    rec = results[name]
    assert "error" not in rec, f"{name}: {rec['error']}: {rec['message']}"
    return rec


def _sharded_over_batch(rec, shard_rows=BATCH // DEVICES):
    assert rec["devices"] == DEVICES, rec
    assert not rec["replicated"], rec
    assert [s[0] for s in rec["shard_shapes"]] == [shard_rows], rec
    assert rec["finite"], rec


def test_subprocess_uses_8_devices_and_this_checkout(results):
    assert results["devices"] == DEVICES
    assert results["package"] == os.path.join(
        os.path.dirname(HERE), "scoresde_diffrax", "__init__.py"
    )


@pytest.mark.parametrize("name", ["sample_em_fixed", "mesh_2d_all_axes_sample_em"])
def test_fixed_step_samples_sharded_and_bitwise(results, name):
    """Euler-Maruyama with the exact mixture score: per-example keys (fold_in(key, i))
    and no reduction over the batch, so the 8-device samples are the one-device
    samples, bit for bit (also on a 4x2 mesh)."""
    rec = _record(results, name)
    _sharded_over_batch(rec)
    assert rec["bitwise"], rec


# A network's matrix products are batched dots whose summation order XLA's CPU kernels
# may choose by the operand sizes (and the machine's caches): at 2 rows a device
# instead of 16 the same example can round differently. Bitwise equality held on this
# machine but failed on a fresh clone elsewhere, so with a network only float32
# round-off is promised (a different noise draw would differ by O(1)).
NETWORK_TOL = 1e-4


def test_fixed_step_samples_sharded_with_a_network(results):
    """Euler-Maruyama with an Equinox MLP score: the 8-device samples are the one-device
    samples to float32 round-off."""
    rec = _record(results, "mlp_score_sample_em")
    _sharded_over_batch(rec)
    assert rec["max_abs_diff"] <= NETWORK_TOL, rec


@pytest.mark.parametrize(
    "name",
    [
        "sample_ode_adaptive",
        "explicit_mesh_sample_ode_adaptive",
        "sample_sde_adaptive",
    ],
)
def test_adaptive_samples_sharded_and_equal(results, name):
    """Tsit5 + PIDController on the PF-ODE, also on a `jax.make_mesh` mesh with its
    default Explicit axes (used as Auto internally); ShARK + PIDController on the
    reverse SDE (per-example VirtualBrownianTrees). The controller's RMS norm sums
    over the sharded batch, so only round-off agreement is promised (measured: 0)."""
    rec = _record(results, name)
    _sharded_over_batch(rec)
    assert rec["max_abs_diff"] <= 1e-5, rec


def test_loglik_fixed_steps(results):
    """Hutchinson, 20 fixed steps: the latent is bitwise; the log-density agrees to
    float32 round-off (measured 2.0e-6 nats, 1.1e-6 relative)."""
    rec = _record(results, "loglik_hutchinson_fixed")
    _sharded_over_batch(rec)
    _sharded_over_batch(rec["latent"])
    assert rec["latent"]["bitwise"], rec
    assert rec["max_abs_diff"] <= 2e-5, rec
    assert rec["num_steps"] == [20, 20]


@pytest.mark.parametrize(
    "name",
    [
        "loglik_hutchinson_adaptive",
        "explicit_mesh_loglik_adaptive",
        "mesh_2d_first_axis_loglik_adaptive",
    ],
)
def test_loglik_adaptive(results, name):
    """The default PIDController with `batch_max_rms_norm` (a max over the sharded
    batch): log-density and latent within the solve's tolerance (1e-4) of one device
    (measured <= 8.6e-6 and 3.9e-6), with the same number of steps. The 4x2 mesh case
    shards the batch over its first axis only (a NamedSharding with P('x'))."""
    rec = _record(results, name)
    rows = 4 if name.startswith("mesh_2d") else BATCH // DEVICES
    _sharded_over_batch(rec, rows)
    _sharded_over_batch(rec["latent"], rows)
    assert rec["max_abs_diff"] <= 1e-4, rec
    assert rec["latent"]["max_abs_diff"] <= 1e-4, rec
    assert rec["num_steps"][0] == rec["num_steps"][1], rec


def test_loglik_per_example_adaptive(results):
    """`per_example=True` (a vmap of solves, each with its own steps) over the sharded
    batch: round-off moves single examples' accept/reject decisions, so agreement is
    to the tolerance, rtol = 1e-4 relative (measured 1.5e-5)."""
    rec = _record(results, "loglik_per_example_adaptive")
    _sharded_over_batch(rec)
    _sharded_over_batch(rec["latent"])
    assert rec["max_rel_diff"] <= 1e-4, rec
    assert len(rec["num_steps"][0]) == BATCH, rec


@pytest.mark.parametrize(
    "name", ["loglik_input_sharded", "explicit_mesh_loglik_input_sharded"]
)
def test_loglik_keeps_the_input_sharding(results, name):
    """`x` already sharded over the batch and `sharding=None`: outputs stay sharded."""
    rec = _record(results, name)
    _sharded_over_batch(rec)
    _sharded_over_batch(rec["latent"])
    assert rec["latent"]["bitwise"], rec
    assert rec["max_abs_diff"] <= 2e-5, rec


def test_encode_decode(results):
    """Encode with 20 fixed steps (bitwise), decode adaptively from the sharded
    latents (keeping their sharding; measured bitwise)."""
    rec = _record(results, "encode_decode")
    _sharded_over_batch(rec["encode"])
    _sharded_over_batch(rec["decode"])
    assert rec["encode"]["bitwise"], rec
    assert rec["decode"]["max_abs_diff"] <= 1e-5, rec


def test_under_an_outer_jit(results):
    """`jax.jit` around `sample(..., sharding=jax.make_mesh(...))`: still sharded and
    bitwise equal to `jax.jit` around the one-device call; around `log_likelihood` of a sharded `x` without `sharding=`: runs, and
    agrees (the sharding of a traced `x` is left to the outer jit)."""
    rec = _record(results, "jit_wrapped_sample_em_explicit")
    _sharded_over_batch(rec)
    assert rec["bitwise"], rec
    rec = _record(results, "jit_wrapped_loglik_input_sharded")
    assert rec["finite"] and rec["max_abs_diff"] <= 2e-5, rec


def test_mesh_2d_shards_over_all_axes(results):
    assert results["mesh_2d_all_axes_sample_em"]["spec"] == "P(('x', 'y'),)"
    assert results["mesh_2d_first_axis_loglik_adaptive"]["spec"] == "P('x',)"


@pytest.mark.parametrize(
    "name", ["batch_12_on_8_devices", "batch_12_on_8_devices_loglik"]
)
def test_batch_not_divisible(results, name):
    rec = results[name]
    assert rec.get("error") == "ValueError", rec
    msg = rec["message"]
    assert "`sharding`" in msg and "12 examples" in msg and "8 devices" in msg, msg


def test_junk_sharding_is_a_type_error(results):
    rec = results["junk_sharding"]
    assert "TypeError" in rec.get("error_types", []), rec
    assert "sharding" in rec["message"], rec


@pytest.mark.parametrize(
    "name, words",
    [
        ("nan_score_raises", "non-finite samples"),
        ("max_steps_raises", "maximum number of solver steps"),
    ],
)
def test_runtime_failures_raise(results, name, words):
    """Sharded failures raise a RuntimeError after the call (a raising
    `eqx.error_if` inside a sharded program aborts the process instead)."""
    rec = results[name]
    assert "RuntimeError" in rec.get("error_types", []), rec
    assert words in rec["message"], rec


def test_no_gather_onto_one_device(run):
    """No check gathers the batch onto one device (XLA warns when it must)."""
    assert "Involuntary full rematerialization" not in run[1], run[1][-4000:]


def test_cli_sample_data_parallel(results):
    """`scoresde sample --data-parallel` writes the samples of one device (an MLP
    checkpoint, Euler-Maruyama: to float32 round-off, see NETWORK_TOL); an indivisible
    --num-samples is one line on stderr, exit 2 (and fine without the flag)."""
    rec = _record(results, "cli_sample_data_parallel")
    assert rec["shape"] == [BATCH, 2] and rec["finite"], rec
    assert rec["max_abs_diff"] <= NETWORK_TOL, rec
    assert rec["indivisible_without_flag_code"] == 0
    assert rec["indivisible_code"] == 2
    err = rec["indivisible_stderr"]
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "--num-samples 12" in err and "(8)" in err, err
