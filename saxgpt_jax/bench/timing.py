"""Timing shared by the benchmarks: interleaved runs of several implementations, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

from saxgpt_jax import host_memory


def interleaved(runs: Mapping[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                settle: int = 0) -> dict[str, list[float]]:
  """Calls each run in turn, `warmup` untimed rounds then `repeats` timed ones -> seconds per call.

  Alternating (A, B, A, B, ...) rather than A..A then B..B spreads a busy machine's noise over every
  implementation alike. Each callable must block until its work is done.
  settle: with several runs, untimed calls of each right before each of its timed ones (A, A*, B, B*, ...
  with * timed), so a timed call follows its own kind: the first large JAX train step after a torch step
  took 27-28 s against 16-17 s for the next ones (BENCHMARKS.md, session 11). 0: strict alternation.
  """
  if repeats < 1:
    raise ValueError(f'repeats must be at least 1, got {repeats}')
  if settle < 0:
    raise ValueError(f'settle must be >= 0, got {settle}')
  settle = settle if len(runs) > 1 else 0
  for _ in range(warmup):
    for run in runs.values():
      run()
  seconds: dict[str, list[float]] = {name: [] for name in runs}
  for _ in range(repeats):
    for name, run in runs.items():
      for _ in range(settle):
        run()
      start = time.perf_counter()
      run()
      seconds[name].append(time.perf_counter() - start)
  return seconds


def summary(seconds: list[float]) -> dict[str, float]:
  """Median (the figure reported), min and max of per-call seconds."""
  return {'median_s': statistics.median(seconds), 'min_s': min(seconds), 'max_s': max(seconds),
          'count': len(seconds)}


def machine() -> dict[str, object]:
  """Where and when the figures were taken: JAX device kind and count, CPU model and cores, date."""
  device = jax.devices()[0]
  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), cpu)
  except OSError:
    pass
  allocator = host_memory.allocator_in_use()  # saxgpt_jax/host_memory.py
  return {'platform': device.platform, 'device_kind': device.device_kind, 'num_devices': jax.device_count(),
          'cpu': cpu, 'cpu_cores': os.cpu_count(), 'jax': jax.__version__,
          'load_avg_1min': os.getloadavg()[0],  # other work on the machine while measuring
          'malloc': allocator, 'malloc_huge_pages': allocator == 'glibc-hugetlb',
          'date': time.strftime('%Y-%m-%d %H:%M %Z')}


def measured_matmul_flops(dtype: str = 'float32', size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of one large jitted matmul on the default device: an achievable peak where no table has one."""
  a = jnp.ones((size, size), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = min(_timed(lambda: matmul(a, a).block_until_ready()) for _ in range(repeats))
  return 2.0 * size**3 / best


def _timed(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start
