"""Generate saxophone solos for backing tracks with a trained (or converted) SaxGPT checkpoint.

    python -m saxgpt_jax.generate --checkpoint=DIR --backing=track.wav --output=out/
    python -m saxgpt_jax.generate --checkpoint=DIR --backing=tokens.npy --output=solo.npy --greedy

--backing takes raw (not delayed) EnCodec tokens `.npy` ([4, N] or [B, 4, N]), an audio file, or a folder
of audio/.npy files. Audio is loudness-normalised (-14 LUFS), made mono, resampled to 32 kHz and tokenized
with --codec (needs the `preprocess` extra; token in/out works without it).

--output ending in `.npy` writes the solo's raw tokens for a single `.npy` backing: the backing's shape,
with a samples axis before the codebooks when --num_samples > 1. Otherwise --output is a folder that gets,
per input NAME (and sample suffix `_s{i}` when --num_samples > 1): NAME_solo.npy, and for audio inputs
NAME_solo.wav and NAME_mix.wav (backing + solo, clipped to [-1, 1]); plus one summary.json.
In a folder, a backing that cannot be read (corrupt or empty audio, a .npy of the wrong shape) is skipped
with a warning and listed under "skipped" in summary.json; the others are generated, and the command then
exits with status 1 naming the skipped files. Rerun the same command into the same folder to resume: inputs
that summary.json lists as generated with the same checkpoint step and settings, whose files are all there,
are kept (listed under "kept"); the rest (new, fixed or interrupted ones) are generated. Each input's random
stream is keyed by its file name, so a solo does not depend on which other files the folder holds. The output
folder must not be the backing folder, and two backings must not share a name stem (a.wav and a.npy).

Long-form: a backing longer than one window (model.max_seq_len - K - 1 frames, 1500 = 30 s for the
presets) is generated with sliding windows. Each new window starts `--window_stride` frames after the
previous one and continues the solo: the previous window's last (window - stride) frames are the decoder's
prompt and come out unchanged, so a full-length track gets one continuous solo. A smaller stride gives the
model more context per new frame and costs more compute (window / stride decode passes per window of audio).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from configs import cli
from saxgpt_jax import checkpoint as ckpt_lib
from saxgpt_jax import decode
from saxgpt_jax.delay import delayed_window, undo_delay
from saxgpt_jax.model import SaxGPT

AUDIO_SUFFIXES = ('.wav', '.flac', '.mp3', '.ogg', '.m4a', '.aiff', '.aif', '.opus', '.webm')
FRAME_RATE = 50  # EnCodec 32 kHz frames per second


class BackingError(ValueError):
  """A backing input that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class WindowPlan:
  """Where each sliding window sits. window: frames per window; stride: new frames per later window."""
  total: int  # frames to generate
  window: int
  stride: int

  @property
  def starts(self) -> list[int]:
    starts, start = [0], 0
    while start + self.window < self.total:
      start += self.stride
      starts.append(start)
    return starts

  @property
  def prompt_frames(self) -> int:
    return self.window - self.stride


def plan_windows(model: SaxGPT, total: int, stride: int) -> WindowPlan:
  cfg = model.cfg
  window = cfg.max_seq_len - cfg.num_codebooks - 1
  if total < 1:
    raise ValueError('nothing to generate: the backing (or --max_frames / --max_seconds) has no frames.')
  if not 1 <= stride <= window:
    raise ValueError(f'--window_stride={stride} must be between 1 and the window of {window} frames.')
  return WindowPlan(total=total, window=window, stride=stride)


def generate_solo(model: SaxGPT, backing: np.ndarray, *, num_frames: int, window_stride: int,
                  sampling: decode.SamplingParams, rng: jax.Array, num_samples: int = 1,
                  progress: bool = False) -> np.ndarray:
  """Raw backing tokens int [B, K, N] -> raw solo tokens int32 [B, num_samples, K, num_frames].

  Every window is padded to the full window length and masked, so all windows share one compiled
  program (one more for the prompted windows).
  """
  b, k_count, n = backing.shape
  num_frames = min(num_frames, n)
  plan = plan_windows(model, num_frames, window_stride)
  steps = plan.window + k_count  # positions after the start token for a full window
  solo = np.zeros((b * num_samples, k_count, num_frames), np.int32)
  rows_backing = np.repeat(backing, num_samples, axis=0)
  starts = plan.starts
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=num_frames, unit='frame', desc='generating', leave=False)
  produced = 0
  for w, start in enumerate(starts):
    real = min(plan.window, num_frames - start)  # solo frames this window contributes
    first = w == 0
    window_src = rows_backing[::num_samples] if first else rows_backing
    # The encoder sees the whole backing window (as in training), however few solo frames are asked for.
    windows = [delayed_window(x[:, start:start + plan.window], plan.window) for x in window_src]
    src = jnp.asarray(np.stack([s for s, _ in windows]))
    mask = jnp.asarray(np.stack([m for _, m in windows]))
    prompt = None if first else jnp.asarray(solo[:, :, start:start + plan.prompt_frames])
    out = decode.generate(model, src, num_steps=steps, sampling=sampling, rng=jax.random.fold_in(rng, w),
                          num_samples=num_samples if first else 1, src_mask=mask, prompt=prompt)
    frames = np.asarray(undo_delay(out.reshape(-1, k_count, steps + 1)))[:, :, :real]
    new_from = 0 if first else plan.prompt_frames
    solo[:, :, start + new_from:start + real] = frames[:, :, new_from:]
    if bar is not None:
      bar.update(start + real - produced)
    produced = start + real
  if bar is not None:
    bar.close()
  return solo.reshape(b, num_samples, k_count, num_frames)


def _audio_modules():
  try:
    from preprocessing import audio, codec  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(
        f'Audio input/output needs the preprocess extra ({e}). Install it with pip install -e ".[preprocess]", '
        'or pass raw EnCodec tokens (.npy) and write tokens (--output=solo.npy).') from e
  return audio, codec


def _inputs(backing: str) -> list[Path]:
  path = Path(backing)
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES + ('.npy',))
    if not files:
      raise SystemExit(f'--backing={backing} is a folder with no audio or .npy files ({", ".join(AUDIO_SUFFIXES)}).')
    return files
  if not path.exists():
    raise SystemExit(f'--backing={backing} does not exist.')
  if path.suffix.lower() not in AUDIO_SUFFIXES + ('.npy',):
    raise SystemExit(f'--backing={backing}: unsupported type {path.suffix!r}; use .npy tokens or audio '
                     f'({", ".join(AUDIO_SUFFIXES)}).')
  return [path]


def load_tokens(path: Path, num_codebooks: int) -> tuple[np.ndarray, bool]:
  """A raw token .npy as (int32 [B, K, N], whether the file held a single [K, N] track), with a clear
  error (BackingError) for an unreadable file, wrong shapes or codes."""
  try:
    tokens = np.load(path)
  except (OSError, ValueError, EOFError) as e:
    raise BackingError(f'{path}: not a readable .npy file ({e}).') from e
  shape, single = tokens.shape, tokens.ndim == 2
  if single:
    tokens = tokens[None]
  if tokens.ndim != 3 or tokens.shape[1] != num_codebooks:
    raise BackingError(f'{path}: expected raw tokens [{num_codebooks}, N] or [B, {num_codebooks}, N], '
                       f'got {shape}.')
  if tokens.size == 0:
    raise BackingError(f'{path}: holds no tokens (shape {tokens.shape}).')
  if not np.issubdtype(tokens.dtype, np.integer) or tokens.min() < 0 or tokens.max() > 2047:
    raise BackingError(f'{path}: tokens must be integer codes in [0, 2047] (raw, not delayed).')
  return tokens.astype(np.int32), single


def _read_backing(path: Path, num_codebooks: int, codec) -> tuple[np.ndarray, bool, np.ndarray | None]:
  """One input -> (raw tokens int32 [B, K, N], whether a .npy held a single [K, N] track, the prepared
  32 kHz mono wave of an audio input or None). Raises BackingError naming the file."""
  if path.suffix == '.npy':
    return (*load_tokens(path, num_codebooks), None)
  audio, _ = _audio_modules()
  try:
    wave = audio.prepare(*audio.load_audio(path))
  except audio.AudioError as e:
    raise BackingError(str(e) if str(path) in str(e) else f'{path}: {e}') from e  # name the file once
  return codec.encode(wave, audio.TARGET_SR)[None].astype(np.int32), True, wave


def _check_output_names(inputs: list[Path], out_dir: Path, backing: str) -> None:
  """SystemExit before any work if the outputs would land among the inputs or two inputs would write the
  same files (a.wav and a.npy both write a_solo.npy)."""
  if Path(backing).is_dir() and out_dir.resolve() == Path(backing).resolve():
    raise SystemExit(f'--output={out_dir} is the --backing folder: the solos would be read as backings on the '
                     'next run. Pass another folder as --output.')
  by_stem: dict[str, list[str]] = {}
  for path in inputs:
    by_stem.setdefault(path.stem, []).append(path.name)
  clashes = [names for names in by_stem.values() if len(names) > 1]
  if clashes:
    raise SystemExit('these backings would write the same output files (NAME_solo.npy ...): '
                     + '; '.join(' and '.join(names) for names in clashes) + '. Rename or move all but one of each.')


# summary.json keys that must match for an earlier run's solos to be kept (`_finished_entries`).
RESUME_KEYS = ('checkpoint', 'checkpoint_step', 'seed', 'num_samples', 'window_stride', 'frame_cap', 'sampling')


def _finished_entries(out_dir: Path, summary: dict) -> dict[str, dict]:
  """input -> entry of an earlier run's summary.json in out_dir with the same RESUME_KEYS as `summary`,
  for the inputs whose files all exist (resume); {} when there is none or its settings differ."""
  try:
    earlier = json.loads((out_dir / 'summary.json').read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}
  if any(earlier.get(key) != summary[key] for key in RESUME_KEYS):
    logging.warning('%s/summary.json was written with other settings: generating every input again', out_dir)
    return {}
  return {e['input']: e for e in earlier.get('outputs', []) if all(Path(f).is_file() for f in e['files'])}


def _write_summary(out_dir: Path, summary: dict) -> None:
  tmp = out_dir / '.summary.json.tmp'
  tmp.write_text(json.dumps(summary, indent=2))
  os.replace(tmp, out_dir / 'summary.json')


def writes_token_file(output: str) -> bool:
  """Whether --output names one token file (FILE.npy) rather than a folder of solos and summary.json."""
  return output.endswith('.npy')


def run(*, checkpoint: str, backing: str, output: str, sampling: decode.SamplingParams, seed: int,
        num_samples: int, max_frames: int | None, max_seconds: float | None, window_stride: int | None,
        codec_spec: str | None, best: bool = False, progress: bool = True) -> dict:
  """Generates for every input; returns the summary (also written to OUTPUT/summary.json in folder mode).

  A single unusable backing raises SystemExit with the reason; in a folder it is skipped and listed under
  summary['skipped'] ({'input', 'error'} each). In folder mode summary.json is rewritten after every input,
  and a rerun keeps the inputs an earlier run finished with the same settings (`_finished_entries`; listed
  under summary['kept'])."""
  if num_samples < 1:
    raise SystemExit(f'--num_samples must be >= 1, got {num_samples}.')
  inputs = _inputs(backing)
  token_file = writes_token_file(output)
  if token_file and (len(inputs) != 1 or inputs[0].suffix != '.npy'):
    raise SystemExit('--output=FILE.npy needs exactly one .npy backing; pass a folder as --output for audio.')
  out_dir = Path(output).parent if token_file else Path(output)
  _check_output_names(inputs, out_dir, backing)
  step = ckpt_lib.chosen_step(checkpoint, best=best)
  model, config = ckpt_lib.load_model(checkpoint, step=step)
  k_count = model.cfg.num_codebooks
  window = model.cfg.max_seq_len - k_count - 1
  stride = window_stride or min(config.sample.window_stride, window)  # a flag out of range is an error
  cap = min(x for x in (max_frames, None if max_seconds is None else int(max_seconds * FRAME_RATE), 1 << 62)
            if x is not None)
  out_dir.mkdir(parents=True, exist_ok=True)
  codec = None
  if any(p.suffix != '.npy' for p in inputs):  # before any work: a codec that cannot load fails them all
    audio, codec_lib = _audio_modules()
    spec = codec_spec or config.data.get('codec', 'facebook/encodec_32khz')
    try:
      codec = codec_lib.Codec.load(spec)
    except codec_lib.CodecError as e:
      raise SystemExit(f'--codec={spec}: {e}') from e
  summary = {'checkpoint': str(checkpoint), 'checkpoint_step': step, 'seed': seed, 'num_samples': num_samples,
             'window_stride': stride, 'frame_cap': None if cap == 1 << 62 else cap,
             'sampling': {k: np.asarray(v).item() for k, v in dataclasses.asdict(sampling).items()},
             'outputs': [], 'skipped': [], 'kept': []}
  finished = {} if token_file else _finished_entries(out_dir, summary)
  rng = jax.random.key(seed)
  for path in inputs:
    if str(path) in finished:
      summary['outputs'].append(finished[str(path)])
      summary['kept'].append(str(path))
      continue
    t0 = time.time()
    try:
      tokens, single, wave = _read_backing(path, k_count, codec)
    except BackingError as e:
      if len(inputs) == 1:
        raise SystemExit(str(e)) from e
      logging.warning('skipping %s', e)
      summary['skipped'].append({'input': str(path), 'error': str(e)})
      _write_summary(out_dir, summary)
      continue
    key = jax.random.fold_in(rng, zlib.crc32(path.name.encode()) & 0x7FFFFFFF)  # by name, not by position
    solo = generate_solo(model, tokens, num_frames=min(cap, tokens.shape[2]), window_stride=stride,
                         sampling=sampling, rng=key, num_samples=num_samples, progress=progress)
    entry = {'input': str(path), 'frames': int(solo.shape[-1]), 'seconds': solo.shape[-1] / FRAME_RATE,
             'windows': len(plan_windows(model, solo.shape[-1], stride).starts), 'files': []}
    if token_file:
      arr = solo[:, 0] if num_samples == 1 else solo
      arr = arr[0] if single else arr  # [4, N] in -> [4, N] out
      _save_npy(Path(output), arr)
      entry['files'].append(output)
    else:
      for b in range(solo.shape[0]):
        for s in range(num_samples):
          name = path.stem + (f'_b{b}' if solo.shape[0] > 1 else '') + (f'_s{s}' if num_samples > 1 else '')
          _save_npy(out_dir / f'{name}_solo.npy', solo[b, s])
          entry['files'].append(str(out_dir / f'{name}_solo.npy'))
          if wave is not None:
            solo_wave = codec.decode(solo[b, s])
            n = min(len(solo_wave), len(wave))
            audio.write_wav(out_dir / f'{name}_solo.wav', solo_wave, audio.TARGET_SR)
            audio.write_wav(out_dir / f'{name}_mix.wav', np.clip(wave[:n] + solo_wave[:n], -1.0, 1.0),
                            audio.TARGET_SR)
            entry['files'] += [str(out_dir / f'{name}_solo.wav'), str(out_dir / f'{name}_mix.wav')]
    entry['elapsed_s'] = round(time.time() - t0, 2)
    summary['outputs'].append(entry)
    if not token_file:
      _write_summary(out_dir, summary)
    logging.info('%s: %d frames (%.1f s) x %d sample(s) in %.1f s', path.name, entry['frames'], entry['seconds'],
                 num_samples, entry['elapsed_s'])
  if not token_file:
    _write_summary(out_dir, summary)  # also when every input was kept from the earlier run
  return summary


def _save_npy(path: Path, array: np.ndarray) -> None:
  tmp = path.with_name(f'.{path.name}.tmp.npy')
  np.save(tmp, array)
  os.replace(tmp, path)


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program, so importing this module defines none)."""
  flags.DEFINE_string('checkpoint', None, 'Checkpoint dir: a training workdir, its checkpoints/ '
                      'folder, or the output of saxgpt_jax.convert_torch.')
  flags.DEFINE_string('backing', None, 'Backing track: raw tokens .npy ([4,N] or [B,4,N]), an audio '
                      'file, or a folder of them.')
  flags.DEFINE_string('output', None, 'FILE.npy (tokens of a single .npy backing) or an output folder.')
  flags.DEFINE_bool('greedy', None, 'Argmax decoding (default: the checkpoint config\'s sample.greedy).')
  flags.DEFINE_float('temperature', None, 'Sampling temperature (default: config sample.temperature).')
  flags.DEFINE_integer('top_k', None, 'Keep the k most likely codes, 0 = off (default: config).')
  flags.DEFINE_float('top_p', None, 'Nucleus sampling mass, 0 = off (default: config).')
  flags.DEFINE_integer('seed', 0, 'Random seed; the samples of every input (keyed by its file name) are '
                       'reproducible from it.')
  flags.DEFINE_integer('num_samples', 1, 'Variations per input (files get _s{i} suffixes).')
  flags.DEFINE_integer('max_frames', None, 'Solo frames to generate (50 per second); default the '
                       'backing length.')
  flags.DEFINE_float('max_seconds', None, 'Cap on the solo length in seconds.')
  flags.DEFINE_integer('window_stride', None, 'New frames per sliding window for long backings '
                       '(default: config sample.window_stride).')
  flags.DEFINE_string('codec', None, 'EnCodec weights for audio: hub id, local folder, or random:SEED '
                      '(default: the checkpoint config\'s data.codec, else facebook/encodec_32khz).')
  flags.DEFINE_bool('best', False, 'Use the checkpoint with the best validation loss instead of the latest.')


def main(argv):
  cli.no_arguments(argv)
  f = flags.FLAGS
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO; progress comes from tqdm and prints
  missing = [f'--{name}' for name in ('checkpoint', 'backing', 'output') if not f[name].value]
  if missing:
    named = ' and '.join([', '.join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
    cli.usage_error(f'{named} {"is" if len(missing) == 1 else "are"} required, e.g. '
                    '--checkpoint=runs/demo/train --backing=track.wav --output=solos/')
  try:
    config = ckpt_lib.read_config(f.checkpoint)
    pick = lambda value, default: default if value is None else value
    sampling = decode.SamplingParams.make(
        temperature=pick(f.temperature, config.sample.temperature), top_k=pick(f.top_k, config.sample.top_k),
        top_p=pick(f.top_p, config.sample.top_p), greedy=pick(f.greedy, config.sample.greedy))
  except (ckpt_lib.CheckpointError, ValueError) as e:  # no checkpoint config, or a bad sampling flag
    sys.exit(f'error: {e}')
  try:
    with cli.exit_on_ctrl_c(f'no solo was written to {f.output}; rerun the command.' if writes_token_file(f.output)
                            else f'the solos finished so far are in {f.output} (summary.json lists them); rerun '
                            'the same command to generate the rest.'):
      summary = run(checkpoint=f.checkpoint, backing=f.backing, output=f.output, sampling=sampling, seed=f.seed,
                    num_samples=f.num_samples, max_frames=f.max_frames, max_seconds=f.max_seconds,
                    window_stride=f.window_stride, codec_spec=f.codec, best=f.best)
  except ckpt_lib.CheckpointError as e:  # parameters that do not fit, or none saved
    sys.exit(f'error: {e}')
  except SystemExit as e:  # run()'s refusals: a missing or unusable backing, clashing outputs, a bad --codec
    if not isinstance(e.code, str):
      raise
    sys.exit(f'error: {e.code}')
  for entry in summary['outputs']:
    how = 'kept from the earlier run' if entry['input'] in summary['kept'] else f"in {entry['windows']} window(s)"
    print(f"{entry['input']}: {entry['seconds']:.1f} s of solo {how} -> {', '.join(entry['files'])}")
  if summary['skipped']:
    sys.exit(f"error: {len(summary['skipped'])} of {len(summary['skipped']) + len(summary['outputs'])} "
             'backings skipped (the rest were generated; summary.json lists them):\n'
             + '\n'.join(f"  - {s['error']}" for s in summary['skipped']))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
