"""The checkpoint format: a directory of `ckpt_<step>.eqx` (Equinox serialisation of
the training state) and `ckpt_<step>.json` (metadata: the model, SDE, loss and
optimiser descriptions that rebuild the model without the code that trained it, and
the SHA-256 of the weights), each written atomically, the JSON last."""

import dataclasses
import errno
import hashlib
import io
import json
import os
import pathlib
import re
import tempfile
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PyTree

from . import _sharding, nn as _nn
from ._score import EpsScore, X0Score
from ._sde import AbstractSDE, SubVPSDE, VESDE, VPSDE


CHECKPOINT_FORMAT = "scoresde_diffrax.checkpoint"
CHECKPOINT_VERSION = 1
_NAME_RE = re.compile(r"^ckpt_(\d{9})\.json$")

# Names recorded in checkpoints (a checkpoint must rebuild a model without the code
# that trained it). These tables are for (de)serialisation only.
_NETWORKS = {
    "MLPScore": _nn.MLPScore,
    "UNet": _nn.UNet,
    "NoiseConditionalClassifier": _nn.NoiseConditionalClassifier,
    "NCSNpp": _nn.NCSNpp,
}
_SDES = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}
_ADAPTERS = {"eps": EpsScore, "x0": X0Score, "official": _nn.OfficialScore}
# Fields added to a network's config after checkpoints of it were first written, with
# the value that rebuilds what those older checkpoints hold (the field's default in
# the code may differ: it is for new networks).
_ADDED_FIELDS = {
    "MLPScore": {
        "input_fourier_features": 0,
        "input_fourier_scale": 1.0,
        "num_classes": 0,
        "context_dim": 0,
    },
    "UNet": {"num_classes": 0, "context_dim": 0},
}
# How NCSNpp checkpoints store their convolution weights (`sd.nn.ChannelsLastConv2d`);
# those converted before this key was written hold them (out, in, kh, kw).
_NCSNPP_CONV_LAYOUT = "kh kw in out"
# What a checkpoint's training state is of (metadata `kind`; absent: a score model).
SCORE_MODEL = "score_model"


# --------------------------------------------------------------------------- descriptions


def _split_model(model) -> tuple[str, Any]:
    if isinstance(model, EpsScore):
        return "eps", model.model
    if isinstance(model, X0Score):
        return "x0", model.model
    if isinstance(model, _nn.OfficialScore):
        return "official", model.net
    return "score", model


def describe_model(model) -> dict:
    """The JSON description of a score model built from a `sd.nn` network, bare or
    wrapped in `sd.EpsScore`/`sd.X0Score`."""
    param, net = _split_model(model)
    name = type(net).__name__
    if _NETWORKS.get(name) is not type(net):
        raise ValueError(
            "`model`: checkpoints need a network from scoresde_diffrax.nn "
            f"({', '.join(_NETWORKS)}), bare or wrapped in sd.EpsScore / sd.X0Score "
            "(sd.nn.NCSNpp: in sd.nn.OfficialScore); "
            f"got {type(net).__name__}."
        )
    desc = {
        "class": name,
        "config": _nn._config.config_dict(net.config),
        "parameterization": param,
    }
    if name == "NCSNpp":
        desc["conv_weight_layout"] = _NCSNPP_CONV_LAYOUT
    return json.loads(json.dumps(desc))  # as it reads back from JSON


def describe_sde(sde: AbstractSDE) -> dict:
    """The JSON description of one of the package's SDEs (its class and parameters)."""
    name = type(sde).__name__
    if _SDES.get(name) is not type(sde):
        raise ValueError(
            f"`sde`: checkpoints support {', '.join(_SDES)}, got {type(sde).__name__}."
        )
    return {
        "class": name,
        "params": {
            f.name: float(getattr(sde, f.name)) for f in dataclasses.fields(sde)
        },
    }


def describe_loss(loss: eqx.Module) -> dict:
    """The JSON description of a loss: its class and its scalar fields (for the
    record; a checkpoint does not rebuild its loss)."""
    out = {"class": type(loss).__name__}
    for f in dataclasses.fields(loss):
        v = getattr(loss, f.name)
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[f.name] = v
    return out


def sde_from_description(desc: dict) -> AbstractSDE:
    """The SDE described by `desc` (a checkpoint's `metadata["sde"]`)."""
    try:
        return _SDES[desc["class"]](**desc["params"])
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"checkpoint: unknown or invalid SDE description {desc!r}."
        ) from e


def _with_added_fields(desc: dict) -> dict:
    """A model description with the config fields its checkpoint predates filled in
    (the values that rebuild the network it holds)."""
    added = _ADDED_FIELDS.get(desc.get("class"), {})
    if not added or not isinstance(desc.get("config"), dict):
        return desc
    return desc | {"config": added | desc["config"]}


def model_from_description(desc: dict, sde: AbstractSDE, *, abstract: bool = False):
    """Build a fresh (randomly initialised) score model from its JSON description; with
    `abstract`, only its structure (`jax.ShapeDtypeStruct` leaves, nothing computed),
    to deserialise weights into."""
    cls = _NETWORKS.get(desc.get("class"))
    if cls is None:
        raise ValueError(
            f"checkpoint: unknown network {desc.get('class')!r}; known: "
            f"{', '.join(_NETWORKS)}."
        )
    if cls is _nn.NCSNpp and desc.get("conv_weight_layout") != _NCSNPP_CONV_LAYOUT:
        raise ValueError(
            "checkpoint: its NCSNpp was converted by an earlier development version, "
            "which stored the convolution weights (out, in, kh, kw); convert the "
            "official checkpoint again (scoresde convert)."
        )
    config = {
        k: _nn._config.freeze(v) for k, v in _with_added_fields(desc)["config"].items()
    }
    try:
        if abstract:
            net = eqx.filter_eval_shape(lambda k: cls(**config, key=k), jr.key(0))
        else:
            net = cls(**config, key=jr.key(0))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"checkpoint: cannot rebuild {desc['class']} from {desc['config']}: {e}"
        ) from e
    param = desc.get("parameterization", "score")
    if param == "score":
        return net
    if param not in _ADAPTERS:
        raise ValueError(f"checkpoint: unknown parameterization {param!r}.")
    return _ADAPTERS[param](net, sde)


# --------------------------------------------------------------------------- files


def check_writable(directory: pathlib.Path, name: str = "`checkpoint_dir`") -> None:
    """Create `directory` (and its parents) if needed and check a file can be written
    there; else a `ValueError` naming the argument `name` (also used by the CLI for
    its flags) and saying why."""
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{name} {str(directory)!r} is a file, not a directory.")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"{name} {str(directory)!r} cannot be created: {_why(e)}."
        ) from e
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise ValueError(
            f"{name} {str(directory)!r} is not writable: {_why(e)}."
        ) from e


def _why(e: OSError) -> str:
    """Why a file or directory could not be created, in words (a special directory
    such as /proc refuses new files with ENOENT, which would read 'no such file')."""
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno == errno.ENOSPC:
        return "no space left on the device"
    if e.errno == errno.ENOTDIR:
        return "a parent is a file, not a directory"
    if e.errno == errno.ENOENT:
        return "it refuses new files (a special file system?)"
    return e.strerror or str(e)


def list_checkpoints(directory: pathlib.Path) -> list[int]:
    """Steps of the complete checkpoints (JSON written last) in `directory`, ascending."""
    if not directory.is_dir():
        return []
    steps = []
    for p in directory.iterdir():
        m = _NAME_RE.match(p.name)
        if m and (directory / f"ckpt_{m.group(1)}.eqx").exists():
            steps.append(int(m.group(1)))
    return sorted(steps)


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, flush it to disk, then rename it
    over `path` (atomic on POSIX): `path` is either the old or the new content."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        # mkstemp makes 0600; a checkpoint is a normal file.
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --------------------------------------------------------------------------- the weights


def _payload(state) -> tuple:
    """What the `.eqx` file holds, in order, for a [`TrainState`][]. The EMA model comes
    first, so a model loads from a prefix of the file without knowing the optimiser."""
    return (state.ema, state.model, state.opt_state, state.step, jr.key_data(state.key))


def _serialise(tree: PyTree) -> bytes:
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    return buf.getvalue()


def _deserialise(blob: bytes, like: PyTree, mismatch: str) -> PyTree:
    """The leaves of `like` (a prefix of the payload) read from `blob`; a `ValueError`
    starting with `mismatch` if they do not fit."""
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(blob), like)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{mismatch} ({e}).") from e


def _read_newest(
    directory: pathlib.Path, *, weights: bool = True
) -> tuple[dict, bytes | None]:
    """The metadata and the verified `.eqx` bytes (None without `weights`) of the
    newest complete checkpoint."""
    if directory.exists() and not directory.is_dir():
        raise FileNotFoundError(
            f"checkpoint directory {str(directory)!r} is a file, not a directory."
        )
    if not directory.is_dir():
        raise FileNotFoundError(
            f"checkpoint directory {str(directory)!r} does not exist."
        )
    steps = list_checkpoints(directory)
    if not steps:
        raise FileNotFoundError(
            f"no complete checkpoint (ckpt_<step>.json + .eqx) in {str(directory)!r}."
        )
    json_path = directory / f"ckpt_{steps[-1]:09d}.json"
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"checkpoint metadata {str(json_path)!r} is corrupt: {e}."
        ) from e
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(json_path)!r} is not a scoresde_diffrax checkpoint.")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"checkpoint {str(json_path)!r} has format version {meta.get('version')}; "
            f"this version of scoresde_diffrax reads version {CHECKPOINT_VERSION}."
        )
    if not weights:
        return meta, None
    blob = (directory / meta["eqx_file"]).read_bytes()
    if (
        len(blob) != meta["eqx_bytes"]
        or hashlib.sha256(blob).hexdigest() != meta["eqx_sha256"]
    ):
        raise ValueError(
            f"checkpoint file {str(directory / meta['eqx_file'])!r} is truncated or "
            f"corrupt ({len(blob)} bytes, expected {meta['eqx_bytes']}, or SHA-256 "
            "mismatch); delete it (with its .json) to fall back to the previous one."
        )
    return meta, blob


def save_checkpoint(
    directory: str | os.PathLike, state: eqx.Module, metadata: dict, *, keep: int = 2
) -> pathlib.Path:
    """Write checkpoint `ckpt_<step>.eqx` (Equinox serialisation of EMA model, model,
    optimiser state, step, key) and `ckpt_<step>.json` (metadata with the file's
    SHA-256) into `directory`, each through a temporary file and an atomic rename; the
    JSON is written last, so a checkpoint counts only once complete. Older checkpoints
    beyond the newest `keep` are deleted only after the new one is complete.

    **Arguments:**

    - `directory`: where to write (created if needed).
    - `state`: a [`TrainState`][].
    - `metadata`: JSON-able entries for the `.json` file (for [`load_checkpoint`][]:
        `model` from [`describe_model`][], `sde` from [`describe_sde`][], and
        optionally `data` from `sd.data.Dataset.metadata()`).
    - `keep`: how many of the newest checkpoints to keep (<= 0: all).

    **Returns:** the path of the JSON file.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(state.step)
    blob = _serialise(_sharding.to_host(_payload(state)))
    meta = dict(metadata)
    meta.update(
        format=CHECKPOINT_FORMAT,
        version=CHECKPOINT_VERSION,
        step=step,
        key_data=np.asarray(jr.key_data(state.key)).tolist(),
        eqx_file=f"ckpt_{step:09d}.eqx",
        eqx_sha256=hashlib.sha256(blob).hexdigest(),
        eqx_bytes=len(blob),
        jax_version=jax.__version__,
        saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    _atomic_write(directory / f"ckpt_{step:09d}.eqx", blob)
    json_path = directory / f"ckpt_{step:09d}.json"
    _atomic_write(json_path, (json.dumps(meta, indent=2) + "\n").encode())
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        for suffix in (".json", ".eqx"):  # JSON first: never a JSON without its file
            try:
                (directory / f"ckpt_{old:09d}{suffix}").unlink()
            except FileNotFoundError:
                pass
    return json_path


def load_checkpoint(directory: str | os.PathLike, *, ema: bool = True):
    """Load the newest complete checkpoint in `directory` as a ready-to-sample score
    model, without the code that trained it: the network is rebuilt from the
    hyperparameters in the JSON metadata and filled with the saved weights.

    **Arguments:**

    - `directory`: a directory written by [`train`][] (or [`save_checkpoint`][]).
    - `ema`: load the EMA weights (True, default) or the last iterate.

    **Returns:** `(model, metadata)`: the score model (e.g. `EpsScore(UNet(...), sde)`,
    called as `model(t, x)`), and the metadata dict (`step`, `sde`, `model`, `data`,
    `loss`, `optimizer`, ...). `sde_from_description(metadata["sde"])` rebuilds the SDE.

    **Raises:** `FileNotFoundError` if there is no complete checkpoint; `ValueError`
    if the file is truncated or corrupt or does not fit its metadata.
    """
    directory = pathlib.Path(directory)
    meta, blob = _read_newest(directory)
    sde = sde_from_description(meta["sde"])
    like = model_from_description(meta["model"], sde, abstract=True)
    ema_model, model = _deserialise(
        blob,
        (like, like),
        f"checkpoint {str(directory)!r}: weights do not fit the network "
        f"{meta['model']['class']} described in its metadata",
    )
    return (ema_model if ema else model), meta


def read_metadata(directory: str | os.PathLike) -> dict:
    """The metadata (JSON) of the newest complete checkpoint in `directory`, without
    reading the weights: what a run was started with, to continue it.

    **Raises:** `FileNotFoundError` if there is no complete checkpoint; `ValueError` if
    the JSON is corrupt or of another format or version."""
    meta, _ = _read_newest(pathlib.Path(directory), weights=False)
    return meta


# What a resumed run must share with the run that wrote the checkpoint, as
# (metadata key, sub-key or None, the argument of `train` that sets it); only
# `num_steps` may grow, and nothing else in the metadata changes the run's arithmetic.
_SAME_RUN = (
    ("data", None, "data"),
    ("loss", None, "loss"),
    ("optimizer", "name", "optimizer"),
    ("optimizer", "learning_rate", "learning_rate"),
    ("optimizer", "warmup_steps", "warmup_steps"),
    ("optimizer", "grad_clip", "grad_clip"),
    ("ema_decay", None, "ema_decay"),
    ("batch_size", None, "batch_size"),
)


def _same(key: str, old, new) -> bool:
    """Equal entries of two metadata dicts; the data's `summary` statistics to
    round-off (data made on another platform may differ in the last bits)."""
    if key == "summary":
        return np.allclose(old, new, rtol=1e-4, atol=1e-6)
    return old == new


def check_same_run(meta: dict, metadata: dict, directory) -> None:
    """A `ValueError` naming the argument and both values unless `metadata` (of the
    run about to continue) describes the run that wrote the checkpoint `meta`: the
    same kind of training state, model, SDE, data, loss, optimiser, EMA decay and
    batch size. Entries an older checkpoint does not record are not compared."""
    where = f"the checkpoint in {str(directory)!r}"
    kind, want = meta.get("kind", SCORE_MODEL), metadata.get("kind", SCORE_MODEL)
    if kind != want:
        raise ValueError(
            f"`resume`: {where} holds a {kind.replace('_', ' ')}, not a "
            f"{want.replace('_', ' ')}; use another directory."
        )
    model_desc, sde_desc = metadata["model"], metadata["sde"]
    if _with_added_fields(meta.get("model", {})) != model_desc:
        raise ValueError(
            f"`resume`: {where} is for "
            f"{meta.get('model', {}).get('class')} {meta.get('model', {}).get('config')} "
            f"({meta.get('model', {}).get('parameterization')}), not "
            f"{model_desc['class']} {model_desc['config']} "
            f"({model_desc['parameterization']}); use the same model or another directory."
        )
    if meta.get("sde") != sde_desc:
        raise ValueError(
            f"`resume`: {where} was trained with {meta.get('sde')}, not {sde_desc}."
        )
    new = json.loads(json.dumps(metadata))  # as it would read back
    for key, sub, arg in _SAME_RUN:
        old_v, new_v = meta.get(key), new.get(key)
        if sub is not None:
            old_v = old_v.get(sub) if isinstance(old_v, dict) else None
            new_v = new_v.get(sub) if isinstance(new_v, dict) else None
        same = f"pass {arg}={old_v!r}"
        if isinstance(old_v, dict) and isinstance(
            new_v, dict
        ):  # the entries that differ
            diff = sorted(
                k
                for k in old_v.keys() & new_v.keys()
                if not _same(k, old_v[k], new_v[k])
            )
            old_v, new_v = {k: old_v[k] for k in diff}, {k: new_v[k] for k in diff}
            same = f"pass the same {arg}"
        if old_v is None or new_v is None or old_v == new_v:
            continue
        raise ValueError(
            f"`resume`: {where} was trained with {arg} {old_v!r}, not {new_v!r}; a "
            "resumed run keeps the settings it started with (only num_steps may grow): "
            f"{same}, or use another directory for a new run."
        )


def load_train_state(directory: pathlib.Path, like: eqx.Module, metadata: dict):
    """The [`TrainState`][] of the newest complete checkpoint in `directory`, read into
    the structure of `like` (a fresh state of the same model and optimiser), after
    checking that it is the run `metadata` describes ([`check_same_run`][])."""
    meta, blob = _read_newest(directory)
    check_same_run(meta, metadata, directory)
    ema, model, opt_state, step, key_data = _deserialise(
        blob,
        _payload(like),
        f"`resume`: the checkpoint in {str(directory)!r} does not fit this "
        "model/optimiser",
    )
    return dataclasses.replace(
        like,
        model=model,
        ema=ema,
        opt_state=opt_state,
        step=jnp.asarray(step),
        key=jr.wrap_key_data(key_data),
    )
