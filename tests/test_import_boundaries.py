"""The JAX side never imports torch; the preprocessing side never imports jax (DESIGN: they meet only in
token shards and token arrays)."""

import subprocess
import sys

from tests.conftest import REPO_ROOT

JAX_SIDE = ['saxgpt_jax', 'saxgpt_jax.model', 'saxgpt_jax.decode', 'saxgpt_jax.delay', 'saxgpt_jax.losses',
            'saxgpt_jax.generate', 'saxgpt_jax.train', 'saxgpt_jax.train_state', 'saxgpt_jax.checkpoint',
            'saxgpt_jax.sharding', 'saxgpt_jax.data', 'saxgpt_jax.evaluate', 'saxgpt_jax.convert_torch',
            'saxgpt_jax.flops', 'saxgpt_jax.demo']
PREPROCESSING_SIDE = ['preprocessing', 'preprocessing.pipeline', 'preprocessing.codec', 'preprocessing.separate',
                      'preprocessing.audio', 'preprocessing.ingest', 'preprocessing.select', 'preprocessing.augment',
                      'preprocessing.manifest', 'preprocessing.tfds_builder', 'preprocessing.synth']


def _imports(modules, forbidden):
  code = (f'import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n'
          f'bad = sorted(n for n in {forbidden!r} if n in sys.modules)\nassert not bad, bad')
  return subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True)


def test_jax_side_never_imports_torch():
  result = _imports(JAX_SIDE, ['torch', 'demucs', 'transformers', 'apache_beam'])
  assert result.returncode == 0, result.stderr[-2000:]


def test_preprocessing_side_never_imports_jax():
  result = _imports(PREPROCESSING_SIDE, ['jax', 'flax', 'optax', 'orbax'])
  assert result.returncode == 0, result.stderr[-2000:]
