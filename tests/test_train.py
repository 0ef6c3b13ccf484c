"""Training: a tiny MLP learns the modes of a 2-D toy mixture; the EMA is the decayed
average of the iterates; checkpoints round-trip (and the committed one still loads);
resume is bit-exact; a failed save never replaces a good checkpoint."""

import json
import math
import pathlib
import signal

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoresde_diffrax as sd
import scoresde_diffrax._checkpoint as checkpoint_mod
import scoresde_diffrax._train as train_mod


SDE = sd.VPSDE()
MIXTURE = sd.data.toy_mixture()  # eight modes (std 0.2) on a circle of radius 2
DATA = sd.data.gaussian_mixture(jr.key(0), 2048)  # samples of MIXTURE
TINY = dict(
    batch_size=128,
    learning_rate=3e-3,
    warmup_steps=20,
    steps_per_call=100,
    ema_decay=0.99,
)


def tiny_model(key=None):
    key = jr.key(1) if key is None else key
    return sd.EpsScore(sd.nn.MLPScore((2,), width=64, depth=2, key=key), SDE)


def leaves_equal(a, b) -> bool:
    la = jax.tree_util.tree_leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree_util.tree_leaves(eqx.filter(b, eqx.is_array))
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def mode_failures(x) -> list[str]:
    """How samples `x` of shape (n, 2) fail to reproduce MIXTURE's modes: each mode's
    weight, mean and variance, and the mean exact log-density; [] if they pass.

    Bounds measured on 1000 samples (CPU): true samples (10 keys) have weight |z| <=
    3.0, mean offset <= 0.063, variance ratio 0.98-1.05 (per mode 0.83-1.24), mean
    log p -1.68..-1.75; the model of `test_tiny_mlp_learns_toy` (4 training x 2
    sampling keys) |z| <= 2.9, offset <= 0.086, ratio 1.61-1.80 (per mode 1.32-2.2),
    log p -2.31..-2.49 (its modes are ~1.3x too wide). Rejected: a uniform ring of
    radius 2 (ratio 3.05, per mode >= 2.6, log p -3.73), a blob (ratio 26), modes
    1.5x too wide (ratio 2.17, log p -2.86), 7 of the 8 modes (|z| 12), modes at
    0.95x the radius (offset 0.13), at 0.6x the width (ratio 0.35)."""
    report = sd.metrics.mixture_report(MIXTURE, x)
    labels = np.asarray(jax.vmap(MIXTURE.classify)(x))
    xs = np.asarray(x, np.float64)
    means = np.asarray(MIXTURE.means, np.float64)
    stds = np.asarray(MIXTURE.stds, np.float64).reshape(len(means), -1)
    var = np.broadcast_to(stds**2, means.shape)  # per mode and dimension
    out = []
    if report.weight_z(MIXTURE) > 4:
        out.append(f"mode weights {report.mode_weights} (|z| > 4)")
    if not 0.8 < report.variance_ratio < 2.1:
        out.append(f"within-mode variance ratio {report.variance_ratio}")
    if report.mean_log_prob < -2.8:
        out.append(f"mean log p {report.mean_log_prob}")
    for k in range(len(means)):
        xk = xs[labels == k]
        if len(xk) < 2:
            out.append(f"mode {k}: {len(xk)} samples")
            continue
        offset = float(np.linalg.norm(xk.mean(0) - means[k]))
        ratio = float(np.mean(np.var(xk, axis=0, ddof=1) / var[k]))
        if offset > 0.12:
            out.append(f"mode {k}: mean off by {offset:.3f}")
        if not 0.7 < ratio < 2.6:
            out.append(f"mode {k}: variance ratio {ratio:.2f}")
    return out


def test_mode_failures_has_teeth():
    n = 1000
    assert mode_failures(MIXTURE.sample(jr.key(100), n)) == []
    ka, kr = jr.split(jr.key(7))
    angle = jr.uniform(ka, (n,), maxval=2 * math.pi)
    radius = 2.0 + 0.2 * jr.normal(kr, (n,))
    ring = jnp.stack([radius * jnp.cos(angle), radius * jnp.sin(angle)], axis=1)
    assert mode_failures(ring)
    assert mode_failures(2.0 * jr.normal(jr.key(8), (n, 2)))  # a blob
    z = jr.normal(jr.key(10), (n, 2))
    seven = MIXTURE.means[jr.randint(jr.key(9), (n,), 0, 7)]
    eight = MIXTURE.means[jr.randint(jr.key(9), (n,), 0, 8)]
    assert mode_failures(seven + 0.2 * z)
    assert mode_failures(eight + 0.3 * z)  # 1.5x too wide
    assert mode_failures(0.95 * eight + 0.2 * z)


def test_tiny_mlp_learns_toy():
    kw = TINY | dict(batch_size=256, steps_per_call=500)
    res = sd.train(
        jr.key(2), tiny_model(), SDE, DATA, num_steps=6000, progress=False, **kw
    )
    assert res.losses.shape == (6000,)
    assert res.losses[-100:].mean() < 0.6 * res.losses[:20].mean()
    samples = sd.sample(
        jr.key(3),
        SDE,
        res.ema_model,
        (1000, 2),
        solver=dfx.Euler(),
        method="sde",
        num_steps=100,
    ).samples
    assert mode_failures(samples) == []


def test_ema_is_the_decayed_average_of_the_iterates():
    # Big steps, so the iterates differ; decay 0.2 is below the warm-up's
    # (1 + n)/(10 + n) from n = 2 on, so both branches of `ema_decay_at` are used.
    kw = TINY | dict(learning_rate=0.1, warmup_steps=1, ema_decay=0.2, steps_per_call=3)
    model = tiny_model()
    decays = [float(sd.ema_decay_at(0.2, n)) for n in range(3)]
    assert decays == pytest.approx([0.1, 2 / 11, 0.2])
    ema = eqx.filter(model, eqx.is_inexact_array)
    for k, d in enumerate(decays, start=1):
        # Step n uses fold_in(key, n) alone: a k-step run's model is the k-th iterate.
        run = sd.train(jr.key(7), model, SDE, DATA, num_steps=k, progress=False, **kw)
        params = eqx.filter(run.model, eqx.is_inexact_array)
        ema = jax.tree_util.tree_map(lambda e, p, d=d: d * e + (1 - d) * p, ema, params)
        got = eqx.filter(run.ema_model, eqx.is_inexact_array)
        for g, w in zip(
            jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ema), strict=True
        ):
            np.testing.assert_allclose(
                np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6
            )


def test_checkpoint_round_trip_and_resume_bit_exact(tmp_path):
    full = sd.train(
        jr.key(7), tiny_model(), SDE, DATA, num_steps=40, progress=False, **TINY
    )
    # "Interrupted" at step 25 (checkpoints every 10 and at the end) ...
    d = tmp_path / "run"
    part = sd.train(
        jr.key(7),
        tiny_model(),
        SDE,
        DATA,
        num_steps=25,
        checkpoint_dir=d,
        checkpoint_every=10,
        progress=False,
        **TINY,
    )
    assert [p.name for p in sorted(d.glob("*.json"))] == [
        "ckpt_000000020.json",
        "ckpt_000000025.json",
    ]  # keeps the two newest
    loaded, meta = sd.load_checkpoint(d)
    assert meta["step"] == 25 and meta["model"]["class"] == "MLPScore"
    assert isinstance(loaded, sd.EpsScore) and loaded.sde == SDE
    assert leaves_equal(loaded, part.ema_model)
    assert leaves_equal(sd.load_checkpoint(d, ema=False)[0], part.model)
    # ... then resumed (a fresh model and a different key: the checkpoint's are used).
    resumed = sd.train(
        jr.key(99),
        tiny_model(jr.key(42)),
        SDE,
        DATA,
        num_steps=40,
        checkpoint_dir=d,
        checkpoint_every=10,
        resume=True,
        progress=False,
        **TINY,
    )
    assert resumed.losses.shape == (15,)
    np.testing.assert_array_equal(resumed.losses, full.losses[25:])
    assert leaves_equal(resumed.model, full.model)
    assert leaves_equal(resumed.ema_model, full.ema_model)
    assert leaves_equal(resumed.state.opt_state, full.state.opt_state)


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    d = tmp_path / "run"
    sd.train(
        jr.key(8),
        tiny_model(),
        SDE,
        DATA,
        num_steps=10,
        checkpoint_dir=d,
        progress=False,
        **TINY,
    )
    good, _ = sd.load_checkpoint(d)

    def broken(path, data):
        with open(str(path) + ".partial", "wb") as f:
            f.write(data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_mod, "_atomic_write", broken)
    with pytest.raises(OSError, match="disk full"):
        sd.train(
            jr.key(8),
            tiny_model(),
            SDE,
            DATA,
            num_steps=20,
            checkpoint_dir=d,
            resume=True,
            progress=False,
            **TINY,
        )
    again, meta = sd.load_checkpoint(d)
    assert meta["step"] == 10 and leaves_equal(again, good)


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_takes_effect_between_chunks(tmp_path, monkeypatch, signals):
    """SIGINT while a chunk runs: the first only marks the run as interrupted, the
    chunk finishes and is saved, then `KeyboardInterrupt` goes on (so it is never
    raised inside JAX); a second SIGINT interrupts at once, keeping the chunks
    completed before. Python's handler is back afterwards."""
    run_chunk, calls = train_mod._run_chunk_or_raise, []

    def interrupted_in_chunk_2(*args):
        calls.append(1)
        if len(calls) == 2:
            for _ in range(signals):
                signal.raise_signal(signal.SIGINT)
        return run_chunk(*args)

    monkeypatch.setattr(train_mod, "_run_chunk_or_raise", interrupted_in_chunk_2)
    d, per_call = tmp_path / "run", 5
    # Python's own handler, whatever this process inherited (a shell's background
    # job, for one, starts with SIGINT ignored).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            sd.train(
                jr.key(3),
                tiny_model(),
                SDE,
                DATA,
                num_steps=100,
                checkpoint_dir=d,
                progress=False,
                **(TINY | dict(steps_per_call=per_call)),
            )
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert sd.read_metadata(d)["step"] == per_call * (3 - signals)
    assert len(calls) == 2


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    d = tmp_path / "run"
    sd.train(
        jr.key(8),
        tiny_model(),
        SDE,
        DATA,
        num_steps=10,
        checkpoint_dir=d,
        progress=False,
        **TINY,
    )
    # Another architecture cannot resume from it.
    other = sd.EpsScore(sd.nn.MLPScore((2,), width=16, depth=2, key=jr.key(0)), SDE)
    with pytest.raises(ValueError, match="is for MLPScore"):
        sd.train(
            jr.key(8),
            other,
            SDE,
            DATA,
            num_steps=20,
            checkpoint_dir=d,
            resume=True,
            progress=False,
            **TINY,
        )
    # A fresh run refuses a directory holding another run.
    with pytest.raises(ValueError, match="already holds checkpoints"):
        sd.train(
            jr.key(8),
            tiny_model(),
            SDE,
            DATA,
            num_steps=20,
            checkpoint_dir=d,
            progress=False,
            **TINY,
        )
    # Truncated weights.
    eqx_file = d / "ckpt_000000010.eqx"
    eqx_file.write_bytes(eqx_file.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        sd.load_checkpoint(d)
    # Metadata naming another architecture than the weights.
    d2 = tmp_path / "run2"
    sd.train(
        jr.key(8),
        tiny_model(),
        SDE,
        DATA,
        num_steps=10,
        checkpoint_dir=d2,
        progress=False,
        **TINY,
    )
    js = d2 / "ckpt_000000010.json"
    meta = json.loads(js.read_text())
    meta["model"]["config"]["width"] = 48
    js.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="do not fit the network"):
        sd.load_checkpoint(d2)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        sd.load_checkpoint(tmp_path)


COMMITTED = pathlib.Path(__file__).parents[1] / "benchmarks/results/digits_checkpoint"


@pytest.mark.skipif(not COMMITTED.is_dir(), reason="no benchmarks/results here")
def test_committed_checkpoint_still_loads():
    """The on-disk format is stable: the digits U-Net written by the benchmark loads."""
    for ema in (True, False):
        model, meta = sd.load_checkpoint(COMMITTED, ema=ema)
        assert meta["step"] == 6000 and meta["model"]["class"] == "UNet"
        assert isinstance(model, sd.EpsScore) and isinstance(model.model, sd.nn.UNet)
        assert model.sde == sd.sde_from_description(meta["sde"])
        leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
        assert sum(x.size for x in leaves) > 10_000
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def test_train_bad_input(tmp_path):
    with pytest.raises(ValueError, match="num_steps"):
        sd.train(jr.key(0), tiny_model(), SDE, DATA, num_steps=0)
    with pytest.raises(ValueError, match="does not fit the data"):
        sd.train(jr.key(0), tiny_model(), SDE, jnp.zeros((10, 3)), num_steps=1)
    # The structure is enough (building real weights compiles for seconds).
    net = eqx.filter_eval_shape(
        lambda k: sd.nn.UNet((1, 8, 8), channels=8, key=k), jr.key(0)
    )
    unet = sd.EpsScore(net, SDE)
    with pytest.raises(ValueError, match="does not fit the data"):
        sd.train(jr.key(0), unet, SDE, jnp.zeros((10, 3, 8, 8)), num_steps=1)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot be created"):
        sd.train(
            jr.key(0),
            tiny_model(),
            SDE,
            DATA,
            num_steps=1,
            checkpoint_dir=blocker / "x",
        )


def test_ema_warmup():
    assert float(sd.ema_decay_at(0.9999, 0)) == pytest.approx(0.1)
    assert float(sd.ema_decay_at(0.9999, 10**6)) == pytest.approx(0.9999)
