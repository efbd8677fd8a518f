"""Tests for preprocessing/synth.py: determinism, levels, rests, chord-following pitch, layout, reruns, CLI."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from preprocessing import synth

SR = synth.SAMPLE_RATE
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def piece():
  """One 40 s piece (the dataset's default length)."""
  return synth.synthesize_piece(3, 40.0)


def _f0(segment: np.ndarray, sr: int = SR, fmin: float = 80.0, fmax: float = 1000.0) -> float:
  """Autocorrelation f0 estimate (Hz) of a short voiced segment: the first lag within 10% of the best."""
  x = segment - segment.mean()
  spec = np.fft.rfft(x * np.hanning(len(x)), 2 * len(x))
  ac = np.fft.irfft(np.abs(spec) ** 2)[: len(x)]
  lo, hi = int(sr / fmax), int(sr / fmin)
  region = ac[lo:hi]
  lag = lo + int(np.argmax(region >= 0.9 * region.max()))
  while lag + 1 < hi and ac[lag + 1] > ac[lag]:  # climb to the local peak
    lag += 1
  a, b, c = ac[lag - 1], ac[lag], ac[lag + 1]
  lag += 0.5 * (a - c) / (a - 2 * b + c)  # parabolic refinement
  return sr / lag


def _cents_to_classes(freq: float, classes) -> float:
  """Distance in cents from `freq` to the nearest pitch of the pitch classes `classes` (any octave)."""
  midi = 69 + 12 * np.log2(freq / 440.0)
  return float(min(abs(((midi - pc + 6) % 12) - 6) for pc in classes) * 100)


def test_deterministic_lengths_and_peaks():
  backing, solo, info = synth.synthesize_piece(7, 4.0)
  backing2, solo2, info2 = synth.synthesize_piece(7, 4.0)
  np.testing.assert_array_equal(backing, backing2)
  np.testing.assert_array_equal(solo, solo2)
  assert info == info2
  assert backing.shape == solo.shape == (4 * SR,)
  assert backing.dtype == solo.dtype == np.float32
  for stem in (backing, solo):
    assert np.all(np.isfinite(stem)) and np.max(np.abs(stem)) <= 1.0
  other_backing, other_solo, _ = synth.synthesize_piece(8, 4.0)
  assert not np.allclose(backing, other_backing) and not np.allclose(solo, other_solo)
  assert synth.synthesize_piece(7, 2.5, sr=16000)[0].shape == (40000,)


def test_pieces_vary_key_tempo_and_progression():
  settings = [synth.piece_settings(synth.piece_seed(0, i)) for i in range(12)]
  assert len({s.key for s in settings}) >= 4
  assert len({s.progression for s in settings}) >= 3
  bpms = [s.bpm for s in settings]
  assert min(bpms) >= 120 and max(bpms) <= 200 and max(bpms) - min(bpms) > 30
  info = synth.synthesize_piece(synth.piece_seed(0, 0), 0.5)[2]
  assert info['bpm'] == round(settings[0].bpm, 2) and info['progression'] == settings[0].progression


def test_levels_phrases_and_rests(piece):
  _, solo, info = piece
  windows = solo[: len(solo) // (SR // 2) * (SR // 2)].reshape(-1, SR // 2)
  rms = np.sqrt(np.mean(windows.astype(np.float64) ** 2, axis=1))
  loud, quiet = np.percentile(rms, 90), np.percentile(rms, 10)
  assert loud > 0.05
  assert quiet < 0.01 * loud, f'rests are not quiet: 10th percentile {quiet}, 90th {loud}'
  # The real config's window selection: -14 LUFS, then RMS >= 0.05 over 10 s frames: every frame passes.
  import pyloudnorm

  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    meter = pyloudnorm.Meter(SR)
    normalised = pyloudnorm.normalize.loudness(solo.astype(np.float64), meter.integrated_loudness(solo), -14.0)
  frames = normalised.reshape(-1, 10 * SR)
  frame_rms = np.sqrt(np.mean(frames ** 2, axis=1))
  assert np.all(frame_rms > 0.05), frame_rms
  assert np.max(np.abs(normalised)) < 1.0


def test_solo_pitch_follows_the_chords(piece):
  _, solo, info = piece
  chords = info['chords']
  held = [n for n in info['notes'] if n['strong'] and n['duration_s'] >= 0.2
          and n['onset_s'] + n['duration_s'] < info['seconds']]
  assert len(held) >= 15
  cents_note, cents_chord, cents_chord_shifted = [], [], []
  for note in held:
    middle = int((note['onset_s'] + 0.6 * note['duration_s']) * SR)
    f0 = _f0(solo[middle - 1280:middle + 1280])
    chord = next(c for c in chords if c['start_s'] <= note['onset_s'] + 1e-3 < c['end_s'])
    cents_note.append(abs(1200 * np.log2(f0 / synth.midi_to_hz(note['midi']))))
    cents_chord.append(_cents_to_classes(f0, chord['pitch_classes']))
    cents_chord_shifted.append(_cents_to_classes(f0 * 2 ** (1 / 12), chord['pitch_classes']))
  cents_note, cents_chord = np.array(cents_note), np.array(cents_chord)
  assert np.mean(cents_note < 50) >= 0.9, f'rendered pitch is off the score: {np.round(cents_note)}'
  assert np.mean(cents_chord < 50) >= 0.9, f'held notes are not chord tones: {np.round(cents_chord)}'
  # The check discriminates: the same notes a semitone higher are mostly not chord tones.
  assert np.mean(np.array(cents_chord_shifted) < 50) < 0.5


def test_dataset_layout_and_rerun_skips(tmp_path):
  dirs = synth.synthesize_dataset(tmp_path, num_pieces=2, seconds=1.5, seed=5)
  assert [d.name for d in dirs] == ['synth_s5_0000', 'synth_s5_0001']
  for d in dirs:
    infos = [sf.info(str(d / name)) for name in ('backing.wav', 'solo.wav')]
    assert all(i.samplerate == SR and i.channels == 1 and i.frames == int(1.5 * SR) and i.subtype == 'FLOAT'
               for i in infos)
    assert (d / 'info.json').exists()
  assert not list(tmp_path.rglob('*.tmp'))
  backing, _, _ = synth.synthesize_piece(synth.piece_seed(5, 1), 1.5)
  np.testing.assert_array_equal(sf.read(str(dirs[1] / 'backing.wav'), dtype='float32')[0], backing)

  mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*.wav')}
  synth.synthesize_dataset(tmp_path, num_pieces=2, seconds=1.5, seed=5)
  assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob('*.wav')} == mtimes, 'a complete piece was rewritten'

  (dirs[0] / 'solo.wav').write_bytes(b'truncated')  # a broken piece is made again, the other one kept
  synth.synthesize_dataset(tmp_path, num_pieces=2, seconds=1.5, seed=5)
  assert sf.info(str(dirs[0] / 'solo.wav')).frames == int(1.5 * SR)
  assert (dirs[1] / 'solo.wav').stat().st_mtime_ns == mtimes[dirs[1] / 'solo.wav']


def test_bad_arguments():
  with pytest.raises(ValueError, match='seconds'):
    synth.synthesize_piece(0, 0.0)
  with pytest.raises(ValueError, match='seed'):
    synth.synthesize_piece(-1, 1.0)
  with pytest.raises(ValueError, match='num_pieces'):
    synth.synthesize_dataset('/tmp/unused', num_pieces=0)


def test_cli_and_imports(tmp_path):
  """One process runs the CLI after checking that importing synth pulls in neither jax nor torch."""
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  code = ('import runpy, sys, preprocessing.synth; '
          'assert not {"jax", "torch"} & set(sys.modules), "synth imported jax or torch"; '
          f'sys.argv = ["synth", "--out={tmp_path}", "--num_pieces=1", "--seconds=1", "--seed=2"]; '
          'runpy.run_module("preprocessing.synth", run_name="__main__")')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  assert (tmp_path / 'synth_s2_0000' / 'solo.wav').exists()
  assert '1 pieces in' in out.stdout
  from absl import flags

  flag_values = flags.FlagValues()
  synth._define_flags(flag_values)
  help_text = flag_values.get_help()
  assert all(f'--{name}' in help_text for name in ('out', 'num_pieces', 'seconds', 'seed'))
  assert 'backing.wav' in help_text and 'python -m preprocessing.synth' in synth.__doc__
