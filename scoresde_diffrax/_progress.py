"""Progress on stderr, of training (`Progress`) and of a solve (`solve_progress`): a
tqdm bar on a terminal, plain lines when stderr is piped or redirected to a file (a
log should not fill with carriage returns)."""

import itertools
import sys
import threading
import time

import diffrax as dfx
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback


class Progress:
    """Reports `done` of `total` steps with the latest loss.

    On a terminal: a tqdm bar (step, loss, rate). Otherwise: a line
    `desc: step N/TOTAL (P%), loss L, R steps/s` each time another tenth of the run is
    done, and at the end. Disabled: nothing.

    **Arguments:**

    - `total`: steps of the whole run; `initial`: steps done before (resume).
    - `enabled`: report at all; `desc`: the prefix; `stream`: default `sys.stderr`.
    """

    def __init__(
        self, total: int, initial: int, *, enabled: bool, desc: str, stream=None
    ):
        self.total, self.done, self.desc = total, initial, desc
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.bar = None
        self.start, self.start_done = time.perf_counter(), initial
        self.next_line = initial
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                desc=desc,
                file=self.stream,
            )
        else:
            self._advance_next_line()

    def _advance_next_line(self) -> None:
        tenth = max(1, self.total // 10)
        self.next_line = (self.done // tenth + 1) * tenth

    def update(self, done: int, loss: float) -> None:
        """`done` steps are complete; `loss` is the mean loss of the latest ones."""
        steps, self.done = done - self.done, done
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(loss=f"{loss:.4g}")
            return
        if done >= self.next_line or done >= self.total:
            rate = (done - self.start_done) / max(
                time.perf_counter() - self.start, 1e-9
            )
            print(
                f"{self.desc}: step {done}/{self.total} ({100 * done // self.total}%), "
                f"loss {loss:.4g}, {rate:.3g} steps/s",
                file=self.stream,
                flush=True,
            )
            self._advance_next_line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --------------------------------------------------------------------------- solves


def solve_progress(
    desc: str, *, enabled: bool, bar: bool = False
) -> dfx.AbstractProgressMeter:
    """The progress meter of a solve, on stderr: none unless `enabled`; diffrax's
    tqdm bar on a terminal (or wherever with `bar`); otherwise plain lines
    (`ProgressLines`), as `Progress` reports training."""
    if not enabled:
        return dfx.NoProgressMeter()
    if bar or _is_terminal(sys.stderr):
        return dfx.TqdmProgressMeter()
    return ProgressLines(desc)


class _LinesState(eqx.Module):
    progress: jax.Array  # where the last line was printed
    latest: jax.Array  # where the solve is
    index: jax.Array  # of the solve on the host (`_SOLVES`)


# The solves being reported, on the host: index -> [start time, tenths printed].
_SOLVES: dict[int, list] = {}
_SOLVES_LOCK = threading.Lock()
_NEXT_INDEX = itertools.count(1)


class ProgressLines(dfx.AbstractProgressMeter):
    """A diffrax progress meter for logs: a plain line `DESC: P% of the solve, S s` on
    stderr each time another tenth of the solve's time interval is done, and at its
    end if it got there (a solve that stops early, out of steps, says nothing more);
    the slowest example of a vmapped solve counts, as in diffrax's meters."""

    desc: str = eqx.field(static=True)

    def init(self) -> _LinesState:
        index = io_callback(_start, jax.ShapeDtypeStruct((), jnp.int32))
        zero = jnp.array(0.0)
        return _LinesState(zero, zero, eqxi.nonbatchable(index))

    def step(self, state: _LinesState, progress) -> _LinesState:
        tenth = jnp.floor(10 * jnp.asarray(progress))
        pred = eqxi.unvmap_all(tenth > jnp.floor(10 * state.progress))
        slowest = -eqxi.unvmap_max(-jnp.asarray(progress))

        def report(index):
            return jax.pure_callback(
                lambda p, i: _report(self.desc, p, i),
                index,
                slowest,
                index,
                vmap_method="expand_dims",
            )

        index = jax.lax.cond(eqxi.nonbatchable(pred), report, lambda i: i, state.index)
        dtype = state.progress.dtype
        new = jnp.where(pred, progress, state.progress).astype(dtype)
        return _LinesState(new, jnp.asarray(progress, dtype), index)

    def close(self, state: _LinesState) -> None:
        io_callback(
            lambda i, p: _finish(self.desc, i, p),
            None,
            eqxi.unvmap_max(state.index),
            -eqxi.unvmap_max(-state.latest),
        )


def _start() -> np.ndarray:
    with _SOLVES_LOCK:
        index = next(_NEXT_INDEX)
        _SOLVES[index] = [time.perf_counter(), 0]
    return np.array(index, np.int32)


def _line(desc: str, percent: int, start: float) -> None:
    print(
        f"{desc}: {percent}% of the solve, {time.perf_counter() - start:.3g} s",
        file=sys.stderr,
        flush=True,
    )


def _report(desc: str, progress, index) -> np.ndarray:
    i = int(np.unique(index).item())  # a spurious batch axis from a batched cond
    tenths = int(np.floor(10 * float(np.min(progress))))
    with _SOLVES_LOCK:
        solve = _SOLVES.get(i)
        if solve is not None and tenths > solve[1]:  # None: a backward pass
            solve[1] = tenths
            _line(desc, 10 * tenths, solve[0])
    return np.asarray(index)


def _finish(desc: str, index, latest) -> None:
    with _SOLVES_LOCK:
        solve = _SOLVES.pop(int(index), None)
        if solve is not None and solve[1] < 10 and float(latest) >= 1 - 1e-6:
            _line(desc, 100, solve[0])
