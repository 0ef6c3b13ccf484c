"""Helpers to put a batch on a `jax.sharding.Mesh` (data parallelism)."""

import math

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec


def auto_axes_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with every axis of type `AxisType.Auto`.

    `jax.make_mesh` (jax >= 0.7) makes `Explicit` axes, under which sharded
    contractions must be spelled out by hand; the functions of this package let GSPMD
    propagate shardings instead, so they rebuild the mesh over the same devices and
    axis names with automatic axes. A mesh that is already automatic is returned as is.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"`sharding` must be a jax.sharding.Mesh (e.g. jax.make_mesh((n,), "
            f"('batch',))), got {type(mesh).__name__}."
        )
    auto = (AxisType.Auto,) * len(mesh.axis_names)
    if tuple(mesh.axis_types) == auto:
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=auto)


def batch_sharding(
    mesh_or_sharding: Mesh | NamedSharding, batch_size: int, name: str
) -> NamedSharding:
    """The sharding of a batch `(batch_size, ...)` whose leading axis is split.

    **Arguments:**

    - `mesh_or_sharding`: a `Mesh` (the batch axis is split over *all* its axes, i.e.
        over every device of the mesh; explicit axes are made automatic, see
        [`auto_axes_mesh`][]), or a `NamedSharding` used as it is (its first
        `PartitionSpec` entry names the mesh axes that split the batch).
    - `batch_size`: the length of the batch axis.
    - `name`: the argument that set `batch_size`, for the error message.

    **Raises:** `ValueError` naming `name` and `sharding` if `batch_size` is not
    divisible by the number of devices splitting the batch.
    """
    if isinstance(mesh_or_sharding, NamedSharding):
        sharding = mesh_or_sharding
        mesh = sharding.mesh
        first = sharding.spec[0] if len(sharding.spec) else None
        axes = () if first is None else (first,) if isinstance(first, str) else first
        parts = math.prod(mesh.shape[a] for a in axes)
    else:
        mesh = auto_axes_mesh(mesh_or_sharding)
        sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
        parts = mesh.size
    if batch_size % parts != 0:
        raise ValueError(
            f"`{name}` ({batch_size}) must be divisible by the number of devices that "
            f"`sharding` splits the batch over ({parts}, mesh {dict(mesh.shape)})."
        )
    return sharding


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that holds a full copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree, sharding: NamedSharding):
    """Every array leaf of `tree` placed with `sharding` (replicated); other leaves
    unchanged. Across processes, every process must hold the same values (they do
    here: the same key and data give the same initial model); they are copied from
    this host's memory onto its own devices."""

    def put(x):
        if not eqx.is_array(x):
            return x
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        # Another process's devices: jax.device_put takes host data only.
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree_util.tree_map(put, tree)


def to_host(tree):
    """Every `jax.Array` leaf of `tree` as a NumPy array on this host (gathered across
    processes if it is not fully addressable), ready to serialise."""

    def get(x):
        if not isinstance(x, jax.Array):
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            raise TypeError("to_host: pass key data (jax.random.key_data), not keys.")
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(get, tree)
