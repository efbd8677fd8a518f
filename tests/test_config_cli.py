"""`--config` mistakes (a missing file, a mistyped or ill-typed override) are one error line, not a traceback."""

import signal
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


def test_ctrl_c_ends_a_command_with_one_line_and_status_130():
  code = ('import os, signal, time\nfrom configs import cli\nwith cli.exit_on_ctrl_c("the solos so far are kept."):\n'
          '  os.kill(os.getpid(), signal.SIGINT)\n  time.sleep(30)\nprint("not reached")')
  # SIGINT at its default on entry (a background job of a script starts with it ignored), so Python raises
  # KeyboardInterrupt on it as it does under a terminal.
  done = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  assert done.returncode == 130 and 'not reached' not in done.stdout, (done.stdout, done.stderr)
  assert done.stderr.strip() == 'interrupted: the solos so far are kept.', done.stderr


@pytest.mark.parametrize('command, args, words', [
    ('saxgpt_jax.generate', [], 'error: --checkpoint, --backing and --output are required'),
    ('saxgpt_jax.evaluate', ['stray'], "error: unexpected arguments ['stray']"),
    ('saxgpt_jax.train', ['--config=configs/tiny.py', '--nosuchflag'], "error: Unknown command line flag 'nosuchflag'"),
    ('preprocessing', [], 'error: give --config=configs/data/<source>.py'),
    ('saxgpt_jax.bench', ['--config=configs/tiny.py'], 'error: give one command: python -m saxgpt_jax.bench'),
])
def test_usage_mistakes_are_one_error_line_with_status_2(command, args, words):
  result = subprocess.run([sys.executable, '-m', command, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
  lines = result.stderr.splitlines()  # no help text, no traceback
  assert result.returncode == 2 and len(lines) == 2 and not result.stdout, result.stderr[-3000:]
  assert lines[0].startswith(words) and lines[1] == '(run with --help to see every flag)', result.stderr[-3000:]


@pytest.mark.parametrize('command, flag', [('saxgpt_jax.generate', '--output'),
                                           ('preprocessing', '--beam_pipeline_options')])
def test_help_exits_0_with_the_help_on_stdout(command, flag):
  result = subprocess.run([sys.executable, '-m', command, '--help'], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0 and flag in result.stdout, (result.stdout[-2000:], result.stderr[-2000:])
