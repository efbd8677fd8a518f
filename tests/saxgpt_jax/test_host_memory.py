"""saxgpt_jax.host_memory: the command-line tools restart with glibc's malloc on transparent huge pages, or with
jemalloc keeping freed memory (SAXGPT_MALLOC=jemalloc)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from saxgpt_jax import host_memory

REPO_ROOT = Path(__file__).resolve().parents[2]

# Restarts (if it may), then mallocs and fills 64 MiB twice, freeing it in between, with the process's malloc
# (the allocator XLA:CPU's buffers come from). Prints GLIBC_TUNABLES, the allocator and the minor page
# faults of each round.
_PROBE = """
import ctypes, os, resource
from saxgpt_jax import host_memory
host_memory.reexec_with_tuned_malloc()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n, faults = 64 << 20, []
for _ in range(2):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  libc.free(p)
print(repr(os.environ.get('GLIBC_TUNABLES', '')), host_memory.allocator_in_use(), *faults)
"""
_VARIABLES = ('GLIBC_TUNABLES', 'LD_PRELOAD', 'MALLOC_CONF', host_memory.OPT_OUT_VARIABLE,
              host_memory.ALLOCATOR_VARIABLE)


def _probe(**env) -> tuple[str, str, int, int]:
  """-> (GLIBC_TUNABLES, allocator, faults of the first 64 MiB, faults of the same size after a free)."""
  environ = {k: v for k, v in os.environ.items() if k not in _VARIABLES}
  out = subprocess.run([sys.executable, '-c', _PROBE], cwd=REPO_ROOT, env={**environ, **env}, capture_output=True,
                       text=True, check=True).stdout.split()
  return ast.literal_eval(out[0]), out[1], int(out[2]), int(out[3])


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


def test_tuned_environment_chooses_as_told_and_keeps_what_a_user_set(monkeypatch):
  monkeypatch.setattr(host_memory, 'find_jemalloc', lambda: 'libjemalloc.so.2')
  jemalloc = {host_memory.ALLOCATOR_VARIABLE: 'jemalloc'}
  env = host_memory.tuned_environment({'PATH': '/bin', **jemalloc})
  assert env == {'PATH': '/bin', **jemalloc, 'LD_PRELOAD': 'libjemalloc.so.2', 'MALLOC_CONF': host_memory.JEMALLOC_CONF}
  assert host_memory.tuned_environment(env) is None  # the restarted process does not restart again
  env = host_memory.tuned_environment({'LD_PRELOAD': 'libother.so', 'MALLOC_CONF': 'narenas:1', **jemalloc})
  assert env == {'LD_PRELOAD': 'libjemalloc.so.2 libother.so', 'MALLOC_CONF': 'narenas:1', **jemalloc}
  for off in ({host_memory.ALLOCATOR_VARIABLE: 'system'}, {host_memory.OPT_OUT_VARIABLE: '0', **jemalloc}):
    assert host_memory.tuned_environment(off) is None
  default = host_memory.tuned_environment({})  # glibc on huge pages where it can, even with jemalloc installed
  assert default == ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'} if host_memory.huge_pages_supported() else None)
  with pytest.raises(SystemExit, match='is not one of glibc, jemalloc, system'):
    host_memory.tuned_environment({host_memory.ALLOCATOR_VARIABLE: 'tcmalloc'})
  monkeypatch.setattr(host_memory, 'find_jemalloc', lambda: None)
  with pytest.raises(SystemExit, match='apt install libjemalloc2'):
    host_memory.tuned_environment(jemalloc)


@pytest.mark.skipif(not host_memory.huge_pages_supported(),
                    reason='needs glibc >= 2.35 and transparent huge pages not set to never')
def test_glibc_restart_backs_large_mallocs_with_huge_pages_and_can_be_turned_off():
  tunables, allocator, faults, _ = _probe()
  assert (tunables, allocator) == ('glibc.malloc.hugetlb=1', 'glibc-hugetlb')
  off_tunables, off_allocator, off_faults, off_again = _probe(**{host_memory.OPT_OUT_VARIABLE: '0'})
  assert (off_tunables, off_allocator) == ('', 'glibc') and off_faults >= (64 << 20) // 4096  # 1 per 4 KiB
  assert off_again >= (64 << 20) // 4096  # glibc unmapped the freed 64 MiB: all of it faults (and is zeroed) again
  assert faults < off_faults / 8, (faults, off_faults)
  # a user's own setting is kept, not overridden
  assert _probe(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')[0] == 'glibc.malloc.hugetlb=0'


@pytest.mark.skipif(host_memory.find_jemalloc() is None,
                    reason='needs libjemalloc (Debian/Ubuntu: apt install libjemalloc2); the choice of it is '
                           'tested above without it')
def test_jemalloc_restart_reuses_freed_memory_without_new_page_faults():
  tunables, allocator, faults, again = _probe(**{host_memory.ALLOCATOR_VARIABLE: 'jemalloc'})
  assert (tunables, allocator) == ('', 'jemalloc') and faults >= (64 << 20) // 4096
  assert again < 64, (faults, again)  # the freed 64 MiB came back without faults: nothing to zero
