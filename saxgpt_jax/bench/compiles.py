"""Counting and timing JAX compilations with `jax.monitoring` duration events (jax 0.10).

Every jit cache miss records `/jax/core/compile/jaxpr_trace_duration` (tracing),
`.../jaxpr_to_mlir_module_duration` (lowering) and `.../backend_compile_duration` (XLA); a call that
hits the cache records none of them, so the count of backend compiles inside a block is the number of
(re)compilations it caused, whatever function was jitted and however it was wrapped.
"""

from __future__ import annotations

import dataclasses
import time

import jax

TRACE_EVENT = '/jax/core/compile/jaxpr_trace_duration'
LOWER_EVENT = '/jax/core/compile/jaxpr_to_mlir_module_duration'
BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
_EVENTS = (TRACE_EVENT, LOWER_EVENT, BACKEND_COMPILE_EVENT)


@dataclasses.dataclass
class CompileLog:
  """Compile events seen inside a `watch()` block: counts and seconds per event, and wall time."""
  counts: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(_EVENTS, 0))
  seconds: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(_EVENTS, 0.0))
  functions: list[str] = dataclasses.field(default_factory=list)  # names of the XLA-compiled functions
  wall_s: float = 0.0
  cpu_s: float = 0.0  # CPU time of this process in the block (wall on an idle machine: cpu_s / cores .. cpu_s)

  @property
  def compiles(self) -> int:
    """XLA compilations (jit cache misses) in the block."""
    return self.counts[BACKEND_COMPILE_EVENT]

  @property
  def compile_s(self) -> float:
    """Seconds spent tracing, lowering and compiling in the block."""
    return sum(self.seconds.values())

  def _record(self, event: str, duration: float, **kwargs) -> None:
    if event in self.counts:
      self.counts[event] += 1
      self.seconds[event] += duration
      if event == BACKEND_COMPILE_EVENT:
        self.functions.append(str(kwargs.get('fun_name', '?')))


class watch:  # noqa: N801 (a context manager used as `with compiles.watch() as log:`)
  """Records the compile events of the block into a `CompileLog`; the listener is removed on exit."""

  def __enter__(self) -> CompileLog:
    self.log = CompileLog()
    jax.monitoring.register_event_duration_secs_listener(self.log._record)
    self._start, self._cpu_start = time.perf_counter(), time.process_time()
    return self.log

  def __exit__(self, *exc) -> None:
    self.log.wall_s = time.perf_counter() - self._start
    self.log.cpu_s = time.process_time() - self._cpu_start
    jax.monitoring.unregister_event_duration_listener(self.log._record)
