"""Start-up of the command-line tools: glibc's malloc on transparent huge pages.

XLA:CPU allocates the buffers of a compiled call afresh on every call, and glibc serves each allocation
over 32 MiB with a new mmap, so every training step page-faults its whole working set again, 4 KiB at a
time: one [2, 8, 1505, 1505] float32 buffer of attention scores is 35k faults (~60 ms on the 2-core VM of
BENCHMARKS.md), more than the arithmetic that fills it. glibc >= 2.35 can back those mappings with
transparent huge pages (tunable `glibc.malloc.hugetlb=1`: 512x fewer faults). glibc reads its tunables
once, at process start, so `reexec_with_huge_pages()` restarts the command with GLIBC_TUNABLES set before
it does any work. `saxgpt_jax/__init__.py` calls it when the process is `python -m saxgpt_jax.<tool>` (train,
generate, evaluate, bench, demo, ...), before jax is imported; importing the package from other programs
changes nothing. Set SAXGPT_MALLOC_HUGE_PAGES=0 to keep the default allocator.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = 'glibc.malloc.hugetlb'
OPT_OUT_VARIABLE = 'SAXGPT_MALLOC_HUGE_PAGES'
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


def reexec_with_huge_pages() -> None:
  """Restarts this process (same interpreter and command line) with glibc.malloc.hugetlb=1 added to
  GLIBC_TUNABLES. Returns without doing anything when the tunable is already set, when the machine
  cannot use it, or when SAXGPT_MALLOC_HUGE_PAGES=0. Call it before any work is done, as
  saxgpt_jax/__init__.py does for `python -m saxgpt_jax.<tool>`."""
  if os.environ.get(OPT_OUT_VARIABLE, '1') == '0' or not huge_pages_supported():
    return
  tunables = tunables_with_huge_pages(os.environ.get('GLIBC_TUNABLES', ''))
  if tunables is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, {**os.environ, 'GLIBC_TUNABLES': tunables})
