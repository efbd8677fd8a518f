"""Benchmarks of SaxGPT: `python -m saxgpt_jax.bench {train,decode,data} --config=configs/X.py [flags]`.

  train   training steps/s, frames/s, MFU and compile time (lower + compile) of one jitted step
  decode  generate() steps/s and frames/s per batch size, real-time factor of a 30 s solo, compile time,
          and the number of recompiles caused by new sampling settings / seeds (expect 0)
  data    input pipeline batches/s and frames/s (needs a prepared dataset at config.data.data_dir)

With --reference=torch, train and decode also run the original model in eager PyTorch on the same
config, batch and length, alternating with JAX (in a process of its own, so the two share no heap), and
report JAX's speed-up. --json prints one JSON line; --json_file=F appends it to F. A missing command, or
an unknown flag or config key, stops it with one `error:` line (exit 2); settings that cannot work, or a
missing dataset, too (exit 1).
Examples:
  python -m saxgpt_jax.bench decode --config=configs/large.py --batch=1,16 --steps=300 --reference=torch
  python -m saxgpt_jax.bench train --config=configs/large.py --batch=2 --frames=1500 --reference=torch
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from configs import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/large.py.', lock_config=True)
_BATCH = flags.DEFINE_list('batch', None, 'Batch size(s). train/data: one value (default: '
                           'config.train.global_batch_size); decode: a list (default: 1,16) of B or BxG '
                           '(B backings x G samples each, e.g. 1x16).')
_FRAMES = flags.DEFINE_integer('frames', None, 'Frames per window (train) or of backing (decode), before '
                               'the delay pattern adds K+1 positions. Default: config.data.seq_len.')
_STEPS = flags.DEFINE_integer('steps', None, 'train: timed steps (default 10); decode: decode steps per '
                              'generate call (default 300); data: timed batches (default 20).')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed runs (after compiling) before timing.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'decode: timed generate calls per batch size and implementation.')
_DTYPE = flags.DEFINE_enum('dtype', None, ['float32', 'bfloat16'], 'Compute dtype (parameters stay '
                           'float32). Default: config.model.dtype.')
_REFERENCE = flags.DEFINE_enum('reference', '', ['', 'torch'], 'Also run the eager PyTorch reference.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0, 'torch.set_num_threads for the reference '
                                      '(0 = torch default: one per core, as JAX).')
_REFERENCE_IN_PROCESS = flags.DEFINE_bool(
    'reference_in_process', False, 'Run the reference in this process, sharing the heap with JAX (the method '
    'before 2026-12-06). Default: a process of its own, alternating call by call (bench/reference_process.py).')
_SETTLE = flags.DEFINE_integer(
    'settle', 1, 'With --reference: untimed calls of each implementation right before each of its timed ones, so '
    'no timed call directly follows the other framework\'s (whose memory use slowed the next large JAX step by '
    '60%). 0: strict A, B, A, B alternation, the method up to 2026-12-06.')
_RTF_FRAMES = flags.DEFINE_integer('rtf_frames', 1500, 'decode: solo frames of the real-time-factor run '
                                   '(1500 = 30 s at 50 Hz; capped by max_seq_len; 0 = skip).')
_PEAK_FLOPS = flags.DEFINE_float('peak_flops', None, 'Peak FLOP/s per device for MFU. Default: the data-sheet '
                                 'table in saxgpt_jax/flops.py, or a measured matmul on devices not in it.')
_PROFILE_DIR = flags.DEFINE_string('profile_dir', '', 'train/decode: after timing, trace one more JAX call with '
                                   'jax.profiler into this directory (decode: one subdirectory per batch row) '
                                   'and report its op count and top ops (saxgpt_jax/bench/profile.py).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON line instead of a table.')
_JSON_FILE = flags.DEFINE_string('json_file', '', 'Also append the result as one JSON line to this file (created '
                                 'with its folder if missing), e.g. to collect a series of runs.')

COMMANDS = ('train', 'decode', 'data')
_MINIMUM = ((_FRAMES, 1), (_STEPS, 1), (_WARMUP, 0), (_REPEATS, 1), (_TORCH_THREADS, 0), (_SETTLE, 0),
            (_RTF_FRAMES, 0))


def _check_counts() -> None:
  """ValueError naming the first number flag below its minimum (before it reaches a shape or a range)."""
  for holder, minimum in _MINIMUM:
    if holder.value is not None and holder.value < minimum:
      raise ValueError(f'--{holder.name} must be >= {minimum}, got {holder.value}')
  if _PEAK_FLOPS.value is not None and not _PEAK_FLOPS.value > 0:
    raise ValueError(f'--peak_flops must be > 0 FLOP/s per device, e.g. 989e12, got {_PEAK_FLOPS.value}')


def _single_batch(default: int) -> int:
  """train/data: --batch as one positive integer."""
  if _BATCH.value is None:
    return default
  if len(_BATCH.value) != 1 or not _BATCH.value[0].isdigit() or int(_BATCH.value[0]) < 1:
    raise ValueError(f'--batch must be one positive integer, got {_BATCH.value}')
  return int(_BATCH.value[0])


def run_command(command: str) -> dict:
  """Runs one benchmark with the parsed flags -> its result dict (plus config path and machine)."""
  config = _CONFIG.value
  if config is None:
    raise ValueError('--config is required, e.g. --config=configs/tiny.py')
  _check_counts()
  if _DTYPE.value:
    config.model.dtype = _DTYPE.value
  if _REFERENCE.value == 'torch':
    if importlib.util.find_spec('torch') is None:  # before the JAX side is compiled and timed
      raise ValueError('--reference=torch needs PyTorch, which is not installed here: pip install torch==2.13.0 '
                       '(the version .[preprocess] pins), or drop --reference')
    # On a GPU both sides share the device: JAX allocates as it goes instead of taking 75% up front.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  from saxgpt_jax.bench import timing

  if command == 'train':
    from saxgpt_jax.bench import train
    result = train.run(config, batch=_single_batch(config.train.global_batch_size),
                       frames=_FRAMES.value or config.data.seq_len, steps=_STEPS.value or 10,
                       warmup=_WARMUP.value, reference=_REFERENCE.value, peak_flops=_PEAK_FLOPS.value,
                       reference_in_process=_REFERENCE_IN_PROCESS.value, torch_threads=_TORCH_THREADS.value,
                       settle=_SETTLE.value, profile_dir=_PROFILE_DIR.value)
  elif command == 'decode':
    from saxgpt_jax.bench import decode
    rows = _BATCH.value or ['1', '16']
    try:
      for row in rows:
        decode.parse_row(row)
    except ValueError as e:
      raise ValueError(f'--batch: {e}') from None
    result = decode.run(config, batches=rows, steps=_STEPS.value or 300,
                        frames=_FRAMES.value, repeats=_REPEATS.value, warmup=_WARMUP.value,
                        reference=_REFERENCE.value, reference_in_process=_REFERENCE_IN_PROCESS.value,
                        torch_threads=_TORCH_THREADS.value, settle=_SETTLE.value, rtf_frames=_RTF_FRAMES.value,
                        profile_dir=_PROFILE_DIR.value)
  else:
    if _REFERENCE.value or _PROFILE_DIR.value:
      raise ValueError('--reference and --profile_dir apply to train and decode only')
    from saxgpt_jax.bench import data
    result = {'command': 'data', **data.benchmark(config, steps=_STEPS.value or 20,
                                                   batch=_single_batch(config.train.global_batch_size))}
  result['config'] = config_flags.get_config_filename(flags.FLAGS['config'])
  if _REFERENCE.value:
    result['settle'] = _SETTLE.value  # timing.interleaved
  result.setdefault('machine', timing.machine())  # with the reference: its version and threads too
  return result


def format_table(result: dict, prefix: str = '') -> list[str]:
  """Nested result dict -> aligned `name  value` lines (floats to 4 significant digits)."""
  lines = []
  for key, value in result.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict):
      lines.extend(format_table(value, f'{name}.'))
    else:
      lines.append(f'{name:<40} {value:.4g}' if isinstance(value, float) else f'{name:<40} {value}')
  return lines


def main(argv: list[str]) -> None:
  from saxgpt_jax.train import ConfigError  # pylint: disable=g-import-not-at-top

  if len(argv) != 2 or argv[1] not in COMMANDS:
    cli.usage_error(f'give one command: python -m saxgpt_jax.bench {{{",".join(COMMANDS)}}} --config=... [flags] '
                    f'(got {argv[1:]})')
  try:
    with cli.exit_on_ctrl_c('no figures were written.'):
      result = run_command(argv[1])
  except ConfigError as e:
    sys.exit(f'error: {e}\n(bench train sets data.seq_len from --frames and train.global_batch_size from --batch)')
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'error: {e}')
  if _JSON_FILE.value:
    os.makedirs(os.path.dirname(os.path.abspath(_JSON_FILE.value)), exist_ok=True)
    # One write(2) of the whole line on an O_APPEND descriptor (a buffered file object splits lines over
    # its 8 KiB buffer, and a profiled result is longer): runs appending to one file never interleave.
    fd = os.open(_JSON_FILE.value, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    line = (json.dumps(result) + '\n').encode()
    try:
      if os.write(fd, line) != len(line):
        raise OSError(f'--json_file={_JSON_FILE.value}: short write (disk full?)')
    finally:
      os.close(fd)
  if _JSON.value:
    print(json.dumps(result), flush=True)
  else:
    print('\n'.join(format_table(result)), flush=True)


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, argv=sys.argv, flags_parser=cli.parse_flags)
