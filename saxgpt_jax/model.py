"""The SaxGPT encoder-decoder in Flax NNX, computing exactly what the original PyTorch model computes.

Shapes use axis letters: B batch, K codebooks, S backing (source) length, T solo (target) length,
D d_model, N heads, H head dim, F feed-forward width, V codes per codebook (2048), L decoder layers.
The original (state-dict layout, norms, embeddings) is written out in eager PyTorch in
`saxgpt_jax/bench/torch_reference.py`; `saxgpt_jax/convert_torch.py` maps its weights onto these.

Parameters are float32 (`param_dtype`) and carry logical axis names (`out_sharding` metadata) that
`saxgpt_jax/sharding.py` maps onto the device mesh; matmuls run in `dtype` (bfloat16 by default);
LayerNorm, softmax statistics and logits are float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax import struct

Array = jax.Array


# ModelConfig fields that define the function the parameters compute; the others (dropout, dtype, remat, ...)
# may change between a checkpoint and the run that resumes or fine-tunes it.
ARCHITECTURE_FIELDS = ('num_codebooks', 'codebook_size', 'padding_idx', 'd_model', 'num_heads',
                       'num_encoder_layers', 'num_decoder_layers', 'dim_feedforward', 'activation', 'norm_first',
                       'scale_embeddings', 'max_seq_len')
DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  num_codebooks: int = 4
  codebook_size: int = 2048
  padding_idx: int = 2048
  d_model: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 8
  num_decoder_layers: int = 8
  dim_feedforward: int = 2048
  dropout: float = 0.1
  attention_dropout: float = 0.0  # on attention probabilities (configs/base.py says why 0)
  activation: str = 'gelu'
  norm_first: bool = True
  scale_embeddings: bool = True
  max_seq_len: int = 1505
  dtype: str = 'bfloat16'
  param_dtype: str = 'float32'
  attention_impl: str = ''
  remat: bool = False  # recompute each layer's activations in the backward pass (configs/base.py)

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(
          f'model.num_heads={self.num_heads} does not divide model.d_model={self.d_model}; '
          'pick heads so that d_model / heads is a whole number.')
    if self.activation not in ('relu', 'gelu'):
      raise ValueError(f"model.activation={self.activation!r}: use 'relu' or 'gelu'.")
    if self.padding_idx < self.codebook_size:
      raise ValueError(f'model.padding_idx={self.padding_idx} must be >= codebook_size={self.codebook_size}.')
    for name in ('dropout', 'attention_dropout'):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f'model.{name}={getattr(self, name)} must be in [0, 1).')
    for name in ('dtype', 'param_dtype'):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f'model.{name}={getattr(self, name)!r}: use one of {", ".join(DTYPES)}.')
    if self.attention_impl not in ('', 'xla', 'cudnn'):
      raise ValueError(f"model.attention_impl={self.attention_impl!r}: use '', 'xla' or 'cudnn'.")

  @classmethod
  def from_config(cls, cfg: Any) -> 'ModelConfig':
    """From `config.model` (a ConfigDict or dict); unknown keys are an error that names them."""
    d = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'unknown model config keys {unknown}; known keys are {sorted(known)}.')
    return cls(**d)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def embed_rows(self) -> int:
    """Rows of each embedding table: the codes plus the padding/start token."""
    return self.padding_idx + 1


def sinusoidal_positions(max_len: int, d_model: int) -> np.ndarray:
  """float32 [max_len, D]: sin on even channels, cos on odd, base 10000 (the original's `pe` buffer)."""
  position = np.arange(max_len, dtype=np.float32)[:, None]
  div_term = np.exp(np.arange(0, d_model, 2, dtype=np.float32) * (-math.log(10000.0) / d_model))
  pe = np.zeros((max_len, d_model), np.float32)
  pe[:, 0::2] = np.sin(position * div_term)
  pe[:, 1::2] = np.cos(position * div_term)
  return pe


def _param(rngs: nnx.Rngs, init, shape, names, dtype) -> nnx.Param:
  """A parameter with logical axis names (mapped to mesh axes by saxgpt_jax.sharding)."""
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=names, eager_sharding=False)


@jax.custom_vjp
def dense(x: Array, w: Array) -> Array:
  """x [..., I] times kernel w [I, *O] -> [..., *O]: contracts x's last axis with w's first, keeping w's
  other axes in order (a plain [rows, I] x [I, O] matmul of the row-major kernel, no weight transposes).

  Its gradient is written out (`_dense_bwd`) so that XLA:CPU transposes the saved input x for the weight
  gradient instead of the incoming gradient g. Left to autodiff, XLA computed dW^T = g^T x and fused the
  transpose of g into the large elementwise fusion that produces g (residual sums, LayerNorm and dropout
  backward), which then wrote its output column by column: ~11 s of the large train step (BENCHMARKS.md).
  """
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _dense_fwd(x, w):
  return dense(x, w), (x, w)


def _dense_bwd(res, g):
  x, w = res
  rows = tuple(range(x.ndim - 1))  # g is [..., *O] with the same leading axes as x
  outs = tuple(range(x.ndim - 1, g.ndim))
  dw = jax.lax.dot_general(x, g, ((rows, rows), ((), ())))  # [I, *O]
  dx = jax.lax.dot_general(g, w, ((outs, tuple(range(1, w.ndim))), ((), ())))  # [..., I]
  return dx.astype(x.dtype), dw.astype(w.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


# The kernels that only ever enter `kernel_product` (cast to the compute dtype at each use): parameter
# name -> number of leading input axes (`out` is [N, H, D]; the others are [D, ...] or [F, D]).
MATMUL_KERNELS = {'qkv': 1, 'q': 1, 'kv': 1, 'out': 2, 'w1': 1, 'w2': 1, 'head_w': 1}


def dense_out_first(x: Array, w: Array, dtype: Any) -> Array:
  """x [..., I] times a kernel stored output-first, w [*O, I] -> [..., *O] in `dtype` (no gradient
  rule of its own: the decode loop's matmuls, `decode.kernels_in_compute_dtype(out_first=True)`).

  The product is formed as w x^T [O, rows], with the kernel as the left operand, and transposed back.
  XLA:CPU's matmul kernels repack their right operand at every call; with a few rows, repacking a
  [I, O] kernel costs more than the product itself: [16, 512] x [512, 2048] took 1.30 ms that way round
  and 0.49 ms this way (2 cores, 16 cold kernels). The optimization barrier keeps XLA's algebraic
  simplifier from turning the transposed product back into x w^T.
  """
  rows = x.reshape(-1, x.shape[-1]).astype(dtype)
  w2 = w.reshape(-1, w.shape[-1]).astype(dtype)
  y = jax.lax.optimization_barrier(jax.lax.dot_general(w2, rows, (((1,), (1,)), ((), ()))))  # [O, rows]
  return y.T.reshape(*x.shape[:-1], *w.shape[:-1])


def is_out_first(p: nnx.Variable) -> bool:
  """Whether a kernel parameter holds its output-first copy (`decode.kernels_in_compute_dtype`)."""
  return bool(p.get_metadata().get('out_first'))


def kernel_product(x: Array, p: nnx.Variable, dtype: Any, in_axes: int = 1) -> Array:
  """x [..., I] times the kernel parameter p [*I, *O] (its `in_axes` leading axes flattened give I)
  -> [..., *O]: `dense` with x and the (float32) kernel cast to the compute dtype first. An output-first
  copy [*O, I] goes through `dense_out_first`."""
  w = p[...]
  if is_out_first(p):
    return dense_out_first(x, w, dtype)
  return dense(x.astype(dtype), w.reshape(x.shape[-1], *w.shape[in_axes:]).astype(dtype))


# Queries per block of `Attention._attend_one_row` (B = 1): [N, 256, S] float32 scores, 12 MB for the large
# model over 1505 frames, against 72 MB unblocked (blocks of 512 were ~4% slower, 768 ~20%).
ONE_ROW_QUERY_BLOCK = 256

_normal = jax.nn.initializers.normal(0.02)
_zeros = jax.nn.initializers.zeros
_ones = jax.nn.initializers.ones


def _normalize(x: Array) -> tuple[Array, Array, Array]:
  """x [..., D] -> float32 (x - mean) * rstd, mean and rstd [..., 1]; two-pass variance, eps 1e-5 (PyTorch)."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  rstd = jax.lax.rsqrt(jnp.square(x32 - mean).mean(-1, keepdims=True) + 1e-5)
  return (x32 - mean) * rstd, mean, rstd


@jax.custom_vjp
def layer_norm(x: Array, scale: Array, bias: Array) -> Array:
  """LayerNorm over the last axis of x [..., D] -> float32 [..., D].

  Its gradient is written out (`_layer_norm_bwd`): the textbook form, two row means and two column sums
  from x and the saved per-row mean and rstd, which is all the backward pass keeps. With GELU's, this
  cut the activations of the xlarge bf16 batch-16 step on an H100 from 32.9 to 22.8 GB; its time stayed
  the same (LayerNorm backward is still ~17 ms of it there, BENCHMARKS.md).
  """
  return _normalize(x)[0] * scale + bias


def _layer_norm_fwd(x, scale, bias):
  xhat, mean, rstd = _normalize(x)
  return xhat * scale + bias, (x, mean, rstd, scale, bias)


def _layer_norm_bwd(res, g):
  x, mean, rstd, scale, bias = res
  g = g.astype(jnp.float32)
  xhat = (x.astype(jnp.float32) - mean) * rstd
  dxhat = g * scale
  dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
  rows = tuple(range(x.ndim - 1))
  return dx.astype(x.dtype), (g * xhat).sum(rows).astype(scale.dtype), g.sum(rows).astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def activation(z: Array, kind: str) -> Array:
  """'relu' or exact (erf) 'gelu', x * Phi(x), in z's dtype."""
  return jax.nn.relu(z) if kind == 'relu' else jax.nn.gelu(z, approximate=False)


def _activation_grad(z: Array, kind: str) -> Array:
  """float32 d activation(z) / dz."""
  z32 = z.astype(jnp.float32)
  if kind == 'relu':
    return (z32 > 0).astype(jnp.float32)
  cdf = 0.5 * jax.lax.erfc(-z32 * np.float32(1 / math.sqrt(2)))
  pdf = jnp.exp(-0.5 * jnp.square(z32)) * np.float32(1 / math.sqrt(2 * math.pi))
  return cdf + z32 * pdf


def _drop(h: Array, keep: Array | None, rate: float) -> Array:
  """Inverted dropout with a given keep mask (as nnx.Dropout applies it); None keeps everything."""
  return h if keep is None else jax.lax.select(keep, h / jnp.asarray(1.0 - rate, h.dtype), jnp.zeros_like(h))


def _dots_take_no_transposed_lhs() -> bool:
  """Whether XLA lowers a dot whose left operand contracts its leading axis as a copy plus a dot: on
  XLA:CPU its matmul kernels (YNNPACK) take the left operand only as [rows, contracted]."""
  return jax.default_backend() == 'cpu'


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def activated_dense(z: Array, keep: Array | None, w: Array, kind: str, rate: float) -> Array:
  """The feed-forward block's second half: dense(dropout(activation(z)), w). z [..., F] before the
  activation, keep bool [..., F] the dropout mask (None: none), w [F, D] -> [..., D].

  The gradient is written out (`_activated_dense_bwd`) and keeps only z and the mask: the hidden layer
  h is recomputed, never saved. For the weight gradient dW = h^T g, XLA:CPU needs h transposed in
  memory; left to itself it fused the transpose into the fusion that computes h and wrote h^T column by
  column, reading z and three saved pieces of erf in column order (~375 ms a layer of the large f32
  step, 25x the same fusion row by row). Here h^T is computed from z transposed: one strided input, the
  activation and mask evaluated in the output's order.
  """
  return dense(_drop(activation(z, kind), keep, rate), w)


def _activated_dense_fwd(z, keep, w, kind, rate):
  return activated_dense(z, keep, w, kind, rate), (z, keep, w)


def _activated_dense_bwd(kind, rate, res, g):
  z, keep, w = res
  rows, f = tuple(range(z.ndim - 1)), z.shape[-1]
  if _dots_take_no_transposed_lhs():
    transposed = lambda a: None if a is None else a.reshape(-1, f).T  # [F, rows]
    h_t = _drop(activation(transposed(z), kind), transposed(keep), rate)
    dw = jax.lax.dot_general(h_t, g.reshape(-1, g.shape[-1]), (((1,), (0,)), ((), ())))
  else:
    dw = jax.lax.dot_general(_drop(activation(z, kind), keep, rate), g, ((rows, rows), ((), ())))
  dh = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))  # [..., F]
  dz = _drop(dh, keep, rate).astype(jnp.float32) * _activation_grad(z, kind)
  return dz.astype(z.dtype), None, dw.astype(w.dtype)


activated_dense.defvjp(_activated_dense_fwd, _activated_dense_bwd)


class LayerNorm(nnx.Module):
  """LayerNorm over D with eps 1e-5, computed in float32 (two-pass variance, as PyTorch): `layer_norm`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pdt = jnp.dtype(cfg.param_dtype)
    self.scale = _param(rngs, _ones, (cfg.d_model,), ('norm',), pdt)
    self.bias = _param(rngs, _zeros, (cfg.d_model,), ('norm',), pdt)

  def __call__(self, x: Array) -> Array:
    return layer_norm(x, self.scale[...], self.bias[...])


def _unnormalized_softmax(logits: Array, visible: Array, axis: int = -1) -> tuple[Array, Array]:
  """Masked softmax over `axis` in float32 before its division, as jax.nn.softmax computes it:
  exp(logits - row max) [..., S] and the row sums [..., 1] (S and 1 on `axis`). Masked keys get the most negative float, not -inf, as in
  jax.nn.dot_product_attention, so a fully masked row stays finite. Full-sequence attention divides its
  [..., H] output by the sums instead of the [..., S] probabilities: one pass over the scores less each
  way, and no [B, N, T, S] broadcast of the reciprocal sums, which the large f32 train step on XLA:CPU
  materialised for its backward pass."""
  logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis, keepdims=True)))
  return weights, weights.sum(axis, keepdims=True)


def _softmax_attention(logits: Array, visible: Array, value_dtype, axis: int = -1) -> Array:
  """The masked softmax probabilities over `axis` in `value_dtype` (the decode step's attention)."""
  weights, sums = _unnormalized_softmax(logits, visible, axis)
  return (weights / sums).astype(value_dtype)


def _uses_cudnn(cfg: ModelConfig) -> bool:
  """Whether full-sequence attention runs as cuDNN flash attention (see `Attention.attend`)."""
  if cfg.attention_impl in ('cudnn', 'xla'):
    return cfg.attention_impl == 'cudnn'
  return jax.default_backend() == 'gpu' and jnp.dtype(cfg.dtype).itemsize == 2


def check_cudnn_key_mask(cfg: ModelConfig, src_mask_bs: Any) -> None:
  """On the cuDNN path (`_flash_attention`), raise ValueError unless every row of the concrete key mask
  bool [B, S] is a prefix of real frames (True) and then padding (False): cuDNN takes the mask as per-row
  key lengths, so any other mask would be applied wrongly, silently. A no-op off that path, for None, and
  for traced masks (check them where they are concrete, as `decode.generate` does)."""
  if src_mask_bs is None or isinstance(src_mask_bs, jax.core.Tracer) or not _uses_cudnn(cfg):
    return
  mask = np.asarray(src_mask_bs, bool)
  prefix = np.arange(mask.shape[-1]) < mask.sum(-1, keepdims=True)
  bad = np.flatnonzero((mask != prefix).reshape(-1, mask.shape[-1]).any(-1))
  if bad.size:
    raise ValueError(
        f'src_mask rows {bad[:8].tolist()} are not a prefix of real frames followed by padding, which is '
        'the only key mask cuDNN flash attention (model.attention_impl, the GPU bfloat16 default) can apply. '
        'Put the padding at the end of each backing, as delay.delayed_window does, or set '
        'model.attention_impl="xla".')


def _flash_attention(q_btnh: Array, k_bsnh: Array, v_bsnh: Array, mask: Array | None, is_causal: bool,
                     scale: float) -> Array:
  """cuDNN flash attention -> [B, T, N, H]. The key mask [B, 1, 1, S] (a prefix of real frames) becomes
  per-row key lengths (at least 1). cuDNN's training kernels with key lengths take only even lengths, so
  an odd T or S is padded by one position here, masked as a key and dropped as a query; with causal
  masking the padded key comes after every real query anyway. (`SaxGPT._encode` makes the backing even
  once, so this fallback pads only odd solo lengths.)"""
  b, t, s = q_btnh.shape[0], q_btnh.shape[1], k_bsnh.shape[1]
  lengths = None if mask is None else jnp.maximum(mask.reshape(b, -1).sum(-1), 1).astype(jnp.int32)
  if s % 2 and lengths is None:
    lengths = jnp.full((b,), s, jnp.int32)
  even = lambda x: jnp.pad(x, ((0, 0), (0, x.shape[1] % 2), (0, 0), (0, 0)))
  o = jax.nn.dot_product_attention(even(q_btnh), even(k_bsnh), even(v_bsnh), is_causal=is_causal, scale=scale,
                                   key_value_seq_lengths=lengths, implementation='cudnn')
  return o[:, :t]


class Attention(nnx.Module):
  """Multi-head attention without biases. Self-attention keeps q/k/v in one [D, 3, N, H] kernel.

  Every projection contracts the kernel's leading (input) axes and keeps its other axes in order, so XLA
  sees a plain `[rows, in] x [in, out]` matmul of the row-major kernel: no weight transposes, which in
  the memory-bound decode loop XLA:CPU would otherwise redo on every step.
  """

  def __init__(self, cfg: ModelConfig, *, cross: bool, rngs: nnx.Rngs):
    self.cfg = cfg
    self.cross = cross
    d, n, h = cfg.d_model, cfg.num_heads, cfg.head_dim
    pdt = jnp.dtype(cfg.param_dtype)
    if cross:
      self.q = _param(rngs, _normal, (d, n, h), ('embed', 'heads', 'kv'), pdt)
      self.kv = _param(rngs, _normal, (d, 2, n, h), ('embed', None, 'heads', 'kv'), pdt)
    else:
      self.qkv = _param(rngs, _normal, (d, 3, n, h), ('embed', None, 'heads', 'kv'), pdt)
    self.out = _param(rngs, _normal, (n, h, d), ('heads', 'kv', 'embed'), pdt)
    self.dropout = nnx.Dropout(cfg.attention_dropout)

  def _project(self, x: Array, p: nnx.Param) -> Array:
    return kernel_product(x, p, self.cfg.dtype)

  def project_qkv(self, x_btd: Array) -> tuple[Array, Array, Array]:
    """-> q, k, v, each [B, T, N, H]: one matmul through the fused kernel. (Three matmuls, for contiguous
    inputs to cuDNN, gained nothing on the H100: XLA's dot merger fuses them back into one.)"""
    qkv = self._project(x_btd, self.qkv)  # [B, T, 3, N, H]
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def project_q(self, x_btd: Array) -> Array:
    return self._project(x_btd, self.q)  # [B, T, N, H]

  def project_kv(self, memory_bsd: Array) -> tuple[Array, Array]:
    kv = self._project(memory_bsd, self.kv)  # [B, S, 2, N, H]
    return kv[:, :, 0], kv[:, :, 1]

  def self_attend(self, x_btd: Array, mask: Array | None, is_causal: bool, deterministic: bool,
                  rngs: nnx.Rngs | None) -> Array:
    """Self-attention over a whole sequence [B, T, D] -> [B, T, D] (after the output projection)."""
    q, k, v = self.project_qkv(x_btd)
    return self.attend(q, k, v, mask=mask, is_causal=is_causal, deterministic=deterministic, rngs=rngs)

  def project_out(self, o_btnh: Array) -> Array:
    """Concatenated heads [B, T, N, H] -> [B, T, D]: one [N*H, D] matmul (contracting N and H as two axes
    lets XLA reorder them and transpose the kernel)."""
    return kernel_product(o_btnh.reshape(*o_btnh.shape[:-2], -1), self.out, self.cfg.dtype, in_axes=2)

  def attend(self, q_btnh: Array, k_bsnh: Array, v_bsnh: Array, mask: Array | None, is_causal: bool = False,
             deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    """Scaled dot-product attention + output projection. mask: bool [B, 1, 1, S] key-padding mask or None.

    With cuDNN (attention_impl 'cudnn', or '' on a GPU with a 16-bit dtype) and no attention dropout
    this is cuDNN flash attention through `jax.nn.dot_product_attention`: no [B, N, T, S] scores in
    memory, and the causal half is skipped. The key mask goes in as per-row key lengths, so it must be a
    prefix of real frames, as `delay.delayed_window` makes it (a row with none attends to its first key;
    its targets are all padding). Elsewhere ('xla', float32, CPU/TPU) it is the same math written out:
    scores in float32, masked softmax (divided by its sums after the value product,
    `_unnormalized_softmax`), optional dropout of the probabilities. On CPU the written-out form made the
    large train step ~10% faster than jax.nn's XLA implementation, whose per-head vmap adds copies of the
    [B, N, T, S] scores. One row (B = 1: inference on CPU, which passes rows one at a time) goes through
    `_attend_one_row`.
    """
    scale = 1.0 / math.sqrt(self.cfg.head_dim)
    dropout = not deterministic and self.cfg.attention_dropout > 0
    if not dropout and _uses_cudnn(self.cfg):
      return self.project_out(_flash_attention(q_btnh, k_bsnh, v_bsnh, mask, is_causal, scale))
    if q_btnh.shape[0] == 1:
      return self.project_out(self._attend_one_row(q_btnh * scale, k_bsnh, v_bsnh, mask, is_causal, dropout, rngs))
    logits = jnp.einsum('BTNH,BSNH->BNTS', q_btnh, k_bsnh, preferred_element_type=jnp.float32) * scale
    visible = jnp.ones((), bool) if mask is None else mask
    if is_causal:
      visible = visible & jnp.tril(jnp.ones(logits.shape[-2:], bool))
    weights, sums = _unnormalized_softmax(logits, visible)  # [B, N, T, S], [B, N, T, 1]
    if dropout:  # dropping probabilities = dropping their numerators
      weights = self.dropout(weights, deterministic=False, rngs=rngs)
    o = jnp.einsum('BNTS,BSNH->BTNH', weights.astype(v_bsnh.dtype), v_bsnh, preferred_element_type=jnp.float32)
    return self.project_out((o / sums.transpose(0, 2, 1, 3)).astype(v_bsnh.dtype))

  def _attend_one_row(self, q_btnh: Array, k_bsnh: Array, v_bsnh: Array, mask: Array | None, is_causal: bool,
                      dropout: bool, rngs: nnx.Rngs | None) -> Array:
    """`attend`'s written-out attention of one row, q already scaled -> o [1, T, N, H], over heads-first
    operands ([1, N, T or S, H], three small copies) and, on XLA:CPU, in blocks of `ONE_ROW_QUERY_BLOCK`
    queries.

    Heads-first, because XLA:CPU otherwise copies the [N, T, S] scores transposed for the value product
    (the large encoder pass took 1.26 instead of 0.92 s). In blocks, because a block's [N, 256, S] scores
    stay in cache from their product through the softmax to the value product: the large encoder pass over
    1505 frames took 0.58-0.60 instead of 0.77-0.82 s, and the teacher-forced forward of one row 1.42-1.44
    instead of 2.26 s. A causal block reads keys only up to its last query. At B = 2 the heads-first form
    made the large train step ~3% slower, so it is kept to one row.
    """
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q_btnh, k_bsnh, v_bsnh))
    t, s = q.shape[2], k.shape[2]
    block = ONE_ROW_QUERY_BLOCK if jax.default_backend() == 'cpu' else t  # measured on XLA:CPU only
    outs = []
    for start in range(0, t, block):
      stop = min(start + block, t)
      keys = min(stop, s) if is_causal else s  # causal: query t sees keys 0..t
      logits = jnp.einsum('BNTH,BNSH->BNTS', q[:, :, start:stop], k[:, :, :keys], preferred_element_type=jnp.float32)
      visible = jnp.ones((), bool) if mask is None else mask[..., :keys]
      if is_causal:
        visible = visible & (jnp.arange(start, stop)[:, None] >= jnp.arange(keys)[None, :])
      weights, sums = _unnormalized_softmax(logits, visible)  # [1, N, block, keys], [1, N, block, 1]
      if dropout:
        weights = self.dropout(weights, deterministic=False, rngs=rngs)
      o = jnp.einsum('BNTS,BNSH->BNTH', weights.astype(v.dtype), v[:, :, :keys], preferred_element_type=jnp.float32)
      outs.append(o / sums)
    return jnp.concatenate(outs, axis=2).transpose(0, 2, 1, 3).astype(v_bsnh.dtype)


class FeedForward(nnx.Module):
  """linear1 -> activation -> dropout -> linear2, with biases (the last three: `activated_dense`)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, f = cfg.d_model, cfg.dim_feedforward
    pdt = jnp.dtype(cfg.param_dtype)
    self.w1 = _param(rngs, _normal, (d, f), ('embed', 'mlp'), pdt)
    self.b1 = _param(rngs, _zeros, (f,), ('mlp',), pdt)
    self.w2 = _param(rngs, _normal, (f, d), ('mlp', 'embed'), pdt)
    self.b2 = _param(rngs, _zeros, (d,), ('embed',), pdt)

  def __call__(self, x_btd: Array, deterministic: bool, rngs: nnx.Rngs | None) -> Array:
    cfg, dt = self.cfg, self.cfg.dtype
    z = kernel_product(x_btd, self.w1, dt) + self.b1[...].astype(dt)
    if is_out_first(self.w2):  # the decode loop's kernels: deterministic, no gradient
      return kernel_product(activation(z, cfg.activation), self.w2, dt) + self.b2[...].astype(dt)
    keep = None  # the dropout mask of the hidden layer, drawn as nnx.Dropout draws it
    if not deterministic and cfg.dropout > 0:
      keep = jax.random.bernoulli(rngs.dropout(), 1.0 - cfg.dropout, z.shape)
    return activated_dense(z, keep, self.w2[...].astype(dt), cfg.activation, cfg.dropout) + self.b2[...].astype(dt)


class EncoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.self_attn = Attention(cfg, cross=False, rngs=rngs)
    self.ff = FeedForward(cfg, rngs=rngs)
    self.norm1 = LayerNorm(cfg, rngs=rngs)
    self.norm2 = LayerNorm(cfg, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x: Array, mask: Array | None, deterministic: bool, rngs: nnx.Rngs | None) -> Array:
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)

    sa = lambda y: self.self_attn.self_attend(y, mask, False, deterministic, rngs)

    if self.cfg.norm_first:
      x = x + drop(sa(self.norm1(x)))
      return x + drop(self.ff(self.norm2(x), deterministic, rngs))
    x = self.norm1(x + drop(sa(x)))
    return self.norm2(x + drop(self.ff(x, deterministic, rngs)))


class DecoderLayer(nnx.Module):
  """Causal self-attention, cross-attention over the encoder memory, feed-forward.

  `self_attend(attn, y)` and `cross_attend(attn, y)` turn the layer's normed input into attention output
  (after the output projection), so the full forward pass (causal mask over T, memory [B, S, D]) and the
  cached decode step (one position against the caches) share every other line.
  """

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.self_attn = Attention(cfg, cross=False, rngs=rngs)
    self.cross_attn = Attention(cfg, cross=True, rngs=rngs)
    self.ff = FeedForward(cfg, rngs=rngs)
    self.norm1 = LayerNorm(cfg, rngs=rngs)
    self.norm2 = LayerNorm(cfg, rngs=rngs)
    self.norm3 = LayerNorm(cfg, rngs=rngs)
    self.dropout = nnx.Dropout(cfg.dropout)

  def __call__(self, x, self_attend, cross_attend, deterministic, rngs):
    drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
    sa = lambda y: self_attend(self.self_attn, y)
    ca = lambda y: cross_attend(self.cross_attn, y)
    if self.cfg.norm_first:
      x = x + drop(sa(self.norm1(x)))
      x = x + drop(ca(self.norm2(x)))
      return x + drop(self.ff(self.norm3(x), deterministic, rngs))
    x = self.norm1(x + drop(sa(x)))
    x = self.norm2(x + drop(ca(x)))
    return self.norm3(x + drop(self.ff(x, deterministic, rngs)))


@struct.dataclass
class DecodeCache:
  """Everything the decode step reads besides the new tokens: one array per decoder layer (a tuple of L,
  so a step reads each in place), laid out so every attention product is a plain batched matrix-vector
  product with no per-step transposes. R = B * G rows: G samples of each of the B backings, adjacent;
  batch and head axes are merged (Z = R * N for self-attention, B * N for cross-attention).

  self_k: L x [R*N, H, T_max], self_v: L x [R*N, T_max, H] — self-attention keys/values, written
    position by position (in place).
  cross_k: L x [B*N, H, S], cross_v: L x [B*N, S, H] — cross-attention keys/values of the encoder
    memory, computed once and shared by the G samples of each backing. With `cross_left` they are
    [B*N, S, H] and [B*N, H, S], the left operands of their products, which then yield scores and
    outputs transposed ([B*N, S, G], [B*N, H, G]): on XLA:CPU, with G > 1 samples, twice as fast
    (`decode.few_rows_layout`).
  src_mask: [B, S] bool — True where the backing is a real frame.
  """
  self_k: tuple[Array, ...]
  self_v: tuple[Array, ...]
  cross_k: tuple[Array, ...]
  cross_v: tuple[Array, ...]
  src_mask: Array
  cross_left: bool = struct.field(pytree_node=False, default=False)


def _one_row_at_a_time(deterministic: bool, batch: int) -> bool:
  """Whether `SaxGPT.encode` and `SaxGPT.__call__` map over the batch: in inference on XLA:CPU, where a
  pass over one row needs [1, N, T, S] attention scores of fresh memory, not [B, N, T, S]."""
  return deterministic and batch > 1 and jax.default_backend() == 'cpu'


def _key_mask(src_mask_bs: Array | None) -> Array | None:
  """[B, S] key-padding mask -> [B, 1, 1, S] for dot_product_attention."""
  return None if src_mask_bs is None else src_mask_bs[:, None, None, :]


class SaxGPT(nnx.Module):
  """Multi-stream encoder-decoder: backing tokens [B,K,S] -> solo logits [B,K,T,V]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = jnp.dtype(cfg.param_dtype)
    k, d = cfg.num_codebooks, cfg.d_model
    self.embed = _param(rngs, _normal, (k, cfg.embed_rows, d), ('codebooks', None, 'embed'), pdt)
    self.encoder_layers = nnx.List([EncoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_encoder_layers)])
    self.decoder_layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_decoder_layers)])
    if cfg.norm_first:
      self.encoder_norm = LayerNorm(cfg, rngs=rngs)
      self.decoder_norm = LayerNorm(cfg, rngs=rngs)
    # [D, K, V]: the K heads side by side, one [D, K*V] matmul (no per-head weight transposes)
    self.head_w = _param(rngs, _normal, (d, k, cfg.codebook_size), ('embed', 'codebooks', 'vocab'), pdt)
    self.head_b = _param(rngs, _zeros, (k, cfg.codebook_size), ('codebooks', 'vocab'), pdt)
    self.dropout = nnx.Dropout(cfg.dropout)

  # --- shared pieces -------------------------------------------------------------------------
  def _embed(self, tokens_bkt: Array, positions_t: Array, deterministic, rngs) -> Array:
    """Summed per-codebook embeddings (x sqrt(D) if configured) + sinusoidal positions -> [B,T,D]."""
    cfg = self.cfg
    table = self.embed[...]
    x = sum(jnp.take(table[k], tokens_bkt[:, k], axis=0) for k in range(cfg.num_codebooks))
    if cfg.scale_embeddings:
      x = x * math.sqrt(cfg.d_model)
    pe = jnp.asarray(sinusoidal_positions(cfg.max_seq_len, cfg.d_model))
    x = x + jnp.take(pe, positions_t, axis=0)[None]
    return self.dropout(x, deterministic=deterministic, rngs=rngs)

  def _heads(self, x_btd: Array) -> Array:
    """4 parallel output heads -> float32 logits [B, K, T, V]."""
    if self.cfg.norm_first:
      x_btd = self.decoder_norm(x_btd)
    logits = kernel_product(x_btd, self.head_w, self.cfg.dtype)
    return (logits.astype(jnp.float32) + self.head_b[...]).transpose(0, 2, 1, 3)

  def _run_layers(self, layers: nnx.List, call: Callable, x: Array, deterministic: bool,
                  rngs: nnx.Rngs | None) -> Array:
    """x = call(layer, x, rngs) through `layers` in order.

    In training each layer draws its dropout from its own key, split from one `rngs.dropout()`, so the
    masks are the same with and without remat. With `remat` this is one `lax.scan` over the layers'
    stacked states with the body under `jax.checkpoint`: the backward pass recomputes each layer from its
    [B, T, D] input instead of keeping its intermediates, and the program holds one layer body instead of
    L. (Per-layer remat without the scan saves nothing on XLA:CPU, which drops the optimisation barriers
    and merges the recomputation back into the forward pass.) The stacked copy is made inside the step;
    the parameters keep their per-layer layout.
    """
    remat = self.cfg.remat and not deterministic
    if not layers or (not remat and (deterministic or rngs is None)):
      for layer in layers:
        x = call(layer, x, rngs)
      return x
    keys = None if rngs is None else jax.random.split(rngs.dropout(), len(layers))
    if not remat:
      for layer, key in zip(layers, keys):
        x = call(layer, x, nnx.Rngs(dropout=key))
      return x
    graphdef = nnx.split(layers[0])[0]
    stacked = jax.tree.map(lambda *v: jnp.stack(v), *(nnx.state(layer) for layer in layers))

    @jax.checkpoint
    def body(x, state_and_key):
      state, key = state_and_key
      return call(nnx.merge(graphdef, state), x, None if key is None else nnx.Rngs(dropout=key)), None

    return jax.lax.scan(body, x, (stacked, keys))[0]

  def _check_tokens(self, name: str, tokens: Array) -> None:
    cfg = self.cfg
    if tokens.ndim != 3 or tokens.shape[1] != cfg.num_codebooks:
      raise ValueError(f'{name} must be int [B, {cfg.num_codebooks}, length], got shape {tokens.shape}.')
    if tokens.shape[2] > cfg.max_seq_len:
      raise ValueError(
          f'{name} has {tokens.shape[2]} positions but model.max_seq_len is {cfg.max_seq_len}; '
          'use shorter windows (data.seq_len) or a model with a longer max_seq_len.')

  def _check_src(self, src_bks: Array, src_mask_bs: Array | None) -> None:
    """The backing's token shape, and its key mask where cuDNN reads it as lengths (`check_cudnn_key_mask`)."""
    self._check_tokens('src', src_bks)
    check_cudnn_key_mask(self.cfg, src_mask_bs)

  # --- full forward ----------------------------------------------------------------------------
  def _encode(self, src_bks: Array, src_mask_bs: Array | None, deterministic: bool, rngs: nnx.Rngs | None
              ) -> tuple[Array, Array | None]:
    """-> encoder memory [B, S', D] and its key mask [B, S'] (or None). S' = S, or S + 1 on the cuDNN path
    when S is odd (1505 = 1500 frames + K + 1): one masked zero frame is appended to the embeddings, so
    the flash-attention kernels, which take only even lengths with a key mask, get them without a pad and
    a slice of q/k/v in every layer (`_flash_attention`)."""
    self._check_src(src_bks, src_mask_bs)
    x = self._embed(src_bks, jnp.arange(src_bks.shape[2]), deterministic, rngs)
    b, s = src_bks.shape[0], src_bks.shape[2]
    if s % 2 and _uses_cudnn(self.cfg):
      x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))
      real = jnp.ones((b, s), bool) if src_mask_bs is None else src_mask_bs
      src_mask_bs = jnp.pad(real, ((0, 0), (0, 1)))
    mask = _key_mask(src_mask_bs)
    x = self._run_layers(self.encoder_layers, lambda layer, x, rngs: layer(x, mask, deterministic, rngs), x,
                         deterministic, rngs)
    if self.cfg.norm_first:
      x = self.encoder_norm(x)
    return x, src_mask_bs

  def encode(self, src_bks: Array, src_mask_bs: Array | None = None, *, deterministic: bool = True,
             rngs: nnx.Rngs | None = None) -> Array:
    """Backing tokens [B,K,S] (delayed) -> encoder memory [B,S,D] (after the final norm when pre-norm).

    On XLA:CPU, in inference, several backings are encoded one after the other (`lax.map`): each pass
    then needs its own [1, N, S, S] attention scores, not [B, N, S, S] of fresh memory (large, 16 x 1505
    frames: 154 MB of temporaries instead of 2.7 GB; `bench decode --batch=16`: encoder pass 17-20 s
    instead of 24 s, peak RSS 2.8 instead of 5.3 GB; BENCHMARKS.md, session 12)."""
    if _one_row_at_a_time(deterministic, src_bks.shape[0]):
      self._check_src(src_bks, src_mask_bs)  # on the whole batch, before the map traces it
      return self._map_rows(lambda m, src, mask: m.encode(src, mask), src_bks, src_mask_bs)
    return self._encode(src_bks, src_mask_bs, deterministic, rngs)[0][:, :src_bks.shape[2]]

  def _map_rows(self, fn: Callable, *arrays: Array | None) -> Array:
    """fn(model, *arrays' rows, each with a batch axis of 1) -> [1, ...], one row after the other
    (`lax.map`) -> [B, ...]. None arrays pass through as None."""
    graphdef, state = nnx.split(self)
    one = lambda rows: fn(nnx.merge(graphdef, state), *(None if r is None else r[None] for r in rows))[0]
    return jax.lax.map(one, arrays)

  def __call__(self, src_bks: Array, tgt_bkt: Array, src_mask_bs: Array | None = None, *,
               deterministic: bool = True, rngs: nnx.Rngs | None = None) -> Array:
    """Teacher-forced logits float32 [B,K,T,V] for decoder input tgt_bkt [B,K,T] (causal). In inference
    on XLA:CPU one row at a time, as `encode`."""
    if _one_row_at_a_time(deterministic, src_bks.shape[0]):
      self._check_src(src_bks, src_mask_bs)
      self._check_tokens('tgt', tgt_bkt)
      return self._map_rows(lambda m, src, tgt, mask: m(src, tgt, mask), src_bks, tgt_bkt, src_mask_bs)
    memory, src_mask_bs = self._encode(src_bks, src_mask_bs, deterministic, rngs)
    self._check_tokens('tgt', tgt_bkt)
    x = self._embed(tgt_bkt, jnp.arange(tgt_bkt.shape[2]), deterministic, rngs)
    cross_mask = _key_mask(src_mask_bs)

    def decoder_layer(layer: DecoderLayer, x, rngs):
      ck, cv = layer.cross_attn.project_kv(memory)
      causal = lambda attn, y: attn.self_attend(y, None, True, deterministic, rngs)
      cross = lambda attn, y: attn.attend(attn.project_q(y), ck, cv, mask=cross_mask, deterministic=deterministic,
                                          rngs=rngs)
      return layer(x, causal, cross, deterministic, rngs)

    x = self._run_layers(self.decoder_layers, decoder_layer, x, deterministic, rngs)
    return self._heads(x)

  # --- cached decoding -------------------------------------------------------------------------
  def init_cache(self, memory_bsd: Array, src_mask_bs: Array | None, max_len: int,
                 num_samples: int = 1, cross_left: bool = False) -> DecodeCache:
    """Every layer's cross-attention K/V of memory [B, S, D], computed once (laid out as `DecodeCache`
    says, per `cross_left`), and an empty self-attention cache for B * num_samples rows of up to max_len
    positions."""
    cfg = self.cfg
    b, s, _ = memory_bsd.shape
    if max_len > cfg.max_seq_len:
      raise ValueError(f'cannot decode {max_len} positions: model.max_seq_len is {cfg.max_seq_len}.')
    n, h = cfg.num_heads, cfg.head_dim
    cross_k, cross_v = [], []
    merge_bn = lambda t: t.reshape(b * n, *t.shape[2:])
    sh, hs = (0, 2, 1, 3), (0, 2, 3, 1)  # [B, S, N, H] -> [B, N, S, H] or [B, N, H, S]
    for layer in self.decoder_layers:
      k_bsnh, v_bsnh = layer.cross_attn.project_kv(memory_bsd)
      cross_k.append(merge_bn(k_bsnh.transpose(sh if cross_left else hs)))
      cross_v.append(merge_bn(v_bsnh.transpose(hs if cross_left else sh)))
    z = b * num_samples * n
    layers = range(cfg.num_decoder_layers)
    if src_mask_bs is None:
      src_mask_bs = jnp.ones((b, s), bool)
    return DecodeCache(
        self_k=tuple(jnp.zeros((z, h, max_len), cfg.dtype) for _ in layers),
        self_v=tuple(jnp.zeros((z, max_len, h), cfg.dtype) for _ in layers),
        cross_k=tuple(cross_k), cross_v=tuple(cross_v), src_mask=src_mask_bs, cross_left=cross_left)

  def decode_step(self, tokens_rk: Array, position: Array, cache: DecodeCache) -> tuple[Array, DecodeCache]:
    """One decoder position: tokens [R,K] at `position` (scalar int) -> logits [R,K,V] and the new cache.

    Attention is written out as einsums over the cache layouts (see DecodeCache); the G = R / B samples
    of a backing share its cross K/V, so cross-attention is a [G, H] x [H, S] product per head.
    """
    cfg = self.cfg
    rows = tokens_rk.shape[0]
    b, s = cache.src_mask.shape
    g, n, h = rows // b, cfg.num_heads, cfg.head_dim
    scale = jnp.float32(1.0 / math.sqrt(h))
    x = self._embed(tokens_rk[:, :, None], position[None], True, None)  # [R, 1, D]
    visible = jnp.arange(cache.self_k[0].shape[-1]) <= position  # [T_max]
    key_ok = cache.src_mask[:, None, None, :]  # [B, 1, 1, S]
    self_k, self_v = list(cache.self_k), list(cache.self_v)
    for i, layer in enumerate(self.decoder_layers):

      def self_attend(attn: Attention, y, i=i):
        q, k, v = (t.reshape(rows * n, h) for t in attn.project_qkv(y))  # [R*N, H]
        self_k[i] = jax.lax.dynamic_update_slice(self_k[i], k[:, :, None].astype(cfg.dtype), (0, 0, position))
        self_v[i] = jax.lax.dynamic_update_slice(self_v[i], v[:, None, :].astype(cfg.dtype), (0, position, 0))
        logits = jnp.einsum('ZH,ZHT->ZT', q, self_k[i], preferred_element_type=jnp.float32) * scale
        o = jnp.einsum('ZT,ZTH->ZH', _softmax_attention(logits, visible, self_v[i].dtype), self_v[i])
        return attn.project_out(o.reshape(rows, 1, n, h))

      def cross_attend(attn: Attention, y, i=i):
        q = attn.project_q(y).reshape(b, g, n, h).transpose(0, 2, 1, 3).reshape(b * n, g, h)
        if cache.cross_left:  # scores [Z, S, G], output [Z, H, G]
          logits = jnp.einsum('ZSH,ZGH->ZSG', cache.cross_k[i], q, preferred_element_type=jnp.float32) * scale
          probs = _softmax_attention(logits.reshape(b, n, s, g), key_ok.reshape(b, 1, s, 1), cache.cross_v[i].dtype,
                                     axis=2)
          o = jnp.einsum('ZHS,ZSG->ZHG', cache.cross_v[i], probs.reshape(b * n, s, g))
          return attn.project_out(o.reshape(b, n, h, g).transpose(0, 3, 1, 2).reshape(rows, 1, n, h))
        logits = jnp.einsum('ZGH,ZHS->ZGS', q, cache.cross_k[i], preferred_element_type=jnp.float32) * scale
        probs = _softmax_attention(logits.reshape(b, n, g, s), key_ok, cache.cross_v[i].dtype)
        o = jnp.einsum('ZGS,ZSH->ZGH', probs.reshape(b * n, g, s), cache.cross_v[i])
        return attn.project_out(o.reshape(b, n, g, h).transpose(0, 2, 1, 3).reshape(rows, 1, n, h))

      x = layer(x, self_attend, cross_attend, True, None)
    cache = cache.replace(self_k=tuple(self_k), self_v=tuple(self_v))
    return self._heads(x)[:, :, 0], cache


def count_params(model: nnx.Module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
