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
import re
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


# Op kinds by a substring of the op's name, first match wins: GPU kernels (cuDNN attention, cuBLAS/CUTLASS
# and XLA Triton GEMMs, XLA's fusions named after their root op) and XLA:CPU thunks (named after the HLO).
OP_KINDS = (
    ('attention', ('cudnn', 'fmha', 'flash', 'sdpa')),
    ('matmul', ('gemm', 'xmma', 'cutlass', 'nvjet', 'cublas', 'dot', 'matmul')),
    ('reduction', ('reduce',)),
    ('copy', ('memcpy', 'memset', 'copy', 'transpose', 'dynamic-update-slice', 'dynamic_update_slice')),
)


def op_kind(name: str) -> str:
  """'attention', 'matmul', 'reduction', 'copy' or 'other' (elementwise fusions and the rest)."""
  lower = name.lower()
  return next((kind for kind, keys in OP_KINDS if any(k in lower for k in keys)), 'other')


def hlo_op_kinds(hlo_text: str) -> dict[str, str]:
  """Op name -> kind for the fusions and custom calls of an optimised HLO module whose name does not say
  what they are: XLA's Triton GEMM fusions ('fusion_123' in a GPU trace, where '.' becomes '_') are
  'matmul', cuDNN attention calls 'attention'."""
  kinds = {}
  for m in re.finditer(r'^\s+(?:ROOT )?%([\w.\-]+) = .*?\b(?:fusion|custom-call)\(.*$', hlo_text, re.M):
    line = m.group(0)
    kind = 'attention' if 'cudnn$fmha' in line else 'matmul' if re.search(r'gemm|cublas', line) else None
    if kind:
      kinds[m.group(1)] = kinds[m.group(1).replace('.', '_')] = kind
  return kinds


def summarize(trace_file: str | Path, calls: int = 1, top: int = 15, kinds: dict[str, str] | None = None
              ) -> dict[str, Any]:
  """Op count and time per call, time per kind (`kinds`, e.g. `hlo_op_kinds`, else `op_kind` of the
  name), and the `top` ops by total time, from a `perfetto_trace.json.gz`."""
  with gzip.open(trace_file, 'rt') as f:
    ops = _op_events(json.load(f))
  if not ops:
    raise ValueError(f'{trace_file} holds no device op events; was anything run under the trace?')
  count, micros, kind_ms = collections.Counter(), collections.Counter(), collections.Counter()
  for e in ops:
    count[e['name']] += 1
    micros[e['name']] += e['dur']
    kind_ms[(kinds or {}).get(e['name']) or op_kind(e['name'])] += e['dur']
  return {'trace': str(trace_file), 'ops_per_call': len(ops) / calls,
          'op_ms_per_call': sum(micros.values()) / calls / 1e3,
          'kind_ms_per_call': {kind: us / calls / 1e3 for kind, us in kind_ms.most_common()},
          'top_ops': {name: {'count_per_call': count[name] / calls, 'ms_per_call': us / calls / 1e3}
                      for name, us in micros.most_common(top)}}


def profile(run: Callable[[], object], directory: str | Path, top: int = 15, compiled: Any = None
            ) -> dict[str, Any]:
  """Runs `run` (which must block until done) once under `jax.profiler.trace` -> `summarize` of it. With
  the `compiled` program that `run` calls, its optimised HLO goes to `directory/program.hlo.txt` (the
  kernel names in the trace are its instructions' names) and classifies its ops (`hlo_op_kinds`)."""
  directory = Path(directory).expanduser()
  directory.mkdir(parents=True, exist_ok=True)
  before = set(directory.glob('**/perfetto_trace.json.gz'))
  with jax.profiler.trace(str(directory), create_perfetto_trace=True):
    run()
  new = sorted(set(directory.glob('**/perfetto_trace.json.gz')) - before, key=lambda p: p.stat().st_mtime)
  if not new:
    raise RuntimeError(f'jax.profiler wrote no perfetto_trace.json.gz under {directory}')
  if compiled is None:
    return summarize(new[-1], top=top)
  hlo = compiled.as_text()
  (directory / 'program.hlo.txt').write_text(hlo)
  return {**summarize(new[-1], top=top, kinds=hlo_op_kinds(hlo)), 'hlo': str(directory / 'program.hlo.txt')}
