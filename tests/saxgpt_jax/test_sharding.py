"""Mesh sizes from config, the logical axis rules, and the shardings they give SaxGPT's parameters."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import tiny
from saxgpt_jax import checkpoint
from saxgpt_jax import sharding


def test_mesh_shape_fills_minus_one_and_explains_mismatches():
  assert sharding.mesh_shape({'data': -1, 'fsdp': 1, 'tensor': 1}, 8) == (8, 1, 1)
  assert sharding.mesh_shape({'data': 2, 'fsdp': -1, 'tensor': 2}, 8) == (2, 2, 2)
  with pytest.raises(sharding.MeshError, match='has 4 devices but there are 8'):
    sharding.mesh_shape({'data': 2, 'fsdp': 2, 'tensor': 1}, 8)
  with pytest.raises(sharding.MeshError, match='only one mesh axis may be -1'):
    sharding.mesh_shape({'data': -1, 'fsdp': -1, 'tensor': 1}, 8)
  with pytest.raises(sharding.MeshError, match='not divisible'):
    sharding.mesh_shape({'data': -1, 'fsdp': 3, 'tensor': 1}, 8)
  with pytest.raises(sharding.MeshError, match='positive or -1'):
    sharding.mesh_shape({'data': 0, 'fsdp': 1, 'tensor': 1}, 8)
  mesh = sharding.make_mesh({'data': -1, 'fsdp': 1, 'tensor': 2})
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 1, 'tensor': 2}


def test_logical_rules():
  assert sharding.logical_to_mesh_spec(('embed', 'mlp')) == P('fsdp', 'tensor')
  assert sharding.logical_to_mesh_spec(('batch', None, 'kv')) == P(('data', 'fsdp'), None, None)
  assert sharding.logical_to_mesh_spec(('codebooks', 'embed', 'vocab')) == P(None, 'fsdp', 'tensor')
  assert sharding.logical_to_mesh_spec(('heads', 'mlp')) == P('tensor', None)  # a mesh axis shards one dim
  with pytest.raises(KeyError, match="'time' has no rule"):
    sharding.logical_to_mesh_spec(('time',))


def test_model_param_shardings_follow_the_rules_and_fit_the_shapes():
  config = tiny.get_config()
  _, abstract, _ = checkpoint.abstract_model(config)
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(abstract, mesh))
  assert specs['head_w'] == P('fsdp', None, 'tensor')
  assert specs['embed'] == P(None, None, 'fsdp')
  flat = nnx.to_flat_state(abstract)
  assert len(jax.tree.leaves(specs)) == len(list(flat))
  # 4 heads do not split 8 ways: that dimension stays whole, the others keep their axes.
  mesh8 = sharding.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 8})
  for (path, variable), sharding_ in zip(flat, jax.tree.leaves(sharding.param_shardings(abstract, mesh8))):
    shape = variable.get_value().shape
    for dim, axes in zip(shape, sharding_.spec):
      if axes is not None:
        assert dim % 8 == 0, (path, shape, sharding_.spec)


def test_global_batch_and_bytes_per_device():
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  local = {'src': np.arange(8 * 3).reshape(8, 3).astype(np.int32)}
  batch = sharding.global_batch(local, mesh)
  np.testing.assert_array_equal(np.asarray(batch['src']), local['src'])
  assert batch['src'].sharding.spec == P(('data', 'fsdp'))
  assert sharding.batch_shards(mesh) == 4
  assert sharding.bytes_per_device(batch) == 2 * 3 * 4  # 2 of 8 rows per device (tensor replicates)
  assert sharding.bytes_per_device(jax.device_put(local['src'], sharding.replicated(mesh))) == 8 * 3 * 4
