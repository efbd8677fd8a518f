"""Audio I/O and conditioning: formats, clear errors on bad files, mono/resample/loudness, atomic writes."""

import os

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from preprocessing import audio

SR = 32000


def noise(seconds, sr=SR, channels=1, seed=0, level=0.1):
  rng = np.random.default_rng(seed)
  return (level * rng.standard_normal((channels, int(seconds * sr)))).astype(np.float32)


def test_load_wav_and_flac(tmp_path):
  wave = noise(0.5, 44100, channels=2)
  sf.write(tmp_path / 'a.wav', wave.T, 44100, subtype='FLOAT')
  sf.write(tmp_path / 'a.flac', wave.T, 44100)
  loaded, sr = audio.load_audio(tmp_path / 'a.wav')
  assert sr == 44100 and loaded.shape == (2, 22050) and loaded.dtype == np.float32
  np.testing.assert_array_equal(loaded, wave)
  loaded, sr = audio.load_audio(tmp_path / 'a.flac')
  np.testing.assert_allclose(loaded, wave, atol=1e-4)


def test_load_mp3_through_ffmpeg(tmp_path):
  import subprocess

  import imageio_ffmpeg

  sf.write(tmp_path / 'src.wav', noise(1.0, 44100).T, 44100)
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), '-v', 'error', '-i', str(tmp_path / 'src.wav'),
                  str(tmp_path / 'a.mp3')], check=True)
  loaded, sr = audio.load_audio(tmp_path / 'a.mp3')
  assert sr == 44100 and loaded.shape[0] == 1 and abs(loaded.shape[1] - 44100) < 3000


@pytest.mark.parametrize('name, content, problem', [
    ('missing.wav', None, 'does not exist'),
    ('empty.wav', b'', 'empty'),
    ('corrupt.mp3', b'this is not audio' * 100, 'unreadable or corrupt'),
])
def test_bad_files_raise_clear_errors(tmp_path, name, content, problem):
  path = tmp_path / name
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(audio.AudioError, match=problem) as e:
    audio.load_audio(path)
  assert name in str(e.value)


def test_zero_length_file(tmp_path):
  sf.write(tmp_path / 'zero.wav', np.zeros((0, 1), np.float32), SR)
  with pytest.raises(audio.AudioError, match='zero length'):
    audio.load_audio(tmp_path / 'zero.wav')


def test_mono_and_resample():
  stereo = np.stack([np.ones(100), -np.ones(100) * 0.5]).astype(np.float32)
  np.testing.assert_allclose(audio.to_mono(stereo), 0.25)
  tone = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32)
  out = audio.resample(tone, 44100, SR)
  assert out.shape == (SR,) and out.dtype == np.float32
  np.testing.assert_allclose(out[1000:-1000], np.sin(2 * np.pi * 440 * np.arange(SR) / SR)[1000:-1000], atol=1e-3)
  assert audio.resample(stereo, 16000, SR).shape == (2, 200)


def test_loudness_normalize_hits_target_and_handles_edge_cases():
  wave = noise(2.0, level=0.01)[0]
  out = audio.loudness_normalize(wave, SR, -14.0)
  assert pyloudnorm.Meter(SR).integrated_loudness(out) == pytest.approx(-14.0, abs=0.05)
  silence = np.zeros(SR, np.float32)
  np.testing.assert_array_equal(audio.loudness_normalize(silence, SR), silence)  # no NaN, unchanged
  with pytest.raises(audio.AudioError, match='shorter than the 0.4 s block'):
    audio.loudness_normalize(wave[:SR // 10], SR)


def test_prepare_and_is_silent():
  stereo_44k = noise(1.0, 44100, channels=2, level=0.3)
  out = audio.prepare(stereo_44k, 44100)
  assert out.shape == (SR,) and out.dtype == np.float32
  assert pyloudnorm.Meter(SR).integrated_loudness(out) == pytest.approx(-14.0, abs=0.05)
  assert audio.is_silent(np.zeros(10)) and audio.is_silent(np.full(10, 1e-4))
  assert not audio.is_silent(out)


def test_write_wav_is_atomic_and_round_trips(tmp_path, monkeypatch):
  path = tmp_path / 'out' / 'x.wav'
  wave = noise(0.25, channels=2)
  audio.write_wav(path, wave, SR)
  loaded, sr = audio.load_audio(path)
  assert sr == SR
  np.testing.assert_array_equal(loaded, wave)
  mask = os.umask(0o022)
  os.umask(mask)
  assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would make it, not mkstemp's 0600
  # A failed write leaves neither a partial file nor a temporary one behind.
  monkeypatch.setattr(os, 'replace', lambda *a: (_ for _ in ()).throw(OSError('disk full')))
  with pytest.raises(OSError):
    audio.write_wav(tmp_path / 'out' / 'y.wav', wave, SR)
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['x.wav']
  with pytest.raises(audio.AudioError, match='shape'):
    audio.write_wav(tmp_path / 'z.wav', np.zeros(0), SR)
