"""The paper's networks (NCSN++/DDPM++) against the official PyTorch code: reference
outputs of small random networks (tests/data/official_score_sde, made with the official
code), the full-size configurations' parameter counts and state-dict names/shapes, the
torch-free checkpoint reader's errors and its refusal to run pickled code, and the
`scoresde convert` command."""

import ast
import collections
import io
import json
import os
import pathlib
import pickle
import shutil
import sys
import types
import zipfile

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from helpers import one_line, run_cli

import scoresde_diffrax as sd
from scoresde_diffrax.nn import _official


DATA = pathlib.Path(__file__).parent / "data" / "official_score_sde"
FIXTURES = (
    "ve_ncsnpp_continuous",
    "vp_ddpmpp_continuous",
    "subvp_ddpmpp_continuous",
    "ve_ncsnpp_outputskip",
)
MODELS = json.loads((DATA / "official_models.json").read_text())
# Measured: max |ours - official| / max |official| <= 1.2e-6 over the four fixtures,
# EMA and raw weights, network outputs and scores (float32 on CPU).
RTOL = 1e-5


def _close(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    err = np.abs(ours - ref).max() / np.abs(ref).max()
    assert err < RTOL, err


@eqx.filter_jit
def _scores(score, t, x):
    return eqx.filter_vmap(score)(t, x)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_outputs(name):
    io_ = np.load(DATA / name / "io.npz")
    config = json.loads((DATA / name / "config.json").read_text())
    path = DATA / name / "checkpoint.pth"
    sde = sd.nn.official_sde(config)
    t = jnp.asarray(io_["t"])
    # the official time conventions: the network's input, and the SDE's std
    if isinstance(sde, sd.VESDE):
        labels, std = jax.vmap(sde.sigma)(t), jax.vmap(sde.sigma)(t)
    else:
        labels, std = 999.0 * t, jax.vmap(sde.std)(t)
    _close(labels, io_["labels"])
    _close(std, config["sde_marginal_std_at_t"])
    for weights in ("ema", "raw"):
        score = sd.nn.OfficialScore(
            sd.nn.load_official(path, config, ema=weights == "ema"), sde
        )
        out = _scores(score, t, jnp.asarray(io_["x"]))  # one compilation per config
        _close(out, io_[f"score_{weights}"])
        # the network's own output: the score (VE) or -score * std (VP, sub-VP)
        net_out = out if isinstance(sde, sd.VESDE) else -out * std[:, None, None, None]
        _close(net_out, io_[f"model_out_{weights}"])
    assert score.data_range == ((-1.0, 1.0) if config["data"]["centered"] else (0, 1))


def test_loop_friendly_network_matches_the_official_outputs():
    # `sd.nn.loop_friendly` computes every convolution as shifted slices and one matrix
    # product (channels-last, like the network): the same outputs, on the config with
    # the most kinds of layer (FIR, BigGAN blocks, input and output skips).
    name = "ve_ncsnpp_outputskip"
    io_ = np.load(DATA / name / "io.npz")
    config = json.loads((DATA / name / "config.json").read_text())
    score = sd.nn.load_official_score(DATA / name / "checkpoint.pth", config)
    friendly = sd.nn.loop_friendly(score)

    def convs(tree):
        is_conv = lambda m: isinstance(m, sd.nn.ChannelsLastConv2d)  # noqa: E731
        leaves = jax.tree_util.tree_leaves(tree, is_leaf=is_conv)
        return [m for m in leaves if is_conv(m)]

    assert len(convs(friendly)) == len(convs(score)) > 0
    assert all(m.shifted for m in convs(friendly))
    assert not any(m.shifted for m in convs(score))
    out = _scores(friendly, jnp.asarray(io_["t"]), jnp.asarray(io_["x"]))
    _close(out, io_["score_ema"])


def test_official_parameters_are_the_checkpoints_tensors():
    # The network stores its convolution weights (kh, kw, in, out); the official names
    # hand them back in the official (out, in, kh, kw) layout, equal to the file's.
    path = DATA / "ve_ncsnpp_continuous" / "checkpoint.pth"
    config = json.loads((DATA / "ve_ncsnpp_continuous" / "config.json").read_text())
    net = sd.nn.load_official(path, config, ema=False)
    state = sd.nn.read_torch_checkpoint(path)["model"]
    named = sd.nn.official_parameters(net)
    assert any(a.ndim == 4 for _, a in named)
    for name, array in named:
        np.testing.assert_array_equal(np.asarray(array), state["module." + name])


def test_small_parameter_counts():
    for name, entry in MODELS["small"].items():
        config = json.loads((DATA / name / "config.json").read_text())
        net = eqx.filter_eval_shape(
            sd.nn.NCSNpp, config=sd.nn.network_config(config), key=jr.key(0)
        )
        sizes = [a.size for _, a in sd.nn.official_parameters(net)]
        assert sum(sizes) == entry["params"], name


FULL = {
    "ve.cifar10_ncsnpp_continuous": "ve/cifar10_ncsnpp_continuous",
    "vp.cifar10_ddpmpp_continuous": "vp/cifar10_ddpmpp_continuous",
    "subvp.cifar10_ddpmpp_continuous": "subvp/cifar10_ddpmpp_continuous",
    "ve.ffhq_ncsnpp_continuous": "ve/ffhq_ncsnpp_continuous",
}


def _abstract(config):
    return eqx.filter_eval_shape(
        sd.nn.NCSNpp, config=sd.nn.network_config(config), key=jr.key(0)
    )


@pytest.mark.parametrize("key", list(FULL))
def test_full_size_state_dict(key):
    entry = MODELS["full"][key]
    state = entry["state_dict"]
    state = ast.literal_eval(state) if isinstance(state, str) else state
    want = {k: tuple(v) for k, v in state.items() if k != "sigmas"}
    config = entry["config"]
    config = ast.literal_eval(config) if isinstance(config, str) else config
    # by official config name and from the official config itself
    for net in (_abstract(FULL[key]), _abstract(config)):
        shapes = sd.nn.official_state_dict_shapes(net)
        assert list(shapes.items()) == list(want.items())
        assert sum(int(np.prod(s)) for s in shapes.values()) == int(entry["params"])
        assert sd.nn.network_config(config).image_size == int(entry["image_size"])


@pytest.mark.parametrize(
    "name, params",
    [
        ("cifar10_ncsnpp", 62_758_915),
        ("cifar10_ddpmpp", 61_804_419),
        ("cifar10_ddpmpp_deep", 106_632_579),
        ("cifar10_ncsnpp_deep", 107_587_075),
        ("ffhq_1024_ncsnpp", 105_785_896),
    ],
)
def test_paper_parameter_counts(name, params):
    net = _abstract(name)
    leaves = jax.tree_util.tree_leaves(net)  # every leaf a weight (abstract)
    assert sum(x.size for x in leaves) == params
    constructors = {
        "cifar10_ncsnpp": lambda k: sd.nn.NCSNpp.cifar10_ve(key=k),
        "cifar10_ncsnpp_deep": lambda k: sd.nn.NCSNpp.cifar10_ve(deep=True, key=k),
        "cifar10_ddpmpp": lambda k: sd.nn.NCSNpp.cifar10_vp(key=k),
        "cifar10_ddpmpp_deep": lambda k: sd.nn.NCSNpp.cifar10_vp(deep=True, key=k),
        "ffhq_1024_ncsnpp": lambda k: sd.nn.NCSNpp.ffhq_1024(key=k),
    }
    named = eqx.filter_eval_shape(constructors[name], jr.key(0))
    assert named.config == net.config


# --------------------------------------------------------------------------- errors

VE = DATA / "ve_ncsnpp_continuous"


def _message(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_config_mismatch_names_first_tensor():
    config = json.loads((VE / "config.json").read_text())
    config["model"]["nf"] = 32
    with pytest.raises(sd.nn.CheckpointError) as e:
        sd.nn.load_official(VE / "checkpoint.pth", config, ema=False)
    msg = _message(e)
    assert str(VE / "checkpoint.pth") in msg
    assert "'all_modules.0.W' has shape (16,)" in msg and "(32,)" in msg
    # the VP network has no Fourier W: its first tensor is missing from a VE checkpoint
    config = json.loads((DATA / "vp_ddpmpp_continuous" / "config.json").read_text())
    with pytest.raises(sd.nn.CheckpointError) as e:
        sd.nn.load_official(VE / "checkpoint.pth", config, ema=False)
    assert "'all_modules.0.weight' is missing" in _message(e)


def test_missing_tensor_named():
    config = json.loads((VE / "config.json").read_text())
    state = _official.read_torch_checkpoint(VE / "checkpoint.pth")["model"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    del state["all_modules.5.Conv_2.bias"]
    net = _abstract(config)
    with pytest.raises(sd.nn.CheckpointError, match=r"all_modules\.5\.Conv_2\.bias"):
        _official._with_weights(net, state, "ckpt.pth")


def test_unreadable_files(tmp_path):
    src = (VE / "checkpoint.pth").read_bytes()
    cases = {
        "text.pth": b"not a checkpoint\n",
        "truncated.pth": src[: len(src) // 2],
    }
    for name, blob in cases.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(sd.nn.CheckpointError) as e:
            sd.nn.load_official(tmp_path / name, "ve/cifar10_ncsnpp_continuous")
        msg = _message(e)
        assert name in msg and "not a zip" in msg
    # a zip archive that is not a torch checkpoint
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(sd.nn.CheckpointError, match="no data.pkl"):
        sd.nn.load_official(tmp_path / "other.zip", "ve/cifar10_ncsnpp_continuous")
    # a checkpoint whose storage file went missing
    with zipfile.ZipFile(VE / "checkpoint.pth") as z_in:
        with zipfile.ZipFile(tmp_path / "damaged.pth", "w") as z_out:
            for info in z_in.infolist():
                if not info.filename.endswith("/data/3"):
                    z_out.writestr(info, z_in.read(info))
    with pytest.raises(sd.nn.CheckpointError, match="storage 3 is missing"):
        sd.nn.load_official(tmp_path / "damaged.pth", "ve/cifar10_ncsnpp_continuous")
    with pytest.raises(sd.nn.CheckpointError, match="no such file"):
        sd.nn.load_official(tmp_path / "absent.pth", "ve/cifar10_ncsnpp_continuous")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_refuses_malicious_pickle(tmp_path):
    target = tmp_path / "pwned"
    buf = io.BytesIO()
    pickle.dump({"model": _Evil(target)}, buf, protocol=2)
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
    with pytest.raises(sd.nn.CheckpointError) as e:
        sd.nn.load_official(tmp_path / "evil.pth", "ve/cifar10_ncsnpp_continuous")
    assert "refusing" in _message(e) and "system" in _message(e)
    assert not target.exists()


def _torch_like_file(path, numel, monkeypatch):
    """A `torch.save`-style zip holding one 4x4 float tensor over a storage of `numel`
    floats, written without torch (stand-ins named like torch's globals)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called here")

    FloatStorage.__module__, _rebuild_tensor_v2.__module__ = "torch", "torch._utils"
    FloatStorage.__qualname__ = "FloatStorage"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2, torch._utils = (
        FloatStorage,
        _rebuild_tensor_v2,
        utils,
    )
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)

    class Storage:
        pass

    class Tensor:
        def __reduce__(self):
            args = (Storage(), 0, (4, 4), (4, 1), False, collections.OrderedDict())
            return (_rebuild_tensor_v2, args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, "0", "cpu", numel)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"model": {"module.w": Tensor()}})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", np.zeros(numel, np.float32).tobytes())


def test_tensor_past_its_storage_is_refused(tmp_path, monkeypatch):
    """A tensor whose size and strides reach past its storage is refused (striding
    over it would read memory outside the file's data); one that fits is read."""
    _torch_like_file(tmp_path / "bad.pth", 4, monkeypatch)
    with pytest.raises(sd.nn.CheckpointError) as e:
        sd.nn.load_official(tmp_path / "bad.pth", "ve/cifar10_ncsnpp_continuous")
    assert "past its storage" in _message(e) and "bad.pth" in _message(e)
    _torch_like_file(tmp_path / "ok.pth", 16, monkeypatch)
    with pytest.raises(sd.nn.CheckpointError) as e:  # a valid tensor, not a network
        sd.nn.load_official(tmp_path / "ok.pth", "ve/cifar10_ncsnpp_continuous")
    assert "past its storage" not in _message(e)


def test_bad_config():
    with pytest.raises(ValueError, match="neither one of the paper's"):
        sd.nn.load_official(VE / "checkpoint.pth", "cifar11")
    with pytest.raises(ValueError, match="names a network, not its SDE"):
        sd.nn.official_sde("cifar10_ncsnpp")


# --------------------------------------------------------------------------- the CLI


def test_convert_then_sample(tmp_path, capsys):
    out = tmp_path / "ckpt"
    code, stdout, err = run_cli(
        [
            "convert",
            "--official", VE / "checkpoint.pth",
            "--config", VE / "config.json",
            "--out", out,
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    model, meta = sd.load_checkpoint(out)
    assert isinstance(model, sd.nn.OfficialScore) and meta["step"] == 1234
    io_ = np.load(VE / "io.npz")
    got = _scores(model, jnp.asarray(io_["t"]), jnp.asarray(io_["x"]))
    _close(got, io_["score_ema"])
    raw, _ = sd.load_checkpoint(out, ema=False)
    _close(_scores(raw, jnp.asarray(io_["t"]), jnp.asarray(io_["x"])), io_["score_raw"])

    samples = tmp_path / "s.npy"
    code, stdout, err = run_cli(
        [
            "sample", "--checkpoint", out, "--num-samples", 2,
            "--solver", "euler-maruyama", "--steps", 2, "--out", samples, "--quiet",
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    x = np.load(samples)
    assert x.shape == (2, 3, 16, 16) and np.isfinite(x).all()
    assert 0.0 <= x.min() and x.max() <= 1.0

    # A checkpoint converted before the convolution weights were stored (kh, kw, in,
    # out) lacks the layout key: refused with what to do, not a shape error.
    meta_path = next(out.glob("ckpt_*.json"))
    meta = json.loads(meta_path.read_text())
    assert meta["model"].pop("conv_weight_layout") == "kh kw in out"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="convert the official checkpoint again"):
        sd.load_checkpoint(out)


def test_convert_flag_errors(tmp_path, capsys):
    base = ["convert", "--official", VE / "checkpoint.pth", "--out", tmp_path / "o"]
    code, _, err = run_cli(base + ["--config", "cifar11"], capsys)
    assert code == 2 and one_line(err) and "--config" in err
    code, _, err = run_cli(
        ["convert", "--official", tmp_path / "none.pth", "--config",
         "ve/cifar10_ncsnpp_continuous", "--out", tmp_path / "o"],
        capsys,
    )  # fmt: skip
    assert code == 2 and one_line(err) and "--official" in err
    bad = tmp_path / "bad.pth"
    shutil.copy(VE / "config.json", bad)
    code, _, err = run_cli(
        ["convert", "--official", bad, "--config", "ve/cifar10_ncsnpp_continuous",
         "--out", tmp_path / "o"],
        capsys,
    )  # fmt: skip
    assert code == 2 and one_line(err) and "--official" in err and "not a zip" in err
    # a configuration that does not fit the checkpoint
    code, _, err = run_cli(
        ["convert", "--official", VE / "checkpoint.pth", "--config",
         "vp/cifar10_ddpmpp_continuous", "--out", tmp_path / "o"],
        capsys,
    )  # fmt: skip
    assert code == 2 and one_line(err) and "does not match" in err
