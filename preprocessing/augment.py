"""Augment: pitch-shifted and time-stretched copies of a clip, both stems changed together.

Each setting is a separate copy tagged in the manifest ('pitch+2', 'pitch-2', 'tempo0.9', 'tempo1.1');
the original is 'none'. Pitch shifts keep the length; tempo r gives round(T / r) samples.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

NONE = 'none'


def tags(pitch_semitones: Sequence[float] = (), tempo_rates: Sequence[float] = ()) -> list[str]:
  """The augmentation tags of every copy, the original first: ['none', 'pitch-2', 'pitch+2', 'tempo0.9', ...]."""
  out = [NONE]
  out += [f'pitch{n:+g}' for n in pitch_semitones if n != 0]
  out += [f'tempo{r:g}' for r in tempo_rates if r != 1]
  if len(set(out)) != len(out):
    raise ValueError(f'Repeated augmentation settings: {out}.')
  return out


def id_suffix(tag: str) -> str:
  """A filesystem-safe form of a tag for clip ids: 'pitch+2' -> 'pitchp2', 'pitch-2' -> 'pitchm2'."""
  return tag.replace('+', 'p').replace('-', 'm')


def apply(tag: str, wave: np.ndarray, sr: int) -> np.ndarray:
  """One augmentation of wave float32 [T] -> float32 [T'] (T' = T for pitch, round(T / rate) for tempo)."""
  import librosa

  if tag == NONE:
    return wave
  if tag.startswith('pitch'):
    out = librosa.effects.pitch_shift(wave, sr=sr, n_steps=float(tag[len('pitch'):]))
  elif tag.startswith('tempo'):
    out = librosa.effects.time_stretch(wave, rate=float(tag[len('tempo'):]))
  else:
    raise ValueError(f'Unknown augmentation {tag!r}; expected none, pitch<±n> or tempo<rate>.')
  return np.asarray(out, np.float32)


def copies(backing: np.ndarray, solo: np.ndarray, sr: int, tag_list: Sequence[str]
           ) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
  """Yields (tag, backing [T'], solo [T']) for each tag; both stems get the same change and length."""
  if backing.shape != solo.shape:
    raise ValueError(f'backing {backing.shape} and solo {solo.shape} must have the same shape.')
  for tag in tag_list:
    yield tag, apply(tag, backing, sr), apply(tag, solo, sr)
