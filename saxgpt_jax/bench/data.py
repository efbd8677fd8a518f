"""Input pipeline throughput: batches/s and frames/s of `saxgpt_jax.data` for a config's global batch.

Reads the prepared `saxgpt_tokens` dataset at config.data.data_dir (train split, one process holding the
whole global batch, config.data.worker_count workers) and times `steps` batches after the first one
(which pays for worker start-up and the clip index).
"""

from __future__ import annotations

import time

import ml_collections

from saxgpt_jax import data
from saxgpt_jax.bench import timing


def benchmark(config: ml_collections.ConfigDict, *, steps: int, batch: int | None = None) -> dict:
  """Times `steps` global batches of the train split -> dict of throughput figures and settings.

  batch: global batch size (defaults to config.train.global_batch_size).
  """
  if steps < 1:
    raise ValueError(f'steps must be at least 1, got {steps}')
  config = ml_collections.ConfigDict(config.to_dict())
  if batch is not None:
    config.train.global_batch_size = batch
  global_batch = config.train.global_batch_size
  start = time.perf_counter()
  iterator = data.make_iterator(config, 'train', process_index=0, process_count=1)
  next(iterator)
  first_batch_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  elapsed = time.perf_counter() - start
  batches_per_s = steps / elapsed
  return {
      'global_batch_size': global_batch,
      'seq_len': config.data.seq_len,
      'worker_count': config.data.worker_count,
      'read_threads': config.data.read_threads,
      'random_offsets': config.data.random_offsets,
      'steps': steps,
      'first_batch_s': first_batch_s,
      'seconds': elapsed,
      'batches_per_s': batches_per_s,
      'windows_per_s': batches_per_s * global_batch,
      'frames_per_s': batches_per_s * global_batch * config.data.seq_len,
      'machine': timing.machine(),
  }
