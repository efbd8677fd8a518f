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


def build_token_dataset(root: Path, *, min_frames: int, max_frames: int, num_clips: int = 12, seed: int = 1,
                        split_fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)) -> Path:
  """A TFDS `saxgpt_tokens` dataset of `num_clips` random clips (2 per recording, frames in [min, max)),
  split by recording with the real builder. Returns its data_dir (root / 'tfds')."""
  import numpy as np

  from preprocessing import manifest, tfds_builder

  rng = np.random.default_rng(seed)
  records = []
  for i in range(num_clips):
    n = int(rng.integers(min_frames, max_frames))
    rec = manifest.ClipRecord(f'clip{i}', f'rec{i // 2}', 0.0, n / 50, 'none', n, manifest.CodecInfo(),
                              f'clips/clip{i}.npz')
    manifest.write_clip(root / 'tokens', rec, *rng.integers(0, 2048, (2, 4, n), dtype=np.int16))
    records.append(rec)
  manifest.append_records(root / 'tokens', records)
  tfds_builder.build_dataset(root / 'tokens', root / 'tfds', split_fractions=split_fractions)
  return root / 'tfds'


def damage_train_shards(data_dir: Path, copy_to: Path) -> Path:
  """A copy of a `build_token_dataset` data_dir whose train shards lost their second half (an interrupted
  copy). Returns `copy_to`."""
  import shutil

  shutil.copytree(data_dir, copy_to)
  shards = list(copy_to.glob('saxgpt_tokens/*/saxgpt_tokens-train.array_record-*'))
  assert shards
  for shard in shards:
    shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
  return copy_to


@pytest.fixture
def no_hub(monkeypatch):
  """The Hugging Face Hub at a name that never resolves (RFC 2606 .invalid), offline mode off, no proxy."""
  import huggingface_hub.constants as hf_constants

  monkeypatch.setattr(hf_constants, 'ENDPOINT', 'https://hub.saxgpt-test.invalid')
  monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', False)
  for name in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy'):
    monkeypatch.delenv(name, raising=False)
