import dataclasses
import functools
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
import optax
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from . import _sharding, nn as _nn
from ._loss import AbstractLoss, DSMLoss
from ._score import EpsScore, X0Score
from ._sde import AbstractSDE, SubVPSDE, VESDE, VPSDE
from .data import Dataset, dataset_from_array


CHECKPOINT_FORMAT = "scoresde_diffrax.checkpoint"
CHECKPOINT_VERSION = 1
_NAME_RE = re.compile(r"^ckpt_(\d{9})\.json$")

# Names recorded in checkpoints (a checkpoint must rebuild a model without the code
# that trained it). These tables are for (de)serialisation only.
_NETWORKS = {
    "MLPScore": _nn.MLPScore,
    "UNet": _nn.UNet,
    "NoiseConditionalClassifier": _nn.NoiseConditionalClassifier,
}
_SDES = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}
_ADAPTERS = {"eps": EpsScore, "x0": X0Score}


# --------------------------------------------------------------------------- optimiser


@functools.lru_cache(maxsize=32)
def adam_with_warmup(
    learning_rate: float = 2e-4, warmup_steps: int = 5000, grad_clip: float = 1.0
) -> optax.GradientTransformation:
    r"""The paper's optimiser: Adam whose learning rate rises linearly over
    `warmup_steps` ($\eta \min(1, (n + 1)/W)$), after global-norm clipping of the
    gradient to `grad_clip`.

    **Arguments:**

    - `learning_rate`: peak learning rate. Paper default 2e-4.
    - `warmup_steps`: length of the linear warm-up, >= 1. Paper default 5000.
    - `grad_clip`: maximum global norm of the gradient (`None` or <= 0: no clipping).
        Paper default 1.0.

    Cached, so equal arguments give the same object (and no recompilation).
    """
    if not (learning_rate > 0):
        raise ValueError(f"`learning_rate` must be > 0, got {learning_rate!r}.")
    if not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"`warmup_steps` must be an int >= 1, got {warmup_steps!r}.")

    def schedule(count):
        return learning_rate * jnp.minimum((count + 1) / warmup_steps, 1.0)

    parts = []
    if grad_clip is not None and grad_clip > 0:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.adam(schedule))
    return optax.chain(*parts)


def ema_decay_at(decay: float, num_updates: Int[ArrayLike, ""]) -> Float[Array, ""]:
    r"""EMA decay with warm-up: $\min(d, (1 + n) / (10 + n))$ after `n` updates, so the
    average is not dominated by the random initial weights."""
    n = jnp.asarray(num_updates, jnp.result_type(float))
    return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


# --------------------------------------------------------------------------- state


class TrainState(eqx.Module):
    """Everything training needs to continue: the model, its EMA, the optimiser state,
    the number of steps done and the base PRNG key (step `n` uses `fold_in(key, n)`)."""

    model: PyTree
    ema: PyTree
    opt_state: PyTree
    step: Int[Array, ""]
    key: PRNGKeyArray


class TrainResult(eqx.Module):
    """What [`train`][] returns.

    **Fields:**

    - `model`: the trained score model (last iterate).
    - `ema_model`: the exponential moving average of the model: use it to sample.
    - `losses`: the training loss of each step run by this call, shape `(steps,)`.
    - `state`: the final [`TrainState`][] (for continuing in memory).
    - `wall_time`: seconds spent in this call (including compilation).
    """

    model: PyTree
    ema_model: PyTree
    losses: np.ndarray
    state: TrainState
    wall_time: float


def _split_model(model) -> tuple[str, Any]:
    if isinstance(model, EpsScore):
        return "eps", model.model
    if isinstance(model, X0Score):
        return "x0", model.model
    return "score", model


def describe_model(model) -> dict:
    """The JSON description of a score model built from a `sd.nn` network, bare or
    wrapped in `sd.EpsScore`/`sd.X0Score`."""
    param, net = _split_model(model)
    name = type(net).__name__
    if _NETWORKS.get(name) is not type(net):
        raise ValueError(
            "`model`: checkpoints need a network from scoresde_diffrax.nn "
            f"({', '.join(_NETWORKS)}), bare or wrapped in sd.EpsScore / sd.X0Score; "
            f"got {type(net).__name__}."
        )
    desc = {
        "class": name,
        "config": _nn._config.config_dict(net.config),
        "parameterization": param,
    }
    return json.loads(json.dumps(desc))  # as it reads back from JSON


def describe_sde(sde: AbstractSDE) -> dict:
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


def _describe_loss(loss) -> dict:
    out = {"class": type(loss).__name__}
    for f in dataclasses.fields(loss):
        v = getattr(loss, f.name)
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[f.name] = v
    return out


def sde_from_description(desc: dict) -> AbstractSDE:
    try:
        return _SDES[desc["class"]](**desc["params"])
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"checkpoint: unknown or invalid SDE description {desc!r}."
        ) from e


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
    config = {k: _nn._config.freeze(v) for k, v in desc["config"].items()}
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


# --------------------------------------------------------------------------- checkpoints


def _list_checkpoints(directory: pathlib.Path) -> list[int]:
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
        os.fchmod(
            fd, 0o666 & ~umask
        )  # mkstemp makes 0600; a checkpoint is a normal file
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


def _serialise(tree) -> bytes:
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, tree)
    return buf.getvalue()


def _state_tree(state: TrainState):
    # The EMA model comes first, so a model loads from a prefix of the file without
    # knowing the optimiser.
    return (state.ema, state.model, state.opt_state, state.step, jr.key_data(state.key))


def save_checkpoint(
    directory: str | os.PathLike, state: TrainState, metadata: dict, *, keep: int = 2
) -> pathlib.Path:
    """Write checkpoint `ckpt_<step>.eqx` (Equinox serialisation of EMA model, model,
    optimiser state, step, key) and `ckpt_<step>.json` (metadata with the file's
    SHA-256) into `directory`, each through a temporary file and an atomic rename; the
    JSON is written last, so a checkpoint counts only once complete. Older checkpoints
    beyond the newest `keep` are deleted only after the new one is complete.

    **Returns:** the path of the JSON file.
    """
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(state.step)
    blob = _serialise(_sharding.to_host(_state_tree(state)))
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
    for old in _list_checkpoints(directory)[:-keep] if keep > 0 else []:
        for suffix in (".json", ".eqx"):  # JSON first: never a JSON without its file
            try:
                (directory / f"ckpt_{old:09d}{suffix}").unlink()
            except FileNotFoundError:
                pass
    return json_path


def _read_newest(directory: pathlib.Path) -> tuple[dict, bytes]:
    if directory.exists() and not directory.is_dir():
        raise FileNotFoundError(
            f"checkpoint directory {str(directory)!r} is a file, not a directory."
        )
    if not directory.is_dir():
        raise FileNotFoundError(
            f"checkpoint directory {str(directory)!r} does not exist."
        )
    steps = _list_checkpoints(directory)
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
    try:
        ema_m, model = eqx.tree_deserialise_leaves(io.BytesIO(blob), (like, like))
    except Exception as e:  # noqa: BLE001
        raise ValueError(
            f"checkpoint {str(directory)!r}: weights do not fit the network "
            f"{meta['model']['class']} described in its metadata ({e})."
        ) from e
    return (ema_m if ema else model), meta


def _check_compatible(meta: dict, model_desc: dict, sde_desc: dict, directory) -> None:
    if meta.get("model") != model_desc:
        raise ValueError(
            f"`resume`: the checkpoint in {str(directory)!r} is for "
            f"{meta.get('model', {}).get('class')} {meta.get('model', {}).get('config')} "
            f"({meta.get('model', {}).get('parameterization')}), not "
            f"{model_desc['class']} {model_desc['config']} "
            f"({model_desc['parameterization']}); use the same model or another directory."
        )
    if meta.get("sde") != sde_desc:
        raise ValueError(
            f"`resume`: the checkpoint in {str(directory)!r} was trained with "
            f"{meta.get('sde')}, not {sde_desc}."
        )


# --------------------------------------------------------------------------- training


def _apply_masked(active, new, old):
    return jax.tree_util.tree_map(
        lambda n, o: jnp.where(active, n, o) if eqx.is_array(n) else n, new, old
    )


@eqx.filter_jit
def _run_chunk(
    state,
    stop,
    length,
    unroll,
    static,
    sde,
    data,
    loss,
    optimizer,
    batch_size,
    ema_decay,
    shardings,
):
    """`length` training steps in one `lax.scan`; steps at or after `stop` leave the
    state unchanged (so every chunk runs the same compiled program). With `shardings`
    `(batch, replicated)`, each batch is split over the mesh and the parameters,
    optimiser state and EMA stay replicated: GSPMD inserts the all-reduces of the loss
    mean and the gradient."""

    def constrain(tree, which):  # which: 0 batch, 1 replicated
        if shardings is None:
            return tree
        return jax.tree_util.tree_map(
            lambda x: jax.lax.with_sharding_constraint(x, shardings[which]), tree
        )

    def loss_fn(params, xb, key):
        return loss(eqx.combine(params, static), sde, xb, key)

    def body(carry, _):
        params, ema, opt_state, step = carry
        kstep = jr.fold_in(state.key, step)
        xb = data.batch(jr.fold_in(kstep, 0), batch_size)
        xb = constrain(xb, 0)
        value, grads = jax.value_and_grad(loss_fn)(params, xb, jr.fold_in(kstep, 1))
        updates, new_opt = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        d = ema_decay_at(ema_decay, step).astype(value.dtype)
        new_ema = jax.tree_util.tree_map(
            lambda e, p: d * e + (1 - d) * p, ema, new_params
        )
        active = step < stop
        params, ema, opt_state = _apply_masked(
            active, (new_params, new_ema, new_opt), (params, ema, opt_state)
        )
        params, ema, opt_state = constrain((params, ema, opt_state), 1)
        return (params, ema, opt_state, step + active.astype(step.dtype)), value

    params, _ = eqx.partition(state.model, eqx.is_inexact_array)
    ema, _ = eqx.partition(state.ema, eqx.is_inexact_array)
    carry = (params, ema, state.opt_state, state.step)
    (params, ema, opt_state, step), losses = jax.lax.scan(
        body, carry, None, length=length, unroll=length if unroll else 1
    )
    losses = eqx.error_if(
        losses,
        ~jnp.all(jnp.isfinite(losses)),
        "train: the loss became NaN or inf; lower the learning rate, check the data "
        "scaling, or use gradient clipping.",
    )
    new_state = TrainState(
        eqx.combine(params, static),
        eqx.combine(ema, static),
        opt_state,
        step,
        state.key,
    )
    return new_state, losses


def _has_conv(model) -> bool:
    leaves = jax.tree_util.tree_leaves(
        model, is_leaf=lambda x: isinstance(x, eqx.nn.Conv)
    )
    return any(isinstance(x, eqx.nn.Conv) for x in leaves)


def _check_fits(model, data_shape, dtype) -> None:
    x = jax.ShapeDtypeStruct(data_shape, dtype)
    t = jax.ShapeDtypeStruct((), dtype)
    try:
        out = eqx.filter_eval_shape(model, t, x)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"`model` does not fit the data: examples of shape {data_shape} ({msg})."
        ) from e
    if getattr(out, "shape", None) != tuple(data_shape):
        raise ValueError(
            f"`model` returned shape {getattr(out, 'shape', type(out))} for an example "
            f"of shape {data_shape}; a score model must return its input's shape."
        )


def train(
    key: PRNGKeyArray,
    model: PyTree,
    sde: AbstractSDE,
    data: Dataset | Float[ArrayLike, " n *shape"],
    *,
    num_steps: int,
    batch_size: int = 128,
    loss: AbstractLoss | None = None,
    learning_rate: float = 2e-4,
    warmup_steps: int = 5000,
    grad_clip: float | None = 1.0,
    optimizer: optax.GradientTransformation | None = None,
    ema_decay: float = 0.9999,
    steps_per_call: int | None = None,
    unroll: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 2,
    resume: bool = False,
    progress: bool = True,
    metadata: dict | None = None,
    sharding: jax.sharding.Mesh | None = None,
) -> TrainResult:
    r"""Train a score model by denoising score matching, with the paper's optimiser
    (Adam, linear warm-up, global-norm clipping) and an EMA of the weights.

    `steps_per_call` steps run inside one jit-compiled `lax.scan` with the data on the
    device; a tqdm progress bar shows the step, the loss and the rate. Step `n` draws
    its batch and noise from `fold_in(key, n)` alone, so training is a deterministic
    function of `key`: with `checkpoint_dir`, a checkpoint is written every
    `checkpoint_every` steps and at the end, and `resume=True` continues from the
    newest complete one and ends, bit for bit (on CPU), with the same parameters as an
    uninterrupted run.

    **Arguments:**

    - `key`: PRNG key of the run (ignored when resuming: the checkpoint's key is used).
    - `model`: the score model to train, `model(t, x)` on one example: a network from
        `sd.nn`, bare (it predicts the score) or wrapped, e.g.
        `sd.EpsScore(sd.nn.UNet(...), sde)` (noise prediction; for VE this is the
        NCSN++ scaling by 1/sigma) or `sd.X0Score(...)`. Any Equinox module trains;
        checkpoints need one from `sd.nn`.
    - `sde`: the forward SDE.
    - `data`: an `sd.data.Dataset` (e.g. `sd.data.digits()`), or an array
        `(n, *data_shape)` of examples in model units.
    - `num_steps`: total number of optimiser steps (counting resumed ones), >= 1.
    - `batch_size`: examples per step (drawn with replacement). Default 128.
    - `loss`: an `AbstractLoss`. Default (None) `sd.DSMLoss()` (sigma^2 weighting, eps=1e-5).
    - `learning_rate`, `warmup_steps`, `grad_clip`: of [`adam_with_warmup`][] (paper:
        2e-4, 5000, 1.0); ignored if `optimizer` is given.
    - `optimizer`: any optax transformation instead.
    - `ema_decay`: EMA decay (with warm-up, [`ema_decay_at`][]). Paper: 0.9999 (VP),
        0.999 (VE).
    - `steps_per_call`: optimiser steps per jitted call (and per progress update).
        Default 50, or 2 when unrolled.
    - `unroll`: unroll the `lax.scan` over the steps of a call. Default: True for
        models with convolutions (XLA:CPU runs convolutions inside a loop about 15x
        slower than outside one, as measured on this package's U-Net), else False.
        Unrolling multiplies the compile time by `steps_per_call`.
    - `checkpoint_dir`: directory for checkpoints (created if needed). Default none.
    - `checkpoint_every`: steps between checkpoints. Default: only at the end.
    - `keep_checkpoints`: how many of the newest checkpoints to keep, >= 1.
    - `resume`: continue from the newest checkpoint in `checkpoint_dir` (start fresh if
        there is none).
    - `progress`: show a tqdm progress bar (on stderr).
    - `metadata`: extra JSON-able entries for the checkpoint metadata.
    - `sharding`: a `jax.sharding.Mesh` for data-parallel training (default None: one
        device). Each step's batch is split over *all* the mesh's axes (every device
        holds `batch_size / mesh.size` examples); the parameters, optimiser state and
        EMA are replicated on every device, and the loss mean and the gradient
        all-reduce come from GSPMD. The batches and noise are the same as on one
        device, so the losses and parameters agree with a one-device run up to
        float32 round-off (summation order). A mesh from `jax.make_mesh` (explicit
        axes) is rebuilt with automatic axes. Across several processes (after
        `jax.distributed.initialize`), build the mesh over `jax.devices()` (all
        global devices); every process calls `train` with the same arguments, only
        process 0 writes checkpoints, and resuming needs `checkpoint_dir` on a file
        system all processes see. The returned models stay replicated on the mesh.

    **Returns:** a [`TrainResult`][] (`.ema_model` is the one to sample with).

    **Raises:** `ValueError` naming the argument for bad input (model/data shapes,
    non-positive steps, a directory that holds another run or another architecture,
    a `batch_size` not divisible by the number of devices of `sharding`);
    a run-time error if the loss becomes NaN.
    """
    start = time.perf_counter()
    if unroll is None:
        unroll = _has_conv(model)
    if steps_per_call is None:
        steps_per_call = 2 if unroll else 50
    for name, v in (
        ("num_steps", num_steps),
        ("batch_size", batch_size),
        ("steps_per_call", steps_per_call),
        ("keep_checkpoints", keep_checkpoints),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {v!r}.")
    if checkpoint_every is not None and (
        not isinstance(checkpoint_every, int) or checkpoint_every < 1
    ):
        raise ValueError(
            f"`checkpoint_every` must be an int >= 1 or None, got {checkpoint_every!r}."
        )
    if not (0.0 <= ema_decay < 1.0):
        raise ValueError(f"`ema_decay` must be in [0, 1), got {ema_decay!r}.")
    if not isinstance(sde, AbstractSDE):
        raise TypeError(f"`sde` must be an AbstractSDE, got {type(sde).__name__}.")
    if loss is None:
        loss = DSMLoss()
    if not isinstance(loss, AbstractLoss):
        raise TypeError(
            f"`loss` must be an AbstractLoss (e.g. sd.DSMLoss()), got {type(loss).__name__}."
        )
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`.")
    shardings = None
    if sharding is not None:
        if not isinstance(sharding, jax.sharding.Mesh):
            raise TypeError(
                "`sharding` must be a jax.sharding.Mesh (the batch is split over all its "
                f"devices) or None, got {type(sharding).__name__}."
            )
        batch = _sharding.batch_sharding(
            sharding, (int(batch_size),), batch_name="batch_size"
        )
        shardings = (batch, _sharding.replicated(batch.mesh))
    if not isinstance(data, Dataset):
        data = dataset_from_array(data)
    dtype = data.x.dtype
    _check_fits(model, data.data_shape, dtype)
    if isinstance(model, (EpsScore, X0Score)) and model.sde != sde:
        raise ValueError(
            f"`model`: its {type(model).__name__} adapter uses {model.sde}, but "
            f"`sde` is {sde}; they must be the same SDE."
        )

    if optimizer is None:
        optimizer = adam_with_warmup(float(learning_rate), int(warmup_steps), grad_clip)
        opt_desc = {
            "name": "adam_with_warmup",
            "learning_rate": learning_rate,
            "warmup_steps": warmup_steps,
            "grad_clip": grad_clip,
        }
    else:
        opt_desc = {"name": "custom"}

    params = eqx.filter(model, eqx.is_inexact_array)
    _, static = eqx.partition(model, eqx.is_inexact_array)
    state = TrainState(
        model=model,
        ema=model,
        opt_state=optimizer.init(params),
        step=jnp.asarray(0, jnp.int32),
        key=key,
    )

    ckpt_dir = None if checkpoint_dir is None else pathlib.Path(checkpoint_dir)
    meta_base: dict = {}
    if ckpt_dir is not None:
        check_writable(ckpt_dir)
        model_desc = describe_model(model)
        sde_desc = describe_sde(sde)
        meta_base = {
            "model": model_desc,
            "sde": sde_desc,
            "data": data.metadata(),
            "loss": _describe_loss(loss),
            "optimizer": opt_desc,
            "ema_decay": ema_decay,
            "batch_size": int(batch_size),
            "num_steps": int(num_steps),
            **(metadata or {}),
        }
        existing = _list_checkpoints(ckpt_dir)
        if existing and not resume:
            raise ValueError(
                f"`checkpoint_dir` {str(ckpt_dir)!r} already holds checkpoints (newest "
                f"at step {existing[-1]}); pass resume=True (--resume) to continue, or "
                "use an empty directory."
            )
        if existing and resume:
            meta, blob = _read_newest(ckpt_dir)
            _check_compatible(meta, model_desc, sde_desc, ckpt_dir)
            like = _state_tree(state)
            try:
                ema_m, model_m, opt_state, step, key_data = eqx.tree_deserialise_leaves(
                    io.BytesIO(blob), like
                )
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"`resume`: the checkpoint in {str(ckpt_dir)!r} does not fit this "
                    f"model/optimiser ({e})."
                ) from e
            state = TrainState(
                model_m, ema_m, opt_state, jnp.asarray(step), jr.wrap_key_data(key_data)
            )

    if shardings is not None and jax.process_count() > 1:
        from jax.experimental import multihost_utils

        starts = np.asarray(
            multihost_utils.process_allgather(np.int32(state.step))
        ).tolist()
        if len(set(starts)) > 1:
            raise ValueError(
                f"`checkpoint_dir`: the processes would start from different steps "
                f"{starts} (process i at entry i); with resume=True every process must "
                "see the same checkpoints (a shared file system)."
            )
    if shardings is not None:
        state, data = _sharding.put_replicated((state, data), shardings[1])
    writer = jax.process_index() == 0  # one process writes checkpoints
    done = int(state.step)
    losses = []
    if done < num_steps:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=int(num_steps),
            initial=done,
            disable=not (progress and writer),
            unit="step",
            dynamic_ncols=True,
            desc="train",
        )
        try:
            while done < num_steps:
                stop = num_steps
                if checkpoint_every is not None:
                    stop = min(stop, (done // checkpoint_every + 1) * checkpoint_every)
                stop = min(stop, done + steps_per_call)
                state, chunk = _run_chunk(
                    state,
                    jnp.asarray(stop, jnp.int32),
                    int(steps_per_call),
                    bool(unroll),
                    static,
                    sde,
                    data,
                    loss,
                    optimizer,
                    int(batch_size),
                    float(ema_decay),
                    shardings,
                )
                chunk = np.asarray(chunk)[: stop - done]
                losses.append(chunk)
                bar.update(stop - done)
                bar.set_postfix(loss=f"{float(np.mean(chunk)):.4g}")
                done = stop
                at_ckpt = checkpoint_every is not None and done % checkpoint_every == 0
                if writer and ckpt_dir is not None and (at_ckpt or done == num_steps):
                    save_checkpoint(ckpt_dir, state, meta_base, keep=keep_checkpoints)
        finally:
            bar.close()
    losses = np.concatenate(losses) if losses else np.zeros((0,), np.float32)
    return TrainResult(
        model=state.model,
        ema_model=state.ema,
        losses=losses,
        state=state,
        wall_time=time.perf_counter() - start,
    )


def check_writable(directory: pathlib.Path, name: str = "`checkpoint_dir`") -> None:
    """Create `directory` if needed and check a file can be written there; else a
    `ValueError` naming the argument `name` (also used by the CLI for its flags)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"{name} {str(directory)!r} cannot be created: {e.strerror}."
        ) from e
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise ValueError(
            f"{name} {str(directory)!r} is not writable: {e.strerror}."
        ) from e
