"""The original SaxGPT in eager PyTorch: the baseline of the benchmarks (`--reference=torch`) only.

The architecture and state-dict layout are the upstream project's (as the parity fixtures that the tests
read from ../shared/fixtures/upstream_parity pin them), so
`load_state_dict(..., strict=True)` takes the original checkpoints (after `strip_ddp_prefix`). Shapes:
tokens int64 [B, K, T] (delay-interleaved, 2048 = padding/start), memory float32 [B, S, d],
logits float32 [B, K, T, 2048].

Generation is the original loop: one decoder step per token, the self-attention KV cache grown by
`torch.cat` each step; the cross-attention K/V of the memory are computed once per call.

Nothing in `saxgpt_jax` imports this module except the benchmark, and only when asked for torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

CODEBOOK_SIZE = 2048  # the heads predict codes 0..2047; 2048 is padding and start
REQUIRED_KEYS = ('vocab_size', 'num_codebooks', 'd_model', 'nhead', 'num_encoder_layers',
                 'num_decoder_layers', 'dim_feedforward', 'dropout', 'activation', 'norm_first',
                 'max_seq_len', 'padding_idx', 'scale_embeddings')


def model_config_from_jax(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """This project's `config.model` (ml_collections) -> the original `model_config.json` dict."""
  return {
      'vocab_size': model_config['codebook_size'] + 1,
      'num_codebooks': model_config['num_codebooks'],
      'd_model': model_config['d_model'],
      'nhead': model_config['num_heads'],
      'num_encoder_layers': model_config['num_encoder_layers'],
      'num_decoder_layers': model_config['num_decoder_layers'],
      'dim_feedforward': model_config['dim_feedforward'],
      'dropout': model_config['dropout'],
      'attention_dropout': model_config.get('attention_dropout', model_config['dropout']),
      'activation': model_config['activation'],
      'norm_first': model_config['norm_first'],
      'max_seq_len': model_config['max_seq_len'],
      'padding_idx': model_config['padding_idx'],
      'scale_embeddings': model_config['scale_embeddings'],
  }


def strip_ddp_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
  """Drops the `module.` prefix DistributedDataParallel puts on every key."""
  return {k.removeprefix('module.'): v for k, v in state_dict.items()}


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
  """float32 [1, max_len, d]: sin on even channels, cos on odd, base 10000."""
  position = torch.arange(max_len, dtype=torch.float32)[:, None]
  div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
  pe = torch.zeros(max_len, d_model)
  pe[:, 0::2] = torch.sin(position * div_term)
  pe[:, 1::2] = torch.cos(position * div_term)[:, :d_model // 2]
  return pe[None]


class CodebookEmbedding(nn.Module):
  """One table per codebook; the K embeddings of a position are summed."""

  def __init__(self, num_codebooks: int, vocab_size: int, d_model: int):
    super().__init__()
    self.emb = nn.ModuleList(nn.Embedding(vocab_size, d_model) for _ in range(num_codebooks))

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    """int [B, K, T] -> float [B, T, d]."""
    return sum(table(tokens[:, k]) for k, table in enumerate(self.emb))


class PositionalEncoding(nn.Module):
  """Adds the fixed sinusoidal table `pe` [1, max_len, d] from a start position."""

  def __init__(self, d_model: int, max_len: int, dropout: float):
    super().__init__()
    self.dropout = nn.Dropout(dropout)
    self.register_buffer('pe', sinusoidal_table(max_len, d_model))

  def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
    end = start + x.shape[1]
    if end > self.pe.shape[1]:
      raise ValueError(f'position {end - 1} is past max_seq_len {self.pe.shape[1]}; '
                       'use shorter sequences or a model with a longer max_seq_len')
    return self.dropout(x + self.pe[:, start:end])


def _split_heads(x: torch.Tensor, nhead: int) -> torch.Tensor:
  b, t, d = x.shape
  return x.view(b, t, nhead, d // nhead).transpose(1, 2)  # [B, H, T, d/H]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
  b, h, t, dh = x.shape
  return x.transpose(1, 2).reshape(b, t, h * dh)


class SelfAttention(nn.Module):
  """Fused q/k/v projection `w_qkv` [3d, d] (rows q, k, v) and `w_o` [d, d], no biases."""

  def __init__(self, d_model: int, nhead: int, dropout: float):
    super().__init__()
    self.nhead = nhead
    self.dropout = dropout
    self.w_qkv = nn.Linear(d_model, 3 * d_model, bias=False)
    self.w_o = nn.Linear(d_model, d_model, bias=False)

  def forward(self, x, *, causal=False, attn_mask=None, cache=None):
    """x [B, T, d]; cache (k, v) [B, H, T0, d/H] or None -> (out [B, T, d], (k, v) with T0+T positions)."""
    q, k, v = (_split_heads(t, self.nhead) for t in self.w_qkv(x).chunk(3, dim=-1))
    if cache is not None:
      k = torch.cat([cache[0], k], dim=2)
      v = torch.cat([cache[1], v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal,
                                         dropout_p=self.dropout if self.training else 0.0)
    return self.w_o(_merge_heads(out)), (k, v)


class CrossAttention(nn.Module):
  """`w_q` [d, d], `w_kv` [2d, d] (k rows then v rows), `w_o` [d, d], no biases."""

  def __init__(self, d_model: int, nhead: int, dropout: float):
    super().__init__()
    self.nhead = nhead
    self.dropout = dropout
    self.w_q = nn.Linear(d_model, d_model, bias=False)
    self.w_kv = nn.Linear(d_model, 2 * d_model, bias=False)
    self.w_o = nn.Linear(d_model, d_model, bias=False)

  def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """memory [B, S, d] -> (k, v) [B, H, S, d/H]."""
    k, v = self.w_kv(memory).chunk(2, dim=-1)
    return _split_heads(k, self.nhead), _split_heads(v, self.nhead)

  def forward(self, x, memory_kv, attn_mask=None):
    q = _split_heads(self.w_q(x), self.nhead)
    out = F.scaled_dot_product_attention(q, *memory_kv, attn_mask=attn_mask,
                                         dropout_p=self.dropout if self.training else 0.0)
    return self.w_o(_merge_heads(out))


class FeedForward(nn.Module):
  """Shared by both layer kinds: `linear1` [ff, d] + bias, activation, `linear2` [d, ff] + bias."""

  def __init__(self, d_model: int, dim_feedforward: int, dropout: float, activation: str):
    super().__init__()
    if activation not in ('relu', 'gelu'):
      raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
    self.activation = F.relu if activation == 'relu' else F.gelu  # exact erf gelu
    self.linear1 = nn.Linear(d_model, dim_feedforward)
    self.linear2 = nn.Linear(dim_feedforward, d_model)
    self.dropout = nn.Dropout(dropout)
    self.dropout_out = nn.Dropout(dropout)

  def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.dropout_out(self.linear2(self.dropout(self.activation(self.linear1(x)))))


class EncoderLayer(FeedForward):
  """Self-attention (`norm1`) and feed-forward (`norm2`), pre- or post-norm."""

  def __init__(self, d_model, nhead, dim_feedforward, dropout, activation, norm_first, attention_dropout):
    super().__init__(d_model, dim_feedforward, dropout, activation)
    self.norm_first = norm_first
    self.self_attn = SelfAttention(d_model, nhead, attention_dropout)
    self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
    self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
    self.dropout1 = nn.Dropout(dropout)

  def forward(self, x, attn_mask=None):
    if self.norm_first:
      x = x + self.dropout1(self.self_attn(self.norm1(x), attn_mask=attn_mask)[0])
      return x + self.feed_forward(self.norm2(x))
    x = self.norm1(x + self.dropout1(self.self_attn(x, attn_mask=attn_mask)[0]))
    return self.norm2(x + self.feed_forward(x))


class DecoderLayer(FeedForward):
  """Causal self-attention (`norm1`), cross-attention (`norm2`), feed-forward (`norm3`)."""

  def __init__(self, d_model, nhead, dim_feedforward, dropout, activation, norm_first, attention_dropout):
    super().__init__(d_model, dim_feedforward, dropout, activation)
    self.norm_first = norm_first
    self.self_attn = SelfAttention(d_model, nhead, attention_dropout)
    self.cross_attn = CrossAttention(d_model, nhead, attention_dropout)
    self.norm1 = nn.LayerNorm(d_model, eps=1e-5)
    self.norm2 = nn.LayerNorm(d_model, eps=1e-5)
    self.norm3 = nn.LayerNorm(d_model, eps=1e-5)
    self.dropout1 = nn.Dropout(dropout)
    self.dropout2 = nn.Dropout(dropout)

  def forward(self, x, memory_kv, *, memory_mask=None, cache=None):
    """x [B, T, d]. Without a cache: causal over T. With one: x holds the new positions only."""
    causal = cache is None and x.shape[1] > 1
    if self.norm_first:
      attn, cache = self.self_attn(self.norm1(x), causal=causal, cache=cache)
      x = x + self.dropout1(attn)
      x = x + self.dropout2(self.cross_attn(self.norm2(x), memory_kv, memory_mask))
      return x + self.feed_forward(self.norm3(x)), cache
    attn, cache = self.self_attn(x, causal=causal, cache=cache)
    x = self.norm1(x + self.dropout1(attn))
    x = self.norm2(x + self.dropout2(self.cross_attn(x, memory_kv, memory_mask)))
    return self.norm3(x + self.feed_forward(x)), cache


class Stack(nn.Module):
  """`layers.{i}` plus the final `norm` (pre-norm only)."""

  def __init__(self, layers: list[nn.Module], d_model: int, norm_first: bool):
    super().__init__()
    self.layers = nn.ModuleList(layers)
    if norm_first:
      self.norm = nn.LayerNorm(d_model, eps=1e-5)
    else:
      self.norm = None

  def final_norm(self, x: torch.Tensor) -> torch.Tensor:
    return x if self.norm is None else self.norm(x)


class OutputProjection(nn.Module):
  """`linears.{k}` [2048, d] + bias: one head per codebook."""

  def __init__(self, num_codebooks: int, d_model: int):
    super().__init__()
    self.linears = nn.ModuleList(nn.Linear(d_model, CODEBOOK_SIZE) for _ in range(num_codebooks))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """[B, T, d] -> [B, K, T, 2048]."""
    return torch.stack([head(x) for head in self.linears], dim=1)


class SaxGPTTorch(nn.Module):
  """The original encoder-decoder. Build with `SaxGPTTorch(model_config_json_dict)`."""

  def __init__(self, config: Mapping[str, Any]):
    super().__init__()
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
      raise ValueError(f'model config lacks {missing}; pass the original model_config.json dict '
                       '(or model_config_from_jax(config.model))')
    self.config = dict(config)
    d, k = config['d_model'], config['num_codebooks']
    if d % config['nhead']:
      raise ValueError(f"d_model {d} is not divisible by nhead {config['nhead']}")
    # Attention probabilities are dropped with `dropout` (as nn.MultiheadAttention does) unless the config
    # gives attention_dropout (the benchmark passes the JAX config's, so both sides do the same work).
    layer_args = (d, config['nhead'], config['dim_feedforward'], config['dropout'], config['activation'],
                  config['norm_first'], float(config.get('attention_dropout', config['dropout'])))
    self.num_codebooks = k
    self.padding_idx = config['padding_idx']
    self.embed_scale = math.sqrt(d) if config['scale_embeddings'] else 1.0
    self.embedding = CodebookEmbedding(k, config['vocab_size'], d)
    self.pos_encoder = PositionalEncoding(d, config['max_seq_len'], config['dropout'])
    self.encoder = Stack([EncoderLayer(*layer_args) for _ in range(config['num_encoder_layers'])], d,
                         config['norm_first'])
    self.decoder = Stack([DecoderLayer(*layer_args) for _ in range(config['num_decoder_layers'])], d,
                         config['norm_first'])
    self.output_projection = OutputProjection(k, d)

  @classmethod
  def from_checkpoint(cls, path: str | Path) -> SaxGPTTorch:
    """Loads an original `checkpoint.pt` (DDP prefix or not), strictly; returns the model in eval mode."""
    checkpoint = torch.load(path, weights_only=True, map_location='cpu')
    model = cls(checkpoint['config']['model'])
    model.load_state_dict(strip_ddp_prefix(checkpoint['model_state_dict']), strict=True)
    return model.eval()

  def _embed(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:
    return self.pos_encoder(self.embedding(tokens) * self.embed_scale, start)

  @staticmethod
  def _key_mask(src_mask: torch.Tensor | None) -> torch.Tensor | None:
    """bool [B, S] (True = real frame) -> SDPA mask [B, 1, 1, S]."""
    return None if src_mask is None else src_mask[:, None, None, :]

  def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
    """src int [B, K, S] -> memory float [B, S, d]."""
    x = self._embed(src)
    for layer in self.encoder.layers:
      x = layer(x, self._key_mask(src_mask))
    return self.encoder.final_norm(x)

  def memory_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cross-attention K/V of every decoder layer, computed once per memory."""
    return [layer.cross_attn.memory_kv(memory) for layer in self.decoder.layers]

  def decode(self, tgt, memory_kv, *, src_mask=None, caches=None, start=0):
    """tgt int [B, K, T] at positions start.. -> (logits [B, K, T, 2048], new per-layer caches)."""
    x = self._embed(tgt, start)
    new_caches = []
    for i, layer in enumerate(self.decoder.layers):
      x, cache = layer(x, memory_kv[i], memory_mask=self._key_mask(src_mask),
                       cache=None if caches is None else caches[i])
      new_caches.append(cache)
    return self.output_projection(self.decoder.final_norm(x)), new_caches

  def forward(self, src, tgt, src_mask=None):
    """Teacher forcing: src [B, K, S], tgt [B, K, T] -> logits float [B, K, T, 2048] (causal decoder)."""
    memory = self.encode(src, src_mask)
    return self.decode(tgt, self.memory_kv(memory), src_mask=src_mask)[0]

  @torch.no_grad()
  def generate(self, src: torch.Tensor, gen_len: int, *, src_mask: torch.Tensor | None = None,
               greedy: bool = True, temperature: float = 1.0, top_k: int = 0,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The original loop -> int64 [B, K, gen_len], start token 2048 at position 0.

    At output position p, codebook k is 2048 while p <= k (the delay pattern), else the argmax
    (greedy) or a temperature / top-k sample over the 2048 code logits of the previous step.
    """
    if gen_len < 1:
      raise ValueError(f'gen_len must be at least 1 (the start token), got {gen_len}')
    b, k_count = src.shape[0], self.num_codebooks
    memory_kv = self.memory_kv(self.encode(src, src_mask))
    tokens = torch.full((b, k_count, 1), self.padding_idx, dtype=torch.long, device=src.device)
    forced = torch.arange(k_count, device=src.device)[None, :]  # [1, K]
    caches = None
    for p in range(1, gen_len):
      logits, caches = self.decode(tokens[:, :, -1:], memory_kv, src_mask=src_mask, caches=caches,
                                   start=p - 1)
      step_logits = logits[:, :, -1]  # [B, K, 2048]
      if greedy:
        nxt = step_logits.argmax(-1)
      else:
        nxt = sample_logits(step_logits, temperature=temperature, top_k=top_k, generator=generator)
      nxt = torch.where(forced >= p, torch.full_like(nxt, self.padding_idx), nxt)
      tokens = torch.cat([tokens, nxt[:, :, None]], dim=2)
    return tokens


def sample_logits(logits: torch.Tensor, *, temperature: float, top_k: int,
                  generator: torch.Generator | None) -> torch.Tensor:
  """logits [..., V] -> int64 [...]: softmax(logits / temperature) restricted to the top_k (0 = all)."""
  if temperature <= 0:
    raise ValueError(f'temperature must be positive (use greedy for argmax), got {temperature}')
  logits = logits / temperature
  if top_k > 0:
    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
    logits = logits.masked_fill(logits < kth, float('-inf'))
  probs = logits.softmax(-1).reshape(-1, logits.shape[-1])
  return torch.multinomial(probs, 1, generator=generator).reshape(logits.shape[:-1])


def bench_device(jax_platform: str) -> torch.device:
  """Where a benchmark runs the reference: CUDA when JAX runs on a GPU and torch sees one (the same
  hardware for both sides), else the CPU."""
  return torch.device('cuda' if jax_platform == 'gpu' and torch.cuda.is_available() else 'cpu')


def synchronize(device: torch.device) -> None:
  """Waits for the device's queued kernels (CUDA runs asynchronously; the CPU needs nothing)."""
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def token_loss(logits: torch.Tensor, targets: torch.Tensor, padding_idx: int = 2048) -> torch.Tensor:
  """Mean cross-entropy over non-padding targets: logits [B, K, T, V], targets [B, K, T]."""
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=padding_idx)
