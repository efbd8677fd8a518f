"""`--profile_dir`: a `jax.profiler` trace of one more call, and a table of where its device time went.

The trace (TensorBoard's profile plugin, and `perfetto_trace.json.gz` for ui.perfetto.dev) lands under
the directory. The summary reads the Perfetto file's op events: GPU kernels and copies on the device's
streams, or XLA:CPU thunks (events that carry `hlo_op`). On CPU, thunks of one program run concurrently
on the cores, so their summed time can exceed the wall time; compare ops by A/B runs, not by this sum.
"""

from __future__ import annotations

import collections
import functools
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


def _hlo_table(hlo_text: str, title: str) -> dict[int, str]:
  """One of the numbered tables (FileNames, FileLocations, StackFrames) at the head of an HLO module."""
  block = hlo_text.split(f'\n{title}\n', 1)
  rows = {}
  for line in block[1].split('\n') if len(block) == 2 else []:
    m = re.match(r'(\d+) (.*)$', line)
    if not m:
      break
    rows[int(m.group(1))] = m.group(2)
  return rows


def hlo_ops(hlo_text: str, package: str = 'saxgpt_jax') -> dict[str, dict[str, str | None]]:
  """Op name -> {'kind', 'source'} for the instructions of an optimised HLO module, under their HLO name
  (as XLA:CPU's thunks are named) and as a GPU trace names their kernels ('.' becomes '_').

  kind: 'matmul' for dots, cuBLAS calls and fusions around a dot (XLA:GPU's Triton GEMMs, 'fusion_123' by
  name; XLA:CPU's YNNPACK 'ynn_fusion'), 'attention' for cuDNN attention, else None (`op_kind` of the
  name decides). source: the innermost line of `package` in the op's stack trace, with the innermost line
  outside it when that differs, or that line alone when the trace holds none of `package` (flax's
  dropout does that), and ' (backward)' for ops of the gradient, e.g. 'saxgpt_jax/model.py:210 (backward)'.
  """
  files = {k: v.strip('"') for k, v in _hlo_table(hlo_text, 'FileNames').items()}
  locations, frames = {}, {}
  for k, v in _hlo_table(hlo_text, 'FileLocations').items():
    f = dict(re.findall(r'(\w+)=(\d+)', v))
    locations[k] = (files.get(int(f.get('file_name_id', 0)), '?'), f.get('line', '?'))
  for k, v in _hlo_table(hlo_text, 'StackFrames').items():  # the text prints a parent's id plus one
    f = dict(re.findall(r'(\w+)=(\d+)', v))
    frames[k] = (int(f.get('file_location_id', 0)), int(f.get('parent_frame_id', 1)) - 1)

  short = lambda f, line: f"{f[f.rfind(f'{package}/'):] if package in f else '/'.join(f.split('/')[-3:])}:{line}"

  @functools.cache  # many instructions share a stack frame
  def source(frame: int) -> str | None:
    stack, seen = [], set()
    while frame in frames and frame not in seen:  # innermost first
      seen.add(frame)
      stack.append(locations.get(frames[frame][0], ('?', '?')))
      frame = frames[frame][1]
    if not stack:
      return None
    ours = [(f, line) for f, line in stack if f'/{package}/' in f or f.startswith(f'{package}/')]
    if not ours or ours[0] == stack[0]:
      return short(*stack[0])
    return f'{short(*ours[0])} ({short(*stack[0])})'

  with_dots = {m.group(1) for m in re.finditer(r'^%([\w.\-]+) .*?\{\n(.*?)^\}', hlo_text, re.M | re.S)
               if re.search(r' (?:dot|convolution)\(', m.group(2))}
  ops = {}
  for m in re.finditer(r'^\s+(?:ROOT )?%([\w.\-]+) = (?:\([^)]*\)|\S+) ([\w-]+)\(.*$', hlo_text, re.M):
    line, opcode = m.group(0), m.group(2)
    calls = re.search(r'calls=%([\w.\-]+)', line)
    # A GEMM by its config or custom-call target, not by its metadata (op names, file paths may say 'gemm').
    settings = re.sub(r' metadata=\{[^}]*\}', '', line)
    named_gemm = opcode in ('fusion', 'custom-call') and re.search(r'gemm|cublas', settings)
    matmul = opcode in ('dot', 'convolution') or named_gemm or (calls and calls.group(1) in with_dots)
    kind = 'attention' if 'cudnn$fmha' in line else 'matmul' if matmul else None
    frame = re.search(r'stack_frame_id=(\d+)', line)
    where = source(int(frame.group(1))) if frame else None
    if where and re.search(r'op_name="[^"]*transpose\(', line):
      where += ' (backward)'
    ops[m.group(1)] = ops[m.group(1).replace('.', '_')] = {'kind': kind, 'source': where}
  return ops


def summarize(trace_file: str | Path, calls: int = 1, top: int = 15,
              ops: dict[str, dict[str, str | None]] | None = None) -> dict[str, Any]:
  """Op count and time per call, time per kind, and the `top` ops by total time, from a
  `perfetto_trace.json.gz`. With `ops` (`hlo_ops` of the traced program) kinds come from the HLO, and
  `top_sources` adds the `top` source lines by time (library kernels such as cuBLAS's and cuDNN's carry
  no HLO name and count as '(library kernel: <kind>)')."""
  with gzip.open(trace_file, 'rt') as f:
    events = _op_events(json.load(f))
  if not events:
    raise ValueError(f'{trace_file} holds no device op events; was anything run under the trace?')
  ops = ops or {}
  count, micros, kind_ms, source_ms = (collections.Counter() for _ in range(4))
  for e in events:
    name, info = e['name'], ops.get(e['name'], {})
    kind = info.get('kind') or op_kind(name)
    count[name] += 1
    micros[name] += e['dur']
    kind_ms[kind] += e['dur']
    source_ms[info.get('source') or (f'(library kernel: {kind})' if name not in ops else '(no source)')] += e['dur']
  result = {'trace': str(trace_file), 'ops_per_call': len(events) / calls,
            'op_ms_per_call': sum(micros.values()) / calls / 1e3,
            'kind_ms_per_call': {kind: us / calls / 1e3 for kind, us in kind_ms.most_common()},
            'top_ops': {name: {'count_per_call': count[name] / calls, 'ms_per_call': us / calls / 1e3}
                        for name, us in micros.most_common(top)}}
  if ops:
    result['top_sources'] = {source: us / calls / 1e3 for source, us in source_ms.most_common(top)}
  return result


def profile(run: Callable[[], object], directory: str | Path, top: int = 15, compiled: Any = None
            ) -> dict[str, Any]:
  """Runs `run` (which must block until done) once under `jax.profiler.trace` -> `summarize` of it. With
  the `compiled` program that `run` calls, its optimised HLO goes to `directory/program.hlo.txt` (the
  kernel names in the trace are its instructions' names) and classifies its ops by kind and source
  line (`hlo_ops`)."""
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
  return {**summarize(new[-1], top=top, ops=hlo_ops(hlo)), 'hlo': str(directory / 'program.hlo.txt')}
