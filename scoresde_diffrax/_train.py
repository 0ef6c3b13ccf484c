"""Training: `train` runs denoising score matching with the paper's optimiser, an EMA
of the weights and checkpoints, in jitted chunks of steps (a `lax.scan` each)."""

import os
import pathlib
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import NamedSharding
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from . import _sharding
from ._checkpoint import (
    check_writable,
    describe_loss,
    describe_model,
    describe_sde,
    list_checkpoints,
    load_train_state,
    save_checkpoint,
)
from ._loss import AbstractLoss, ClassifierLoss, DSMLoss
from ._optim import adam_with_warmup, ema_decay_at, ema_update
from ._score import EpsScore, X0Score
from ._sde import AbstractSDE
from .data import Dataset, dataset_from_array


# Generic argument checks (to move to a shared `_checks.py`).


def _check_int(name: str, value, minimum: int, *, or_none: bool = False) -> None:
    if or_none and value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        also = " or None" if or_none else ""
        raise ValueError(f"`{name}` must be an int >= {minimum}{also}, got {value!r}.")


def _check_in_unit_interval(name: str, value) -> None:
    if not (0.0 <= value < 1.0):
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")


def _check_isinstance(
    name: str, value, cls: type | tuple[type, ...], what: str
) -> None:
    if not isinstance(value, cls):
        raise TypeError(f"`{name}` must be {what}, got {type(value).__name__}.")


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


class _ChunkConfig(eqx.Module):
    """Everything a chunk of training steps needs besides the [`TrainState`][]. Under
    `eqx.filter_jit` its arrays (the data, any array in `static`) are traced and the
    rest is static: a new value of a Python field compiles a new program.

    - `static`: the non-trainable part of the model (`eqx.partition` on
        `eqx.is_inexact_array`).
    - `sde`, `data`, `loss`, `optimizer`: as given to [`train`][].
    - `batch_size`: examples per step; `ema_decay`: the EMA's decay (with warm-up).
    - `length`: steps per chunk (per jitted call); `unroll`: unroll the `lax.scan`.
    - `batch_sharding`, `replicated`: for data-parallel training, how a batch is
        split over the devices and how the parameters are held; None on one device.
    """

    static: PyTree
    sde: AbstractSDE
    data: Dataset
    loss: AbstractLoss | ClassifierLoss
    optimizer: optax.GradientTransformation
    batch_size: int
    ema_decay: float
    length: int
    unroll: bool
    batch_sharding: NamedSharding | None
    replicated: NamedSharding | None


# --------------------------------------------------------------------------- train


def train(
    key: PRNGKeyArray,
    model: PyTree,
    sde: AbstractSDE,
    data: Dataset | Float[ArrayLike, " n *shape"],
    *,
    num_steps: int,
    batch_size: int = 128,
    loss: AbstractLoss | ClassifierLoss | None = None,
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
        `sd.ClassifierLoss()` trains a noise-conditional classifier instead (`model`
        returns logits; `data` needs labels).
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

    # Checks
    if unroll is None:
        unroll = _has_conv(model)
    if steps_per_call is None:
        steps_per_call = 2 if unroll else 50
    for name, value in (
        ("num_steps", num_steps),
        ("batch_size", batch_size),
        ("steps_per_call", steps_per_call),
        ("keep_checkpoints", keep_checkpoints),
    ):
        _check_int(name, value, 1)
    _check_int("checkpoint_every", checkpoint_every, 1, or_none=True)
    _check_in_unit_interval("ema_decay", ema_decay)
    _check_isinstance("sde", sde, AbstractSDE, "an AbstractSDE")
    loss = DSMLoss() if loss is None else loss
    _check_isinstance(
        "loss",
        loss,
        (AbstractLoss, ClassifierLoss),
        "an AbstractLoss (e.g. sd.DSMLoss()) or sd.ClassifierLoss()",
    )
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`.")
    batch_sharding, replicated = _data_parallel_shardings(sharding, batch_size)
    data = data if isinstance(data, Dataset) else dataset_from_array(data)
    if isinstance(loss, ClassifierLoss):  # a classifier: logits, not a score
        loss.check_model(model, data)
    else:
        _check_model(model, sde, data)

    # Initial set-up
    optimizer, optimizer_desc = _optimizer(
        optimizer, learning_rate, warmup_steps, grad_clip
    )
    state = _initial_state(key, model, optimizer)

    # Resume
    checkpoint_metadata = None
    if checkpoint_dir is not None:
        checkpoint_dir = pathlib.Path(checkpoint_dir)
        check_writable(checkpoint_dir)
        checkpoint_metadata = _checkpoint_metadata(
            model,
            sde,
            data,
            loss,
            optimizer_desc,
            ema_decay=ema_decay,
            batch_size=batch_size,
            num_steps=num_steps,
            extra=metadata,
        )
        state = _resume_or_start(
            checkpoint_dir, state, checkpoint_metadata, resume=resume
        )

    # Data-parallel placement
    if replicated is not None:
        _check_same_start_on_every_process(state.step)
        state, data = _sharding.put_replicated((state, data), replicated)

    # Main loop
    config = _ChunkConfig(
        static=eqx.partition(model, eqx.is_inexact_array)[1],
        sde=sde,
        data=data,
        loss=loss,
        optimizer=optimizer,
        batch_size=int(batch_size),
        ema_decay=float(ema_decay),
        length=int(steps_per_call),
        unroll=bool(unroll),
        batch_sharding=batch_sharding,
        replicated=replicated,
    )
    state, losses = _main_loop(
        state,
        config,
        num_steps=int(num_steps),
        checkpoint_every=checkpoint_every,
        checkpoint_dir=checkpoint_dir,
        metadata=checkpoint_metadata,
        keep_checkpoints=keep_checkpoints,
        progress=progress,
    )

    # Finish up
    return TrainResult(
        model=state.model,
        ema_model=state.ema,
        losses=losses,
        state=state,
        wall_time=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- checks


def _has_conv(model) -> bool:
    leaves = jax.tree_util.tree_leaves(
        model, is_leaf=lambda x: isinstance(x, eqx.nn.Conv)
    )
    return any(isinstance(x, eqx.nn.Conv) for x in leaves)


def _data_parallel_shardings(
    sharding, batch_size: int
) -> tuple[NamedSharding, NamedSharding] | tuple[None, None]:
    """`(batch, replicated)`: how a batch is split over the mesh `sharding` and how the
    parameters are held (a full copy on every device); `(None, None)` for one device."""
    if sharding is None:
        return None, None
    if not isinstance(sharding, jax.sharding.Mesh):
        raise TypeError(
            "`sharding` must be a jax.sharding.Mesh (the batch is split over all its "
            f"devices) or None, got {type(sharding).__name__}."
        )
    batch = _sharding.batch_sharding(
        sharding, (int(batch_size),), batch_name="batch_size"
    )
    return batch, _sharding.replicated(batch.mesh)


def _check_model(model, sde: AbstractSDE, data: Dataset) -> None:
    """`model` maps one example of the data to the data's shape, and an `EpsScore` or
    `X0Score` adapter uses `sde`."""
    shape, dtype = data.data_shape, data.x.dtype
    x = jax.ShapeDtypeStruct(shape, dtype)
    t = jax.ShapeDtypeStruct((), dtype)
    try:
        out = eqx.filter_eval_shape(model, t, x)
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"`model` does not fit the data: examples of shape {shape} ({msg})."
        ) from e
    if getattr(out, "shape", None) != tuple(shape):
        raise ValueError(
            f"`model` returned shape {getattr(out, 'shape', type(out))} for an example "
            f"of shape {shape}; a score model must return its input's shape."
        )
    if isinstance(model, (EpsScore, X0Score)) and model.sde != sde:
        raise ValueError(
            f"`model`: its {type(model).__name__} adapter uses {model.sde}, but "
            f"`sde` is {sde}; they must be the same SDE."
        )


def _check_same_start_on_every_process(step: Int[Array, ""]) -> None:
    """Across several processes, every one must resume from the same step."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    starts = np.asarray(multihost_utils.process_allgather(np.int32(step))).tolist()
    if len(set(starts)) > 1:
        raise ValueError(
            f"`checkpoint_dir`: the processes would start from different steps "
            f"{starts} (process i at entry i); with resume=True every process must "
            "see the same checkpoints (a shared file system)."
        )


# --------------------------------------------------------------------------- set-up


def _optimizer(
    optimizer: optax.GradientTransformation | None,
    learning_rate: float,
    warmup_steps: int,
    grad_clip: float | None,
) -> tuple[optax.GradientTransformation, dict]:
    """The optimiser to use (the user's, or the paper's) and its description for the
    checkpoint metadata."""
    if optimizer is not None:
        return optimizer, {"name": "custom"}
    desc = {
        "name": "adam_with_warmup",
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "grad_clip": grad_clip,
    }
    return adam_with_warmup(float(learning_rate), int(warmup_steps), grad_clip), desc


def _initial_state(
    key: PRNGKeyArray, model: PyTree, optimizer: optax.GradientTransformation
) -> TrainState:
    params = eqx.filter(model, eqx.is_inexact_array)
    return TrainState(
        model=model,
        ema=model,
        opt_state=optimizer.init(params),
        step=jnp.asarray(0, jnp.int32),
        key=key,
    )


def _checkpoint_metadata(
    model: PyTree,
    sde: AbstractSDE,
    data: Dataset,
    loss: AbstractLoss | ClassifierLoss,
    optimizer_desc: dict,
    *,
    ema_decay: float,
    batch_size: int,
    num_steps: int,
    extra: dict | None,
) -> dict:
    """What every checkpoint of this run records (the user's `extra` entries last)."""
    return {
        "model": describe_model(model),
        "sde": describe_sde(sde),
        "data": data.metadata(),
        "loss": describe_loss(loss),
        "optimizer": optimizer_desc,
        "ema_decay": ema_decay,
        "batch_size": int(batch_size),
        "num_steps": int(num_steps),
        **(extra or {}),
    }


def _resume_or_start(
    directory: pathlib.Path, state: TrainState, metadata: dict, *, resume: bool
) -> TrainState:
    """The state of the newest checkpoint in `directory` (with `resume`), or `state`
    if there is none; a directory that holds checkpoints needs `resume`."""
    existing = list_checkpoints(directory)
    if not existing:
        return state
    if not resume:
        raise ValueError(
            f"`checkpoint_dir` {str(directory)!r} already holds checkpoints (newest "
            f"at step {existing[-1]}); pass resume=True (--resume) to continue, or "
            "use an empty directory."
        )
    return load_train_state(directory, state, metadata)


# --------------------------------------------------------------------------- main loop


def _chunk_stops(
    done: int, num_steps: int, steps_per_call: int, checkpoint_every: int | None
):
    """The step at which each chunk ends: at most `steps_per_call` steps, never past a
    multiple of `checkpoint_every`, the last at `num_steps`."""
    while done < num_steps:
        stop = min(num_steps, done + steps_per_call)
        if checkpoint_every is not None:
            stop = min(stop, (done // checkpoint_every + 1) * checkpoint_every)
        yield int(stop)
        done = stop


def _main_loop(
    state: TrainState,
    config: _ChunkConfig,
    *,
    num_steps: int,
    checkpoint_every: int | None,
    checkpoint_dir: pathlib.Path | None,
    metadata: dict | None,
    keep_checkpoints: int,
    progress: bool,
) -> tuple[TrainState, np.ndarray]:
    """Run chunks until `num_steps` steps are done, with a progress bar, writing a
    checkpoint (process 0 only) every `checkpoint_every` steps and at the end.

    **Returns:** the final state and the losses of the steps run here."""
    done = int(state.step)
    if done >= num_steps:
        return state, np.zeros((0,), np.float32)
    from tqdm.auto import tqdm

    writer = jax.process_index() == 0  # one process writes checkpoints
    losses = []
    with tqdm(
        total=num_steps,
        initial=done,
        disable=not (progress and writer),
        unit="step",
        dynamic_ncols=True,
        desc="train",
    ) as bar:
        for stop in _chunk_stops(done, num_steps, config.length, checkpoint_every):
            state, chunk = _run_chunk(state, jnp.asarray(stop, jnp.int32), config)
            chunk = np.asarray(chunk)[: stop - done]
            losses.append(chunk)
            bar.update(stop - done)
            bar.set_postfix(loss=f"{float(np.mean(chunk)):.4g}")
            done = stop
            at_checkpoint = (
                checkpoint_every is not None and done % checkpoint_every == 0
            )
            if writer and checkpoint_dir is not None:
                if at_checkpoint or done == num_steps:
                    save_checkpoint(
                        checkpoint_dir, state, metadata, keep=keep_checkpoints
                    )
    return state, np.concatenate(losses)


# --------------------------------------------------------------------------- one chunk


def _train_step(
    config: _ChunkConfig,
    params: PyTree,
    ema: PyTree,
    opt_state: PyTree,
    step: Int[Array, ""],
    key: PRNGKeyArray,
) -> tuple[tuple[PyTree, PyTree, PyTree], Float[Array, ""]]:
    """One optimiser step and EMA update on the batch and noise of `fold_in(key, step)`.

    **Returns:** `((params, ema, opt_state), loss)` after the step."""

    def loss_fn(params, xb, key):
        return config.loss(eqx.combine(params, config.static), config.sde, xb, key)

    key = jr.fold_in(key, step)
    xb = config.loss.draw_batch(config.data, jr.fold_in(key, 0), config.batch_size)
    xb = _sharding.constrain(xb, config.batch_sharding)
    value, grads = jax.value_and_grad(loss_fn)(params, xb, jr.fold_in(key, 1))
    updates, opt_state = config.optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = ema_update(ema, params, ema_decay_at(config.ema_decay, step))
    return (params, ema, opt_state), value


def _where(active: Bool[Array, ""], new: PyTree, old: PyTree) -> PyTree:
    return jax.tree_util.tree_map(
        lambda n, o: jnp.where(active, n, o) if eqx.is_array(n) else n, new, old
    )


@eqx.filter_jit
def _run_chunk(
    state: TrainState, stop: Int[Array, ""], config: _ChunkConfig
) -> tuple[TrainState, Float[Array, " length"]]:
    """`config.length` training steps in one `lax.scan`; steps at or after `stop` leave
    the state unchanged (so every chunk runs the same compiled program). Data-parallel
    (`config.replicated` set), each batch is split over the mesh and the parameters,
    optimiser state and EMA stay replicated: GSPMD inserts the all-reduces of the loss
    mean and the gradient."""

    def body(carry, _):
        params, ema, opt_state, step = carry
        new, value = _train_step(config, params, ema, opt_state, step, state.key)
        active = step < stop
        params, ema, opt_state = _sharding.constrain(
            _where(active, new, (params, ema, opt_state)), config.replicated
        )
        return (params, ema, opt_state, step + active.astype(step.dtype)), value

    params = eqx.filter(state.model, eqx.is_inexact_array)
    ema = eqx.filter(state.ema, eqx.is_inexact_array)
    carry = (params, ema, state.opt_state, state.step)
    unroll = config.length if config.unroll else 1
    (params, ema, opt_state, step), losses = jax.lax.scan(
        body, carry, None, length=config.length, unroll=unroll
    )
    losses = eqx.error_if(
        losses,
        ~jnp.all(jnp.isfinite(losses)),
        "train: the loss became NaN or inf; lower the learning rate, check the data "
        "scaling, or use gradient clipping.",
    )
    new_state = TrainState(
        model=eqx.combine(params, config.static),
        ema=eqx.combine(ema, config.static),
        opt_state=opt_state,
        step=step,
        key=state.key,
    )
    return new_state, losses
