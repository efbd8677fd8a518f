"""Test set-up shared by every test: 8 fake CPU devices, float32 matmuls, and the shared fixtures path."""

import os
import tempfile
from pathlib import Path

# Must happen before jax is imported anywhere: 8 CPU devices let mesh tests run in one process, and the
# lowest XLA backend optimisation level compiles ~8x faster (tests are compile-bound; numerics are checked
# against the fixtures at 1e-5 all the same). Subprocesses inherit both, and a persistent compilation
# cache shared by the test processes.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'saxgpt-jax-test-cache'))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / 'shared'
PARITY_FIXTURES = SHARED / 'fixtures' / 'upstream_parity'


@pytest.fixture(scope='session')
def parity_dirs():
  dirs = sorted(p for p in PARITY_FIXTURES.iterdir() if (p / 'checkpoint.pt').exists())
  assert dirs, f'no parity fixtures under {PARITY_FIXTURES}'
  return dirs
