import gc
import os


# Compiling dominates this suite's time (tiny problems, thousands of programs): XLA's
# CPU backend compiles without LLVM's optimisation passes here (about 35-50 % less
# compile time, slower runs; results agree with optimised code to float32 round-off,
# a few ulps, not bitwise). Set before JAX starts its backend; child processes
# inherit it. An XLA_FLAGS of the user's is kept.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import jax  # noqa: E402
import pytest  # noqa: E402

# The shared SDEs live in helpers.py (test modules import them from there); here they
# parametrise the `sde` fixture below.
from helpers import SDES  # noqa: E402


# Make shape bugs loud: no silent rank promotion inside the package.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True, scope="session")
def _compilation_cache_of_child_commands(tmp_path_factory):
    """`scoresde` commands run as child processes keep JAX's persistent compilation
    cache in this test process's temporary directory, not the user's `~/.cache`
    (and children that compile the same programs load them from there)."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        path = tmp_path_factory.mktemp("jax_compilation_cache")
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(path)
    yield


@pytest.fixture(params=list(SDES), ids=list(SDES))
def sde(request):
    return SDES[request.param]


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_code():
    """Drop every compiled function after each test module.

    XLA:CPU maps a few memory regions per compiled executable and frees them only with
    the executable; the suite compiles thousands, and one process holding them all ran
    past the kernel's limit on memory maps (`vm.max_map_count`, 65530 by default) and
    crashed inside the compiler (a segmentation fault ~85 % through the suite).
    Functions shared between modules are compiled again, once per module.
    """
    yield
    jax.clear_caches()
    gc.collect()
