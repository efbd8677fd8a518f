"""Start-up of the command-line tools: a malloc that does not make the kernel zero every buffer again.

XLA:CPU allocates the buffers of a compiled call afresh on every call, and glibc serves each allocation
over 32 MiB with a new mmap and unmaps it on free, so every training step faults in, and the kernel
zeroes, its whole working set again. On the 2-core AMD VM of BENCHMARKS.md the faults were the cost (4 KiB
at a time: one [2, 8, 1505, 1505] float32 buffer of attention scores is 35k of them); on the AVX-512 Xeon
of session 8 the zeroing was (45% of a train step's CPU samples in the kernel's clear_page).

`reexec_with_tuned_malloc()` restarts the command once, before it does any work, with
- glibc >= 2.35 with its mappings on transparent huge pages (tunable `glibc.malloc.hugetlb=1`: 512x fewer
  faults; the large step 33.3 -> 25.6 s on the AMD VM), the default; or, with SAXGPT_MALLOC=jemalloc,
- jemalloc (LD_PRELOAD, found by the dynamic loader, e.g. Debian's libjemalloc2) told to keep freed memory
  for reuse (`JEMALLOC_CONF`): on the Xeon the large step took 17.2-19.2 s against 21.2-23.9 s, but one
  run of three peaked at 19.5 GB RSS instead of ~11 GB, so it is a choice, not the default.
`saxgpt_jax/__init__.py` calls it when the process is `python -m saxgpt_jax.<tool>` (train, generate,
evaluate, bench, demo, ...), before jax is imported; importing the package from other programs changes
nothing. SAXGPT_MALLOC=glibc (default) | jemalloc | system chooses; system (or the older
SAXGPT_MALLOC_HUGE_PAGES=0) keeps the process as started. Settings a user made (MALLOC_CONF,
glibc.malloc.hugetlb) are kept.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT_VARIABLE = 'SAXGPT_MALLOC_HUGE_PAGES'  # '0': as SAXGPT_MALLOC=system (the older switch)
ALLOCATOR_VARIABLE = 'SAXGPT_MALLOC'
ALLOCATORS = ('glibc', 'jemalloc', 'system')
# Never hand freed pages back to the kernel (no decay, retained mappings): the next step reuses them.
JEMALLOC_CONF = 'dirty_decay_ms:-1,muzzy_decay_ms:-1,retain:true'
_THP_SETTING = Path('/sys/kernel/mm/transparent_hugepage/enabled')


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None for another C library or OS."""
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()
    major, minor = version.split('.')[:2]
    return (int(major), int(minor)) if name == 'glibc' else None
  except (AttributeError, OSError, ValueError):
    return None


def huge_pages_supported() -> bool:
  """glibc >= 2.35 (which has the tunable) on a kernel whose transparent huge pages are not 'never'."""
  version = glibc_version()
  if version is None or version < (2, 35):
    return False
  try:
    return '[never]' not in _THP_SETTING.read_text()
  except OSError:
    return False


def _tunables(value: str) -> dict[str, str]:
  """A GLIBC_TUNABLES value 'name=value:name=value' -> {name: value}, in order."""
  return dict(e.split('=', 1) for e in value.split(':') if '=' in e)


def tunables_with_huge_pages(current: str) -> str | None:
  """GLIBC_TUNABLES value `current` plus `glibc.malloc.hugetlb=1`; None if `current` already sets it
  (to any value: an explicit choice is kept)."""
  if TUNABLE in _tunables(current):
    return None
  return ':'.join([*(e for e in current.split(':') if e), f'{TUNABLE}=1'])


def huge_pages_active() -> bool:
  """Whether this process was started with glibc.malloc.hugetlb set to a non-zero mode."""
  return _tunables(os.environ.get('GLIBC_TUNABLES', '')).get(TUNABLE, '0') != '0' and huge_pages_supported()


def command_line_module(argv: list[str] | None = None) -> str | None:
  """The module a `python [options] -m MODULE ...` command line runs (sys.orig_argv by default), else None."""
  args = list(sys.orig_argv if argv is None else argv)[1:]
  i = 0
  while i < len(args) and args[i].startswith('-'):
    arg = args[i]
    if arg == '-m':
      return args[i + 1] if i + 1 < len(args) else None
    if arg.startswith('-m'):
      return arg[2:]
    if arg == '-c' or arg == '-':
      return None
    i += 2 if arg in ('-X', '-W') else 1
  return None


def find_jemalloc() -> str | None:
  """jemalloc's shared library as Linux's dynamic loader finds it ('libjemalloc.so.2'), or None."""
  return ctypes.util.find_library('jemalloc') if sys.platform.startswith('linux') else None


def tuned_environment(environ: dict[str, str]) -> dict[str, str] | None:
  """The environment to restart a tool with (see the module docstring), or None to run it as started."""
  choice = 'system' if environ.get(OPT_OUT_VARIABLE) == '0' else environ.get(ALLOCATOR_VARIABLE, 'glibc')
  if choice not in ALLOCATORS:
    raise SystemExit(f'error: {ALLOCATOR_VARIABLE}={choice!r} is not one of {", ".join(ALLOCATORS)}.')
  if choice == 'system':
    return None
  if choice == 'jemalloc':
    library = find_jemalloc()
    if library is None:
      raise SystemExit(f'error: {ALLOCATOR_VARIABLE}=jemalloc, but the dynamic loader finds no libjemalloc: install '
                       f'it (Debian/Ubuntu: apt install libjemalloc2) or unset {ALLOCATOR_VARIABLE}.')
    preload = environ.get('LD_PRELOAD', '')
    if 'jemalloc' in preload:
      return None
    return {**environ, 'LD_PRELOAD': ' '.join(p for p in (library, preload) if p),
            'MALLOC_CONF': environ.get('MALLOC_CONF', JEMALLOC_CONF)}
  if not huge_pages_supported():
    return None
  tunables = tunables_with_huge_pages(environ.get('GLIBC_TUNABLES', ''))
  return None if tunables is None else {**environ, 'GLIBC_TUNABLES': tunables}


def allocator_in_use() -> str:
  """'jemalloc' when it is loaded in this process, 'glibc-hugetlb' or 'glibc' otherwise (bench JSON)."""
  try:
    with open('/proc/self/maps') as f:
      if 'jemalloc' in f.read():
        return 'jemalloc'
  except OSError:
    pass
  return 'glibc-hugetlb' if huge_pages_active() else 'glibc'


def reexec_with_tuned_malloc() -> None:
  """Restarts this process (same interpreter and command line) in `tuned_environment`; returns without
  doing anything when that is None. Call it before any work is done, as saxgpt_jax/__init__.py does for
  `python -m saxgpt_jax.<tool>`."""
  environ = tuned_environment(dict(os.environ))
  if environ is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, environ)
