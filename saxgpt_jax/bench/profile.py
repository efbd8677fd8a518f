"""`--profile_dir`: a `jax.profiler` trace of one more call, and a table of where its device time went.

The trace (TensorBoard's profile plugin, and `perfetto_trace.json.gz` for ui.perfetto.dev) lands under
the directory. The summary reads the Perfetto file's op events: GPU kernels and copies on the device's
streams, or XLA:CPU thunks (events that carry `hlo_op`). On CPU, thunks of one program run concurrently
on the cores, so their summed time can exceed the wall time; compare ops by A/B runs, not by this sum.
"""

from __future__ import annotations

import collections
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax


def _op_events(trace: dict) -> list[dict]:
  """The leaf op events of a Perfetto trace: everything on a device process, plus XLA:CPU thunks; an op
  that encloses the next op of its thread (an XLA:CPU while or conditional around its body) is left out,
  so no time is counted twice."""
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  devices = {e['pid'] for e in events
             if e.get('ph') == 'M' and e.get('name') == 'process_name' and '/device:' in e['args'].get('name', '')}
  ops = sorted((e for e in events if e.get('ph') == 'X' and 'dur' in e
                and (e['pid'] in devices or 'hlo_op' in (e.get('args') or {}))),
               key=lambda e: (e['pid'], e['tid'], e['ts']))
  encloses = lambda e, nxt: ((nxt['pid'], nxt['tid']) == (e['pid'], e['tid'])
                             and nxt['ts'] + nxt['dur'] <= e['ts'] + e['dur'])
  return [e for e, nxt in zip(ops, ops[1:] + [{'pid': None, 'tid': None, 'ts': 0, 'dur': 0}]) if not encloses(e, nxt)]


def summarize(trace_file: str | Path, calls: int = 1, top: int = 15) -> dict[str, Any]:
  """Op count and time per call, and the `top` ops by total time, from a `perfetto_trace.json.gz`."""
  with gzip.open(trace_file, 'rt') as f:
    ops = _op_events(json.load(f))
  if not ops:
    raise ValueError(f'{trace_file} holds no device op events; was anything run under the trace?')
  count, micros = collections.Counter(), collections.Counter()
  for e in ops:
    count[e['name']] += 1
    micros[e['name']] += e['dur']
  return {'trace': str(trace_file), 'ops_per_call': len(ops) / calls,
          'op_ms_per_call': sum(micros.values()) / calls / 1e3,
          'top_ops': {name: {'count_per_call': count[name] / calls, 'ms_per_call': us / calls / 1e3}
                      for name, us in micros.most_common(top)}}


def profile(run: Callable[[], object], directory: str | Path, top: int = 15) -> dict[str, Any]:
  """Runs `run` (which must block until done) once under `jax.profiler.trace` -> `summarize` of it."""
  directory = Path(directory).expanduser()
  before = set(directory.glob('**/perfetto_trace.json.gz'))
  with jax.profiler.trace(str(directory), create_perfetto_trace=True):
    run()
  new = sorted(set(directory.glob('**/perfetto_trace.json.gz')) - before, key=lambda p: p.stat().st_mtime)
  if not new:
    raise RuntimeError(f'jax.profiler wrote no perfetto_trace.json.gz under {directory}')
  return summarize(new[-1], top=top)
