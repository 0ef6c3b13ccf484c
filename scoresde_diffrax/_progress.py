"""Training progress on stderr: a tqdm bar on a terminal, plain lines when stderr is
piped or redirected to a file (a log should not fill with carriage returns)."""

import sys
import time


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
