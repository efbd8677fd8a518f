"""saxgpt_jax.convert_torch: one `error:` line for a bad input or an existing output, and --overwrite."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from saxgpt_jax import checkpoint as ckpt_lib
from saxgpt_jax import convert_torch


@pytest.fixture
def checkpoint_pt(parity_dirs):
  return parity_dirs[0] / 'checkpoint.pt'


@pytest.mark.parametrize('case', ['truncated', 'existing_output'])
def test_command_errors_are_one_line(case, checkpoint_pt, tmp_path):
  source, output = tmp_path / 'trunc.pt', tmp_path / 'out'
  source.write_bytes(checkpoint_pt.read_bytes()[:5000])
  if case == 'existing_output':
    source = checkpoint_pt
    output.mkdir()
    (output / 'keep.txt').write_text('x')
  result = subprocess.run([sys.executable, '-m', 'saxgpt_jax.convert_torch', f'--checkpoint={source}',
                           f'--output={output}'], cwd=tmp_path, capture_output=True, text=True, check=False)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  expected = 'is not a readable PyTorch checkpoint' if case == 'truncated' else 'pass a new folder, or --overwrite'
  assert result.stderr.startswith('error: ') and expected in result.stderr, result.stderr
  if case == 'existing_output':
    assert [p.name for p in output.iterdir()] == ['keep.txt']


def test_missing_checkpoint_names_the_flag(tmp_path):
  with pytest.raises(FileNotFoundError, match='--checkpoint'):
    convert_torch.convert(str(tmp_path / 'none.pt'), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_overwrite_replaces_only_once_the_new_checkpoint_is_complete(checkpoint_pt, tmp_path):
  output = tmp_path / 'out'
  output.mkdir()  # an empty folder is fine without --overwrite
  convert_torch.convert(str(checkpoint_pt), str(output))
  (output / 'stale.txt').write_text('from before')
  broken = tmp_path / 'broken.pt'
  broken.write_bytes(checkpoint_pt.read_bytes()[:5000])
  with pytest.raises(convert_torch.CheckpointFormatError):
    convert_torch.convert(str(broken), str(output), overwrite=True)
  assert (output / 'stale.txt').exists()  # a failed conversion leaves the old output as it was
  convert_torch.convert(str(checkpoint_pt), str(output), overwrite=True)
  assert not (output / 'stale.txt').exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ['broken.pt', 'out']  # no staging folder left behind
  model, _ = ckpt_lib.load_model(output)
  expected = convert_torch.load_torch_checkpoint(str(checkpoint_pt))
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.Param), nnx.state(expected, nnx.Param))
