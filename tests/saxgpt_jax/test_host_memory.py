"""saxgpt_jax.host_memory: the command-line tools restart with glibc's malloc on transparent huge pages."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from saxgpt_jax import host_memory

REPO_ROOT = Path(__file__).resolve().parents[2]

# Restarts (if it may), then mallocs and fills 64 MiB with glibc's malloc, the allocator XLA:CPU's buffers
# come from, and prints GLIBC_TUNABLES and the minor page faults that took.
_PROBE = """
import ctypes, os, resource
from saxgpt_jax import host_memory
host_memory.reexec_with_huge_pages()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 64 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
p = libc.malloc(n)
ctypes.memset(p, 1, n)
print(os.environ.get('GLIBC_TUNABLES', ''), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
libc.free(p)
"""


def _probe(**env) -> tuple[str, int]:
  environ = {k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', host_memory.OPT_OUT_VARIABLE)}
  out = subprocess.run([sys.executable, '-c', _PROBE], cwd=REPO_ROOT, env={**environ, **env}, capture_output=True,
                       text=True, check=True).stdout.split()
  return (out[0] if len(out) == 2 else ''), int(out[-1])


def test_tunables_are_added_once_and_an_explicit_choice_is_kept():
  assert host_memory.tunables_with_huge_pages('') == 'glibc.malloc.hugetlb=1'
  assert host_memory.tunables_with_huge_pages('glibc.malloc.arena_max=2') == (
      'glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1')
  assert host_memory.tunables_with_huge_pages('glibc.malloc.hugetlb=1') is None
  assert host_memory.tunables_with_huge_pages('glibc.malloc.hugetlb=0:glibc.malloc.arena_max=2') is None


@pytest.mark.parametrize('argv, module', [
    (['python', '-m', 'saxgpt_jax.train', '--config=c.py'], 'saxgpt_jax.train'),
    (['python', '-X', 'importtime', '-u', '-msaxgpt_jax.bench', 'train'], 'saxgpt_jax.bench'),
    (['python', '-c', 'print(1)', '-m', 'x'], None),
    (['python', 'script.py', '-m', 'saxgpt_jax.train'], None),
    (['python', '-m'], None),
])
def test_command_line_module(argv, module):
  assert host_memory.command_line_module(argv) == module


@pytest.mark.skipif(not host_memory.huge_pages_supported(),
                    reason='needs glibc >= 2.35 and transparent huge pages not set to never')
def test_restart_backs_large_mallocs_with_huge_pages_and_can_be_turned_off():
  tunables, faults = _probe()
  assert tunables == 'glibc.malloc.hugetlb=1'
  off_tunables, off_faults = _probe(**{host_memory.OPT_OUT_VARIABLE: '0'})
  assert off_tunables == '' and off_faults >= (64 << 20) // 4096  # one fault per 4 KiB page
  assert faults < off_faults / 8, (faults, off_faults)
  # a user's own setting is kept, not overridden
  assert _probe(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')[0] == 'glibc.malloc.hugetlb=0'
