"""A seeded, procedural paired-stem jazz dataset: swing backing tracks with a sax-like solo over them.

Each piece draws its key, tempo (120-200 bpm), swing ratio, progression (major or minor ii-V-I, jazz
blues, rhythm-changes A section, a ii-V cycle) and lead register from its seed, then renders two stems
of the same length at `sr` (32 kHz) with numpy/scipy only:

- backing float32 [T]: walking bass (a plucked tone per quarter note: root on a chord's first beat, chord
  and scale tones after it, a chromatic or dominant approach into the next chord), comping
  (Rhodes-like FM voicings, rootless 3-7-9 style with a 5th or 13th, voice-led, on syncopated swing rhythms with
  anticipations) and swing drums (ride on 1 2 2& 3 4 4&, hi-hat foot on 2 and 4, feathered kick, snare
  ghost notes; all noise/inharmonic based).
- solo float32 [T]: a sax-like voice: additive odd+even harmonics whose brightness follows the
  dynamics, two formant resonances, soft saturation, delayed vibrato, pitch scoops, tongued or slurred
  attacks and releases, band-passed breath noise. It plays swung eighth-note phrases of 1-4 bars with
  rests of 1-2 bars between them; every note on a beat (and every note a quarter or longer) is a chord
  tone of the chord sounding then, the notes between are scale or chromatic passing tones.

Levels (measured over seeds 0-5, 40 s pieces):
- solo: RMS over the sounding phrases 0.12 (about -18 dBFS; the soft-saturated voice peaks near 0.22),
  integrated loudness about -19.3 LUFS; rests hold only a noise floor at RMS 3e-4 (-70 dBFS). After
  -14 LUFS normalisation every 10 s frame has RMS 0.13-0.21 (a frame holds at most 2 bars of rest), well
  above the 0.05 threshold of the window selection, so whole pieces are kept; 0.5 s windows inside
  rests are > 40 dB below the phrases.
- backing: RMS 0.12, transients soft-limited to peaks < 0.5, about -19.7 LUFS (peaks < 1 at -14 LUFS).

`info` (also written as `info.json`) records the key, tempo, swing, progression, the chord timeline
(`chords`: start_s, end_s, root_midi, quality, pitch_classes) and the solo's notes (`notes`: onset_s,
duration_s, midi, strong, chord_tone), so tests and plots can check the audio against the score.

Layout written by `synthesize_dataset` (the paired-stems source of the pipeline reads it):
  OUT/<recording_id>/backing.wav, solo.wav   32 kHz mono float WAV, same length
  OUT/<recording_id>/info.json               written last: a piece is complete when all three exist

CLI: python -m preprocessing.synth --out=data/synth --num_pieces=8 --seconds=40 --seed=0
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.signal

from preprocessing import manifest

SAMPLE_RATE = 32000
SOLO_RMS = 0.12  # RMS of the solo over its sounding phrases
BACKING_RMS = 0.12
BACKING_KNEE, BACKING_CEILING = 0.35, 0.5  # drum and pluck transients are limited: peaks < 0.5
PEAK_LIMIT = 0.9
NOISE_FLOOR_RMS = 3e-4  # the solo stem's floor in rests (-70 dBFS)

# Chord qualities: intervals of the chord tones (root first) and of the scale played over them.
QUALITIES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    'maj7': ((0, 4, 7, 11), (0, 2, 4, 5, 7, 9, 11)),
    'm7': ((0, 3, 7, 10), (0, 2, 3, 5, 7, 9, 10)),
    '7': ((0, 4, 7, 10), (0, 2, 4, 5, 7, 9, 10)),
    'm7b5': ((0, 3, 6, 10), (0, 1, 3, 5, 6, 8, 10)),
    'mmaj7': ((0, 3, 7, 11), (0, 2, 3, 5, 7, 9, 11)),
}
# Progressions: (degree in semitones above the key, quality, length in beats), one chorus each.
PROGRESSIONS: dict[str, list[tuple[int, str, int]]] = {
    'major_ii_V_I': [(2, 'm7', 4), (7, '7', 4), (0, 'maj7', 8)],
    'minor_ii_V_i': [(2, 'm7b5', 4), (7, '7', 4), (0, 'mmaj7', 8)],
    'jazz_blues': [(0, '7', 4), (5, '7', 4), (0, '7', 8), (5, '7', 8), (0, '7', 4), (9, '7', 4),
                   (2, 'm7', 4), (7, '7', 4), (0, '7', 2), (9, '7', 2), (2, 'm7', 2), (7, '7', 2)],
    'rhythm_changes_A': [(0, 'maj7', 2), (9, 'm7', 2), (2, 'm7', 2), (7, '7', 2)] * 2
                        + [(0, 'maj7', 2), (0, '7', 2), (5, 'maj7', 2), (5, 'm7', 2),
                           (0, 'maj7', 2), (9, '7', 2), (2, 'm7', 2), (7, '7', 2)],
    'ii_V_cycle': [(2, 'm7', 4), (7, '7', 4), (0, 'maj7', 4), (5, 'maj7', 4),
                   (11, 'm7b5', 4), (4, '7', 4), (9, 'm7', 8)],
}


@dataclasses.dataclass(frozen=True)
class Chord:
  start_beat: float
  end_beat: float
  root: int  # MIDI pitch of the root in the bass octave (C2..B2)
  quality: str

  @property
  def pitch_classes(self) -> tuple[int, ...]:
    return tuple(sorted({(self.root + i) % 12 for i in QUALITIES[self.quality][0]}))

  @property
  def scale_classes(self) -> tuple[int, ...]:
    return tuple(sorted({(self.root + i) % 12 for i in QUALITIES[self.quality][1]}))


@dataclasses.dataclass(frozen=True)
class Note:
  start_beat: float  # swung position in beats
  length_beats: float
  midi: int
  strong: bool  # starts on a beat
  chord_tone: bool


def midi_to_hz(midi: np.ndarray | float) -> np.ndarray | float:
  return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


class _Timeline:
  """Beat <-> sample conversion for one tempo."""

  def __init__(self, bpm: float, sr: int):
    self.sec_per_beat = 60.0 / bpm
    self.sr = sr

  def seconds(self, beat: float) -> float:
    return beat * self.sec_per_beat

  def sample(self, beat: float) -> int:
    return int(round(beat * self.sec_per_beat * self.sr))


def _chords(progression: str, key: int, num_beats: float) -> list[Chord]:
  """Repeats the progression's chorus (transposed to `key`, bass octave) until `num_beats` are covered."""
  chords, beat = [], 0.0
  while beat < num_beats:
    for degree, quality, length in PROGRESSIONS[progression]:
      root = 36 + (key + degree) % 12  # C2..B2
      chords.append(Chord(beat, beat + length, root, quality))
      beat += length
      if beat >= num_beats:
        break
  return chords


def _chord_at(chords: list[Chord], beat: float) -> Chord:
  for chord in chords:
    if chord.start_beat <= beat < chord.end_beat:
      return chord
  return chords[-1]


def _nearest_in_classes(target: float, classes: tuple[int, ...], lo: int, hi: int) -> int:
  """The MIDI pitch in [lo, hi] with a pitch class in `classes` nearest to `target`."""
  candidates = np.array([p for p in range(lo, hi + 1) if p % 12 in classes])
  return int(candidates[np.argmin(np.abs(candidates - target))])


def _swing_beat(eighth: int, swing: float) -> float:
  """Swung position in beats of the `eighth`-th eighth note (odd eighths fall `swing` into the beat)."""
  return eighth // 2 + (swing if eighth % 2 else 0.0)


# ----------------------------------------------------------------------------------------- score
def _walking_bass(chords: list[Chord], num_beats: int, rng: np.random.Generator) -> list[tuple[int, int]]:
  """(beat, midi) per quarter note: root on a chord's first beat, chord/scale tones, approach notes."""
  notes, prev = [], None
  for beat in range(num_beats):
    chord = _chord_at(chords, beat)
    next_chord = _chord_at(chords, beat + 1)
    if beat == int(chord.start_beat):
      pitch = chord.root if prev is None else _nearest_in_classes(prev, (chord.root % 12,), 31, 50)
    elif next_chord is not chord:  # last beat before a change: approach the next root
      target = _nearest_in_classes(prev, (next_chord.root % 12,), 31, 50)
      choice = rng.random()
      if choice < 0.6:
        pitch = target + (1 if rng.random() < 0.5 else -1)  # chromatic approach
      else:
        pitch = _nearest_in_classes(target + 7 * (1 if target < 40 else -1),
                                    ((next_chord.root + 7) % 12,), 31, 50)  # its dominant
    else:
      step = rng.choice([-5, -4, -3, -2, 2, 3, 4, 5])
      if prev is not None and (prev + step < 31 or prev + step > 50):
        step = -step
      classes = chord.pitch_classes if rng.random() < 0.7 else chord.scale_classes
      pitch = _nearest_in_classes((prev or chord.root) + step, classes, 31, 50)
      if pitch == prev:
        pitch = _nearest_in_classes(prev + 2 * np.sign(step), classes, 31, 50)
    notes.append((beat, int(pitch)))
    prev = pitch
  return notes


_COMP_PATTERNS = (  # (eighth position in the bar, length in eighths)
    ((0, 3), (3, 2)), ((1, 1), (3, 3)), ((2, 1), (5, 3)), ((0, 2), (7, 1)),
    ((3, 1), (6, 2)), ((1, 2), (4, 1), (7, 1)), ((3, 2),), ((0, 1), (5, 2)),
)
_VOICING = {'maj7': (4, 7, 11, 14), 'm7': (3, 7, 10, 14), '7': (4, 9, 10, 14),
            'm7b5': (3, 6, 10, 12), 'mmaj7': (3, 7, 11, 14)}


def _comping(chords: list[Chord], num_beats: int, swing: float,
             rng: np.random.Generator) -> list[tuple[float, float, tuple[int, ...], float]]:
  """(start beat, length beats, midi voicing, velocity) per hit, voice-led around middle C."""
  hits, center = [], 60.0
  for bar in range(0, num_beats, 4):
    pattern = _COMP_PATTERNS[rng.integers(len(_COMP_PATTERNS))]
    for eighth, length in pattern:
      start = bar + _swing_beat(eighth, swing)
      if start >= num_beats:
        continue
      chord = _chord_at(chords, start + 0.4)  # an upbeat hit anticipates the next chord
      intervals = np.array(_VOICING[chord.quality])
      base = chord.root % 12 + 12 * np.arange(3, 6)
      options = [tuple(int(x) for x in b + intervals) for b in base]
      voicing = min(options, key=lambda v: abs(np.mean(v) - center))
      center = 0.7 * center + 0.3 * float(np.mean(voicing))
      center += (62.0 - center) * 0.2
      end = bar + _swing_beat(eighth + length, swing)
      hits.append((start, max(end - start, 0.3) * 0.9, voicing, float(rng.uniform(0.55, 0.9))))
  return hits


def _next_pitch(pitch: int, direction: int, classes: tuple[int, ...], low: int, high: int,
                rng: np.random.Generator, chromatic: bool) -> int:
  """The next melody note from `pitch`: a chromatic step, or the nearest (sometimes the second nearest) pitch
  of `classes` in `direction`, turning round at the ends of [low, high]."""
  if chromatic and low <= pitch + direction <= high:
    return pitch + direction
  for d in (direction, -direction):
    candidates = [p for p in range(pitch + d, pitch + 8 * d, d) if low <= p <= high and p % 12 in classes]
    if candidates:
      return candidates[1] if len(candidates) > 1 and rng.random() < 0.3 else candidates[0]
  return _nearest_in_classes(pitch, classes, low, high)


def _solo_score(chords: list[Chord], num_beats: int, swing: float, low: int, high: int,
                rng: np.random.Generator) -> list[Note]:
  """Phrases of swung notes (1-4 bars) separated by rests of 1-2 bars."""
  notes: list[Note] = []
  eighth = int(rng.integers(0, 4))  # first phrase starts within the first two beats
  pitch = int(rng.integers(low + 6, high - 6))
  direction = 1 if rng.random() < 0.5 else -1
  total_eighths = 2 * num_beats
  while eighth < total_eighths - 4:
    phrase_end = min(eighth + 8 * int(rng.integers(1, 5)) - int(rng.integers(0, 3)), total_eighths - 2)
    while eighth < phrase_end:
      strong = eighth % 2 == 0
      if strong:
        length = int(rng.choice([1, 2, 4], p=[0.65, 0.28, 0.07]))
      else:
        length = int(rng.choice([1, 2, 3], p=[0.82, 0.08, 0.10]))
      if eighth + length >= phrase_end:  # end a phrase on a longer note
        length = max(2, phrase_end - eighth)
      start = _swing_beat(eighth, swing)
      chord_tone = strong or length >= 2
      chord = _chord_at(chords, start)
      if pitch > high - 5:
        direction = -1
      elif pitch < low + 5:
        direction = 1
      elif rng.random() < 0.15:
        direction = -direction
      if rng.random() < 0.05 and not strong and eighth + length < phrase_end:
        eighth += length  # a short rest inside the phrase
        continue
      new = _next_pitch(pitch, direction, chord.pitch_classes if chord_tone else chord.scale_classes,
                        low, high, rng, chromatic=not chord_tone and rng.random() < 0.25)
      end = _swing_beat(eighth + length, swing)
      notes.append(Note(start, end - start, new, strong, chord_tone))
      pitch = new
      eighth += length
    eighth += 8 * int(rng.integers(1, 3)) + int(rng.integers(0, 2))  # rest: 1-2 bars (+ an eighth)
  return notes


# ------------------------------------------------------------------------------------- rendering
def _add(out: np.ndarray, sound: np.ndarray, start: int) -> None:
  """Adds `sound` into `out` at sample `start`, cut at the end of `out`."""
  if start >= out.shape[0]:
    return
  start = max(start, 0)
  n = min(sound.shape[0], out.shape[0] - start)
  out[start:start + n] += sound[:n]


def _release(n: int, sr: int, seconds: float = 0.02) -> np.ndarray:
  """Gain [n] that ramps down linearly over the last `seconds`."""
  env = np.ones(n)
  r = min(n, int(seconds * sr))
  if r:
    env[-r:] = np.linspace(1.0, 0.0, r)
  return env


def _harmonic_sum(phase: np.ndarray, gains) -> np.ndarray:
  """Sum over k of gains(k) * sin(k * phase), float [n]; sin(k phase) by the Chebyshev recursion (no trig per k).

  `gains(k)` returns the weight of harmonic k (scalar or [n]) or None once no further harmonic sounds.
  """
  s_prev, s_k = np.zeros_like(phase), np.sin(phase)
  two_cos = 2.0 * np.cos(phase)
  out = np.zeros_like(phase)
  k = 1
  while (gain := gains(k)) is not None:
    out += gain * s_k
    s_prev, s_k = s_k, two_cos * s_k - s_prev
    k += 1
  return out


def _bass_note(freq: float, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
  """Plucked upright-bass tone: harmonics with faster decay the higher they are, a thump at the onset."""
  n = int(seconds * sr)
  t = np.arange(n) / sr
  bend = 1.0 + 0.01 * np.exp(-t / 0.03)  # the string settles from slightly sharp
  phase = 2 * np.pi * freq * np.cumsum(bend) / sr
  decay, per_k = np.exp(-2.0 * t), np.exp(-3.0 * t)  # harmonic k decays as exp(-(2 + 3k) t)

  def gains(k):
    nonlocal decay
    decay = decay * per_k
    return None if k > 8 else k ** -1.3 * decay

  tone = _harmonic_sum(phase, gains)
  attack = np.minimum(1.0, t / 0.004)
  thump = rng.standard_normal(n) * np.exp(-t / 0.01) * 0.15
  return (tone * attack + thump) * _release(n, sr, 0.03)


def _rhodes_chord(freqs: tuple[float, ...], seconds: float, velocity: float, sr: int) -> np.ndarray:
  """Electric-piano voicing float32 [n]: 2-operator FM per note (tine), index and level decaying, released
  after `seconds`."""
  tail = 0.12
  n = int((seconds + tail) * sr)
  t = np.arange(n, dtype=np.float32) / sr
  index = (0.6 + 1.6 * velocity) * np.exp(-t / 0.25)
  env = np.exp(-t / 1.5) * np.minimum(1.0, t / 0.003)
  hold = int(seconds * sr)
  env[hold:] *= np.exp(-(t[hold:] - t[hold]) / 0.04)
  ping_n = min(n, int(0.15 * sr))
  ping = 0.15 * np.exp(-t[:ping_n] / 0.03)
  out = np.zeros(n, dtype=np.float32)
  for freq in freqs:
    w = np.float32(2 * np.pi * freq) * t
    out += np.sin(w + index * np.sin(w))
    out[:ping_n] += ping * np.sin(7.0 * w[:ping_n])  # tine ping
  return velocity * out * env


class _DrumKit:
  """Noise-based swing kit sampled once per piece: ride, hi-hat foot, soft kick, snare."""

  def __init__(self, sr: int, rng: np.random.Generator):
    self.sr = sr

    def noise(seconds):
      return rng.standard_normal(int(seconds * sr))

    def env(seconds, decay):
      return np.exp(-np.arange(int(seconds * sr)) / sr / decay)

    t = np.arange(int(1.2 * sr)) / sr
    partials = rng.uniform(2800, 9000, 12)
    metal = np.sum(np.sin(2 * np.pi * partials[:, None] * t[None] + rng.uniform(0, 6.3, (12, 1))), axis=0)
    hiss = scipy.signal.sosfilt(scipy.signal.butter(4, 5000, 'highpass', fs=sr, output='sos'), noise(1.2))
    self.ride = (0.05 * metal * env(1.2, 0.5) + 0.6 * hiss * env(1.2, 0.25)
                 + 0.5 * hiss * env(1.2, 0.008))
    hat_noise = scipy.signal.sosfilt(scipy.signal.butter(4, 7000, 'highpass', fs=sr, output='sos'), noise(0.08))
    self.hat = hat_noise * env(0.08, 0.012) * np.minimum(1.0, np.arange(int(0.08 * sr)) / (0.004 * sr))
    tk = np.arange(int(0.35 * sr)) / sr
    kick_f = 50.0 + 40.0 * np.exp(-tk / 0.03)
    self.kick = np.sin(2 * np.pi * np.cumsum(kick_f) / sr) * env(0.35, 0.12)
    snare_noise = scipy.signal.sosfilt(
        scipy.signal.butter(2, [1200, 6000], 'bandpass', fs=sr, output='sos'), noise(0.25))
    ts = np.arange(int(0.25 * sr)) / sr
    self.snare = 0.8 * snare_noise * env(0.25, 0.06) + 0.5 * np.sin(2 * np.pi * 185 * ts) * env(0.25, 0.05)
    for name in ('ride', 'hat', 'kick', 'snare'):
      sound = getattr(self, name)
      setattr(self, name, sound / np.max(np.abs(sound)))


def _render_backing(chords, num_beats, swing, timeline: _Timeline, num_samples, rng) -> np.ndarray:
  sr = timeline.sr
  bass = np.zeros(num_samples)
  for beat, midi in _walking_bass(chords, num_beats, rng):
    start = timeline.sample(beat + rng.normal(0, 0.01))
    _add(bass, _bass_note(midi_to_hz(midi), timeline.seconds(0.95), sr, rng) * rng.uniform(0.8, 1.0), start)
  comp = np.zeros(num_samples)
  for start_beat, length, voicing, velocity in _comping(chords, num_beats, swing, rng):
    start = timeline.sample(start_beat + rng.normal(0, 0.01))
    _add(comp, _rhodes_chord(midi_to_hz(voicing), timeline.seconds(length), velocity, sr), start)
  kit = _DrumKit(sr, rng)
  drums = np.zeros(num_samples)
  for beat in range(num_beats):
    backbeat = beat % 2 == 1
    _add(drums, kit.ride * (0.55 if backbeat else 0.45) * rng.uniform(0.85, 1.0), timeline.sample(beat))
    if backbeat:
      _add(drums, kit.ride * 0.3 * rng.uniform(0.8, 1.0), timeline.sample(beat + swing))
      _add(drums, kit.hat * 0.35, timeline.sample(beat + rng.normal(0, 0.005)))
    _add(drums, kit.kick * (0.6 if rng.random() < 0.05 else 0.25), timeline.sample(beat))
    for offset in (0.0, swing):
      if rng.random() < 0.18:
        _add(drums, kit.snare * rng.uniform(0.06, 0.14), timeline.sample(beat + offset))
    if beat % 8 == 7 and rng.random() < 0.35:
      _add(drums, kit.snare * 0.45, timeline.sample(beat + swing))  # a comping accent
  lowpass = scipy.signal.butter(2, 3000, 'lowpass', fs=sr, output='sos')
  backing = (1.0 * _unit_rms(bass) + 0.55 * _unit_rms(scipy.signal.sosfilt(lowpass, comp))
             + 0.5 * _unit_rms(drums))
  return backing


def _soft_limit(x: np.ndarray, knee: float, ceiling: float) -> np.ndarray:
  """Leaves |x| <= knee alone and bends larger values smoothly towards `ceiling` (tanh), like a limiter."""
  over = np.abs(x) > knee
  y = x.copy()
  span = ceiling - knee
  y[over] = np.sign(x[over]) * (knee + span * np.tanh((np.abs(x[over]) - knee) / span))
  return y


def _unit_rms(x: np.ndarray) -> np.ndarray:
  rms = np.sqrt(np.mean(x ** 2))
  return x / rms if rms > 0 else x


def _render_solo(notes: list[Note], timeline: _Timeline, num_samples: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Sax-like solo float64 [T] and its sounding mask bool [T]."""
  sr = timeline.sr
  f0_midi = np.zeros(num_samples)
  amp = np.zeros(num_samples)
  vib_depth = np.zeros(num_samples)  # cents
  for i, note in enumerate(notes):
    start = timeline.sample(note.start_beat + rng.normal(0, 0.012))
    nxt = notes[i + 1] if i + 1 < len(notes) else None
    slur = nxt is not None and abs(nxt.start_beat - note.start_beat - note.length_beats) < 1e-6
    end = timeline.sample(note.start_beat + note.length_beats) if slur else \
        timeline.sample(note.start_beat + note.length_beats * 0.85)
    start, end = max(start, 0), min(end, num_samples)
    n = end - start
    if n <= 0:
      continue
    t = np.arange(n) / sr
    accent = 1.0 if note.strong else rng.uniform(0.7, 0.9)
    tongued = (not slur) or rng.random() < 0.5
    attack = np.minimum(1.0, t / (0.018 if tongued else 0.04))
    swell = 1.0 + 0.15 * np.minimum(1.0, t / 0.4)
    release = _release(n, sr, 0.05 if slur else 0.07)
    if tongued:  # a short dip at the tongue's onset
      attack = attack * (0.55 + 0.45 * np.minimum(1.0, t / 0.03))
    amp[start:end] = np.maximum(amp[start:end], accent * attack * swell * release)
    scoop = -40.0 * np.exp(-t / 0.04) if rng.random() < 0.3 else 0.0  # cents, from below
    f0_midi[start:end] = note.midi + scoop / 100.0
    vib_depth[start:end] = 22.0 * np.clip((t - 0.22) / 0.25, 0.0, 1.0)
  # Gaps keep the previous pitch, so the phase runs smoothly through slurs and rests.
  sounding = amp > 0
  idx = np.where(sounding, np.arange(num_samples), 0)
  np.maximum.accumulate(idx, out=idx)
  f0_midi = f0_midi[idx]
  if not sounding.any():
    return np.zeros(num_samples), sounding
  f0_midi[: np.argmax(sounding)] = f0_midi[np.argmax(sounding)]
  glide = scipy.signal.butter(1, 60, 'lowpass', fs=sr, output='sos')  # ~3 ms portamento
  f0_midi = scipy.signal.sosfilt(glide, f0_midi - f0_midi[0]) + f0_midi[0]
  t = np.arange(num_samples) / sr
  vib_rate = rng.uniform(5.0, 6.2)
  f0 = midi_to_hz(f0_midi) * 2.0 ** (vib_depth * np.sin(2 * np.pi * vib_rate * t) / 1200.0)
  phase = 2 * np.pi * np.cumsum(f0) / sr

  # Odd and (slightly weaker) even harmonics; louder is brighter: a cross-fade between slopes k^-2 and k^-1.2.
  active = np.flatnonzero(sounding)
  a, top = amp[active], 0.45 * sr / f0[active]  # band limit: harmonics below 0.45 sr only

  def gains(k):
    if k > 18:
      return None
    parity = 0.75 if k % 2 == 0 else 1.0
    return parity * ((1.0 - a) * k ** -2.0 + a * k ** -1.2) * (k < top)

  tone = np.zeros(num_samples)
  tone[active] = _harmonic_sum(phase[active], gains)
  formant_a = scipy.signal.sosfilt(scipy.signal.butter(2, [450, 900], 'bandpass', fs=sr, output='sos'), tone)
  formant_b = scipy.signal.sosfilt(scipy.signal.butter(2, [1300, 2600], 'bandpass', fs=sr, output='sos'), tone)
  voice = 0.6 * tone + 1.2 * formant_a + 0.9 * formant_b
  voice = np.tanh(1.8 * voice * amp) / np.tanh(1.8)
  breath = scipy.signal.sosfilt(scipy.signal.butter(2, [1500, 7000], 'bandpass', fs=sr, output='sos'),
                                rng.standard_normal(num_samples))
  voice += 0.05 * breath * amp
  return voice, sounding


@dataclasses.dataclass(frozen=True)
class PieceSettings:
  key: int  # pitch class of the tonic, 0 = C
  bpm: float
  swing: float  # where the off-beat eighth falls in the beat (0.5 straight, 0.67 triplet swing)
  progression: str  # a key of PROGRESSIONS
  register: str  # 'alto' | 'tenor': the lead's range


def _seed_sequence(seed: int) -> np.random.SeedSequence:
  if seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed}.')
  return np.random.SeedSequence([int(seed), 0x5A7])


def piece_settings(seed: int) -> PieceSettings:
  """The key, tempo, swing, progression and lead register a piece draws from its seed (cheap)."""
  rng = np.random.default_rng(_seed_sequence(seed))
  key = int(rng.integers(12))
  bpm = float(rng.uniform(120, 200))
  swing = float(np.interp(bpm, [120, 200], [0.66, 0.58]) + rng.uniform(-0.02, 0.02))
  progression = str(rng.choice(sorted(PROGRESSIONS)))
  register = str(rng.choice(['alto', 'tenor']))
  return PieceSettings(key, bpm, swing, progression, register)


def synthesize_piece(seed: int, seconds: float, sr: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray, dict]:
  """Renders one piece: (backing float32 [T], solo float32 [T], info), T = round(seconds * sr)."""
  if seconds <= 0:
    raise ValueError(f'seconds must be positive, got {seconds}.')
  if sr < 16000:
    raise ValueError(f'sr must be at least 16000 Hz for the sax and ride partials, got {sr}.')
  settings = piece_settings(seed)
  key, bpm, swing, progression = settings.key, settings.bpm, settings.swing, settings.progression
  low = 50 if settings.register == 'alto' else 45
  high = low + 28
  num_samples = int(round(seconds * sr))
  timeline = _Timeline(bpm, sr)
  num_beats = int(np.ceil(seconds / timeline.sec_per_beat)) + 1
  chords = _chords(progression, key, num_beats)
  score_rng, backing_rng, solo_rng = (np.random.default_rng(s) for s in _seed_sequence(seed).spawn(3))
  notes = _solo_score(chords, num_beats, swing, low, high, score_rng)

  backing = _render_backing(chords, num_beats, swing, timeline, num_samples, backing_rng)
  backing *= BACKING_RMS / max(np.sqrt(np.mean(backing ** 2)), 1e-9)
  backing = _soft_limit(backing, BACKING_KNEE, BACKING_CEILING)
  solo, sounding = _render_solo(notes, timeline, num_samples, solo_rng)
  if sounding.any():
    solo *= SOLO_RMS / max(np.sqrt(np.mean(solo[sounding] ** 2)), 1e-9)
  solo += NOISE_FLOOR_RMS * solo_rng.standard_normal(num_samples)
  for stem in (backing, solo):  # a plain gain, never clipping
    peak = np.max(np.abs(stem))
    if peak > PEAK_LIMIT:
      stem *= PEAK_LIMIT / peak

  def in_seconds(beat):
    return round(timeline.seconds(beat), 4)

  info = {
      'seed': int(seed), 'sample_rate': sr, 'seconds': num_samples / sr,
      'key': ['C', 'Db', 'D', 'Eb', 'E', 'F', 'Gb', 'G', 'Ab', 'A', 'Bb', 'B'][key],
      'bpm': round(bpm, 2), 'swing': round(swing, 3), 'progression': progression, 'register': settings.register,
      'chords': [{'start_s': in_seconds(c.start_beat), 'end_s': in_seconds(c.end_beat), 'root_midi': c.root,
                  'quality': c.quality, 'pitch_classes': list(c.pitch_classes)}
                 for c in chords if timeline.seconds(c.start_beat) < seconds],
      'notes': [{'onset_s': in_seconds(n.start_beat), 'duration_s': in_seconds(n.length_beats), 'midi': n.midi,
                 'strong': n.strong, 'chord_tone': n.chord_tone}
                for n in notes if timeline.seconds(n.start_beat) < seconds],
  }
  return backing.astype(np.float32), solo.astype(np.float32), info


# ------------------------------------------------------------------------------------------ dataset
STEM_NAMES = ('backing.wav', 'solo.wav')
INFO_NAME = 'info.json'


def recording_id(seed: int, index: int) -> str:
  return f'synth_s{seed}_{index:04d}'


def piece_seed(seed: int, index: int) -> int:
  """The seed of piece `index` of a dataset seeded `seed` (independent streams per piece)."""
  return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _is_complete(piece_dir: Path, num_samples: int, sr: int) -> bool:
  import soundfile as sf

  if not (piece_dir / INFO_NAME).exists():
    return False
  try:
    infos = [sf.info(str(piece_dir / name)) for name in STEM_NAMES]
  except (RuntimeError, sf.LibsndfileError):
    return False
  return all(i.frames == num_samples and i.samplerate == sr and i.channels == 1 for i in infos)


def _wav_bytes(wave: np.ndarray, sr: int) -> bytes:
  import soundfile as sf

  buf = io.BytesIO()
  sf.write(buf, wave, sr, format='WAV', subtype='FLOAT')
  return buf.getvalue()


def synthesize_dataset(out_dir: str | os.PathLike, *, num_pieces: int = 8, seconds: float = 40.0, seed: int = 0,
                       sr: int = SAMPLE_RATE, progress: bool = False) -> list[Path]:
  """Writes `num_pieces` pieces as OUT/<recording_id>/{backing,solo}.wav + info.json; returns the piece dirs.

  Pieces already complete (both WAVs of the right length and rate, and info.json) are kept as they are.
  """
  if num_pieces < 1:
    raise ValueError(f'num_pieces must be at least 1, got {num_pieces}.')
  if seed < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed}.')
  out_dir = Path(out_dir)
  num_samples = int(round(seconds * sr))
  dirs = [out_dir / recording_id(seed, i) for i in range(num_pieces)]
  iterator: Any = range(num_pieces)
  if progress:
    from tqdm import tqdm

    iterator = tqdm(iterator, desc='synth pieces', unit='piece')
  for i in iterator:
    piece_dir = dirs[i]
    if _is_complete(piece_dir, num_samples, sr):
      continue
    backing, solo, info = synthesize_piece(piece_seed(seed, i), seconds, sr)
    info['recording_id'] = piece_dir.name
    for name, wave in zip(STEM_NAMES, (backing, solo)):
      manifest.atomic_write_bytes(piece_dir / name, _wav_bytes(wave, sr))
    manifest.atomic_write_bytes(piece_dir / INFO_NAME, json.dumps(info, indent=1).encode())
  return dirs


def main(argv: list[str]) -> None:
  from absl import flags

  from configs import cli

  cli.no_arguments(argv)
  f = flags.FLAGS
  dirs = synthesize_dataset(f.out, num_pieces=f.num_pieces, seconds=f.seconds, seed=f.seed, sr=f.sr, progress=True)
  print(f'{len(dirs)} pieces in {f.out} (paired-stems layout: <recording_id>/backing.wav + solo.wav)')


def _define_flags(flag_values=None) -> None:
  """Defines the CLI flags on `flag_values` (default: absl's global FLAGS)."""
  from absl import flags

  fv = flags.FLAGS if flag_values is None else flag_values
  flags.DEFINE_string('out', None, 'Output folder; each piece goes to OUT/<recording_id>/backing.wav + solo.wav '
                      '(+ info.json with key, tempo, chords and the solo notes).', required=True, flag_values=fv)
  flags.DEFINE_integer('num_pieces', 8, 'Number of pieces (recordings) to synthesise.', lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_float('seconds', 40.0, 'Length of each piece in seconds.', lower_bound=0.5, flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Dataset seed (>= 0); piece i uses a seed derived from (seed, i). '
                       'Same seed, same audio.', lower_bound=0, flag_values=fv)
  flags.DEFINE_integer('sr', SAMPLE_RATE, 'Sample rate in Hz of the written WAVs.', lower_bound=16000,
                       flag_values=fv)


if __name__ == '__main__':
  from absl import app

  from configs import cli

  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
