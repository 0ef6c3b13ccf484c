"""Running out of memory: recognising XLA's error, and how large a batch would fit,
read from the compiled program (XLA's memory analysis) rather than guessed.

Used by the drivers (`sample`, `train`) to turn a `RESOURCE_EXHAUSTED` failure into a
`MemoryError` that names the argument and says the largest batch that fits. Nothing
here runs unless a call has already failed.
"""

import math
import os
from collections.abc import Callable

import jax


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` is XLA failing to allocate memory (`RESOURCE_EXHAUSTED`)."""
    return isinstance(e, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(e)


def available_bytes() -> int | None:
    """Memory available to a new allocation on the default device: free device memory
    on an accelerator, the kernel's `MemAvailable` on CPU; None if unknown."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def compiled_bytes(compiled) -> int:
    """Bytes a compiled program (from `eqx.filter_jit(f).lower(...).compile()`) holds
    while it runs: its arguments, outputs and temporaries (XLA's memory analysis)."""
    m = compiled.compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def largest_batch(bytes_at: Callable[[int], int], probe: int) -> tuple[int, int] | None:
    """`(largest, per_example)`: the largest batch whose program fits in the memory
    available now, and the bytes each example adds, from the programs compiled for
    batches of `probe` and `2 * probe` (`bytes_at(n)`: the bytes of the program for a
    batch of `n`; memory grows linearly in the batch). None if it cannot be told."""
    try:
        one, two = bytes_at(probe), bytes_at(2 * probe)
        avail = available_bytes()
    except Exception:  # noqa: BLE001 - only a hint for an error message
        return None
    per = (two - one) / probe
    fixed = one - per * probe
    if avail is None or per <= 0:
        return None
    return max(0, math.floor((avail - fixed) / per)), math.ceil(per)


def round_down(n: int) -> int:
    """`n` rounded down to two significant digits (a batch size to suggest)."""
    if n < 100:
        return n
    scale = 10 ** (len(str(n)) - 2)
    return n // scale * scale


def gib(n: int | float) -> str:
    return f"{n / 2**30:.3g} GiB"
