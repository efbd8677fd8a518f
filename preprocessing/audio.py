"""Audio I/O and conditioning: load any file, mono, resample, loudness-normalise, write atomically.

Waves are float32 numpy arrays: [C, T] (channels first) as loaded, [T] once mono.
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pyloudnorm
import soundfile as sf
import soxr

from preprocessing.manifest import atomic_write_bytes

TARGET_SR = 32000
TARGET_LUFS = -14.0
SILENCE_DBFS = -60.0  # RMS below this counts as silence
_LOUDNESS_BLOCK_S = 0.4  # pyloudnorm's (ITU-R BS.1770) gating block


class AudioError(ValueError):
  """Audio that cannot be used; the message names the file (or input) and the problem."""


def _ffmpeg_exe(path: Path) -> str:
  try:
    import imageio_ffmpeg
  except ImportError as e:
    raise AudioError(
        f'{path}: soundfile cannot read this format and ffmpeg is not available. '
        f'Install it with `pip install imageio-ffmpeg==0.8.1` (ships an ffmpeg binary).') from e
  return imageio_ffmpeg.get_ffmpeg_exe()


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
  """Decodes any format ffmpeg knows (mp3, m4a, webm, ...) to float32 [T, C] at the native rate."""
  exe = _ffmpeg_exe(path)
  with tempfile.TemporaryDirectory(prefix='saxgpt_ffmpeg_') as tmp:
    wav = Path(tmp) / 'decoded.wav'
    proc = subprocess.run(
        [exe, '-nostdin', '-v', 'error', '-i', str(path), '-vn', '-acodec', 'pcm_f32le', str(wav)],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not wav.exists():
      detail = (proc.stderr.strip().splitlines() or ['no output'])[-1]
      raise AudioError(f'{path}: unreadable or corrupt audio (neither soundfile nor ffmpeg can decode it: {detail}).')
    try:
      data, sr = sf.read(wav, dtype='float32', always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:  # ffmpeg wrote a header but no audio stream
      raise AudioError(f'{path}: ffmpeg found no decodable audio ({e}).') from e
  return data, sr


def load_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """Reads an audio file with soundfile, or ffmpeg for other formats. Returns (float32 [C, T], sample_rate).

  Raises AudioError for a missing, empty (0 bytes), unreadable/corrupt or zero-length file, or one with
  non-finite samples.
  """
  path = Path(path)
  if not path.is_file():
    raise AudioError(f'{path}: file does not exist (or is not a regular file).')
  if path.stat().st_size == 0:
    raise AudioError(f'{path}: file is empty (0 bytes).')
  try:
    data, sr = sf.read(path, dtype='float32', always_2d=True)
  except (sf.LibsndfileError, RuntimeError):
    data, sr = _decode_with_ffmpeg(path)
  if data.shape[0] == 0:
    raise AudioError(f'{path}: audio has zero length (no samples).')
  if not np.all(np.isfinite(data)):
    raise AudioError(f'{path}: audio contains NaN or infinite samples.')
  return np.ascontiguousarray(data.T), int(sr)


def to_mono(wave: np.ndarray) -> np.ndarray:
  """float [C, T] or [T] -> float32 [T] (channel mean)."""
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim == 1:
    return wave
  if wave.ndim != 2:
    raise AudioError(f'expected a wave of shape [C, T] or [T], got {wave.shape}.')
  return wave.mean(axis=0)


def resample(wave: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
  """float [T] or [C, T] at `sr` -> float32 at `target_sr` (soxr HQ); length round(T * target_sr / sr)."""
  wave = np.asarray(wave, dtype=np.float32)
  if sr == target_sr:
    return wave
  if sr <= 0 or target_sr <= 0:
    raise AudioError(f'sample rates must be positive, got {sr} -> {target_sr}.')
  out = soxr.resample(wave.T, sr, target_sr, quality='HQ').T  # soxr wants [T] or [T, C]
  return np.ascontiguousarray(out, dtype=np.float32)


def rms_dbfs(wave: np.ndarray) -> float:
  """RMS level of a wave in dB relative to full scale (-inf for digital silence)."""
  wave = np.asarray(wave, dtype=np.float64)
  rms = np.sqrt(np.mean(np.square(wave))) if wave.size else 0.0
  return float(20.0 * np.log10(rms)) if rms > 0 else float('-inf')


def is_silent(wave: np.ndarray, threshold_dbfs: float = SILENCE_DBFS) -> bool:
  """True for empty input, digital silence, or an RMS level below `threshold_dbfs`."""
  return rms_dbfs(wave) < threshold_dbfs


def loudness_normalize(wave: np.ndarray, sr: int, target_lufs: float = TARGET_LUFS) -> np.ndarray:
  """float32 [T] -> float32 [T] scaled to `target_lufs` integrated loudness (pyloudnorm, ITU-R BS.1770).

  Digital silence, or audio so quiet that every block is gated away (loudness -inf), is returned
  unchanged (there is nothing to scale; use `is_silent` to reject it). Audio shorter than one 400 ms
  loudness block cannot be measured and raises AudioError. Peaks above 1.0 are kept (no clipping):
  `write_wav` stores float samples.
  """
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim != 1:
    raise AudioError(f'loudness_normalize expects mono [T], got {wave.shape}; call to_mono first.')
  min_len = int(np.ceil(_LOUDNESS_BLOCK_S * sr))
  if wave.shape[0] < min_len:
    raise AudioError(
        f'audio is {wave.shape[0] / sr:.3f} s long, shorter than the {_LOUDNESS_BLOCK_S} s block that '
        f'loudness measurement needs: give at least {_LOUDNESS_BLOCK_S} s of audio.')
  if not np.any(wave):
    return wave
  loudness = pyloudnorm.Meter(sr).integrated_loudness(wave.astype(np.float64))
  if not np.isfinite(loudness):
    return wave
  gain = 10.0 ** ((target_lufs - loudness) / 20.0)
  return (wave * gain).astype(np.float32)


def prepare(wave: np.ndarray, sr: int, target_sr: int = TARGET_SR, target_lufs: float = TARGET_LUFS) -> np.ndarray:
  """float [C, T] or [T] at `sr` -> float32 [T'] mono at `target_sr`, normalised to `target_lufs`."""
  return loudness_normalize(resample(to_mono(wave), sr, target_sr), target_sr, target_lufs)


def write_wav(path: str | os.PathLike, wave: np.ndarray, sr: int, subtype: str = 'FLOAT') -> None:
  """Writes float [T] or [C, T] as a WAV file atomically (temporary file, then rename)."""
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim not in (1, 2) or wave.shape[-1] == 0:
    raise AudioError(f'{path}: cannot write a wave of shape {wave.shape}; expected [T] or [C, T] with T > 0.')
  buf = io.BytesIO()
  sf.write(buf, wave.T, sr, format='WAV', subtype=subtype)
  atomic_write_bytes(path, buf.getvalue())
