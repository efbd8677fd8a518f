"""saxgpt_jax.demo runs from any directory: its stage commands name no path relative to the repo root."""

import os
import signal
import subprocess
import sys
import time
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


_STAGE = '''
import pathlib, signal, sys, time
def stop(*_):
  time.sleep(0.5)  # like training saving a checkpoint on its first Ctrl-C
  pathlib.Path('stopped').write_text('saved')
  sys.exit(0)
signal.signal(signal.SIGINT, stop)
pathlib.Path('ready').touch()
time.sleep(60)
'''


def test_ctrl_c_lets_the_running_stage_stop_its_own_way_then_says_how_to_go_on(tmp_path):
  driver = (f'import sys; from pathlib import Path; from saxgpt_jax import demo; '
            f'demo._run("3/5 train", [sys.executable, "-c", {_STAGE!r}], Path("w"))')
  # Its own process group, as a terminal's Ctrl-C reaches the demo and its stage together.
  process = subprocess.Popen([sys.executable, '-c', driver], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, 'PYTHONPATH': str(REPO_ROOT)}, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  deadline = time.monotonic() + 60
  while not (tmp_path / 'ready').exists() and time.monotonic() < deadline and process.poll() is None:
    time.sleep(0.05)
  os.killpg(process.pid, signal.SIGINT)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == 130, stderr
  assert (tmp_path / 'stopped').read_text() == 'saved'  # not killed while it saved
  assert 'demo interrupted in stage "3/5 train"; rerun `python -m saxgpt_jax.demo --workdir=w`' in stderr, stderr
  assert 'Traceback' not in stderr, stderr
