"""Demucs wrapper: stem mapping by source names, rates and channels, determinism, offline errors."""

import numpy as np
import pytest
import torch

from preprocessing import separate

SR = 32000


class FakeDemucs(torch.nn.Module):
  """Linear 'separator' whose stems are known: stem s = gain[s] * mix. Sources in a shuffled order."""

  samplerate = SR
  audio_channels = 2
  segment = 1.0
  gains = {'bass': 1.0, 'vocals': 2.0, 'drums': 4.0, 'guitar': 8.0, 'other': 16.0, 'piano': 32.0}
  sources = list(gains)

  def forward(self, mix):  # [B, C, T] -> [B, S, C, T]
    return torch.stack([g * mix for g in self.gains.values()], dim=1)


def tone(num_samples, sr, freq=440.0):
  t = np.arange(num_samples) / sr
  return (0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 3.1 * freq * t)).astype(np.float32)


@pytest.fixture(scope='module')
def unittest_separator():
  return separate.Separator.load('demucs_unittest', segment=1.0)


def test_stems_are_picked_by_source_name():
  separator = separate.Separator(FakeDemucs(), 'fake', shifts=1, segment=1.0)
  assert separator.solo_sources == ['vocals', 'other']
  wave = tone(SR + 123, SR)
  wave -= wave.mean()  # the fake stems are not a partition of the mix, so keep its DC offset out
  solo, rhythm = separator.separate(wave, SR)  # mono in: duplicated to stereo, mixed back down
  np.testing.assert_allclose(solo, (2.0 + 16.0) * wave, atol=1e-4)
  np.testing.assert_allclose(rhythm, (1.0 + 4.0 + 8.0 + 32.0) * wave, atol=1e-4)


def test_unittest_model_solo_is_vocals_plus_other(unittest_separator):
  assert unittest_separator.sources == ['drums', 'bass', 'other', 'vocals']
  wave = np.stack([tone(22050, 44100, 330.0), tone(22050, 44100, 550.0)])  # 0.5 s stereo at 44.1 kHz
  solo, rhythm = unittest_separator.separate(wave, 44100)
  assert solo.shape == rhythm.shape == (SR // 2,) and solo.dtype == np.float32
  stems = unittest_separator.separate_sources(wave, 44100)  # same seed -> same shifts
  assert set(stems) == {'drums', 'bass', 'other', 'vocals'} and stems['vocals'].shape == (2, 22050)
  from preprocessing import audio

  def mono_32k(x):
    return audio.resample(audio.to_mono(x), 44100, SR)

  np.testing.assert_allclose(solo, mono_32k(stems['vocals'] + stems['other']), atol=1e-5)
  np.testing.assert_allclose(rhythm, mono_32k(stems['drums'] + stems['bass']), atol=1e-5)
  assert np.abs(solo).max() > 0 and np.abs(rhythm).max() > 0


def test_resamples_mono_input_and_is_deterministic(unittest_separator):
  wave = tone(8000, 16000)  # 0.5 s mono at 16 kHz
  first = unittest_separator.separate(wave, 16000)
  second = unittest_separator.separate(wave, 16000)
  assert first[0].shape == (16000,)
  np.testing.assert_array_equal(first[0], second[0])
  np.testing.assert_array_equal(first[1], second[1])


def test_silence_gives_silent_stems(unittest_separator):
  solo, rhythm = unittest_separator.separate(np.zeros(SR // 2, np.float32), SR)
  assert solo.shape == (SR // 2,) and not solo.any() and not rhythm.any()


def test_without_network_the_error_comes_before_any_download_retries(no_hub, monkeypatch, tmp_path):
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  with pytest.raises(separate.SeparatorError, match='hub.saxgpt-test.invalid (does not|did not) resolve'):
    separate.Separator.load('htdemucs_6s')


def test_model_without_solo_sources_is_rejected():
  class DrumsAndBass(FakeDemucs):
    sources = ['drums', 'bass']

  with pytest.raises(separate.SeparatorError, match='solo'):
    separate.Separator(DrumsAndBass(), 'db').solo_sources


def test_offline_without_weights_says_how_to_fetch(monkeypatch, tmp_path):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  with pytest.raises(separate.SeparatorError) as e:
    separate.Separator.load('htdemucs_6s')
  message = str(e.value)
  assert 'huggingface-cli download adefossez/HTDemucs-6s --local-dir DIR' in message
  assert '--config.demucs.repo=DIR' in message
  with pytest.raises(separate.SeparatorError, match='has no htdemucs_6s.yaml'):
    separate.Separator.load('htdemucs_6s', repo=tmp_path)
  with pytest.raises(separate.SeparatorError, match='is not a folder'):
    separate.Separator.load('htdemucs_6s', repo=tmp_path / 'missing')
