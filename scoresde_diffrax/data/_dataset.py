import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray


class Dataset(eqx.Module):
    r"""An in-memory data set, kept on the device, that draws training batches inside
    a jitted step.

    The stored examples `x` are in *data units* (images in `[0, 1]`). A batch is
    optionally dequantised (uniform noise over each quantisation bin) and then mapped
    to *model units* by `x * scale + shift` (e.g. `[0, 1] -> [-1, 1]` is `scale=2,
    shift=-1`); `to_data` undoes that map for samples.

    **Arguments:**

    - `x`: examples, shape `(n, *data_shape)`, float.
    - `labels`: integer labels, shape `(n,)`, or None.
    - `scale`, `shift`: the affine map from data units to model units. Default identity.
    - `levels`: number of quantisation levels of `x` (17 for the 0..16 digits) for
        uniform dequantisation, $x \mapsto (x (L - 1) + u) / L$ with
        $u \sim U[0, 1)$; None (default) for no dequantisation.
    - `name`: a name recorded in checkpoints.
    """

    x: Float[Array, " n *shape"]
    labels: Int[Array, " n"] | None
    scale: float = eqx.field(static=True, default=1.0)
    shift: float = eqx.field(static=True, default=0.0)
    levels: int | None = eqx.field(static=True, default=None)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        if self.x.ndim < 2 or self.x.shape[0] < 1:
            raise ValueError(
                "Dataset: `x` must have shape (n, *data_shape) with n >= 1, got "
                f"{self.x.shape}."
            )
        if not isinstance(self.x, jax.core.Tracer) and not bool(
            jnp.all(jnp.isfinite(self.x))
        ):
            raise ValueError("Dataset: `x` must be finite (it has NaN or inf entries).")
        if self.labels is not None and self.labels.shape != self.x.shape[:1]:
            raise ValueError(
                f"Dataset: `labels` must have shape ({self.x.shape[0]},), got "
                f"{self.labels.shape}."
            )
        if self.levels is not None and self.levels < 2:
            raise ValueError(
                f"Dataset: `levels` must be >= 2 or None, got {self.levels}."
            )
        if self.scale == 0:
            raise ValueError("Dataset: `scale` must be non-zero.")

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return self.x.shape[0]

    def to_model(self, x: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """Data units -> model units (no dequantisation)."""
        return jnp.asarray(x) * self.scale + self.shift

    def to_data(self, x: Float[ArrayLike, "..."]) -> Float[Array, "..."]:
        """Model units -> data units (e.g. samples back to `[0, 1]` images)."""
        return (jnp.asarray(x) - self.shift) / self.scale

    def batch(
        self, key: PRNGKeyArray, batch_size: int
    ) -> Float[Array, " batch *shape"]:
        """A batch of `batch_size` examples drawn uniformly with replacement, dequantised
        if `levels` is set, in model units."""
        ki, ku = jr.split(key)
        idx = jr.randint(ki, (batch_size,), 0, self.x.shape[0])
        x = self.x[idx]
        if self.levels is not None:
            u = jr.uniform(ku, x.shape, dtype=x.dtype)
            x = (x * (self.levels - 1) + u) / self.levels
        return self.to_model(x)

    def labelled_batch(
        self, key: PRNGKeyArray, batch_size: int
    ) -> tuple[Float[Array, " batch *shape"], Int[Array, " batch"]]:
        """The batch of [`Dataset.batch`][] (the same draws) and its labels."""
        if self.labels is None:
            raise ValueError("Dataset.labelled_batch: this data set has no `labels`.")
        idx = jr.randint(jr.split(key)[0], (batch_size,), 0, self.x.shape[0])
        return self.batch(key, batch_size), self.labels[idx]

    def model_data(self) -> Float[Array, " n *shape"]:
        """All examples in model units (no dequantisation noise)."""
        return self.to_model(self.x)

    def metadata(self) -> dict:
        """What a checkpoint records about the data (JSON-able): its name, shape,
        scaling and size, and `summary`, the mean, standard deviation, minimum and
        maximum of all its entries (to tell data sets of the same shape apart when a
        run is resumed, to round-off)."""
        x = np.asarray(self.x, np.float64)
        return {
            "name": self.name,
            "data_shape": list(self.data_shape),
            "scale": self.scale,
            "shift": self.shift,
            "levels": self.levels,
            "num_examples": int(self.x.shape[0]),
            "summary": [
                float(x.mean()),
                float(x.std()),
                float(x.min()),
                float(x.max()),
            ],
        }


def dataset_from_array(x: ArrayLike, **kwargs) -> Dataset:
    """`Dataset(jnp.asarray(x, float), None, **kwargs)`."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return Dataset(x, None, **kwargs)
