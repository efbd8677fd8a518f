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


class _FrameCodec:
  """Stands in for codec.Codec in the tokenize stage: 50 frames/s, codes from the audio level."""
  info = __import__('preprocessing.manifest', fromlist=['CodecInfo']).CodecInfo(name='fake')

  def encode(self, wave, sr):
    n = -(-len(wave) * 50 // sr)
    return np.full((4, n), int(1000 * np.abs(wave).mean()) % 2048, np.int16)


def test_augmented_copies_in_the_tokenize_stage(tmp_path):
  """Each copy is its own clip with the source's recording_id, tag and window; a rerun reuses the files."""
  from configs.data import base
  from preprocessing import manifest, pipeline

  config = base.get_config()
  config.output_dir = str(tmp_path)
  config.audio.sample_rate = SR
  config.augment.pitch_semitones, config.augment.tempo_rates = (-2, 2), (0.9, 1.1)
  stage = pipeline.AugmentTokenize(config.to_dict())
  stage._codec = _FrameCodec()  # what setup() loads
  t = np.arange(2 * SR) / SR
  task = pipeline.ClipTask('rec', 'src', 1.0, 3.0, (0.1 * np.sin(t * 600)).astype(np.float32),
                           (0.2 * np.sin(t * 2000)).astype(np.float32))
  results = [r for r in stage.process(task) if not hasattr(r, 'tag')]
  records = {r.augmentation: r for _, (status, r) in results if status == 'ok'}
  assert [key for key, _ in results] == [('rec', 'src')] * 5
  assert sorted(records) == sorted(augment.tags((-2, 2), (0.9, 1.1)))
  for tag, rate in (('none', 1), ('pitch-2', 1), ('pitch+2', 1), ('tempo0.9', 0.9), ('tempo1.1', 1.1)):
    record = records[tag]
    assert (record.recording_id, record.clip_start_s, record.clip_end_s) == ('rec', 1.0, 3.0)
    assert record.clip_id == f'rec__00001000-00003000__{augment.id_suffix(tag)}'
    assert record.num_frames == -(-round(2 * SR / rate) * 50 // SR)
    backing, lead = manifest.load_clip(tmp_path, record)
    assert backing.shape == lead.shape == (4, record.num_frames)
  stage._codec.encode = None  # a rerun must not encode again
  again = {r.augmentation: r for _, (status, r) in stage.process(task) if status == 'ok'}
  assert again == records
