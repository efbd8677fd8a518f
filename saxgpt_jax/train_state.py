"""Train state, optimizer, learning-rate schedule, and the jitted train / eval steps on a device mesh.

One compiled train step does gradient accumulation over `config.train.num_microbatches` with a
`lax.scan`, clips by global norm and applies AdamW. Parameters are float32 pure dicts
(`nnx.to_pure_dict` of the model's `nnx.Param`s); the model is rebuilt inside the step with
`nnx.merge`, and computes in `config.model.dtype`. Every array of the state is sharded by
`sharding.LOGICAL_AXIS_RULES`; batches are sharded over (data, fsdp).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from saxgpt_jax import checkpoint
from saxgpt_jax import losses
from saxgpt_jax import sharding as sharding_lib

# Batch arrays and their dtypes: src int32 [B,K,L], src_mask bool [B,L], tgt_in/tgt_out int32 [B,K,L-1].
BATCH_KEYS = ('src', 'src_mask', 'tgt_in', 'tgt_out')


@struct.dataclass
class TrainState:
  step: jax.Array  # int32 []: optimizer steps done
  params: Any  # pure dict of float32 parameter arrays
  opt_state: Any  # optax state over `params`
  rng: jax.Array  # uint32 [2]: raw key data of the base dropout key (checkpointable)

  def checkpoint_items(self) -> dict[str, Any]:
    """What checkpoint.train_save_args stores beside the params."""
    return {'opt_state': self.opt_state, 'step': self.step, 'rng': self.rng}


def learning_rate_schedule(train_config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate over warmup_steps, then cosine decay to min_learning_rate
  at num_steps."""
  warmup = int(train_config.warmup_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train_config.learning_rate, warmup_steps=warmup,
      decay_steps=max(int(train_config.num_steps), warmup + 1), end_value=train_config.min_learning_rate)


def make_optimizer(train_config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """clip_by_global_norm then AdamW (decoupled weight decay on every parameter, as torch AdamW)."""
  return optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip_norm),
      optax.adamw(learning_rate_schedule(train_config), b1=train_config.b1, b2=train_config.b2,
                  eps=train_config.eps, weight_decay=train_config.weight_decay))


def batch_shapes(config: ml_collections.ConfigDict, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of one batch of `batch_size` windows (L = seq_len + K + 1 delayed positions)."""
  k = config.model.num_codebooks
  length = config.data.seq_len + k + 1
  return {
      'src': jax.ShapeDtypeStruct((batch_size, k, length), jnp.int32),
      'src_mask': jax.ShapeDtypeStruct((batch_size, length), jnp.bool_),
      'tgt_in': jax.ShapeDtypeStruct((batch_size, k, length - 1), jnp.int32),
      'tgt_out': jax.ShapeDtypeStruct((batch_size, k, length - 1), jnp.int32),
  }


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Everything the training loop calls, built once per (config, mesh).

  Attributes:
    mesh: the (data, fsdp, tensor) mesh.
    state_shardings: TrainState of NamedShardings.
    batch_sharding: NamedSharding of every batch array (batch over data x fsdp).
    init: seed -> TrainState, sharded (one compiled call).
    train_step: (TrainState, batch) -> (TrainState, metrics); donates the state.
    eval_step: (params, batch) -> token stats {'nll_sum','correct','count'} f32 [K].
  """
  config: ml_collections.ConfigDict
  mesh: Mesh
  graphdef: Any
  rest: Any
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule
  abstract_state: TrainState
  state_shardings: TrainState
  batch_sharding: NamedSharding
  init: Any
  train_step: Any
  eval_step: Any

  @property
  def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
    shapes = batch_shapes(self.config, self.config.train.global_batch_size)
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.batch_sharding) for k, v in shapes.items()}

  def abstract_sharded_state(self) -> TrainState:
    return sharding_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)


def _state_shardings(abstract_params_state: nnx.State, abstract_state: TrainState, optimizer, mesh: Mesh
                     ) -> TrainState:
  params = sharding_lib.param_shardings(abstract_params_state, mesh)
  replicated = sharding_lib.replicated(mesh)
  opt_state = optax.tree_map_params(
      optimizer, lambda _, s: s, abstract_state.opt_state, params,
      transform_non_params=lambda _: replicated)
  return TrainState(step=replicated, params=params, opt_state=opt_state, rng=replicated)


DROPOUT_RNGS = ('threefry2x32', 'philox4x32', 'rbg', 'unsafe_rbg')


def dropout_rng(train_config: ml_collections.ConfigDict) -> str:
  """`train.dropout_rng`, threefry for configs written before the field existed."""
  return train_config.get('dropout_rng', DROPOUT_RNGS[0])


def dropout_key(key: jax.Array, impl: str) -> jax.Array:
  """The dropout key of a microbatch in JAX PRNG `impl`, drawn from its threefry key (the checkpointed
  stream). 'philox4x32' hashes with JAX's Philox instead of threefry (the same bits on every backend);
  'rbg' makes the masks' random bits with XLA's RngBitGenerator instead of threefry hashing:
  the same seed gives the same masks on one backend, but the bits differ across backends and XLA
  versions (configs/base.py `train.dropout_rng`)."""
  if impl == 'threefry2x32':
    return key
  width = jax.random.key_data(jax.random.key(0, impl=impl)).shape[-1]
  return jax.random.wrap_key_data(jax.random.bits(key, (width,), jnp.uint32), impl=impl)


def make_trainer(config: ml_collections.ConfigDict, mesh: Mesh) -> Trainer:
  """Builds the optimizer, shardings and jitted init / train / eval functions (compiled on first use
  or through `.lower(...).compile()`)."""
  model_cfg = checkpoint.model_config(config)
  graphdef, abstract_params_state, abstract_rest = checkpoint.abstract_model(config)
  rest = checkpoint.non_param_state(config, abstract_rest)
  optimizer = make_optimizer(config.train)
  schedule = learning_rate_schedule(config.train)
  num_microbatches = int(config.train.num_microbatches)
  padding_idx = config.model.padding_idx
  dropout_impl = dropout_rng(config.train)

  def init(seed):
    model = checkpoint.construct_model(model_cfg, seed)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    rng = jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 1))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=rng)

  abstract_state = jax.eval_shape(init, 0)
  state_shardings = _state_shardings(abstract_params_state, abstract_state, optimizer, mesh)
  batch_sharding = sharding_lib.batch_sharding(mesh)
  micro_sharding = NamedSharding(mesh, PartitionSpec(None, *batch_sharding.spec))

  def forward(params, batch, *, deterministic, dropout_key=None):
    model = nnx.merge(graphdef, params, rest)
    rngs = None if deterministic else nnx.Rngs(dropout=dropout_key)
    logits = model(batch['src'], batch['tgt_in'], batch['src_mask'], deterministic=deterministic, rngs=rngs)
    return losses.token_stats(logits, batch['tgt_out'], padding_idx)

  def microbatch_grads(params, microbatch, dropout_key):
    stats = forward(params, microbatch, deterministic=False, dropout_key=dropout_key)
    return stats['nll_sum'].sum(), stats

  def train_step(state: TrainState, batch):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.grad(microbatch_grads, has_aux=True)
    microbatch_grads_of = lambda microbatch, index: grad_fn(
        state.params, microbatch, dropout_key(jax.random.fold_in(step_key, index), dropout_impl))

    if num_microbatches == 1:  # no loop: no zero-filled sums to add to, and one program for XLA to schedule
      grads_sum, stats = microbatch_grads_of(batch, 0)
    else:
      # Microbatch i takes rows i, i+M, i+2M, ...: every device holds an equal part of every microbatch.
      def split(x):
        x = x.reshape(x.shape[0] // num_microbatches, num_microbatches, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, micro_sharding)

      def accumulate(carry, xs):
        grads, stats = microbatch_grads_of(*xs)
        return jax.tree.map(jnp.add, carry, (grads, stats)), None

      zero_grads = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, state.params),
                                                    state_shardings.params)
      k = config.model.num_codebooks
      zero_stats = {name: jnp.zeros((k,), jnp.float32) for name in ('nll_sum', 'correct', 'count')}
      (grads_sum, stats), _ = jax.lax.scan(
          accumulate, (zero_grads, zero_stats), (jax.tree.map(split, batch), jnp.arange(num_microbatches)))
    # d(mean NLL over every non-padding target of the whole batch) / d(params).
    grads = jax.tree.map(lambda g: g / jnp.maximum(stats['count'].sum(), 1.0), grads_sum)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state)
    metrics = {'stats': stats, 'grad_norm': grad_norm, 'learning_rate': schedule(state.step)}
    return new_state, metrics

  def eval_step(params, batch):
    return forward(params, batch, deterministic=True)

  replicated = sharding_lib.replicated(mesh)
  return Trainer(
      config=config, mesh=mesh, graphdef=graphdef, rest=rest, optimizer=optimizer, schedule=schedule,
      abstract_state=abstract_state, state_shardings=state_shardings, batch_sharding=batch_sharding,
      init=jax.jit(init, out_shardings=state_shardings),
      train_step=jax.jit(train_step, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, replicated), donate_argnums=0),
      eval_step=jax.jit(eval_step, in_shardings=(state_shardings.params, batch_sharding),
                        out_shardings=replicated),
  )


def param_count(trainer: Trainer) -> int:
  return sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))


def state_bytes_per_device(trainer: Trainer) -> int:
  """Bytes of parameters + optimizer state on the most loaded device."""
  return sharding_lib.bytes_per_device(
      sharding_lib.abstract_with_shardings((trainer.abstract_state.params, trainer.abstract_state.opt_state),
                                           (trainer.state_shardings.params, trainer.state_shardings.opt_state)))

