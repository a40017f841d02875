"""Device mesh, logical-axis sharding rules and multi-host start-up.

The same code runs on one CPU, 8 fake CPU devices, one GPU and a TPU pod slice: arrays are
annotated with *logical* axis names and a small table of rules maps those names onto the axes
of a 3-D device mesh ``(data, fsdp, tensor)``.

Config keys (an ``ml_collections.ConfigDict`` or any mapping)::

    mesh:
      data: 1        # pure data parallelism (parameters replicated across it)
      fsdp: -1       # data parallelism with parameters/optimizer state sharded across it
      tensor: 1      # tensor (model) parallelism inside layers
    sharding:
      logical_axis_rules: [[logical_name, mesh_axes], ...]   # optional; defaults below

A mesh size of ``-1`` means "all devices left over" (at most one axis may use it); the product
of the sizes must equal the device count. ``mesh_axes`` in a rule is a mesh axis name, a
sequence of them (the dimension is sharded over their product) or ``None`` (replicated).

Rule semantics are flax.linen's (so parameter shardings computed here and activation
constraints made with ``nn.with_logical_constraint`` agree): rules are applied in order, and a
rule assigns its mesh axes to an array dimension only if that dimension is still unassigned and
none of those mesh axes is already used by another dimension of the same array. That is why
``batch`` comes first in the defaults: on an activation ``[batch, length, embed]`` the batch
dimension takes ``(data, fsdp)`` and ``embed`` (whose rule wants ``fsdp``) stays replicated,
while on a parameter ``[embed, mlp]`` ``embed`` is sharded over ``fsdp``.

Divisibility: a parameter dimension whose size is not divisible by the product of its mesh axis
sizes is replicated instead, with a logged warning naming the array and the dimension (the
alternative, an XLA error at compile time, tells the user less). A batch whose leading size is
not divisible by the data-parallel device count is a configuration error and raises.

Logical names used by the models: ``vocab``, ``embed``, ``mlp``, ``heads``, ``kv_heads``,
``head_dim``, ``layers`` (parameters) and ``batch``, ``length`` plus the parameter names
(activations). Every logical name that appears on an array must have a rule (a rule with
``None`` replicates explicitly), so a typo fails loudly instead of silently replicating.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
"""Mesh axis names, outermost first (``data`` spans hosts, ``tensor`` stays within a host)."""

LOGICAL_AXES: tuple[str, ...] = (
    "vocab", "embed", "mlp", "heads", "kv_heads", "head_dim", "layers", "batch", "length",
)
"""Logical axis names the rules may mention."""

MeshAxes = str | tuple[str, ...] | None
LogicalRules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_LOGICAL_AXIS_RULES: LogicalRules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
)
"""FSDP over ``embed`` + Megatron-style tensor parallelism over heads/MLP/vocab."""


# --------------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------------


def mesh_shape(mesh_config: Mapping[str, Any], num_devices: int) -> dict[str, int]:
    """Resolves ``{data, fsdp, tensor}`` sizes (``-1`` = the rest) for ``num_devices``.

    Missing axes default to 1. Raises ``ValueError`` naming the offending ``mesh.<axis>`` key
    for unknown axes, non-integer or non-positive sizes, more than one ``-1``, or sizes whose
    product does not match the device count.
    """
    config = dict(mesh_config)
    unknown = sorted(set(config) - set(MESH_AXES))
    if unknown:
        raise ValueError(
            f"Unknown mesh axis key(s) {', '.join(f'mesh.{k}' for k in unknown)}; "
            f"valid axes are {MESH_AXES}."
        )
    sizes: dict[str, int] = {}
    for axis in MESH_AXES:
        size = config.get(axis, 1)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
            raise ValueError(f"mesh.{axis} must be an integer (or -1), got {size!r}.")
        if size == 0 or size < -1:
            raise ValueError(f"mesh.{axis} must be a positive integer or -1, got {size}.")
        sizes[axis] = int(size)
    rest = [axis for axis, size in sizes.items() if size == -1]
    if len(rest) > 1:
        raise ValueError(
            f"At most one mesh axis may be -1 ('the rest'); got -1 for "
            f"{', '.join(f'mesh.{a}' for a in rest)}."
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if rest:
        if num_devices % fixed:
            raise ValueError(
                f"mesh.{rest[0]} = -1 cannot be resolved: the other axes multiply to {fixed}, "
                f"which does not divide the {num_devices} devices."
            )
        sizes[rest[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise ValueError(
            "Mesh sizes "
            + ", ".join(f"mesh.{a}={s}" for a, s in sizes.items())
            + f" multiply to {fixed}, but there are {num_devices} devices; set one axis to -1 "
            "or change the sizes."
        )
    return sizes


def make_mesh(
    mesh_config: Mapping[str, Any], devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a ``jax.sharding.Mesh`` with Auto axes ``(data, fsdp, tensor)`` from config.

    Uses ``mesh_utils.create_device_mesh`` so TPU topologies get an ICI-friendly layout
    (falling back to a plain reshape of the device list where it has no layout for the
    device kind).
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    try:
        device_grid = mesh_utils.create_device_mesh(shape, devices)
    except (NotImplementedError, ValueError, AssertionError):
        device_grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


# --------------------------------------------------------------------------------------------
# Logical-axis rules
# --------------------------------------------------------------------------------------------


def _normalize_mesh_axes(logical: str, mesh_axes: Any) -> MeshAxes:
    if mesh_axes is None:
        return None
    names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
    unknown = [n for n in names if n not in MESH_AXES]
    if unknown or not names:
        raise ValueError(
            f"sharding.logical_axis_rules: rule for '{logical}' maps to unknown mesh axis "
            f"{unknown or names!r}; valid mesh axes are {MESH_AXES} or None."
        )
    return names[0] if len(names) == 1 else names


def validate_rules(
    rules: Sequence[Sequence[Any]], known_logical_axes: Sequence[str] = LOGICAL_AXES
) -> LogicalRules:
    """Checks and normalises ``(logical_name, mesh_axes)`` pairs into a tuple of tuples.

    Raises ``ValueError`` naming unknown logical names, unknown mesh axes or malformed pairs.
    """
    normalized = []
    for index, rule in enumerate(rules):
        if isinstance(rule, str) or len(rule) != 2:
            raise ValueError(
                f"sharding.logical_axis_rules[{index}] must be a (logical_name, mesh_axes) "
                f"pair, got {rule!r}."
            )
        logical, mesh_axes = rule
        normalized.append((logical, _normalize_mesh_axes(logical, mesh_axes)))
    unknown = sorted({logical for logical, _ in normalized} - set(known_logical_axes))
    if unknown:
        raise ValueError(
            f"sharding.logical_axis_rules: unknown logical axis name(s) {unknown}; "
            f"known names are {tuple(known_logical_axes)}."
        )
    return tuple(normalized)


def rules_from_config(config: Mapping[str, Any] | None) -> LogicalRules:
    """Reads ``sharding.logical_axis_rules`` from a config section (defaults if absent)."""
    rules = None if config is None else config.get("logical_axis_rules")
    return validate_rules(DEFAULT_LOGICAL_AXIS_RULES if rules is None else rules)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: LogicalRules) -> Iterator[None]:
    """Makes ``mesh`` current and ``rules`` active for ``nn.with_logical_constraint``.

    Use around tracing/compiling a jitted function whose model code calls
    ``nn.with_logical_constraint(x, ("batch", "length", "embed"))``; outside this context
    those calls are no-ops.
    """
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def _is_axes_leaf(node: Any) -> bool:
    """A leaf of a logical-axes tree: a tuple (or PartitionSpec) of names/None, or None."""
    return node is None or (
        isinstance(node, tuple) and all(a is None or isinstance(a, str) for a in node)
    )


def _check_names_have_rules(axes: Sequence[str | None], rules: LogicalRules, where: str):
    named = {logical for logical, _ in rules}
    missing = [a for a in axes if a is not None and a not in named]
    if missing:
        raise ValueError(
            f"Logical axis name(s) {missing} on {where} have no entry in "
            f"sharding.logical_axis_rules (add a rule, with None to replicate)."
        )


def logical_to_partition_spec(
    logical_axes: Sequence[str | None],
    rules: LogicalRules,
    mesh: Mesh,
    shape: Sequence[int] | None = None,
    where: str = "array",
) -> PartitionSpec:
    """Mesh ``PartitionSpec`` for one array's logical axes (flax rule semantics).

    With ``shape``, dimensions not divisible by their mesh axes' total size are replicated
    and a warning naming ``where`` is logged.
    """
    logical_axes = tuple(logical_axes)
    _check_names_have_rules(logical_axes, rules, where)
    if shape is not None and len(shape) != len(logical_axes):
        raise ValueError(
            f"{where}: logical axes {logical_axes} have {len(logical_axes)} entries but the "
            f"array has shape {tuple(shape)}."
        )
    spec = list(nn.logical_to_mesh_axes(logical_axes, rules))
    if shape is not None:
        for dim, (size, mesh_axes) in enumerate(zip(shape, spec, strict=True)):
            if mesh_axes is None:
                continue
            names = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
            devices = math.prod(mesh.shape[n] for n in names)
            if size % devices:
                logger.warning(
                    "%s: dimension %d ('%s', size %d) is not divisible by mesh axes %s "
                    "(%d devices); replicating it instead.",
                    where, dim, logical_axes[dim], size, names, devices,
                )
                spec[dim] = None
    return PartitionSpec(*spec)


def logical_to_sharding(
    logical_axes_tree: Any, mesh: Mesh, rules: LogicalRules, shapes: Any = None
) -> Any:
    """Maps a pytree of logical-axes tuples to a pytree of ``NamedSharding``.

    A ``None`` leaf means "no annotation" and is replicated whatever its rank. ``shapes``
    (optional) is a matching pytree of arrays / ``jax.ShapeDtypeStruct`` used for the
    divisibility fallback and a rank check.
    """

    def one(path: Any, axes: Sequence[str | None] | None, x: Any = None) -> NamedSharding:
        if axes is None:
            return replicated(mesh)
        shape = None if shapes is None else np.shape(x)
        spec = logical_to_partition_spec(axes, rules, mesh, shape, jax.tree_util.keystr(path))
        return NamedSharding(mesh, spec)

    trees = (logical_axes_tree,) if shapes is None else (logical_axes_tree, shapes)
    return jax.tree_util.tree_map_with_path(one, *trees, is_leaf=_is_axes_leaf)


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding on ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def train_state_shardings(
    abstract_state: Any, param_logical_axes: Any, mesh: Mesh, rules: LogicalRules
) -> Any:
    """Shardings for a whole train state from ``jax.eval_shape`` of its init.

    Every subtree of ``abstract_state`` with the same tree structure as ``param_logical_axes``
    (and matching ranks) is sharded like the parameters: that covers the parameters
    themselves and the optimizer moments optax keeps as param-shaped trees (AdamW's ``mu``
    and ``nu``, momentum traces, ...). All other leaves (step counters, PRNG keys, schedule
    counts) are replicated.
    """
    axes_leaves, axes_def = jax.tree.flatten(param_logical_axes, is_leaf=_is_axes_leaf)

    def is_param_like(node: Any) -> bool:
        leaves, treedef = jax.tree.flatten(node)
        return treedef == axes_def and all(
            axes is None or len(axes) == np.ndim(leaf)
            for axes, leaf in zip(axes_leaves, leaves, strict=True)
        )

    matched: list[str] = []

    def shard(path: Any, node: Any) -> Any:
        if is_param_like(node):
            matched.append(jax.tree_util.keystr(path))
            return logical_to_sharding(param_logical_axes, mesh, rules, shapes=node)
        return replicated(mesh)

    shardings = jax.tree_util.tree_map_with_path(shard, abstract_state, is_leaf=is_param_like)
    if not matched:
        raise ValueError(
            "train_state_shardings: no subtree of the state matches the structure of "
            "param_logical_axes; pass the logical axes of the parameters in the state."
        )
    return shardings


# --------------------------------------------------------------------------------------------
# Batches and multi-host input
# --------------------------------------------------------------------------------------------


def batch_partition_spec(rules: LogicalRules) -> PartitionSpec:
    """``PartitionSpec`` sharding only the leading (``batch``) dimension."""
    return nn.logical_to_mesh_axes(("batch",), rules)


def batch_sharding(mesh: Mesh, rules: LogicalRules) -> NamedSharding:
    """Sharding for arrays whose leading axis is the batch (other axes replicated)."""
    return NamedSharding(mesh, batch_partition_spec(rules))


def _batch_devices(mesh: Mesh, rules: LogicalRules) -> int:
    axes = batch_partition_spec(rules)[0]
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(mesh.shape[n] for n in names)


def batch_shardings(batch: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Batch sharding for every array leaf of ``batch`` (scalars replicated).

    Raises ``ValueError`` naming the leaf whose leading size does not divide the number of
    devices along the batch mesh axes.
    """
    devices = _batch_devices(mesh, rules)
    sharding = batch_sharding(mesh, rules)

    def one(path: Any, x: Any) -> NamedSharding:
        if np.ndim(x) == 0:
            return replicated(mesh)
        if np.shape(x)[0] % devices:
            raise ValueError(
                f"batch{jax.tree_util.keystr(path)}: leading size {np.shape(x)[0]} is not "
                f"divisible by the {devices} devices of the batch mesh axes "
                f"{batch_partition_spec(rules)[0]}."
            )
        return sharding

    return jax.tree_util.tree_map_with_path(one, batch)


def host_local_batch_slice(global_batch_size: int, mesh: Mesh, rules: LogicalRules) -> slice:
    """Rows of the global batch this process must load (its devices' shards, contiguous).

    On one process this is ``slice(0, global_batch_size)``. Raises if the batch does not
    divide over the batch mesh axes or this process's rows are not contiguous.
    """
    devices = _batch_devices(mesh, rules)
    if global_batch_size % devices:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {devices} "
            f"devices of the batch mesh axes."
        )
    index_map = batch_sharding(mesh, rules).addressable_devices_indices_map(
        (global_batch_size,)
    )
    rows = sorted({index[0].indices(global_batch_size)[:2] for index in index_map.values()})
    start, stop = rows[0][0], rows[-1][1]
    covered = sum(b - a for a, b in rows)
    if covered != stop - start:
        raise ValueError(
            f"Process {jax.process_index()} owns non-contiguous batch rows {rows}; use a mesh "
            "whose batch axes keep each host's devices together."
        )
    return slice(start, stop)


def make_global_batch(
    local_batch: Any, global_batch_size: int, mesh: Mesh, rules: LogicalRules
) -> Any:
    """Assembles global batch arrays from each process's slice of the global batch.

    ``local_batch`` holds rows ``host_local_batch_slice(...)`` of every array (NumPy or JAX);
    the result is a pytree of global ``jax.Array`` sharded by ``batch_sharding``.
    """
    rows = host_local_batch_slice(global_batch_size, mesh, rules)
    sharding = batch_sharding(mesh, rules)

    def one(path: Any, x: Any) -> jax.Array:
        if np.ndim(x) == 0 or np.shape(x)[0] != rows.stop - rows.start:
            raise ValueError(
                f"local_batch{jax.tree_util.keystr(path)}: expected leading size "
                f"{rows.stop - rows.start} (rows {rows.start}:{rows.stop} of "
                f"{global_batch_size}), got shape {np.shape(x)}."
            )
        global_shape = (global_batch_size, *np.shape(x)[1:])
        return jax.make_array_from_process_local_data(sharding, np.asarray(x), global_shape)

    return jax.tree_util.tree_map_with_path(one, local_batch)


def place_batch(batch: Any, mesh: Mesh, rules: LogicalRules) -> Any:
    """Global batch arrays from a host batch that every process holds whole (NumPy, leading
    axis ``N``): each process contributes its own rows (:func:`make_global_batch`)."""
    n = len(jax.tree.leaves(batch)[0])
    rows = host_local_batch_slice(n, mesh, rules)
    return make_global_batch(jax.tree.map(lambda x: x[rows], batch), n, mesh, rules)


# --------------------------------------------------------------------------------------------
# Multi-host start-up
# --------------------------------------------------------------------------------------------


def is_multiprocess_environment(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment describes a multi-process JAX job.

    Recognises an explicit coordinator (``JAX_COORDINATOR_ADDRESS``), SLURM with more than one
    task, Open MPI with more than one rank, and multi-host Cloud TPU slices
    (``TPU_WORKER_HOSTNAMES`` listing several workers).
    """
    env = os.environ if env is None else env

    def count(key: str) -> int:
        try:
            return int(env.get(key, "1"))
        except ValueError:
            return 1

    hostnames = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    return (
        bool(env.get("JAX_COORDINATOR_ADDRESS"))
        or ("SLURM_JOB_ID" in env and count("SLURM_NTASKS") > 1)
        or count("OMPI_COMM_WORLD_SIZE") > 1
        or len(hostnames) > 1
    )


def initialize_distributed(env: Mapping[str, str] | None = None) -> bool:
    """Calls ``jax.distributed.initialize()`` when running multi-process; idempotent.

    Must run before any other JAX call. ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` are passed on when set; otherwise JAX's cluster auto-detection (SLURM,
    Open MPI, Cloud TPU metadata, Kubernetes) fills them in. Returns whether the job is
    multi-process; on a single process nothing is initialised.
    """
    env = os.environ if env is None else env
    if not is_multiprocess_environment(env):
        return False
    if jax.distributed.is_initialized():
        return True
    kwargs: dict[str, Any] = {}
    if env.get("JAX_COORDINATOR_ADDRESS"):
        kwargs["coordinator_address"] = env["JAX_COORDINATOR_ADDRESS"]
    if env.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if env.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    logger.info(
        "jax.distributed initialised: process %d of %d, %d local / %d global devices.",
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count(),
    )
    return True
