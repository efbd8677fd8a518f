"""Training-step benchmark: frames/s, step time, MFU and compile time; optionally against PyTorch.

One step = forward + backward + gradient clipping + AdamW update on `batch` windows of `frames` frames
(delayed: src [B, K, frames+K+1], tgt_in/tgt_out [B, K, frames+K]), dropout on, float32 parameters,
matmuls in the config's dtype. The JAX step is a minimal jitted `value_and_grad` + optax step built
here on `SaxGPT` and `losses.token_stats` (saxgpt_jax/train.py exposes no reusable step function), with
the optimiser settings of `config.train` at a constant learning rate. The torch step does the same
with `torch.optim.AdamW` on the eager reference.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
import optax
from flax import nnx

from saxgpt_jax import flops as flops_lib
from saxgpt_jax import losses
from saxgpt_jax.bench import compiles, timing
from saxgpt_jax.bench.inputs import random_batch, random_model
from saxgpt_jax.model import ModelConfig, SaxGPT, count_params


def optimizer(train_cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Clip by global norm, then AdamW with config.train's betas, eps and weight decay (constant lr)."""
  return optax.chain(
      optax.clip_by_global_norm(train_cfg.grad_clip_norm),
      optax.adamw(train_cfg.learning_rate, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                  weight_decay=train_cfg.weight_decay))


def make_jax_step(model: SaxGPT, tx: optax.GradientTransformation):
  """-> (jitted step(params, opt_state, batch, rng) -> (params, opt_state, loss), params, opt_state)."""
  graphdef, params = nnx.split(model, nnx.Param)

  def step(params, opt_state, batch, rng):

    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(batch['src'], batch['tgt_in'], batch['src_mask'], deterministic=False,
                                       rngs=nnx.Rngs(dropout=rng))
      return losses.mean_loss(losses.token_stats(logits, batch['tgt_out']))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1)), params, tx.init(params)


def _torch_step(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray], dtype: str):
  """-> a callable running one eager PyTorch training step of the reference model."""
  import torch  # only with --reference=torch

  from saxgpt_jax.bench import torch_reference

  torch.manual_seed(config.train.seed)
  model = torch_reference.SaxGPTTorch(torch_reference.model_config_from_jax(config.model)).train()
  t = config.train
  opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, betas=(t.b1, t.b2), eps=t.eps,
                          weight_decay=t.weight_decay)
  tensors = {k: torch.from_numpy(np.asarray(v, np.int64 if v.dtype != bool else bool)) for k, v in batch.items()}

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      logits = model(tensors['src'], tensors['tgt_in'], tensors['src_mask'])
    loss = torch_reference.token_loss(logits.float(), tensors['tgt_out'])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
    opt.step()
    return loss.detach().item()

  return step


def run(config: ml_collections.ConfigDict, *, batch: int, frames: int, steps: int, warmup: int = 1,
        reference: str = '', peak_flops: float | None = None) -> dict[str, Any]:
  """Times `steps` training steps (after `warmup`), alternating with torch when reference='torch'."""
  model_cfg = ModelConfig.from_config(config.model)
  src_len = frames + model_cfg.num_codebooks + 1
  if src_len > model_cfg.max_seq_len:
    raise ValueError(f'{frames} frames need {src_len} delayed positions but model.max_seq_len is '
                     f'{model_cfg.max_seq_len}; lower --frames or raise --config.model.max_seq_len')
  data = random_batch(model_cfg, batch, frames, seed=config.train.seed)
  model = random_model(model_cfg, config.train.seed)
  step_fn, params, opt_state = make_jax_step(model, optimizer(config.train))
  device_batch = jax.device_put(data)
  rng = jax.random.key(config.train.seed)

  logging.info('train: lowering and compiling the step (%d params)', count_params(model))
  with compiles.watch() as lowering:
    lowered = step_fn.lower(params, opt_state, device_batch, rng)
  with compiles.watch() as compiling:
    compiled = lowered.compile()
  lower_s, compile_s = lowering.wall_s, compiling.wall_s

  logging.info('train: lowered in %.1f s, compiled in %.1f s; timing %d steps', lower_s, compile_s, steps)
  state = {'params': params, 'opt_state': opt_state, 'loss': None}

  def jax_step():
    state['params'], state['opt_state'], state['loss'] = compiled(state['params'], state['opt_state'],
                                                                  device_batch, rng)
    state['loss'].block_until_ready()

  runs = {'jax': jax_step}
  if reference == 'torch':
    runs['torch'] = _torch_step(config, data, model_cfg.dtype)
  seconds = timing.interleaved(runs, repeats=steps, warmup=warmup)

  flops_per_step = flops_lib.train_flops_per_step(model_cfg, batch, src_len, src_len - 1)
  device = jax.devices()[0]
  peak_source = 'flag --peak_flops'
  if peak_flops is None:
    peak_flops, peak_source = flops_lib.peak_flops_per_device(device), 'bfloat16 data-sheet peak'
  if peak_flops is None:
    peak_flops = timing.measured_matmul_flops(model_cfg.dtype)
    peak_source = f'measured {model_cfg.dtype} 2048^3 matmul on {device.device_kind}'
  result: dict[str, Any] = {
      'command': 'train', 'dtype': model_cfg.dtype, 'batch': batch, 'frames': frames, 'src_len': src_len,
      'tgt_len': src_len - 1, 'params': count_params(model), 'flops_per_step': flops_per_step,
      'peak_flops': peak_flops, 'peak_source': peak_source,
  }
  for name, secs in seconds.items():
    step_s = timing.summary(secs)['median_s']
    result[name] = {'step_s': step_s, 'frames_per_s': batch * frames / step_s,
                    'tflops_per_s': flops_per_step / step_s / 1e12,
                    'mfu': flops_lib.mfu(flops_per_step, step_s, peak_flops), **_spread(secs)}
  result['jax'].update(lower_s=lower_s, compile_s=compile_s, compile_cpu_s=lowering.cpu_s + compiling.cpu_s,
                       loss=float(state['loss']))
  if 'torch' in result:
    result['speedup_vs_torch'] = result['jax']['frames_per_s'] / result['torch']['frames_per_s']
  return result


def _spread(seconds: list[float]) -> dict[str, float]:
  s = timing.summary(seconds)
  return {'min_step_s': s['min_s'], 'max_step_s': s['max_s'], 'timed_steps': s['count']}
