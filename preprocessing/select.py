"""Select: where the solo stem plays, as sliding-RMS windows (the original SaxGPT rule).

Frame i covers [i * stride, i * stride + frame) seconds. A frame is active when the RMS of the solo in it
is at least `threshold`. Each run of consecutive active frames i..j gives the window
[i * stride, j * stride + frame); windows that overlap (runs less than a frame apart) are merged, so no
audio lands in two clips; windows shorter than `min_window_s` are then dropped. Defaults (config.select):
threshold 0.05 on -14 LUFS audio, frame 10 s, stride 0.2 s, minimum window 30 s.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Window:
  start: int  # samples, inclusive
  end: int  # samples, exclusive

  def seconds(self, sr: int) -> tuple[float, float]:
    return self.start / sr, self.end / sr


def frame_rms(wave: np.ndarray, frame: int, hop: int) -> np.ndarray:
  """RMS of wave [T] over frames [i * hop, i * hop + frame) -> float64 [F], F = (T - frame) // hop + 1.

  Equals `librosa.feature.rms(y=wave, frame_length=frame, hop_length=hop, center=False)[0]`, computed from
  a cumulative sum so 10 s frames at a 0.2 s hop need O(T) memory rather than O(T * frame / hop).
  """
  if wave.ndim != 1:
    raise ValueError(f'frame_rms takes a mono wave [T], got shape {wave.shape}.')
  if frame <= 0 or hop <= 0:
    raise ValueError(f'frame ({frame}) and hop ({hop}) must be positive sample counts.')
  if len(wave) < frame:
    return np.zeros((0,), np.float64)
  power = np.concatenate([[0.0], np.cumsum(np.square(wave, dtype=np.float64))])
  starts = np.arange(0, len(wave) - frame + 1, hop)
  return np.sqrt(np.maximum(power[starts + frame] - power[starts], 0.0) / frame)


def rms_windows(solo: np.ndarray, sr: int, *, threshold: float = 0.05, frame_s: float = 10.0,
                stride_s: float = 0.2, min_window_s: float = 30.0) -> list[Window]:
  """Windows of solo [T] (samples at `sr`) where the solo is loud, in order, none shorter than min_window_s."""
  frame, hop = int(round(frame_s * sr)), int(round(stride_s * sr))
  active = frame_rms(solo, frame, hop) >= threshold
  # Runs of True: edges of the padded boolean sequence.
  edges = np.flatnonzero(np.diff(np.concatenate([[False], active, [False]]).astype(np.int8)))
  merged: list[Window] = []
  for first, after_last in zip(edges[::2], edges[1::2]):
    window = Window(int(first) * hop, int(after_last - 1) * hop + frame)
    if merged and window.start < merged[-1].end:
      window = Window(merged.pop().start, window.end)
    merged.append(window)
  min_len = int(round(min_window_s * sr))
  return [w for w in merged if w.end - w.start >= min_len]
