"""Training: `train` runs denoising score matching with the paper's optimiser, an EMA
of the weights and checkpoints, in jitted chunks of steps (a `lax.scan` each)."""

import contextlib
import dataclasses
import os
import pathlib
import signal
import threading
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
    SCORE_MODEL,
)
from ._checks import check_floating, check_int, check_isinstance, check_unit_interval
from ._errors import OutOfMemoryError
from ._loss import AbstractLoss, DSMLoss
from ._memory import (
    compiled_bytes,
    gib,
    is_out_of_memory,
    largest_batch,
    round_down,
)
from ._optim import adam_with_warmup, ema_decay_at, ema_update
from ._progress import Progress
from ._sde import AbstractSDE
from .data import Dataset, dataset_from_array


class NonFiniteLossError(FloatingPointError):
    """Raised by [`train`][] when the loss becomes NaN or inf: the step is in
    `.step` (counted from 1, over the whole run). The state of that step is dropped;
    the checkpoints written before it are kept."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


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
    loss: AbstractLoss
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
    device; a progress report shows the step, the loss and the rate. Step `n` draws
    its batch and noise from `fold_in(key, n)` alone, so training is a deterministic
    function of `key`: with `checkpoint_dir`, a checkpoint is written every
    `checkpoint_every` steps, at the end, and on `KeyboardInterrupt` (Ctrl-C: the
    completed steps are kept, then the interrupt propagates; in the main thread the
    first Ctrl-C takes effect when the running chunk of `steps_per_call` steps ends,
    never inside JAX, and a second one at once), and `resume=True`
    continues from the newest complete one and ends, bit for bit (on CPU), with the
    same parameters as an uninterrupted run. A resumed run is the same run: the
    checkpoint must record the same model, SDE, data, loss, optimiser settings, EMA
    decay and batch size as this call (a `ValueError` names the first that differs);
    only `num_steps` may grow.

    **Arguments:**

    - `key`: PRNG key of the run (ignored when resuming: the checkpoint's key is used).
    - `model`: the score model to train, `model(t, x)` on one example: a network from
        `sd.nn`, bare (it predicts the score) or wrapped, e.g.
        `sd.EpsScore(sd.nn.UNet(...), sde)` (noise prediction; for VE this is the
        NCSN++ scaling by 1/sigma) or `sd.X0Score(...)`. Any Equinox module trains;
        checkpoints need one from `sd.nn`.
    - `sde`: the forward SDE.
    - `data`: an `sd.data.Dataset` (e.g. `sd.data.digits()`), or a floating-point
        array `(n, *data_shape)` of examples in model units (integer data is refused,
        as by `log_likelihood`: dequantise and scale it first, or use a `Dataset`
        with `levels`).
    - `num_steps`: total number of optimiser steps (counting resumed ones), >= 1.
    - `batch_size`: examples per step (drawn with replacement). Default 128.
    - `loss`: an `AbstractLoss`. Default (None) `sd.DSMLoss()` (sigma^2 weighting, eps=1e-5).
        `sd.ClassifierLoss()` trains a noise-conditional classifier instead (`model`
        returns logits; `data` needs labels). `sd.ConditionalDSMLoss(cond_drop)`
        trains a conditional score model on labelled data, dropping the label with
        probability `cond_drop` (classifier-free guidance training).
    - `learning_rate`, `warmup_steps`, `grad_clip`: of [`adam_with_warmup`][] (paper:
        2e-4, 5000, 1.0; `warmup_steps=0`: no warm-up); ignored if `optimizer` is
        given.
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
    - `progress`: report progress on stderr: a tqdm bar on a terminal, a plain line
        per tenth of the run when stderr is piped or a file.
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
    non-positive steps, a directory that holds another run, a resume whose settings
    differ from the checkpoint's, a `batch_size` not divisible by the number of
    devices of `sharding`); [`NonFiniteLossError`][] (a `FloatingPointError`) naming
    the step where the loss became NaN or inf; [`OutOfMemoryError`][] (a `MemoryError`)
    if a step does not fit in memory (it says which `batch_size` would, also in
    `.largest`).
    """
    start = time.perf_counter()

    # Checks
    loss, data, unroll, steps_per_call = _checked_args(
        model,
        sde,
        data,
        loss,
        unroll=unroll,
        steps_per_call=steps_per_call,
        num_steps=num_steps,
        batch_size=batch_size,
        keep_checkpoints=keep_checkpoints,
        checkpoint_every=checkpoint_every,
        ema_decay=ema_decay,
    )
    if resume and checkpoint_dir is None:
        raise ValueError("`resume=True` needs `checkpoint_dir`.")
    batch_sharding, replicated = _data_parallel_shardings(sharding, batch_size)

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


def _checked_args(model, sde, data, loss, *, unroll, steps_per_call, **numbers):
    """`train`'s arguments checked (a `ValueError`/`TypeError` naming the first bad
    one), with their defaults filled in: `(loss, data as a Dataset, unroll,
    steps_per_call)`."""
    if unroll is None:
        unroll = _has_conv(model)
    if steps_per_call is None:
        steps_per_call = 2 if unroll else 50
    for name in ("num_steps", "batch_size", "keep_checkpoints"):
        check_int(name, numbers[name], 1)
    check_int("steps_per_call", steps_per_call, 1)
    check_int("checkpoint_every", numbers["checkpoint_every"], 1, or_none=True)
    check_unit_interval("ema_decay", numbers["ema_decay"])
    check_isinstance("sde", sde, AbstractSDE, "an AbstractSDE")
    loss = DSMLoss() if loss is None else loss
    check_isinstance(
        "loss",
        loss,
        AbstractLoss,
        "an AbstractLoss (e.g. sd.DSMLoss(), sd.ClassifierLoss() or "
        "sd.ConditionalDSMLoss())",
    )
    check_floating("data", data.x if isinstance(data, Dataset) else data)
    data = data if isinstance(data, Dataset) else dataset_from_array(data)
    loss.check_model(model, sde, data)
    return loss, data, unroll, steps_per_call


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
    loss: AbstractLoss,
    optimizer_desc: dict,
    *,
    ema_decay: float,
    batch_size: int,
    num_steps: int,
    extra: dict | None,
) -> dict:
    """What every checkpoint of this run records (the user's `extra` entries last)."""
    return {
        "kind": SCORE_MODEL,
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
    """Run chunks until `num_steps` steps are done, with a progress report, writing a
    checkpoint (process 0 only) every `checkpoint_every` steps, at the end, and when
    interrupted (`KeyboardInterrupt`: the steps of the chunks completed so far are
    kept, then the interrupt goes on). The losses of each chunk are checked on the
    host before its state is kept.

    **Returns:** the final state and the losses of the steps run here."""
    done = int(state.step)
    if done >= num_steps:
        return state, np.zeros((0,), np.float32)
    writer = jax.process_index() == 0  # one process writes checkpoints
    saving = writer and checkpoint_dir is not None
    saved = done
    losses = []

    def save(state):
        save_checkpoint(checkpoint_dir, state, metadata, keep=keep_checkpoints)

    with (
        Progress(num_steps, done, enabled=progress and writer, desc="train") as bar,
        _interrupt_between_chunks() as interrupted,
    ):
        try:
            for stop in _chunk_stops(done, num_steps, config.length, checkpoint_every):
                new_state, chunk = _run_chunk_or_raise(
                    state, jnp.asarray(stop, jnp.int32), config
                )
                chunk = np.asarray(chunk)[: stop - done]
                _check_finite(chunk, done, config)
                state = new_state
                losses.append(chunk)
                done = stop
                bar.update(done, float(np.mean(chunk)))
                at_checkpoint = (
                    checkpoint_every is not None and done % checkpoint_every == 0
                )
                if saving and (at_checkpoint or done == num_steps):
                    save(state)
                    saved = done
                if interrupted():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            # Keep what is done; a second interrupt during this write leaves the
            # previous checkpoint (the write is atomic).
            if saving and done > saved:
                save(state)
            raise
    return state, np.concatenate(losses)


@contextlib.contextmanager
def _interrupt_between_chunks():
    """Ctrl-C (SIGINT) during training, made safe: in the main thread with Python's
    default handler, the first SIGINT only sets a flag, which the training loop reads
    between chunks (so no `KeyboardInterrupt` is raised inside JAX's dispatch, where
    it could leave a lock held and the checkpoint write after it waiting forever); a
    second SIGINT raises at once. Yields the flag's reader."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield lambda: False
        return
    hit = []

    def first(signum, frame):
        hit.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, first)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _check_finite(chunk: np.ndarray, done: int, config: "_ChunkConfig") -> None:
    """A `NonFiniteLossError` naming the first step whose loss is NaN or inf."""
    bad = np.flatnonzero(~np.isfinite(chunk))
    if bad.size:
        step = done + int(bad[0]) + 1
        raise NonFiniteLossError(
            f"train: the loss became NaN or inf at step {step}: training diverged. "
            "Lower the learning rate (or keep gradient clipping on) and check the "
            "data's scale; the checkpoints written before are kept.",
            step,
        )


def _run_chunk_or_raise(state: TrainState, stop, config: "_ChunkConfig"):
    """`_run_chunk`, with XLA running out of memory turned into an `OutOfMemoryError`
    that says how large a batch would fit."""
    try:
        new_state, chunk = _run_chunk(state, stop, config)
        chunk.block_until_ready()
    except jax.errors.JaxRuntimeError as e:
        if not is_out_of_memory(e):
            raise
        msg, largest = _out_of_memory(state, stop, config)
        raise OutOfMemoryError(msg, largest=largest) from e
    return new_state, chunk


def _out_of_memory(
    state: TrainState, stop, config: "_ChunkConfig"
) -> tuple[str, int | None]:
    """What to say when a chunk of steps did not fit in memory, and the largest
    `batch_size` that would (read from the programs compiled for small batches; None
    if unknown)."""
    b, k = config.batch_size, config.length
    msg = f"train: a batch_size of {b} with steps_per_call {k} does not fit in memory"
    fit = None
    if config.batch_sharding is None:

        def bytes_at(m: int) -> int:
            small = dataclasses.replace(config, batch_size=m)
            return compiled_bytes(_run_chunk.lower(state, stop, small).compile())

        fit = largest_batch(bytes_at, probe=8)
    if fit is None:
        return f"{msg}; lower batch_size (or steps_per_call).", None
    largest, per = fit
    largest = round_down(largest)
    return (
        f"{msg} ({gib(per)} per example); a batch_size of about {largest} fits at "
        "this steps_per_call: lower batch_size (or steps_per_call).",
        largest,
    )


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
    new_state = TrainState(
        model=eqx.combine(params, config.static),
        ema=eqx.combine(ema, config.static),
        opt_state=opt_state,
        step=step,
        key=state.key,
    )
    return new_state, losses
