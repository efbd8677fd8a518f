"""`--config` mistakes (a missing file, a mistyped or ill-typed override) are one error line, not a traceback."""

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize('command, flag, words', [
    ('preprocessing', '--config=configs/data/nope.py', 'No such file or directory'),
    ('saxgpt_jax.train', '--config.trian.num_steps=5', 'Did you mean "train"'),
    ('saxgpt_jax.train', '--config.train.num_step=5', "'num_step'\nDid you mean \"num_steps\""),
    ('saxgpt_jax.bench', '--config.model.num_layerz=2', 'num_layerz'),
])
def test_config_mistakes_are_one_error(command, flag, words):
  args = [sys.executable, '-m', command] + (['train'] if command.endswith('bench') else [])
  if not flag.startswith('--config='):
    args.append('--config=configs/tiny.py')
  args += [flag, '--workdir=/nonexistent'] if command.endswith('train') else [flag]
  result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert 'error: --config: ' in result.stderr and words in result.stderr, result.stderr[-3000:]
