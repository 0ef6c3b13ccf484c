import jax
import pytest

# The shared SDEs and mixtures live in helpers.py (test modules import them from
# there); the names stay here for modules that still import them from conftest.
from helpers import MIXTURES as MIXTURES, SDES as SDES


# Make shape bugs loud: no silent rank promotion inside the package.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(params=list(SDES), ids=list(SDES))
def sde(request):
    return SDES[request.param]
