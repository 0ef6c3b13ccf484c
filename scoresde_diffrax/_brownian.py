import diffrax as dfx
import equinox as eqx
import jax
import jax.random as jr
from jaxtyping import Array, Key, PRNGKeyArray, PyTree, UInt32


class PerSampleBrownianPath(dfx.AbstractBrownianPath):
    """A batch of independent Brownian paths, one per example, each from its own key.

    Wraps a diffrax Brownian path built for ONE example (`diffrax.UnsafeBrownianPath`
    for fixed steps, `diffrax.VirtualBrownianTree` for adaptive ones) and evaluates it
    under `jax.vmap` over per-example keys. Example `i` is driven by `keys[i]` alone, so
    its noise does not depend on the batch size or on the other examples: the first
    100 of 1,000 samples equal 100 samples drawn with the same key, and a batch split
    over devices draws the same noise as on one device.

    **Arguments:**

    - `path`: a diffrax Brownian path for one example (its own key is ignored).
    - `keys`: one key per example, shape `(batch,)`.
    - `t0`, `t1`: the interval the path is used on, reported as its `t0`/`t1`
        (default: the wrapped path's; `diffrax.UnsafeBrownianPath` reports
        `(-inf, inf)`). Samplers that drop the noise of their final step (the paper's
        noise removal, e.g. [`PredictorCorrector`][]) recognise that step as the one
        ending at `t1`; [`sample`][] sets it to the end of the solve.
    """

    path: dfx.AbstractBrownianPath
    keys: Key[Array, " batch"] | UInt32[Array, "batch 2"]
    start: float | None = None
    end: float | None = None

    def __init__(self, path, keys, t0=None, t1=None):
        self.path = path
        self.keys = keys
        self.start = t0
        self.end = t1

    @property
    def levy_area(self):
        return self.path.levy_area

    @property
    def t0(self):
        return self.path.t0 if self.start is None else self.start

    @property
    def t1(self):
        return self.path.t1 if self.end is None else self.end

    def evaluate(
        self, t0, t1=None, left: bool = True, use_levy: bool = False
    ) -> PyTree:
        def one(key):
            path = eqx.tree_at(lambda p: p.key, self.path, key)
            return path.evaluate(t0, t1, left, use_levy)

        return jax.vmap(one)(self.keys)


def per_sample_keys(
    key: PRNGKeyArray, n: int
) -> Key[Array, " n"] | UInt32[Array, "n 2"]:
    """`n` keys, key `i` being `fold_in(key, i)`: independent of `n`."""
    return jax.vmap(lambda i: jr.fold_in(key, i))(jax.numpy.arange(n))
