"""Augmentation: tags, lengths, and that both stems change together."""

import numpy as np
import pytest

from preprocessing import augment

SR = 8000


def test_tags():
  assert augment.tags((-2, 2), (0.9, 1.1)) == ['none', 'pitch-2', 'pitch+2', 'tempo0.9', 'tempo1.1']
  assert augment.tags() == ['none']
  assert [augment.id_suffix(t) for t in augment.tags((-2, 2))] == ['none', 'pitchm2', 'pitchp2']
  with pytest.raises(ValueError, match='Repeated'):
    augment.tags((2, 2))
  with pytest.raises(ValueError, match='Unknown augmentation'):
    augment.apply('reverse', np.zeros(10, np.float32), SR)


def test_copies_lengths_and_pitch():
  t = np.arange(2 * SR) / SR
  solo = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
  backing = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
  out = {tag: (b, s) for tag, b, s in augment.copies(backing, solo, SR, augment.tags((-2, 2), (0.9, 1.1)))}
  assert list(out) == ['none', 'pitch-2', 'pitch+2', 'tempo0.9', 'tempo1.1']
  expected = {'none': 2 * SR, 'pitch-2': 2 * SR, 'pitch+2': 2 * SR,
              'tempo0.9': round(2 * SR / 0.9), 'tempo1.1': round(2 * SR / 1.1)}
  for tag, (b, s) in out.items():
    assert b.dtype == s.dtype == np.float32
    assert len(b) == len(s) == expected[tag], tag
  np.testing.assert_array_equal(out['none'][1], solo)

  def peak_hz(wave):
    spectrum = np.abs(np.fft.rfft(wave[SR // 2:-SR // 2]))
    return np.argmax(spectrum) * SR / (len(wave) - SR)

  assert peak_hz(out['pitch+2'][1]) == pytest.approx(440 * 2 ** (2 / 12), rel=0.01)
  assert peak_hz(out['pitch-2'][0]) == pytest.approx(220 * 2 ** (-2 / 12), rel=0.01)
  assert peak_hz(out['tempo1.1'][1]) == pytest.approx(440, rel=0.01)  # tempo keeps the pitch


def test_copies_need_equal_stems():
  with pytest.raises(ValueError, match='same shape'):
    list(augment.copies(np.zeros(10, np.float32), np.zeros(11, np.float32), SR, ['none']))
