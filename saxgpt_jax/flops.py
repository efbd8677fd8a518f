"""FLOPs of SaxGPT per training step and per decode step, and model FLOPs utilisation (MFU).

Counting convention (PaLM, appendix B): 2 FLOPs per multiply-add of every matmul; attention scores and
the probability-weighted sum count in full (no discount for the causal mask, which the kernels still
compute); training is 3x the forward pass (the backward pass computes input and weight gradients).
Embedding gathers, LayerNorm, softmax and activations are not counted. `model_cfg` is anything with the
attributes of `config.model` (the ConfigDict or `model.ModelConfig`): d_model, num_heads,
num_encoder_layers, num_decoder_layers, dim_feedforward, num_codebooks, codebook_size.
"""

from __future__ import annotations

from typing import Any

# Dense bfloat16 peak FLOP/s per device, by a substring of `jax.Device.device_kind` (first match wins,
# so more specific names come first). Vendor data sheets; sparsity excluded.
PEAK_BF16_FLOPS = (
    ('TPU v6 lite', 918e12),  # Trillium (v6e)
    ('TPU v5 lite', 197e12),  # v5e
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v4', 275e12),
    ('TPU v3', 123e12),
    ('H100 PCIe', 756e12),
    ('H100', 989e12),  # SXM
    ('H200', 989e12),
    ('GH200', 989e12),
    ('B200', 2250e12),
    ('A100', 312e12),
    ('L40S', 362e12),
    ('L4', 121e12),
    ('A10G', 70e12),
    ('V100', 125e12),
)


def _layer_matmul_flops(model_cfg: Any) -> tuple[float, float, float]:
  """(encoder layer, decoder layer excluding cross K/V, cross K/V) FLOPs per token."""
  d, ff = model_cfg.d_model, model_cfg.dim_feedforward
  feed_forward = 2 * 2 * d * ff
  encoder = 2 * (3 * d * d + d * d) + feed_forward  # w_qkv, w_o
  decoder = 2 * (3 * d * d + d * d) + 2 * (d * d + d * d) + feed_forward  # self qkv/o, cross q/o
  cross_kv = 2 * 2 * d * d  # per memory position
  return encoder, decoder, cross_kv


def _attention_flops(model_cfg: Any, queries: int, keys: int) -> float:
  """Scores (q.k) and weighted sum (p.v) over all heads: 2 matmuls of queries x keys x d."""
  return 2 * 2 * queries * keys * model_cfg.d_model


def _heads_flops(model_cfg: Any) -> float:
  """The K output heads per decoder position."""
  return 2 * model_cfg.num_codebooks * model_cfg.d_model * model_cfg.codebook_size


def forward_flops(model_cfg: Any, batch: int, src_len: int, tgt_len: int) -> float:
  """FLOPs of one teacher-forced forward pass: src [batch, K, src_len], tgt [batch, K, tgt_len]."""
  encoder, decoder, cross_kv = _layer_matmul_flops(model_cfg)
  per_example = (
      model_cfg.num_encoder_layers * (src_len * encoder + _attention_flops(model_cfg, src_len, src_len))
      + model_cfg.num_decoder_layers * (tgt_len * decoder + src_len * cross_kv
                                        + _attention_flops(model_cfg, tgt_len, tgt_len)
                                        + _attention_flops(model_cfg, tgt_len, src_len))
      + tgt_len * _heads_flops(model_cfg))
  return float(batch * per_example)


def train_flops_per_step(model_cfg: Any, batch: int, src_len: int, tgt_len: int) -> float:
  """FLOPs of one training step (forward + backward = 3x forward) on `batch` examples."""
  return 3.0 * forward_flops(model_cfg, batch, src_len, tgt_len)


def decode_flops_per_step(model_cfg: Any, batch: int, src_len: int, context_len: int) -> float:
  """FLOPs of one cached decode step: one new position per example attending `context_len` cached
  positions (itself included) and `src_len` memory positions. Cross-attention K/V are computed once
  per call (see `encode_flops`), so they are not in here."""
  _, decoder, _ = _layer_matmul_flops(model_cfg)
  per_example = (model_cfg.num_decoder_layers * (decoder + _attention_flops(model_cfg, 1, context_len)
                                                 + _attention_flops(model_cfg, 1, src_len))
                 + _heads_flops(model_cfg))
  return float(batch * per_example)


def encode_flops(model_cfg: Any, batch: int, src_len: int) -> float:
  """FLOPs done once per generate call: the encoder plus every decoder layer's cross K/V."""
  encoder, _, cross_kv = _layer_matmul_flops(model_cfg)
  per_example = (model_cfg.num_encoder_layers * (src_len * encoder + _attention_flops(model_cfg, src_len, src_len))
                 + model_cfg.num_decoder_layers * src_len * cross_kv)
  return float(batch * per_example)


def peak_flops_per_device(device: Any) -> float | None:
  """Dense bfloat16 peak FLOP/s of a `jax.Device` (or its device_kind string); None when unknown (CPU)."""
  kind = device if isinstance(device, str) else getattr(device, 'device_kind', '')
  for name, peak in PEAK_BF16_FLOPS:
    if name.lower() in kind.lower():
      return peak
  return None


def mfu(flops_per_step: float, step_time_s: float, peak_flops: float, num_devices: int = 1) -> float:
  """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over the peak of all devices used."""
  if step_time_s <= 0 or peak_flops <= 0 or num_devices < 1:
    raise ValueError(f'mfu needs a positive step time, peak and device count; got {step_time_s}, '
                     f'{peak_flops}, {num_devices}')
  return flops_per_step / step_time_s / (peak_flops * num_devices)
