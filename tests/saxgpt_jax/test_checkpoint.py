"""Checkpoint round trips: save_params/load_model, partial restore of training checkpoints, 8 -> 1 devices."""

import importlib.util
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import tiny
from saxgpt_jax import checkpoint
from saxgpt_jax import sharding as sharding_lib


def small_config():
  config = tiny.get_config()
  config.model.num_encoder_layers = 1
  config.model.num_decoder_layers = 1
  config.model.d_model = 32
  config.model.dim_feedforward = 64
  return config


def random_model(config, seed=0):
  """SaxGPT with numpy random weights: no compile (checkpoint round trips only need distinct values)."""
  graphdef, abstract, rest = checkpoint.abstract_model(config)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), nnx.to_pure_dict(abstract))
  return nnx.merge(graphdef, params, rest)


def params_of(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def assert_same_params(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_save_params_then_load_model(tmp_path, caplog):
  config = small_config()
  model = random_model(config, seed=3)
  directory = checkpoint.save_params(tmp_path / 'converted', model, config)
  assert json.loads((directory / 'config.json').read_text())['model']['d_model'] == 32
  with caplog.at_level(logging.WARNING):
    loaded, loaded_config = checkpoint.load_model(tmp_path / 'converted')
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # a clean load warns of nothing
  assert loaded_config.model.to_dict() == config.model.to_dict()
  assert_same_params(params_of(model), params_of(loaded))
  assert type(loaded).__name__ == 'SaxGPT' and loaded.cfg == model.cfg


def test_load_model_errors_name_the_problem(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='config.json'):
    checkpoint.load_model(tmp_path)
  model = random_model(small_config())
  checkpoint.save_params(tmp_path / 'c', model, small_config())
  with pytest.raises(checkpoint.CheckpointError, match='available steps'):
    checkpoint.load_model(tmp_path / 'c', step=7)
  with pytest.raises(checkpoint.CheckpointError, match='val_loss'):
    checkpoint.load_model(tmp_path / 'c', best=True)
  # Parameters of another shape (here: another feed-forward width) are named before orbax restores.
  wider = small_config()
  wider.model.dim_feedforward = 96
  abstract = nnx.to_pure_dict(checkpoint.abstract_model(wider)[1])
  with pytest.raises(checkpoint.CheckpointError, match=r'decoder_layers/0/ff/w1: stored \(32, 64\), model \(32, 96\)'):
    checkpoint.restore_params(tmp_path / 'c', abstract)


def test_training_checkpoint_on_8_devices_restores_on_1(tmp_path):
  """A full training checkpoint (params + opt_state + rng, sharded on a 2x2x2 mesh) restores params-only
  through load_model, best or latest, and in full under a 1-device mesh."""
  config = small_config()
  mesh8 = sharding_lib.make_mesh({'data': 2, 'fsdp': 2, 'tensor': 2})
  assert len(jax.devices()) == 8
  model = random_model(config, seed=1)
  _, abstract, _ = checkpoint.abstract_model(config)
  shardings8 = sharding_lib.param_shardings(abstract, mesh8)
  params = jax.device_put(params_of(model), shardings8)
  assert params['head_w'].sharding.spec == jax.sharding.PartitionSpec('fsdp', None, 'tensor')
  tx = optax.adam(1e-3)
  opt_state = jax.jit(tx.init)(params)  # one compile instead of one per eager op
  train = {'opt_state': opt_state, 'step': jnp.int32(5), 'rng': jax.random.key_data(jax.random.key(0))}
  workdir = tmp_path / 'run'
  ckpt_dir = workdir / checkpoint.CHECKPOINT_SUBDIR
  with checkpoint.manager(ckpt_dir, keep_latest=2, keep_best=1) as mngr:
    checkpoint.write_config(ckpt_dir, config)
    mngr.save(5, args=checkpoint.train_save_args(params, train), metrics={'val_loss': 1.0})
    bumped = jax.jit(lambda tree: jax.tree.map(lambda x: x + 1, tree))(params)
    mngr.save(10, args=checkpoint.train_save_args(bumped, train), metrics={'val_loss': 2.0})
    mngr.wait_until_finished()

  latest, _ = checkpoint.load_model(workdir)  # the workdir works as well as its checkpoints/ folder
  assert_same_params(params_of(latest), jax.tree.map(np.asarray, bumped))
  best, _ = checkpoint.load_model(ckpt_dir, best=True)
  assert_same_params(params_of(best), jax.tree.map(np.asarray, params))

  mesh1 = sharding_lib.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}, devices=jax.devices()[:1])
  shardings1 = sharding_lib.param_shardings(abstract, mesh1)
  abstract_params = sharding_lib.abstract_with_shardings(nnx.to_pure_dict(abstract), shardings1)
  replicated = sharding_lib.replicated(mesh1)
  abstract_train = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), train)
  with checkpoint.manager(ckpt_dir, read_only=True) as mngr:
    restored = mngr.restore(5, args=checkpoint.train_restore_args(abstract_params, abstract_train))
  assert restored['params']['head_w'].sharding.mesh.size == 1
  assert_same_params(restored['params'], jax.tree.map(np.asarray, params))
  assert_same_params(restored['train'], jax.tree.map(np.asarray, train))
  assert isinstance(restored['train']['opt_state'][0], optax.ScaleByAdamState)


def test_gs_paths_need_gcsfs_which_the_train_extra_installs(monkeypatch):
  assert str(checkpoint.as_path('gs://bucket/run')) == 'gs://bucket/run'  # no traffic: only the path object
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'gcsfs' else real(name, *a))
  with pytest.raises(checkpoint.CheckpointError, match=r"gs://bucket/run: gs:// paths need gcsfs.*pip install '\.\[train\]'"):
    checkpoint.as_path('gs://bucket/run')
  assert checkpoint.as_path('relative/dir').is_absolute()  # local paths never need it
