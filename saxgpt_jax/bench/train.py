"""Training-step benchmark: frames/s, step time, MFU and compile time; optionally against PyTorch.

The JAX step is the training run's own: `train_state.make_trainer(config, mesh)` (forward + backward
with dropout, microbatch scan, global-norm clip, AdamW; float32 parameters, matmuls in the config's
dtype) on the config's mesh over every device, with `config.data.seq_len = frames` and
`config.train.global_batch_size = batch`. The batch is `batch` windows of `frames` frames (delayed:
src [B, K, frames+K+1], tgt_in/tgt_out [B, K, frames+K]). The torch step does the same with
`torch.optim.AdamW` on the eager reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from saxgpt_jax import flops as flops_lib
from saxgpt_jax import losses
from saxgpt_jax import sharding as sharding_lib
from saxgpt_jax import train as train_lib
from saxgpt_jax import train_state
from saxgpt_jax.bench import compiles, profile, reference_process, timing
from saxgpt_jax.bench.inputs import random_batch
from saxgpt_jax.model import ModelConfig


def _torch_step(config: ml_collections.ConfigDict, batch: dict[str, np.ndarray], dtype: str,
                jax_platform: str) -> dict[str, Callable[[], float]]:
  """-> {'step': one eager PyTorch training step of the reference model} (a factory for
  `reference_process.reference_runs`: built in this process or in the reference's own)."""
  import torch  # only with --reference=torch

  from saxgpt_jax.bench import torch_reference

  device = torch_reference.bench_device(jax_platform)
  torch.manual_seed(config.train.seed)
  model = torch_reference.SaxGPTTorch(torch_reference.model_config_from_jax(config.model)).to(device).train()
  t = config.train
  opt = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, betas=(t.b1, t.b2), eps=t.eps,
                          weight_decay=t.weight_decay)
  tensors = {k: torch.from_numpy(np.asarray(v, np.int64 if v.dtype != bool else bool)).to(device)
             for k, v in batch.items()}

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == 'bfloat16'):
      logits = model(tensors['src'], tensors['tgt_in'], tensors['src_mask'])
    loss = torch_reference.token_loss(logits.float(), tensors['tgt_out'])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
    opt.step()
    return loss.detach().item()  # .item() waits for the device

  return {'step': step}


def run(config: ml_collections.ConfigDict, *, batch: int, frames: int, steps: int, warmup: int = 1,
        reference: str = '', reference_in_process: bool = False, torch_threads: int = 0, settle: int = 1,
        peak_flops: float | None = None, profile_dir: str = '') -> dict[str, Any]:
  """Times `steps` training steps (after `warmup`), alternating with torch when reference='torch' (in a
  process of its own unless `reference_in_process`; `bench/reference_process.py`); with `profile_dir`,
  traces one more JAX step there and writes the step's optimised HLO beside it (`bench/profile.py`)."""
  config = ml_collections.ConfigDict(config.to_dict())  # a copy: the benchmark sets batch and length
  config.data.seq_len, config.train.global_batch_size = frames, batch
  train_lib.validate_config(config, jax.device_count(), check_dataset=False)
  model_cfg = ModelConfig.from_config(config.model)
  src_len = frames + model_cfg.num_codebooks + 1
  data = random_batch(model_cfg, batch, frames, seed=config.train.seed)
  trainer = train_state.make_trainer(config, sharding_lib.make_mesh(config.mesh))
  state = {'train': trainer.init(config.train.seed), 'metrics': None}
  device_batch = jax.device_put(data, trainer.batch_sharding)

  logging.info('train: lowering and compiling the step (%d params)', train_state.param_count(trainer))
  with compiles.watch() as lowering:
    lowered = trainer.train_step.lower(state['train'], device_batch)
  with compiles.watch() as compiling:
    compiled = lowered.compile()
  lower_s, compile_s = lowering.wall_s, compiling.wall_s
  logging.info('train: lowered in %.1f s, compiled in %.1f s; timing %d steps', lower_s, compile_s, steps)

  def jax_step():
    state['train'], state['metrics'] = compiled(state['train'], device_batch)
    jax.block_until_ready(state['metrics'])

  runs = {'jax': jax_step}
  with contextlib.ExitStack() as stack:
    if reference == 'torch':
      torch_runs, torch_info = reference_process.reference_runs(
          stack, _torch_step, config, data, model_cfg.dtype, jax.default_backend(),
          in_process=reference_in_process, torch_threads=torch_threads)
      runs['torch'] = torch_runs['step']
    seconds = timing.interleaved(runs, repeats=steps, warmup=warmup, settle=settle)

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
      'tgt_len': src_len - 1, 'num_microbatches': config.train.num_microbatches,
      'mesh': dict(trainer.mesh.shape), 'params': train_state.param_count(trainer), 'flops_per_step': flops_per_step,
      'peak_flops': peak_flops, 'peak_source': peak_source,
  }
  for name, secs in seconds.items():
    step_s = timing.summary(secs)['median_s']
    result[name] = {'step_s': step_s, 'frames_per_s': batch * frames / step_s,
                    'tflops_per_s': flops_per_step / step_s / 1e12,
                    'mfu': flops_lib.mfu(flops_per_step, step_s, peak_flops, trainer.mesh.size), **_spread(secs)}
  memory = compiled.memory_analysis()  # XLA's buffer plan: activations and other temporaries of one step
  result['jax'].update(lower_s=lower_s, compile_s=compile_s, compile_cpu_s=lowering.cpu_s + compiling.cpu_s,
                       temp_gb=getattr(memory, 'temp_size_in_bytes', float('nan')) / 1e9,
                       loss=losses.summarize(state['metrics']['stats'])['loss'])
  if profile_dir:
    result['jax']['profile'] = profile.profile(jax_step, profile_dir, compiled=compiled)
  if reference == 'torch':
    result['speedup_vs_torch'] = result['jax']['frames_per_s'] / result['torch']['frames_per_s']
    result.update(reference_process.report(torch_info))
  return result


def _spread(seconds: list[float]) -> dict[str, float]:
  s = timing.summary(seconds)
  return {'min_step_s': s['min_s'], 'max_step_s': s['max_s'], 'timed_steps': s['count']}
