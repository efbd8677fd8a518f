"""EnCodec 32 kHz tokenizer (`transformers.EncodecModel`): float32 wave [T] <-> int16 codes [4, N] at 50 Hz.

`Codec.load(spec)` takes a hub id (default facebook/encodec_32khz, read from the local Hugging Face cache
first), a local folder with config.json + weights, or 'random:SEED' (the same architecture with seeded
weights, for tests and the offline demo).

Frames: one code per codebook per 640 samples (hop), N = ceil(T / 640) for a wave of T samples at 32 kHz,
chunked or not. `decode` returns 640 * N samples.

Chunking: the wave is cut on whole frames into `chunk_s` pieces; each piece is encoded with `context_s`
of real audio on each side, whose frames are then dropped, so memory stays flat on long audio. EnCodec's
LSTM sees every frame of the wave when unchunked but only its chunk plus context when chunked, so codes
near chunk boundaries can differ from an unchunked encode (`tests/preprocessing/test_codec.py` measures
the agreement). Decoding is chunked the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path

import numpy as np
import torch
import transformers
from torch.nn.utils import parametrize

from preprocessing import audio
from preprocessing.manifest import CodecInfo, atomic_write_bytes

DEFAULT_SPEC = 'facebook/encodec_32khz'
RANDOM_PREFIX = 'random:'

# facebook/encodec_32khz config.json (commit 4966e19 "Correct weights and config for skip conv",
# https://huggingface.co/facebook/encodec_32khz/tree/main; the same 758-byte file is mirrored at
# https://huggingface.co/choihj0706/musicgen_finetuned_chj/blob/main/config.json and as
# mlx-community/encodec-32khz-float32). Hop = 8*5*4*4 = 640 -> 50 frames/s; 2.2 kbps / (11 bits * 50 Hz)
# = 4 codebooks of 2048 codes.
ENCODEC_32KHZ_CONFIG = dict(
    audio_channels=1, chunk_length_s=None, codebook_dim=128, codebook_size=2048, compress=2,
    dilation_growth_rate=2, hidden_size=128, kernel_size=7, last_kernel_size=7, norm_type='weight_norm',
    normalize=False, num_filters=64, num_lstm_layers=2, num_residual_layers=1, overlap=None, pad_mode='reflect',
    residual_kernel_size=3, sampling_rate=32000, target_bandwidths=[2.2], trim_right_ratio=1.0,
    upsampling_ratios=[8, 5, 4, 4], use_causal_conv=False, use_conv_shortcut=False)

# Codebook initialisation of the random codec (see `_init_codebooks`).
_CALIBRATION_CLIPS = 8  # 1 s clips of seeded synthetic audio -> 400 encoder frames
_CODE_JITTER = 0.05  # codes = calibration vectors + N(0, (0.05 * per-dimension std)^2)


class CodecError(RuntimeError):
  """A codec that cannot be loaded or used; the message says how to fix it."""


def _offline_help(spec: str, cause: str, hub_id: str | None = None) -> str:
  """What failed for `spec`, and how to fetch the hub weights `hub_id` (default `spec` itself)."""
  hub_id = hub_id or spec
  return (
      f'Cannot load EnCodec weights {spec!r}: {cause}.\n'
      f'On a machine with internet access, download {"them" if hub_id == spec else hub_id}:\n'
      f'  huggingface-cli download {hub_id} --local-dir DIR\n'
      f'or in Python:\n'
      f'  from huggingface_hub import snapshot_download; snapshot_download("{hub_id}", local_dir="DIR")\n'
      f'then copy DIR here and point at it (preprocessing: --config.codec.weights=DIR; saxgpt_jax.generate and '
      f'evaluate: --codec=DIR; Python: Codec.load("DIR")), or copy the Hugging Face cache '
      f'(~/.cache/huggingface/hub) here. For tests and the offline demo, the spec random:0 builds the same '
      f'architecture with seeded weights.')


def _hf_offline() -> bool:
  import huggingface_hub.constants as hf_constants

  env = os.environ.get('HF_HUB_OFFLINE', '') or os.environ.get('TRANSFORMERS_OFFLINE', '')
  return env.upper() in {'1', 'ON', 'YES', 'TRUE'} or bool(hf_constants.HF_HUB_OFFLINE)


def not_downloadable() -> str | None:
  """Why weights missing from the local cache cannot be fetched now (offline mode, or the Hub's host name
  does not resolve), worded to follow their name; None if a download may be tried."""
  if _hf_offline():
    return 'not in the local Hugging Face cache and HF_HUB_OFFLINE is set'
  if unreachable := hub_unreachable():
    return f'not in the local Hugging Face cache, and {unreachable}'
  return None


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
  """Why the Hugging Face Hub cannot be reached, or None if its host name resolves (or a proxy is set,
  which resolves it instead). A DNS lookup of at most `timeout_s` (in a daemon thread, which a hung lookup
  cannot keep alive past exit), run before a download so that a machine without network gets its error at
  once rather than after huggingface_hub's ~30 s of retries."""
  import socket
  import threading
  import urllib.parse

  import huggingface_hub.constants as hf_constants

  host = urllib.parse.urlparse(hf_constants.ENDPOINT).hostname
  if not host or any(os.environ.get(v) for v in ('HTTPS_PROXY', 'https_proxy', 'ALL_PROXY', 'all_proxy')):
    return None
  outcome: list[OSError | None] = []

  def lookup():
    try:
      socket.getaddrinfo(host, 443)
      outcome.append(None)
    except OSError as e:
      outcome.append(e)

  thread = threading.Thread(target=lookup, name='hub-dns-check', daemon=True)
  thread.start()
  thread.join(timeout_s)
  if not outcome:
    return f'{host} did not resolve within {timeout_s:g} s (no network?)'
  if outcome[0] is not None:
    return f'{host} does not resolve ({outcome[0].strerror or outcome[0]}: no network?)'
  return None


def _calibration_audio(rng: np.random.Generator, num_clips: int, sr: int) -> np.ndarray:
  """Seeded varied audio float32 [num_clips, sr]: each 1 s clip is 5 segments of coloured noise, chirps,
  harmonic tones with vibrato, amplitude-modulated noise or clicks, at random levels (-30..0 dBFS peak)."""
  seg = sr // 5
  t = np.arange(seg) / sr
  freqs = np.fft.rfftfreq(seg, 1 / sr)
  freqs[0] = freqs[1]
  clips = np.zeros((num_clips, 5 * seg), np.float64)
  for i in range(num_clips):
    for j in range(5):
      kind = rng.integers(5)
      if kind == 0:  # coloured noise, spectral slope between brown and white
        x = np.fft.irfft(np.fft.rfft(rng.standard_normal(seg)) * freqs ** rng.uniform(-1.0, 0.0), seg)
      elif kind == 1:  # exponential chirp 40 Hz .. 12 kHz
        f = np.geomspace(*np.exp(rng.uniform(np.log(40), np.log(12000), 2)), seg)
        x = np.sin(2 * np.pi * np.cumsum(f) / sr + rng.uniform(0, 2 * np.pi))
      elif kind == 2:  # harmonic tone with vibrato
        f0 = np.exp(rng.uniform(np.log(55), np.log(1500)))
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 7) * t))) / sr
        amps = rng.uniform(0, 1, 16) / np.arange(1, 17) ** rng.uniform(0.5, 2.0)
        x = sum(a * np.sin((k + 1) * phase) for k, a in enumerate(amps) if (k + 1) * f0 < sr / 2)
      elif kind == 3:  # amplitude-modulated noise
        x = rng.standard_normal(seg) * (1 + np.sin(2 * np.pi * rng.uniform(0.5, 30) * t))
      else:  # clicks
        x = np.zeros(seg)
        x[rng.integers(0, seg, rng.integers(2, 40))] = rng.uniform(-1, 1)
      clips[i, j * seg:(j + 1) * seg] = x / (np.abs(x).max() + 1e-12) * 10 ** (rng.uniform(-30, 0) / 20)
  return clips.astype(np.float32)


def _init_codebooks(model: transformers.EncodecModel, rng: np.random.Generator, num_clips: int) -> None:
  """Data-dependent, seeded codebook initialisation (in the spirit of EnCodec's k-means init on the first
  batch), so that a random codec uses most of its codes instead of collapsing onto a few.

  Level l's codes are vectors of that level's residual (encoder outputs of seeded synthetic audio for
  level 0) plus small Gaussian jitter; the next level's residuals are computed leaving out the codes
  drawn from each vector itself, so they look like the residuals of unseen audio.
  """
  clips = torch.from_numpy(_calibration_audio(rng, num_clips, model.config.sampling_rate))
  # One thread: torch's convolutions sum in an order that depends on the thread count, and the codes are
  # these outputs, so a build on 2 threads and one on 1 (a preprocessing worker) would differ in the last bits.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    with torch.inference_mode():
      embeddings = model.encoder(clips[:, None, :])  # [B, D, F]
  finally:
    torch.set_num_threads(threads)
  residual = embeddings.permute(0, 2, 1).reshape(-1, embeddings.shape[1]).double().numpy()  # [B*F, D]
  num_vectors, codebook_size = residual.shape[0], model.config.codebook_size
  for layer in model.quantizer.layers:
    source = rng.integers(0, num_vectors, codebook_size)
    codes = residual[source] + _CODE_JITTER * residual.std(axis=0) * rng.standard_normal(
        (codebook_size, residual.shape[1]))
    dist = (residual ** 2).sum(1, keepdims=True) - 2 * residual @ codes.T + (codes ** 2).sum(1)[None]
    dist[source, np.arange(codebook_size)] = np.inf  # leave-one-out
    residual = residual - codes[dist.argmin(axis=1)]
    book = layer.codebook
    book.embed.copy_(torch.from_numpy(codes).float())
    book.embed_avg.copy_(book.embed)
    book.cluster_size.fill_(1.0)


_RANDOM_CODEC_VERSION = 2  # bump whenever `_build_random_model` changes what it computes


def random_codec_cache_path(seed: int) -> Path:
  """Where the calibrated `random:SEED` weights are cached ($SAXGPT_CACHE_DIR or ~/.cache/saxgpt_jax)."""
  root = Path(os.environ.get('SAXGPT_CACHE_DIR') or Path.home() / '.cache' / 'saxgpt_jax').expanduser()
  key = f'v{_RANDOM_CODEC_VERSION}-torch{torch.__version__}-transformers{transformers.__version__}'
  return root / f'random_encodec_32khz_seed{seed}_{key}.safetensors'


def _build_random_model(seed: int, num_clips: int) -> transformers.EncodecModel:
  config = transformers.EncodecConfig(**ENCODEC_32KHZ_CONFIG)
  with torch.random.fork_rng(devices=[]):
    torch.manual_seed(seed)
    model = transformers.EncodecModel(config).eval()
  _remove_weight_norm(model)
  _init_codebooks(model, np.random.default_rng(seed), num_clips)
  return model


def _random_model(seed: int, num_clips: int = _CALIBRATION_CLIPS) -> transformers.EncodecModel:
  """The seeded random codec. Building it (random init + codebook calibration) is deterministic but costs
  seconds, so the result is cached on disk (atomically, keyed by seed, this construction's version and the
  torch/transformers versions) and later loads only read the weights."""
  from safetensors.torch import load_file, save  # pylint: disable=g-import-not-at-top
  from transformers.initialization import no_init_weights  # pylint: disable=g-import-not-at-top

  path = random_codec_cache_path(seed) if num_clips == _CALIBRATION_CLIPS else None
  if path is not None and path.exists():
    try:
      with no_init_weights():
        model = transformers.EncodecModel(transformers.EncodecConfig(**ENCODEC_32KHZ_CONFIG)).eval()
      _remove_weight_norm(model)
      model.load_state_dict(load_file(path), strict=True)
      return model
    except Exception as e:  # a corrupt or foreign cache file: rebuild and overwrite it
      logging.warning('random codec cache %s is unusable (%s); rebuilding it.', path, e)
  model = _build_random_model(seed, num_clips)
  if path is not None:
    try:
      atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    except OSError as e:  # a read-only home: work without the cache
      logging.warning('cannot write the random codec cache %s (%s); continuing without it.', path, e)
  return model


def _remove_weight_norm(model: torch.nn.Module) -> None:
  """Folds weight-norm parametrisations into plain weights (same outputs, no recompute per call)."""
  for module in model.modules():
    if parametrize.is_parametrized(module, 'weight'):
      parametrize.remove_parametrizations(module, 'weight', leave_parametrized=True)


def _pretrained_model(spec: str) -> transformers.EncodecModel:
  path = Path(spec).expanduser()
  if path.is_dir():
    if not (path / 'config.json').exists():
      raise CodecError(_offline_help(spec, f'the folder {path} has no config.json', DEFAULT_SPEC))
    try:
      return transformers.EncodecModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
      raise CodecError(_offline_help(spec, f'the folder {path} holds no usable weights ({e})', DEFAULT_SPEC)) from e
  if spec.startswith(('/', './', '../', '~')) or spec.count('/') > 1:
    raise CodecError(_offline_help(spec, f'{spec} is not a folder', DEFAULT_SPEC))
  try:
    return transformers.EncodecModel.from_pretrained(spec, local_files_only=True)
  except OSError as cached_error:
    if why := not_downloadable():
      raise CodecError(_offline_help(spec, why)) from cached_error
  try:
    return transformers.EncodecModel.from_pretrained(spec)
  except OSError as e:
    raise CodecError(_offline_help(spec, f'not cached and the download failed ({e})')) from e


@dataclasses.dataclass
class Codec:
  """EnCodec wrapper: `encode(wave [T], sr) -> int16 [K, N]`, `decode(codes [K, N]) -> float32 [hop * N]`."""

  model: transformers.EncodecModel = dataclasses.field(repr=False)
  name: str
  chunk_s: float = 25.0
  context_s: float = 1.0
  device: str = 'cpu'

  @classmethod
  def load(cls, spec: str = DEFAULT_SPEC, *, chunk_s: float = 25.0, context_s: float = 1.0,
           device: str = 'cpu') -> 'Codec':
    """Loads a hub id / cached hub id, a local folder (config.json + weights), or 'random:SEED'."""
    if spec.startswith(RANDOM_PREFIX):
      try:
        seed = int(spec[len(RANDOM_PREFIX):])
      except ValueError as e:
        raise CodecError(f'codec spec {spec!r}: expected random:SEED with an integer SEED, e.g. random:0.') from e
      model = _random_model(seed)
    else:
      model = _pretrained_model(spec)
      _remove_weight_norm(model)
    if chunk_s <= 0 or context_s < 0:
      raise CodecError(f'chunk_s must be > 0 and context_s >= 0, got {chunk_s}, {context_s}.')
    return cls(model.eval().to(device), spec, chunk_s, context_s, device)

  @property
  def sample_rate(self) -> int:
    return self.model.config.sampling_rate

  @property
  def hop_length(self) -> int:
    return int(np.prod(self.model.config.upsampling_ratios))

  @property
  def bandwidth(self) -> float:
    return self.model.config.target_bandwidths[0]

  @property
  def info(self) -> CodecInfo:
    config = self.model.config
    num_codebooks = self.model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth)
    return CodecInfo(name=self.name, sample_rate=config.sampling_rate, frame_rate=int(config.frame_rate),
                     num_codebooks=num_codebooks, codebook_size=config.codebook_size)

  def num_frames(self, num_samples: int) -> int:
    """N for a wave of `num_samples` at the codec's rate: ceil(T / hop)."""
    return math.ceil(num_samples / self.hop_length)

  def _chunks(self, num_frames: int) -> list[tuple[int, int, int, int]]:
    """(context start, start, end, context end) in frames for each chunk."""
    chunk = max(1, round(self.chunk_s * self.model.config.frame_rate))
    context = round(self.context_s * self.model.config.frame_rate)
    return [(max(0, s - context), s, min(num_frames, s + chunk), min(num_frames, s + chunk + context))
            for s in range(0, num_frames, chunk)]

  def encode(self, wave: np.ndarray, sr: int) -> np.ndarray:
    """float [T] or [C, T] at `sr` -> int16 [K, N] codes, N = ceil(T' / 640) for T' samples at 32 kHz."""
    wave = audio.resample(audio.to_mono(wave), sr, self.sample_rate)
    if wave.shape[0] == 0:
      raise audio.AudioError('cannot encode an empty wave.')
    hop, total = self.hop_length, self.num_frames(wave.shape[0])
    out = np.empty((self.info.num_codebooks, total), np.int16)
    with torch.inference_mode():
      for lo, start, end, hi in self._chunks(total):
        piece = torch.from_numpy(np.ascontiguousarray(wave[lo * hop:hi * hop]))[None, None].to(self.device)
        codes = self.model.encode(piece, bandwidth=self.bandwidth, return_dict=True).audio_codes[0, 0]  # [K, F]
        out[:, start:end] = codes[:, start - lo:end - lo].cpu().numpy()
    return out

  def decode(self, codes: np.ndarray) -> np.ndarray:
    """int [K, N] -> float32 [640 * N] at 32 kHz."""
    codes = np.asarray(codes)
    num_codebooks, size = self.info.num_codebooks, self.model.config.codebook_size
    if codes.ndim != 2 or codes.shape[0] != num_codebooks or codes.shape[1] == 0:
      raise CodecError(f'decode expects codes of shape [{num_codebooks}, N] with N > 0, got {codes.shape}.')
    if codes.min() < 0 or codes.max() >= size:
      raise CodecError(f'codes must lie in [0, {size}), got [{codes.min()}, {codes.max()}] '
                       f'(undo the delay pattern and drop padding {size} first).')
    hop, total = self.hop_length, codes.shape[1]
    out = np.empty(total * hop, np.float32)
    with torch.inference_mode():
      for lo, start, end, hi in self._chunks(total):
        piece = torch.from_numpy(codes[:, lo:hi].astype(np.int64))[None, None].to(self.device)  # [1, 1, K, F]
        wave = self.model.decode(piece, [None], return_dict=True).audio_values[0, 0]  # [hop * F]
        out[start * hop:end * hop] = wave[(start - lo) * hop:(end - lo) * hop].cpu().numpy()
    return out
