"""RMS windows on synthetic audio with known loud and quiet spans."""

import numpy as np
import pytest

from preprocessing import select

SR = 1000


def spans(*parts):
  """[(seconds, amplitude), ...] -> a square wave of +-amplitude (RMS = amplitude) float32 [T]."""
  out = []
  for seconds, amplitude in parts:
    n = int(round(seconds * SR))
    out.append(amplitude * np.where(np.arange(n) % 2 == 0, 1.0, -1.0))
  return np.concatenate(out).astype(np.float32)


def test_frame_rms_matches_framewise_rms():
  wave = np.random.default_rng(0).normal(size=5_000).astype(np.float32)
  ours = select.frame_rms(wave, 1000, 200)
  frames = np.lib.stride_tricks.sliding_window_view(wave.astype(np.float64), 1000)[::200]  # what librosa.feature.rms
  np.testing.assert_allclose(ours, np.sqrt(np.mean(frames ** 2, axis=1)), rtol=1e-9)  # (center=False) computes
  assert select.frame_rms(wave[:999], 1000, 200).shape == (0,)


def test_windows_exact():
  # quiet 0-2 s, loud 2-6 s, quiet 6-8 s, loud 8-9 s (too short), quiet 9-12 s, loud 12-15 s.
  wave = spans((2, 0.0), (4, 0.2), (2, 0.01), (1, 0.2), (3, 0.0), (3, 0.2))
  windows = select.rms_windows(wave, SR, threshold=0.05, frame_s=1.0, stride_s=0.5, min_window_s=2.5)
  # A frame half inside a loud span has RMS 0.2 / sqrt(2) = 0.14 >= 0.05: windows reach half a frame out.
  # The 1 s span gives (7.5, 9.5), 2 s, under the 2.5 s minimum.
  assert [w.seconds(SR) for w in windows] == [(1.5, 6.5), (11.5, 15.0)]
  assert len(select.rms_windows(wave, SR, threshold=0.05, frame_s=1.0, stride_s=0.5, min_window_s=2.0)) == 3


def test_windows_threshold_and_minimum():
  wave = spans((3, 0.02), (3, 0.06), (1, 0.0))
  # Mixed frames: [2.5, 3.5) has RMS sqrt((0.02^2 + 0.06^2) / 2) = 0.045 and [5.5, 6.5) 0.042, both < 0.05.
  assert select.rms_windows(wave, SR, threshold=0.05, frame_s=1.0, stride_s=0.5, min_window_s=2.0) == [
      select.Window(3000, 6000)]
  assert select.rms_windows(wave, SR, threshold=0.05, frame_s=1.0, stride_s=0.5, min_window_s=3.01) == []
  assert select.rms_windows(wave, SR, threshold=0.015, frame_s=1.0, stride_s=0.5, min_window_s=2.0) == [
      select.Window(0, 6500)]


def test_overlapping_windows_merge():
  """Runs of active frames closer than a frame give overlapping windows: they become one clip."""
  wave = spans((2, 0.2), (1.2, 0.0), (2, 0.2), (0.8, 0.0))
  # Frames [2.0, 3.0) and [2.2, 3.2) are silent; the runs' windows [0, 2.8) and [2.4, 6.0) overlap.
  kwargs = dict(threshold=0.05, frame_s=1.0, stride_s=0.2, min_window_s=3.0)
  assert select.rms_windows(wave, SR, **kwargs) == [select.Window(0, 6000)]
  wave = spans((2, 0.2), (1.6, 0.0), (2, 0.2), (0.4, 0.0))  # a longer rest: [0, 2.8) and [2.8, 6.0) only touch
  assert select.rms_windows(wave, SR, **kwargs) == [select.Window(2800, 6000)]


def test_original_defaults():
  """frame 10 s, stride 0.2 s, minimum 30 s on loud spans [20, 25) and [45, 85) s."""
  wave = spans((20, 0.0), (5, 0.3), (20, 0.0), (40, 0.3), (20, 0.0))
  # A frame is active when it holds more than (0.05 / 0.3)^2 * 10 s = 0.28 s of a loud span, so a span
  # [a, b) gives the window [a - 9.6, b + 9.6): 24.2 s for the first (dropped), 59.2 s for the second.
  windows = select.rms_windows(wave, SR)
  assert [w.seconds(SR) for w in windows] == [(pytest.approx(35.4), pytest.approx(94.6))]


def test_silence_and_short_audio():
  assert select.rms_windows(np.zeros(20 * SR, np.float32), SR, frame_s=1, stride_s=0.5, min_window_s=2) == []
  assert select.rms_windows(spans((0.5, 0.3)), SR, frame_s=1, stride_s=0.5, min_window_s=0.1) == []
  with pytest.raises(ValueError, match='mono'):
    select.rms_windows(np.zeros((2, 100)), SR)
