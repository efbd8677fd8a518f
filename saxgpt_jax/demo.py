r"""The offline end-to-end demo: synthetic jazz -> preprocessing (Beam) -> TFDS -> training -> a solo.

    python -m saxgpt_jax.demo --workdir=runs/demo        (what `make demo` runs)

Every stage is the project's real command line, run as a subprocess and printed first, so each one can
be rerun or changed by hand. It runs from any directory: --workdir is relative to the current one, and the
config files are found beside the installed `configs` package (shown as configs/... from the repo root).
Everything is offline and CPU-only: the EnCodec tokenizer is the seeded random `random:0` codec (same
architecture as facebook/encodec_32khz), so the audio it decodes is not meaningful music; the point is that
every stage runs for real. Rerunning resumes: finished stages and
finished work inside a stage are skipped.

Stages and outputs under --workdir:
  1. stems/      preprocessing.synth: seeded paired stems (walking bass, comping, swing drums + a sax-like lead)
  2. tokens/     preprocessing (Beam DirectRunner): RMS windows, clips, EnCodec tokens, manifest
     tfds/       the `saxgpt_tokens` ArrayRecord shards, split by recording
  3. train/      saxgpt_jax.train with configs/tiny.py: checkpoints, metrics.jsonl, TensorBoard
  4. generated/  saxgpt_jax.generate on a held-out (test split) backing (copied to held_out/<id>.wav):
                 <id>_solo.wav, <id>_mix.wav, <id>_solo.npy, summary.json
  5. eval/       saxgpt_jax.evaluate on the test split: report.json and PNG plots
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags, logging

import configs
from configs import cli

_CODEC = 'random:0'


def config_file(name: str) -> str:
  """configs/<name> as a command-line path: relative to the current directory when inside it (from the repo
  root, `configs/tiny.py`), else absolute, so the printed commands stay short and run from anywhere."""
  path = Path(configs.__file__).resolve().parent / name
  relative = os.path.relpath(path)
  return str(path) if relative.startswith('..') else relative


def _run(title: str, args: list[str], work: Path) -> None:
  """Runs one stage's command, printing it first; a failure stops the demo with the command to rerun."""
  print(f'\n=== {title}\n$ {shlex.join(args)}', flush=True)
  t0 = time.time()
  process = subprocess.Popen(args)  # pylint: disable=consider-using-with
  try:
    code = process.wait()
  except KeyboardInterrupt:  # the stage got the same Ctrl-C: let it stop its own way (training saves first)
    print(f'\n=== {title}: interrupted; waiting for it to stop (Ctrl-C again to kill it)', file=sys.stderr,
          flush=True)
    try:
      process.wait()
    except KeyboardInterrupt:
      process.kill()
      process.wait()
    print(f'demo interrupted in stage "{title}"; rerun `python -m saxgpt_jax.demo --workdir={work}` to go on '
          '(finished stages and finished work inside a stage are kept).', file=sys.stderr, flush=True)
    sys.exit(130)  # the shell's status for a Ctrl-C
  if code != 0:
    raise SystemExit(f'error: stage "{title}" failed (exit {code}); fix the message above and rerun '
                     f'`python -m saxgpt_jax.demo --workdir={work}` (finished stages are skipped).')
  print(f'=== {title}: done in {time.time() - t0:.0f} s', flush=True)


def _held_out_backing(config_args: list[str], stems: Path) -> Path:
  """The backing track of the first test-split recording (never seen in training)."""
  from saxgpt_jax import data  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  config.data.data_dir = config_args[0]
  source = data.data_source(config, 'test')
  rec = source[0]['recording_id']
  rec = rec.decode() if isinstance(rec, bytes) else str(rec)
  path = stems / rec / 'backing.wav'
  if not path.exists():
    raise SystemExit(f'error: test recording {rec} has no backing at {path}; rerun the demo with a fresh --workdir.')
  named = stems.parent / 'held_out' / f'{rec}.wav'  # outputs are named after their input: <rec>_solo.wav
  named.parent.mkdir(parents=True, exist_ok=True)
  shutil.copyfile(path, named)
  return named


def run_demo(work: Path, *, num_pieces: int, seconds: float, steps: int, workers: int, seed: int) -> None:
  """Runs the five stages into `work` (see the module docstring)."""
  work.mkdir(parents=True, exist_ok=True)
  py = sys.executable
  stems, tokens, tfds_dir = work / 'stems', work / 'tokens', work / 'tfds'
  train_dir, gen_dir, eval_dir = work / 'train', work / 'generated', work / 'eval'
  t0 = time.time()

  _run('1/5 synthesise paired jazz stems',
       [py, '-m', 'preprocessing.synth', f'--out={stems}', f'--num_pieces={num_pieces}',
        f'--seconds={seconds}', f'--seed={seed}'], work)
  _run('2/5 preprocess on Apache Beam and build the TFDS shards',
       [py, '-m', 'preprocessing', f'--config={config_file("data/synth.py")}', f'--config.source.inputs={stems}',
        f'--config.output_dir={tokens}', f'--config.tfds_data_dir={tfds_dir}',
        f'--config.codec.weights={_CODEC}', f'--config.beam.num_workers={workers}'], work)
  train_overrides = [f'--config.data.data_dir={tfds_dir}', f'--config.data.codec={_CODEC}',
                     f'--config.train.num_steps={steps}']
  _run('3/5 train configs/tiny.py', [py, '-m', 'saxgpt_jax.train', f'--config={config_file("tiny.py")}',
                                     f'--workdir={train_dir}', *train_overrides], work)
  backing = _held_out_backing([str(tfds_dir)], stems)
  _run('4/5 generate a solo for a held-out backing track',
       [py, '-m', 'saxgpt_jax.generate', f'--checkpoint={train_dir}', f'--backing={backing}',
        f'--output={gen_dir}', f'--codec={_CODEC}', '--seed=0'], work)
  _run('5/5 evaluate on the test split', [py, '-m', 'saxgpt_jax.evaluate', f'--checkpoint={train_dir}',
                                          '--split=test', f'--output={eval_dir}', f'--codec={_CODEC}'], work)

  metrics = [json.loads(line) for line in (train_dir / 'metrics.jsonl').read_text().splitlines() if line.strip()]
  losses = [(m['step'], m['loss']) for m in metrics if 'loss' in m and m.get('split', 'train') == 'train']
  print(f'\nDemo finished in {time.time() - t0:.0f} s. Outputs under {work}/:')
  if losses:
    print(f'  training loss: {losses[0][1]:.3f} at step {losses[0][0]} -> {losses[-1][1]:.3f} at step {losses[-1][0]}')
  for path in sorted(list(gen_dir.glob('*')) + list(eval_dir.glob('*'))):
    print(f'  {path}')
  print('The tokenizer is the seeded random codec, so the WAVs are not meaningful music; see the README for '
        'the same commands with real EnCodec/Demucs weights.')


def define_flags() -> None:
  """Defines the command-line flags; only when run as a program, so importing this module defines none."""
  flags.DEFINE_string('workdir', 'runs/demo', 'Where every stage writes (see the module docstring).')
  flags.DEFINE_integer('num_pieces', 6, 'Synthetic recordings (split 0.8/0.1/0.1 by recording).')
  flags.DEFINE_float('seconds', 20.0, 'Length of each synthetic recording in seconds.')
  flags.DEFINE_integer('steps', 300, 'Training steps of configs/tiny.py.')
  flags.DEFINE_integer('workers', 2, 'Beam DirectRunner worker processes for preprocessing.')
  flags.DEFINE_integer('seed', 0, 'Seed of the synthetic dataset.')


def main(argv):
  cli.no_arguments(argv)
  logging.set_verbosity(logging.WARNING)  # tfds' INFO line when the held-out backing is looked up
  f = flags.FLAGS
  run_demo(Path(f.workdir), num_pieces=f.num_pieces, seconds=f.seconds, steps=f.steps, workers=f.workers,
           seed=f.seed)


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
