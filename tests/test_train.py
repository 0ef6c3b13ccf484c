"""Training: a tiny MLP learns a 2-D toy; checkpoints round-trip; resume is bit-exact;
a failed save never replaces a good checkpoint."""

import json

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import scoresde_diffrax as sd
import scoresde_diffrax._checkpoint as checkpoint_mod


SDE = sd.VPSDE()
DATA = sd.data.gaussian_mixture(jr.key(0), 2048)
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


def test_tiny_mlp_learns_toy():
    res = sd.train(
        jr.key(2), tiny_model(), SDE, DATA, num_steps=2000, progress=False, **TINY
    )
    assert res.losses.shape == (2000,)
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
    truth = sd.data.gaussian_mixture(jr.key(4), 1000)
    prior = SDE.prior_std * jr.normal(jr.key(5), (1000, 2))
    sw = float(sd.metrics.sliced_wasserstein(jr.key(6), samples, truth))
    sw_prior = float(sd.metrics.sliced_wasserstein(jr.key(6), prior, truth))
    assert sw < 0.4 * sw_prior, (sw, sw_prior)


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
