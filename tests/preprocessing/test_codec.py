"""EnCodec wrapper: shapes at 50 Hz, chunking, decode length, non-degenerate random codebooks, load errors."""

import dataclasses
import re

import numpy as np
import pytest
import torch

from preprocessing import codec as codec_lib
from preprocessing.manifest import CodecInfo

SR = 32000


@pytest.fixture(scope='module')
def codec():
  return codec_lib.Codec.load('random:0')


def varied_audio(seed: int, num_clips: int, clip_s: float = 1.0) -> np.ndarray:
  """float32 [num_clips, clip_s * SR]: each clip is 4 segments of white/pink noise, linear chirps or
  harmonic tones, at random levels."""
  rng = np.random.default_rng(seed)
  n = int(clip_s * SR) // 4
  t = np.arange(n) / SR
  f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)
  segments = []
  for _ in range(4 * num_clips):
    kind = rng.integers(3)
    if kind == 0:
      x = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) / f ** rng.uniform(0.0, 0.5), n)  # white .. pink
    elif kind == 1:
      f0, f1 = rng.uniform(50, 10000, 2)
      x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * t[-1])))
    else:
      f0 = rng.uniform(60, 1200)
      x = sum(rng.uniform() / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 9) if k * f0 < SR / 2)
    segments.append(x / np.abs(x).max() * 10 ** (rng.uniform(-24, -1) / 20))
  return np.concatenate(segments).reshape(num_clips, -1).astype(np.float32)


def test_info(codec):
  assert codec.info == CodecInfo(name='random:0', sample_rate=32000, frame_rate=50, num_codebooks=4,
                                 codebook_size=2048)
  assert codec.hop_length == 640


def test_encode_shapes_at_50hz_and_decode_length(codec):
  wave = varied_audio(1, 2).reshape(-1)  # 2 s
  codes = codec.encode(wave, SR)
  assert codes.shape == (4, 100) and codes.dtype == np.int16
  assert codes.min() >= 0 and codes.max() < 2048
  decoded = codec.decode(codes)
  assert decoded.shape == (100 * 640,) and decoded.dtype == np.float32 and np.all(np.isfinite(decoded))
  # Partial frames round up; other rates are resampled; stereo is mixed down.
  assert codec.encode(wave[:SR // 2 + 1], SR).shape == (4, 26)
  stereo_16k = np.stack([wave[:8000], wave[8000:16000]])  # 0.5 s at 16 kHz
  assert codec.encode(stereo_16k, 16000).shape == (4, 25)


def test_chunked_encode_and_decode_match_unchunked(codec):
  wave = varied_audio(2, 2).reshape(-1)[:int(1.2 * SR)]  # 60 frames, 3 chunks of 20
  chunked = dataclasses.replace(codec, chunk_s=0.4, context_s=0.4)
  whole = dataclasses.replace(codec, chunk_s=100.0, context_s=0.0)
  codes = chunked.encode(wave, SR)
  reference = whole.encode(wave, SR)
  assert codes.shape == reference.shape == (4, 60)
  # With 0.4 s of context around each chunk the LSTM has forgotten the cut: codes agree except for rare
  # flips in the finest codebooks (measured: 100% for codebooks 0-2, 59/60 for codebook 3).
  agreement = (codes == reference).mean(axis=1)
  assert np.all(agreement >= 0.95) and agreement[0] == 1.0, agreement
  decoded, decoded_whole = chunked.decode(reference), whole.decode(reference)
  np.testing.assert_allclose(decoded, decoded_whole, atol=1e-3 * np.abs(decoded_whole).max())


def test_random_codebooks_are_not_degenerate(codec):
  """On 20 s of varied audio (1000 frames), every codebook uses distinct codes for most frames.

  With N = 1000 frames at most 1000 of the 2048 codes can appear (uniformly random codes would give ~800);
  a collapsed codebook (e.g. transformers' zero-initialised one) gives a handful. We require >= 50% of
  min(N, 2048) distinct codes per codebook (measured: 633-658).
  """
  clips = torch.from_numpy(varied_audio(3, 20))[:, None, :]  # [B, 1, T]: batched, so one LSTM pass
  with torch.inference_mode():
    codes = codec.model.encode(clips, bandwidth=codec.bandwidth).audio_codes[0]  # [B, K, F]
  codes = codes.permute(1, 0, 2).reshape(4, -1).numpy()
  assert codes.shape == (4, 1000)
  used = [len(np.unique(level)) for level in codes]
  assert min(used) >= 0.5 * 1000, used


def test_random_spec_is_deterministic_and_its_cache_reproduces_it(codec, monkeypatch, tmp_path):
  """A corrupt cache file is rebuilt from scratch (one fresh, deterministic build), then read back."""
  monkeypatch.setenv('SAXGPT_CACHE_DIR', str(tmp_path))
  path = codec_lib.random_codec_cache_path(0)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'not a safetensors file')
  rebuilt = codec_lib._random_model(0)
  cached = codec_lib._random_model(0)
  assert path.stat().st_size > 1_000_000
  reference = codec.model.state_dict()
  for model in (rebuilt, cached):
    state = model.state_dict()
    assert state.keys() == reference.keys()
    for name, value in reference.items():
      assert torch.equal(state[name], value), name
  with pytest.raises(codec_lib.CodecError, match='random:SEED'):
    codec_lib.Codec.load('random:zero')


def test_offline_without_weights_says_how_to_fetch(monkeypatch, tmp_path):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  with pytest.raises(codec_lib.CodecError) as e:
    codec_lib.Codec.load('nonexistent-org/encodec_missing')
  message = str(e.value)
  assert 'huggingface-cli download nonexistent-org/encodec_missing --local-dir DIR' in message
  assert '--config.codec.weights=DIR' in message and '--codec=DIR' in message
  (tmp_path / 'empty').mkdir()
  with pytest.raises(codec_lib.CodecError, match='has no config.json'):
    codec_lib.Codec.load(str(tmp_path / 'empty'))
  with pytest.raises(codec_lib.CodecError, match='is not a folder'):
    codec_lib.Codec.load(str(tmp_path / 'missing'))


def test_without_network_the_error_comes_before_any_download_retries(no_hub, monkeypatch, tmp_path):
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  with pytest.raises(codec_lib.CodecError) as e:
    codec_lib.Codec.load('nonexistent-org/encodec_missing')
  assert re.search('hub.saxgpt-test.invalid (does not|did not) resolve', str(e.value))  # not 'download failed'
  assert 'huggingface-cli download nonexistent-org/encodec_missing --local-dir DIR' in str(e.value)
  monkeypatch.setenv('HTTPS_PROXY', 'http://127.0.0.1:9')  # a proxy resolves names itself: no verdict
  assert codec_lib.hub_unreachable() is None


def test_decode_rejects_bad_codes(codec):
  with pytest.raises(codec_lib.CodecError, match='shape'):
    codec.decode(np.zeros((3, 10), np.int16))
  with pytest.raises(codec_lib.CodecError, match='delay pattern'):
    codec.decode(np.full((4, 10), 2048, np.int16))


def test_local_folder_with_config_and_weights(tmp_path):
  """A folder in the Hugging Face layout (config.json + model.safetensors) loads and encodes like its model.

  A narrow EnCodec (same hop, codebooks and weight-norm layout, fewer channels) keeps the save/load cheap.
  """
  import transformers

  config = transformers.EncodecConfig(**dict(codec_lib.ENCODEC_32KHZ_CONFIG, num_filters=4, hidden_size=16,
                                             codebook_dim=16))
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(1)
    model = transformers.EncodecModel(config).eval()
    for layer in model.quantizer.layers:
      torch.nn.init.normal_(layer.codebook.embed)
  model.save_pretrained(tmp_path)
  loaded = codec_lib.Codec.load(str(tmp_path))
  assert loaded.info.name == str(tmp_path) and loaded.info.num_codebooks == 4
  wave = varied_audio(4, 1).reshape(-1)[:SR // 5]
  with torch.inference_mode():
    expected = model.encode(torch.from_numpy(wave)[None, None], bandwidth=2.2).audio_codes[0, 0].numpy()
  np.testing.assert_array_equal(loaded.encode(wave, SR), expected)


def test_random_codec_is_the_same_for_any_torch_thread_count():
  """Its codes are encoder outputs, whose sums torch orders by thread count; calibration runs on one."""
  threads = torch.get_num_threads()
  try:
    built = {}
    for n in (1, 2):
      torch.set_num_threads(n)
      built[n] = codec_lib._build_random_model(0, num_clips=2).state_dict()
      assert torch.get_num_threads() == n  # the caller's setting is restored
  finally:
    torch.set_num_threads(threads)
  for name, value in built[1].items():
    assert torch.equal(built[2][name], value), name
