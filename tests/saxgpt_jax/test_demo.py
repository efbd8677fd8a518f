"""saxgpt_jax.demo runs from any directory: its stage commands name no path relative to the repo root."""

from pathlib import Path

import pytest

from saxgpt_jax import demo
from tests.conftest import REPO_ROOT


class _Stop(Exception):
  """Ends the demo after the training command (the next stage reads the dataset stage 2 would build)."""


def test_stage_commands_run_from_any_directory(tmp_path, monkeypatch):
  commands = []

  def record(title, args, work):
    commands.append(args)
    if title.startswith('3/5'):
      raise _Stop

  monkeypatch.setattr(demo, '_run', record)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(_Stop):
    demo.run_demo(Path('w'), num_pieces=1, seconds=1.0, steps=1, workers=1, seed=0)
  values = [arg.split('=', 1)[1] for args in commands for arg in args[3:] if '=' in arg]
  paths = [Path(v) for v in values if '/' in v]
  configs = [Path(arg.split('=', 1)[1]) for args in commands for arg in args if arg.startswith('--config=')]
  assert len(configs) == 2 and all(p.is_absolute() and p.is_file() for p in configs), configs
  assert all(p.is_absolute() or p.parts[0] == 'w' for p in paths), paths  # else relative to --workdir
  monkeypatch.chdir(REPO_ROOT)
  assert demo.config_file('data/synth.py') == 'configs/data/synth.py'  # from the repo root: as before
