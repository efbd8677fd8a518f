"""The PyTorch reference in a process of its own, alternating with JAX but sharing no heap with it.

In one process the two frameworks share glibc's heap: on the 2-core Xeon of BENCHMARKS.md (session 8) a
JAX train step took 19.3 s alone and 34.7 s alternating with torch's step, and in session 9 the JAX step
after a torch step paid about twice the kernel time per page fault. A `spawn`ed child starts fresh (no copy
of JAX's threads or buffers) with the parent's environment, so with the same malloc settings
(saxgpt_jax/host_memory.py). Both still share the cores and the memory bus, and they never run at once:
the parent waits for each call.

  with ReferenceProcess(factory, *args, torch_threads=0) as ref:  # factory(*args) -> {name: callable}
    ref.runs['step']()  # runs the child's 'step' and waits for it

`factory` must be a module-level function and `args` picklable (config dicts, numpy arrays).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import traceback
from collections.abc import Callable
from typing import Any


class ReferenceFailed(RuntimeError):
  """The reference failed in its process; the message holds the child's traceback."""


class ReferenceProcess:
  """A spawned child that builds `factory(*args)` and runs its callables on request (see module doc)."""

  def __init__(self, factory: Callable[..., dict[str, Callable[[], object]]], *args: Any, torch_threads: int = 0,
               start_timeout_s: float = 600.0):
    context = multiprocessing.get_context('spawn')
    self._conn, child_conn = context.Pipe()
    self._process = context.Process(target=_serve, args=(child_conn, factory, args, torch_threads), daemon=True,
                                    name='torch-reference')
    self._process.start()
    child_conn.close()
    self.info: dict[str, Any] = self._reply(timeout_s=start_timeout_s)  # {'runs': [...], 'torch': ..., ...}
    self.runs = {name: self._caller(name) for name in self.info['runs']}

  def _caller(self, name: str) -> Callable[[], None]:
    def call() -> None:
      self._conn.send(name)
      self._reply()
    return call

  def _reply(self, timeout_s: float | None = None) -> Any:
    if not self._conn.poll(timeout_s):
      self.close()
      raise ReferenceFailed(f'the reference process gave no answer in {timeout_s:.0f} s')
    try:
      status, payload = self._conn.recv()
    except EOFError:
      self._process.join(5)
      raise ReferenceFailed(f'the reference process died (exit code {self._process.exitcode}); if it was '
                           'killed for memory, run a smaller --batch or --frames') from None
    if status == 'error':
      self.close()
      raise ReferenceFailed(f'the torch reference failed in its process:\n{payload}')
    return payload

  def close(self) -> None:
    """Stops the child (it frees all its memory); safe to call twice."""
    if self._process.is_alive():
      try:
        self._conn.send(None)
      except (BrokenPipeError, OSError):
        pass
      self._process.join(30)
      if self._process.is_alive():
        self._process.kill()
        self._process.join()
    self._conn.close()

  def __enter__(self) -> ReferenceProcess:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def reference_runs(stack: contextlib.ExitStack, factory: Callable[..., dict[str, Callable[[], object]]], *args: Any,
                   in_process: bool = False, torch_threads: int = 0
                   ) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
  """`factory(*args)`'s runs, built here (in_process) or in a ReferenceProcess that `stack` closes, and
  where they ran: {'torch': version, 'torch_threads': intra-op threads, 'torch_process': 'same' | 'own'}."""
  if in_process:
    info = _start_torch(torch_threads)
    return factory(*args), {**info, 'torch_process': 'same'}
  ref = stack.enter_context(ReferenceProcess(factory, *args, torch_threads=torch_threads))
  return ref.runs, {**{k: v for k, v in ref.info.items() if k != 'runs'}, 'torch_process': 'own'}


def report(info: dict[str, Any]) -> dict[str, Any]:
  """The result entries of a run with the reference, from `reference_runs`' info: 'machine'
  (`timing.machine()` plus the torch version and thread count) and 'torch_process'."""
  from saxgpt_jax.bench import timing
  torch_info = {k: v for k, v in info.items() if k != 'torch_process'}  # `_start_torch`'s
  return {'machine': {**timing.machine(), **torch_info}, 'torch_process': info['torch_process']}


def _start_torch(torch_threads: int) -> dict[str, Any]:
  """Imports torch with `torch_threads` intra-op threads (0: its default, one per core) -> its version
  and thread count."""
  import torch
  if torch_threads:
    torch.set_num_threads(torch_threads)
  return {'torch': torch.__version__, 'torch_threads': torch.get_num_threads()}


def _serve(conn, factory, args, torch_threads: int) -> None:
  """The child: build the runs, report them, then run each name received until None."""
  try:
    info = _start_torch(torch_threads)
    runs = factory(*args)
    conn.send(('ready', {'runs': list(runs), **info}))
  except BaseException:  # the parent re-raises it with this traceback
    conn.send(('error', traceback.format_exc()))
    return
  while (name := conn.recv()) is not None:
    try:
      runs[name]()
      conn.send(('done', None))
    except BaseException:
      conn.send(('error', traceback.format_exc()))
      return
