"""The (data, fsdp, tensor) device mesh and the one table that maps logical axis names onto it.

Parameters carry logical axis names through `nnx.with_partitioning` ('embed', 'mlp', ...); batches
use 'batch'. `LOGICAL_AXIS_RULES` is the only place that says which mesh axes those names use, in the
format `flax.core.spmd.logical_axis_rules` / `nnx.logical_axis_rules` take, so model code may also
constrain activations by logical name inside that context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# Logical axis -> mesh axes (None = replicated). T5X-style: batch over data+fsdp, weights over fsdp on
# their model dimension and over tensor on heads / mlp / vocab.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('codebooks', None),
    ('norm', None),
)


class MeshError(ValueError):
  """The mesh config does not fit the devices."""


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Sizes of (data, fsdp, tensor) from `config.mesh`; at most one -1, which takes the rest."""
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  unknown = [name for name, size in zip(MESH_AXES, sizes) if size == -1]
  if any(size == 0 or size < -1 for size in sizes):
    raise MeshError(f'mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}')
  if len(unknown) > 1:
    raise MeshError(f'only one mesh axis may be -1, got {unknown}: set the others explicitly')
  known = math.prod(size for size in sizes if size != -1)
  if unknown:
    if num_devices % known:
      raise MeshError(
          f'{num_devices} devices are not divisible by the fixed mesh axes '
          f'{dict(zip(MESH_AXES, sizes))} (product {known}); change --config.mesh.*')
    sizes = [num_devices // known if size == -1 else size for size in sizes]
  if math.prod(sizes) != num_devices:
    raise MeshError(
        f'mesh {dict(zip(MESH_AXES, sizes))} has {math.prod(sizes)} devices but there are '
        f'{num_devices}; make data*fsdp*tensor equal the device count or set one axis to -1')
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh with axes (data, fsdp, tensor) over `devices` (default: every device of every process)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_mesh_spec(logical_axes: Sequence[str | None] | PartitionSpec | None) -> PartitionSpec:
  """('embed', 'mlp') -> P('fsdp', 'tensor') through `LOGICAL_AXIS_RULES`; unknown names are an error."""
  if logical_axes is None:
    return PartitionSpec()
  rules = dict(LOGICAL_AXIS_RULES)
  used, spec = set(), []
  for name in logical_axes:
    if name is None:
      spec.append(None)
      continue
    if name not in rules:
      raise KeyError(f'logical axis {name!r} has no rule in sharding.LOGICAL_AXIS_RULES; add one')
    target = rules[name]
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)  # a mesh axis shards at most one dimension
    used.update(axes)
    spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*spec)


def _fit_to_shape(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide (e.g. tensor=2 over 1 codebook), keeping the rest."""
  fitted = []
  for dim, entry in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    kept, size = [], 1
    for axis in axes:
      if dim % (size * mesh.shape[axis]) == 0:
        kept.append(axis)
        size *= mesh.shape[axis]
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*fitted)


def _variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  metadata = variable.get_metadata()
  return metadata.get('out_sharding') or metadata.get('sharding_names') or metadata.get('sharding')


def param_shardings(abstract_state: nnx.State, mesh: Mesh) -> dict:
  """NamedShardings for a params `nnx.State` (arrays or ShapeDtypeStructs), as a pure dict like
  `nnx.to_pure_dict(abstract_state)`, from each Variable's logical axis names."""

  def sharding_of(variable):
    spec = logical_to_mesh_spec(_variable_logical_axes(variable))
    return NamedSharding(mesh, _fit_to_shape(spec, variable.get_value().shape, mesh))

  return nnx.to_pure_dict(abstract_state, extract_fn=sharding_of)


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings` (same structure)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, logical_to_mesh_spec(('batch',)))


def batch_shards(mesh: Mesh) -> int:
  """How many ways the batch dimension is split (data * fsdp)."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's rows of each batch array -> global jax.Arrays sharded over (data, fsdp).

  Each process passes its own `b = global_batch // process_count` rows, in process order.
  """
  sharding = batch_sharding(mesh)
  return {
      name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
      for name, value in local_batch.items()
  }


def bytes_per_device(tree) -> int:
  """Bytes that the largest-loaded device holds of a tree of sharded jax.Arrays / ShapeDtypeStructs."""
  per_device: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    sharding = leaf.sharding
    shard_shape = sharding.shard_shape(leaf.shape)
    nbytes = math.prod(shard_shape) * np.dtype(leaf.dtype).itemsize
    for device in sharding.device_set:
      per_device[device] = per_device.get(device, 0) + nbytes
  return max(per_device.values(), default=0)
