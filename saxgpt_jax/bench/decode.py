"""Decode benchmark: steps/s and frames/s per batch size, real-time factor, compile time, recompiles.

A run is one `decode.generate` call (encode the backing once, then `steps` cached decode steps in one
`lax.scan`) on random backing tokens of `frames` frames (delayed: src [B, K, frames+K+1]). The first
(compiling) call uses the config's sampling settings; the timed calls cycle through variants of equal
cost (other temperature, top-k, top-p, greedy flag and seed) and count the compiles they cause. The
encoder (plus every layer's cross K/V) is timed on its own and subtracted, so steps/s is the decode loop
alone; frames/s = streams x steps/s (one position per stream per step).
A row `BxG` (e.g. `--batch=1x16`) decodes G samples of each of B backings in one call (`num_samples=G`,
sharing the backing's encoder memory and cross-attention K/V); the reference, which has no such
sharing, decodes the B*G streams as a batch of repeated backings.
The torch reference runs its original loop (one eager step per token, KV cache grown by `torch.cat`) on
the same config, batch, length and sampling, alternating run by run with JAX, in a process of its own.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
import numpy as np
from flax import nnx

from saxgpt_jax import decode
from saxgpt_jax.bench import compiles, profile, reference_process, timing
from saxgpt_jax.bench.inputs import random_batch, random_model
from saxgpt_jax.delay import delayed_length
from saxgpt_jax.model import ModelConfig, SaxGPT

FRAME_RATE = 50  # EnCodec 32 kHz frames per second


def _sampling_variants(sample: ml_collections.ConfigDict, seed: int) -> list[tuple[decode.SamplingParams, jax.Array]]:
  """The config's settings first, then variants of equal cost (new temperature, top-k, top-p, greedy
  flag and seed): the timed calls cycle through them, so any recompile they caused would show."""
  base = dict(temperature=sample.temperature, top_k=sample.top_k, top_p=sample.top_p, greedy=sample.greedy)
  variants = [base, {**base, 'temperature': 0.9 * (sample.temperature or 1.0), 'top_k': max(sample.top_k - 50, 1)},
              {**base, 'top_p': 0.9, 'greedy': not sample.greedy}, {**base, 'top_k': sample.top_k + 50}]
  return [(decode.SamplingParams.make(**v), jax.random.key(seed + i)) for i, v in enumerate(variants)]


def parse_row(spec: str) -> tuple[int, int]:
  """'16' -> (16, 1) backings x samples; '1x16' -> (1, 16)."""
  parts = str(spec).lower().split('x')
  try:
    batch, samples = (int(parts[0]), 1) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
  except ValueError:
    batch = samples = 0
  if len(parts) > 2 or batch < 1 or samples < 1:
    raise ValueError(f'a decode batch is B or BxG (B backings x G samples each, both >= 1), got {spec!r}')
  return batch, samples


def _jax_runs(model: SaxGPT, src: np.ndarray, steps: int, variants: list, samples: int = 1):
  """-> (generate run, encode run): callables that block until done; each generate call takes the next
  of `variants` ((SamplingParams, rng) pairs), the first call the first."""
  src = jax.device_put(src)
  graphdef, state = nnx.split(model)
  calls = iter(range(1 << 62))

  @jax.jit
  def encode(state, src):
    m = nnx.merge(graphdef, state)
    return m.init_cache(m.encode(src), None, max_len=steps, num_samples=samples)

  def generate():
    sampling, rng = variants[next(calls) % len(variants)]
    decode.generate(model, src, num_steps=steps, sampling=sampling, rng=rng,
                    num_samples=samples).block_until_ready()

  return generate, lambda: jax.block_until_ready(encode(state, src))


def _torch_runs(config: ml_collections.ConfigDict, src: np.ndarray, steps: int, jax_platform: str):
  """-> {'generate', 'encode'} runs of the eager reference with the config's sampling settings (a factory
  for `reference_process.reference_runs`: built in this process or in the reference's own)."""
  import torch  # only with --reference=torch

  from saxgpt_jax.bench import torch_reference

  device = torch_reference.bench_device(jax_platform)
  torch.manual_seed(config.train.seed)
  model = torch_reference.SaxGPTTorch(torch_reference.model_config_from_jax(config.model)).to(device).eval()
  src_t = torch.from_numpy(np.asarray(src, np.int64)).to(device)
  s = config.sample
  generator = torch.Generator(device).manual_seed(config.train.seed)
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.model.dtype == 'bfloat16')

  def generate():
    with autocast():
      model.generate(src_t, steps + 1, greedy=s.greedy or s.temperature == 0, temperature=s.temperature or 1.0,
                     top_k=s.top_k, generator=generator)
    torch_reference.synchronize(device)

  @torch.no_grad()
  def encode():
    with autocast():
      model.memory_kv(model.encode(src_t))
    torch_reference.synchronize(device)

  return {'generate': generate, 'encode': encode}


def _timed_once(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _figures(call_s: list[float], encode_s: list[float], batch: int, steps: int) -> dict[str, float]:
  call, enc = statistics.median(call_s), statistics.median(encode_s)
  if call <= enc:  # the encoder is timed apart: noise can outweigh a short loop
    logging.warning('decode: a generate call (%.4f s) took no longer than its encoder pass alone (%.4f s); '
                    'the per-step figures are meaningless: raise --steps or --repeats', call, enc)
  loop = max(call - enc, 1e-9)
  return {'call_s': call, 'encode_s': enc, 'step_ms': 1e3 * loop / steps, 'steps_per_s': steps / loop,
          'frames_per_s': batch * steps / loop, 'min_call_s': min(call_s), 'max_call_s': max(call_s)}


def run(config: ml_collections.ConfigDict, *, batches: Sequence[int | str] = (1, 16), steps: int = 300,
        frames: int | None = None, repeats: int = 3, warmup: int = 1, reference: str = '',
        reference_in_process: bool = False, torch_threads: int = 0, settle: int = 1, rtf_frames: int = 1500,
        profile_dir: str = '') -> dict[str, Any]:
  """Benchmarks `generate` at each batch size (B or 'BxG', see the module docstring), the reference in a
  process of its own per row unless `reference_in_process` (`bench/reference_process.py`); rtf_frames=0
  skips the RTF run; with `profile_dir`, traces one more JAX call per row into `profile_dir/<row>`."""
  rows = {f'batch_{spec}': parse_row(spec) for spec in batches}
  model_cfg = ModelConfig.from_config(config.model)
  k = model_cfg.num_codebooks
  frames = config.data.seq_len if frames is None else frames
  if delayed_length(frames, k) > model_cfg.max_seq_len:
    raise ValueError(f'{frames} backing frames need {delayed_length(frames, k)} positions but '
                     f'model.max_seq_len is {model_cfg.max_seq_len}; lower --frames')
  if not 1 <= steps <= model_cfg.max_seq_len:
    raise ValueError(f'--steps must be in [1, model.max_seq_len={model_cfg.max_seq_len}], got {steps}')
  s = config.sample
  variants = _sampling_variants(s, config.train.seed)
  model = random_model(model_cfg, config.train.seed)
  result: dict[str, Any] = {
      'command': 'decode', 'dtype': model_cfg.dtype, 'frames': frames, 'src_len': delayed_length(frames, k),
      'steps': steps, 'sampling': {'temperature': s.temperature, 'top_k': s.top_k, 'top_p': s.top_p,
                                   'greedy': s.greedy},
      'jax': {}}
  if reference == 'torch':
    result['torch'], result['speedup_vs_torch'] = {}, {}
    if s.top_p:
      result['torch_note'] = 'the torch reference samples without top-p'

  for row, (batch, samples) in rows.items():
    src = random_batch(model_cfg, batch, frames, seed=config.train.seed)['src']
    jax_generate, jax_encode = _jax_runs(model, src, steps, variants, samples)
    logging.info('decode %s: compiling generate (%d steps)', row, steps)
    with compiles.watch() as first:
      jax_generate()
    logging.info('decode %s: first call %.1f s (compile %.1f s); timing', row, first.wall_s, first.compile_s)
    jax_encode()
    runs = {'jax': jax_generate}
    encodes = {'jax': jax_encode}
    with contextlib.ExitStack() as stack:
      if reference == 'torch':
        torch_runs, torch_info = reference_process.reference_runs(
            stack, _torch_runs, config, np.repeat(src, samples, axis=0), steps, jax.default_backend(),
            in_process=reference_in_process, torch_threads=torch_threads)
        runs['torch'], encodes['torch'] = torch_runs['generate'], torch_runs['encode']
      with compiles.watch() as timed:  # new sampling settings and seeds in every JAX call
        calls = timing.interleaved(runs, repeats=repeats, warmup=warmup, settle=settle)
      logging.info('decode %s: %s', row, {k: [round(x, 2) for x in v] for k, v in calls.items()})
      encode_s = timing.interleaved(encodes, repeats=repeats, warmup=0, settle=settle)
    for name in runs:
      result[name][row] = _figures(calls[name], encode_s[name], batch * samples, steps)
    result['jax'][row].update(compile_s=first.compile_s, compiles=first.compiles, first_call_s=first.wall_s,
                              first_call_cpu_s=first.cpu_s,
                              recompiles_on_new_sampling=timed.compiles)
    if profile_dir:
      sampling, rng = variants[0]
      compiled = decode.compiled_generate(model, src, num_steps=steps, sampling=sampling, rng=rng,
                                          num_samples=samples)
      summary = profile.profile(jax_generate, f'{profile_dir}/{row}', compiled=compiled)
      result['jax'][row]['profile'] = {'ops_per_step': summary['ops_per_call'] / steps, **summary}
    if reference == 'torch':
      result['speedup_vs_torch'][row] = result['jax'][row]['steps_per_s'] / result['torch'][row]['steps_per_s']

  rows = list(rows)
  result['recompiles_on_new_sampling'] = sum(result['jax'][r]['recompiles_on_new_sampling'] for r in rows)
  if len(rows) > 1:
    result['batch_scaling'] = result['jax'][rows[-1]]['frames_per_s'] / result['jax'][rows[0]]['frames_per_s']
  if reference == 'torch':
    result.update(reference_process.report(torch_info))
  if rtf_frames:
    logging.info('decode: real-time-factor run of %d frames', rtf_frames)
    result['rtf'] = _real_time_factor(model, config, variants[:1], rtf_frames)
  return result


def _real_time_factor(model: SaxGPT, config: ml_collections.ConfigDict, variants: list,
                      solo_frames: int) -> dict[str, float]:
  """Wall time of one batch-1 generate of `solo_frames` frames (encode included; compiled beforehand)
  over the audio's duration: < 1 is faster than real time. Shortened to what max_seq_len allows."""
  model_cfg = model.cfg
  k = model_cfg.num_codebooks
  solo_frames = min(solo_frames, model_cfg.max_seq_len - k - 1)
  backing_frames = min(config.data.seq_len, model_cfg.max_seq_len - k - 1)
  src = random_batch(model_cfg, 1, backing_frames, seed=config.train.seed)['src']
  generate, _ = _jax_runs(model, src, delayed_length(solo_frames, k) - 1, variants)
  generate()  # compile
  wall = _timed_once(generate)
  audio_s = solo_frames / FRAME_RATE
  return {'frames': solo_frames, 'audio_s': audio_s, 'wall_s': wall, 'rtf': wall / audio_s}
