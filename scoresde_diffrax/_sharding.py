"""Sharding a batch over a device mesh, for `sample`, `log_likelihood`, `encode`,
`decode` and `train`: resolve the user's `sharding` argument once, outside `jit`, to a
`NamedSharding` on a mesh with `Auto` axes, and constrain batch arrays inside `jit`
so the whole solve runs SPMD (GSPMD partitions it; no home-made collectives)."""

import math

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree


# What the `sharding=` argument accepts.
ShardingLike = Mesh | NamedSharding | None


def auto_mesh(mesh: Mesh) -> Mesh:
    """`mesh` with every axis of type `AxisType.Auto` (the same devices and names).

    `jax.make_mesh` gives `Explicit` axes by default; under them the sharding of every
    intermediate is part of its type and diffrax's solve fails to trace (the
    Runge-Kutta stage buffer's scatter and the error norm's contraction over the
    sharded batch are "ambiguous"). With `Auto` axes GSPMD propagates the sharding.
    """
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(
        mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim
    )


def _axis_names(entry) -> tuple[str, ...]:
    if entry is None or entry is PartitionSpec.UNCONSTRAINED:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def batch_sharding(
    sharding: ShardingLike,
    shape: tuple[int, ...],
    x: PyTree = None,
    *,
    batch_name: str | None = None,
) -> NamedSharding | None:
    """The `NamedSharding` (on a mesh with `Auto` axes) of the batch array of `shape`
    `(batch, *data_shape)`, or `None` for no sharding.

    `sharding` is the user's argument: a `Mesh` shards the batch axis over all of the
    mesh's axes; a `NamedSharding` is taken as given (its spec's first entry names the
    batch's mesh axes). With `sharding=None` and an input `x` that is a (concrete)
    jax.Array sharded by a `NamedSharding` over several devices, `x`'s sharding is
    kept; under an outer `jit` (a traced `x`) its sharding is left to that `jit`.

    Raises `TypeError` for anything else, and `ValueError` if the batch does not divide
    over the batch axis's devices (naming `batch_name` too, the argument that set the
    batch size, if given).
    """
    if sharding is None:
        concrete = isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)
        s = x.sharding if concrete else None
        if not isinstance(s, NamedSharding) or s.is_fully_replicated:
            return None
        sharding = s
    if isinstance(sharding, Mesh):
        mesh = sharding
        names = tuple(mesh.axis_names)
        spec = PartitionSpec(names[0] if len(names) == 1 else names)
    elif isinstance(sharding, NamedSharding):
        mesh, spec = sharding.mesh, sharding.spec
        if not isinstance(mesh, Mesh):
            raise TypeError(
                "`sharding`: a NamedSharding over a concrete jax.sharding.Mesh is "
                f"needed (one with devices), got one over {type(mesh).__name__}."
            )
        if len(spec) > len(shape):
            raise ValueError(
                f"`sharding`: the PartitionSpec {spec} has {len(spec)} entries, more "
                f"than the {len(shape)} axes of the batch array {shape} "
                "(batch, *data_shape)."
            )
    else:
        raise TypeError(
            "`sharding` must be a jax.sharding.Mesh (the batch is sharded over all "
            "its axes), a jax.sharding.NamedSharding for the batch array, or None; "
            f"got {type(sharding).__name__}: {sharding!r}."
        )
    names = _axis_names(spec[0] if len(spec) else None)
    n = math.prod(mesh.shape[a] for a in names)
    if shape[0] % n and batch_name is not None:
        raise ValueError(
            f"`{batch_name}` ({shape[0]}) must be divisible by the number of devices "
            f"that `sharding` splits the batch over ({n} devices: mesh axes {names} "
            f"of mesh {dict(mesh.shape)})."
        )
    if shape[0] % n:
        raise ValueError(
            f"`sharding`: the batch of {shape[0]} examples does not divide over the "
            f"{n} devices of the mesh axes {names} that shard it (mesh "
            f"{dict(mesh.shape)}). Use a batch that is a multiple of {n}, or a "
            "sharding over fewer devices."
        )
    return NamedSharding(auto_mesh(mesh), spec)


def constrain(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
    """Inside `jit`: constrain every array of `tree` (of the batch array's rank) to
    `sharding`; nothing if `sharding` is None."""
    if sharding is None:
        return tree
    return jax.tree_util.tree_map(
        lambda a: jax.lax.with_sharding_constraint(a, sharding), tree
    )


def constrain_leading(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
    """Inside `jit`: shard the leading (batch) axis of every array of `tree` (per-
    example keys, probes, log-densities) as `sharding` shards the batch array's, the
    other axes replicated; nothing if `sharding` is None."""
    if sharding is None:
        return tree
    spec = sharding.spec
    lead = NamedSharding(sharding.mesh, PartitionSpec(spec[0] if len(spec) else None))
    return jax.tree_util.tree_map(
        lambda a: jax.lax.with_sharding_constraint(a, lead), tree
    )


def place(x, sharding: NamedSharding | None):
    """Outside `jit`: put the input batch `x` on `sharding` (no-op if None)."""
    return x if sharding is None else jax.device_put(x, sharding)


def error_if(x: PyTree, pred, msg: str, sharding: NamedSharding | None) -> PyTree:
    """Inside `jit`: `eqx.error_if(x, pred, msg)`, unless sharded; then `x` unchanged,
    and the caller checks the outputs after the call.

    Under GSPMD on several devices a raising `eqx.error_if` (a host callback inside a
    `lax.cond`) runs on one device while the others wait in a collective: the error
    is printed, then the process aborts on a rendezvous timeout instead of raising
    (jax 0.10.2, CPU devices). So sharded solves check outside `jit`
    (`_errors.check_solve`)."""
    if sharding is None:
        return eqx.error_if(x, pred, msg)
    return x


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that holds a full copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """Every array leaf of `tree` placed with `sharding` (replicated); other leaves
    unchanged. Across processes, every process must hold the same values (they do in
    `train`: the same key and data give the same initial model); each copies them from
    its own host memory onto its own devices."""

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


def to_host(tree: PyTree) -> PyTree:
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
