"""The `scoresde` command's entry point (also `python -m scoresde_diffrax.cli`).

It runs before the library, and so before JAX, is imported, and uses the standard
library only, so that Ctrl-C at any moment ends the command with one line on stderr
and exit code 130:

- Python's SIGINT handler is installed even where the command started with SIGINT
  ignored (a shell script's background job), so `kill -INT` reaches it;
- an interrupt during the imports prints the line instead of a traceback;
- an interrupt while the main thread waits inside JAX (compiling or solving, where
  Python cannot raise `KeyboardInterrupt` until the computation returns) is seen by a
  watchdog thread through `signal.set_wakeup_fd`; if the main thread has not handled
  it within `GRACE_S` seconds, the watchdog prints the line, removes the half-written
  temporary files the command registered, and ends the process;
- the process ends with `os._exit` after an interrupt, without the interpreter's
  teardown: tearing down while JAX's threads still run a computation crashed it
  (segmentation fault, exit code 139).

Where a command handles Ctrl-C gracefully itself (`scoresde train` installs its own
handler while it trains: the first Ctrl-C finishes the current chunk and writes a
checkpoint), the watchdog leaves the signal to it.

It also turns on JAX's persistent compilation cache, so that a second identical call
does not compile its programs again: in `$JAX_COMPILATION_CACHE_DIR` if set, else
`$XDG_CACHE_HOME/scoresde_diffrax/jax` (`~/.cache/scoresde_diffrax/jax`), every
program however quick its compilation (`JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`
overrides that); set `SCORESDE_COMPILATION_CACHE=0` to turn it off. The cache only
grows: delete the directory to reclaim its space.
"""

import os
import signal
import sys
import threading


GRACE_S = 1.0
_report_lock = threading.Lock()
_writing: set[str] = set()  # temporary files being written (see `writing`)
_got_sigint = threading.Event()
_importing = threading.Event()  # set until the library is imported
_importing.set()


def _prog(argv: list[str]) -> str:
    command = next((a for a in argv if not a.startswith("-")), None)
    return "scoresde" if command is None else f"scoresde {command}"


def report_interrupt(prog: str) -> bool:
    """Print `PROG: interrupted` to stderr, once per process; False if it was printed
    already (whoever printed it is ending the process)."""
    if not _report_lock.acquire(blocking=False):
        return False
    print(f"{prog}: interrupted", file=sys.stderr, flush=True)
    return True


def writing(path: str, start: bool) -> None:
    """Register (`start=True`) or release a temporary file being written, so that an
    interrupt that ends the process removes it."""
    if start:
        _writing.add(path)
    else:
        _writing.discard(path)


def _exit_now(code: int) -> None:
    for path in list(_writing):
        try:
            os.unlink(path)
        except OSError:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _watch(read_fd: int, prog: str, main_thread: threading.Thread) -> None:
    while True:
        try:
            got = os.read(read_fd, 64)
        except OSError:
            return
        if not got or signal.SIGINT not in got:
            continue
        _got_sigint.set()
        if not _importing.is_set():
            if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
                continue  # the command handles Ctrl-C itself (training)
            main_thread.join(GRACE_S)
        if report_interrupt(prog):
            _exit_now(130)
        return


def _unraisable(unraisable) -> None:
    # An interrupt that lands in a callback Python cannot raise from (a garbage
    # collector hook of JAX's, during the imports) is dropped there; the watchdog
    # still ends the process, so say nothing more about it.
    if not (
        isinstance(unraisable.exc_type, type)
        and issubclass(unraisable.exc_type, KeyboardInterrupt)
    ):
        sys.__unraisablehook__(unraisable)


def _start_watchdog(prog: str) -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(
        target=_watch,
        args=(read_fd, prog, threading.main_thread()),
        name="scoresde-interrupt-watchdog",
        daemon=True,
    ).start()


def _compilation_cache() -> None:
    if os.environ.get("SCORESDE_COMPILATION_CACHE", "1").strip().lower() in (
        "0",
        "off",
        "false",
        "no",
    ):
        return
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache"
        )
        os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(
            base, "scoresde_diffrax", "jax"
        )
    # JAX keeps only programs that took a second to compile; a command compiles many
    # smaller ones (0.1-0.5 s each here), which together are most of its start-up.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _record_sigint(signum, frame) -> None:
    # During the imports: only the watchdog acts (a KeyboardInterrupt raised inside
    # an extension module's initialisation crashed the process or became an
    # ImportError).
    _got_sigint.set()


def console_main() -> None:
    """Run `scoresde` with `sys.argv` and exit with its code."""
    argv = sys.argv[1:]
    prog = _prog(argv)
    signal.signal(signal.SIGINT, _record_sigint)
    sys.unraisablehook = _unraisable
    _start_watchdog(prog)
    _compilation_cache()
    from scoresde_diffrax import cli

    cli.set_interrupt_hooks(report_interrupt, writing)
    _importing.clear()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if _got_sigint.is_set():  # between the imports and the line above
        code = 130
        report_interrupt(prog)
    else:
        try:
            code = cli.main(argv)
        except KeyboardInterrupt:
            report_interrupt(prog)
            code = 130
    if code == 130:
        _exit_now(130)
    sys.exit(code)


if __name__ == "__main__":
    console_main()
