"""Autoregressive generation: encode the backing once, then one `lax.scan` of cached decode steps.

The whole loop is one XLA program (one jit). Sampling settings and the RNG are traced arrays, so changing
temperature, top-k, top-p, greedy or the seed never recompiles; only the number of steps, the batch
shape and `num_samples` are static.

Delay-pattern rules (as the original): position 0 is the start token (padding_idx) in every codebook;
at output position p, codebook k is forced to padding while p <= k.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from saxgpt_jax.delay import apply_delay
from saxgpt_jax.model import MATMUL_KERNELS, SaxGPT, check_cudnn_key_mask

Array = jax.Array


def _ordered_bits(x: Array) -> Array:
  """float32 -> uint32 with the same order (-inf lowest), so a bisection over bits finds exact values."""
  bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
  return jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(1 << 31))


def _largest_threshold(keys: Array, holds: Callable[[Array], Array]) -> Array:
  """Per row of uint32 keys [..., V]: the largest t with holds(keys >= t [..., V]) -> bool [...], for a
  predicate that is monotone in t and holds at t = 0. 32 passes over the row, one per bit; no sort."""
  t = jnp.zeros(keys.shape[:-1], jnp.uint32)
  for bit in range(31, -1, -1):
    candidate = t | jnp.uint32(1 << bit)
    t = jnp.where(holds(keys >= candidate[..., None]), candidate, t)
  return t


def _inverse_cdf(probs: Array, u: Array) -> Array:
  """Index i of each row of unnormalised probs [..., V] with mass(< i) <= u * mass(all) < mass(<= i),
  found by bisection over prefix masses (log2 V passes): one uniform u [...] per row instead of a Gumbel
  draw per code. Never lands on a zero-probability code."""
  v = probs.shape[-1]
  code = jnp.arange(v)

  def mass_before(n):  # [...] mass of codes < n; the same reduction for every n, so the order is exact
    return jnp.sum(jnp.where(code < n[..., None], probs, 0.0), axis=-1)

  target = u * mass_before(jnp.full(u.shape, v))
  n = jnp.zeros(u.shape, jnp.int32)  # largest n with mass_before(n) <= target
  for bit in range(max(v - 1, 1).bit_length() - 1, -1, -1):
    candidate = n + (1 << bit)
    n = jnp.where((candidate <= v) & (mass_before(candidate) <= target), candidate, n)
  return jnp.where(n >= v, jnp.argmax(probs, axis=-1), n).astype(jnp.int32)


@struct.dataclass
class SamplingParams:
  """Per-call sampling settings, all arrays (never static). Combine freely: top-k, then top-p, then
  temperature; `greedy` (or temperature 0) takes the argmax."""
  temperature: Array  # f32 []
  top_k: Array  # i32 [], 0 = off
  top_p: Array  # f32 [], 0 or >= 1 = off
  greedy: Array  # bool []

  @classmethod
  def make(cls, temperature: float = 1.0, top_k: int = 0, top_p: float = 0.0, greedy: bool = False):
    if temperature < 0:
      raise ValueError(f'temperature must be >= 0, got {temperature}.')
    if top_k < 0:
      raise ValueError(f'top_k must be >= 0 (0 = off), got {top_k}.')
    if not 0.0 <= top_p <= 1.0:
      raise ValueError(f'top_p must be in [0, 1] (0 = off), got {top_p}.')
    return cls(jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), jnp.bool_(greedy or temperature == 0))

  def probabilities(self, logits_nv: Array) -> Array:
    """Unnormalised sampling probabilities [R, V] of logits [R, V]: zero outside the top-k codes and then
    outside the top-p nucleus of the rest, softmax with temperature inside.

    Both cut-offs are values found by bisection over the bits of the logits (top-k: the k-th largest
    logit) and of the probabilities (top-p: the smallest probability whose higher-ranked mass, itself
    included, reaches p), so no sort or top-k runs. As in the original's `logits < topk(...)[-1]`, codes
    tied with the cut-off are kept; the best code always is.
    """
    logits = logits_nv.astype(jnp.float32)
    keys = _ordered_bits(logits)
    kth = _largest_threshold(keys, lambda kept: jnp.sum(kept, axis=-1) >= self.top_k)
    kept = (self.top_k <= 0) | (keys >= kth[..., None])
    scaled = jnp.where(kept, logits, -jnp.inf) / jnp.maximum(self.temperature, 1e-6)
    probs = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True))

    def nucleus(probs):
      mass = self.top_p * jnp.sum(probs, axis=-1)
      bits = jax.lax.bitcast_convert_type(probs, jnp.uint32)  # probs >= 0: their bits are ordered
      cut = _largest_threshold(bits, lambda kept: jnp.sum(jnp.where(kept, probs, 0.0), axis=-1) >= mass)
      return jnp.where(bits >= cut[..., None], probs, 0.0)

    return jax.lax.cond((self.top_p > 0) & (self.top_p < 1), nucleus, lambda probs: probs, probs)

  def next_tokens(self, logits_nv: Array, rng: Array) -> Array:
    """Sample one code per row: logits float [R, V], one key -> int32 [R] (one uniform per row)."""
    sampled = _inverse_cdf(self.probabilities(logits_nv), jax.random.uniform(rng, logits_nv.shape[:-1]))
    return jnp.where(self.greedy, jnp.argmax(logits_nv, axis=-1).astype(jnp.int32), sampled)


@struct.dataclass
class LoopState:
  """The scan carry of the decode loop. R = B * num_samples rows."""
  tokens: Array  # int32 [R, K] — tokens at `position`, fed to the next step
  position: Array  # int32 [] — position of `tokens`
  cache: Any  # the step function's cache, e.g. model.DecodeCache


def _force_delay_padding(tokens_rk: Array, position: Array, padding_idx: int) -> Array:
  """Codebook k is padding while position <= k (the delay pattern's leading pads)."""
  k = jnp.arange(tokens_rk.shape[-1])
  return jnp.where(position <= k, padding_idx, tokens_rk)


def row_keys(rng: Array, batch: int, num_samples: int) -> Array:
  """One RNG stream per (input, sample): fold_in(fold_in(rng, b), s) -> keys [B * num_samples]."""
  keys = [jax.random.fold_in(jax.random.fold_in(rng, b), s) for b in range(batch) for s in range(num_samples)]
  return jnp.stack(keys)


def sample_loop(step_fn: Callable, cache: Any, keys_r: Array, sampling: SamplingParams, *, num_codebooks: int,
                num_steps: int, padding_idx: int, prompt: Array | None = None) -> Array:
  """The decode loop as one lax.scan, for any `step_fn(tokens [R,K], position, cache) -> (logits [R,K,V], cache)`.

  Starts from the start token at position 0. prompt: int [R, K, P_f + K + 1], the delayed stream of P_f raw
  prompt frames (`apply_delay`); codebook k is forced to it through position k + P_f, so all P_f frames are
  reproduced exactly in every codebook. Returns int32 [R, K, num_steps + 1].
  """
  rows = keys_r.shape[0]
  start = jnp.full((rows, num_codebooks), padding_idx, jnp.int32)

  def step(carry: LoopState, _):
    logits, cache = step_fn(carry.tokens, carry.position, carry.cache)  # [R, K, V]
    nxt_pos = carry.position + 1
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, nxt_pos))(keys_r)
    sampled = jax.vmap(sampling.next_tokens)(logits, step_keys)  # [R, K]
    nxt = _force_delay_padding(sampled, nxt_pos, padding_idx)
    if prompt is not None:  # teacher-force the prompt's frames, codebook by codebook
      prompt_frames = prompt.shape[-1] - num_codebooks - 1
      forced = jax.lax.dynamic_index_in_dim(prompt, jnp.minimum(nxt_pos, prompt.shape[-1] - 1), axis=2,
                                            keepdims=False)
      nxt = jnp.where(nxt_pos <= jnp.arange(num_codebooks) + prompt_frames, forced, nxt)
    return LoopState(tokens=nxt, position=nxt_pos, cache=cache), nxt

  init = LoopState(tokens=start, position=jnp.int32(0), cache=cache)
  _, out = jax.lax.scan(step, init, None, length=num_steps)  # [num_steps, R, K]
  return jnp.concatenate([start[None], out], axis=0).transpose(1, 2, 0)


def kernels_in_compute_dtype(state: Any, dtype: Any, out_first: bool = False) -> Any:
  """The model state with every matmul kernel (`model.MATMUL_KERNELS`) cast once to the compute dtype.
  The model casts kernels at each use anyway, so results are bit-identical; the decode loop then reads
  bfloat16 weights instead of converting float32 ones at every step. Everything else keeps its dtype.

  out_first: also store each kernel [*I, *O] as [*O, I] (its input axes moved last and merged), marked
  `out_first`, which `model.kernel_product` multiplies as w x^T (`model.dense_out_first`)."""
  def cast(path, v):
    name = next((k.key for k in reversed(path) if isinstance(getattr(k, 'key', None), str)), None)
    if not isinstance(v, nnx.Variable) or name not in MATMUL_KERNELS:
      return v
    w = v[...].astype(dtype)
    if not out_first:
      return v.replace(w)
    in_axes = MATMUL_KERNELS[name]
    return v.replace(jnp.moveaxis(w.reshape(-1, *w.shape[in_axes:]), 0, -1), out_first=True)
  return jax.tree.map_with_path(cast, state, is_leaf=lambda v: isinstance(v, nnx.Variable))


def few_rows_layout(rows: int) -> bool:
  """Whether the decode loop puts its large operands on the left of their products: output-first
  kernels (`model.dense_out_first`) and cross K/V (`DecodeCache.cross_left`). On XLA:CPU with more than
  one row: its matmul kernels repack their right operand at every call, which with a few rows costs more
  than the product. At one row XLA:CPU runs matrix-vector products, faster as stored (0.30 against
  0.34 ms for [1, 512] x [512, 2048]); at 2 rows the output-first product is already faster (0.44
  against 0.63 ms), at 16 rows 2.6x; cross-attention of 16 samples over 1505 frames 2x."""
  return rows > 1 and jax.default_backend() == 'cpu'


@functools.partial(jax.jit, static_argnames=('graphdef', 'num_steps', 'num_samples'))
def _generate(graphdef, state, src, src_mask, prompt, sampling: SamplingParams, rng, *, num_steps, num_samples):
  cfg = nnx.merge(graphdef, state).cfg
  model: SaxGPT = nnx.merge(graphdef, kernels_in_compute_dtype(state, cfg.dtype))
  b = src.shape[0]
  memory = model.encode(src, src_mask)  # once per input, not per sample
  few_rows = few_rows_layout(b * num_samples)
  cache = model.init_cache(memory, src_mask, max_len=num_steps, num_samples=num_samples,  # cross K/V shared
                           cross_left=few_rows)
  if few_rows:  # kernels laid out once, before the loop
    model = nnx.merge(graphdef, kernels_in_compute_dtype(state, cfg.dtype, out_first=True))
  rep = lambda x: None if x is None else jnp.repeat(x, num_samples, axis=0)
  stream = sample_loop(model.decode_step, cache, row_keys(rng, b, num_samples), sampling,
                       num_codebooks=cfg.num_codebooks, num_steps=num_steps, padding_idx=cfg.padding_idx,
                       prompt=rep(prompt))
  return stream.reshape(b, num_samples, cfg.num_codebooks, num_steps + 1)


def generate(model: SaxGPT, src: Array, *, num_steps: int, sampling: SamplingParams, rng: Array,
             num_samples: int = 1, src_mask: Array | None = None, prompt: Array | None = None) -> Array:
  """Generate `num_steps` positions after the start token.

  src: int [B, K, S] delayed backing; src_mask: bool [B, S] (True = real frame; a prefix of each row, as
  `delay.delayed_window` makes it: cuDNN attention takes it as lengths) or None;
  prompt: int [B, K, P_f] — raw (not delayed) solo frames to continue from; they come out unchanged as
  the first P_f frames of every sample (sliding-window continuation).
  Returns int32 [B, num_samples, K, num_steps + 1] delayed streams, start token at position 0.
  """
  args, static = _generate_args(model, src, num_steps, sampling, rng, num_samples, src_mask, prompt)
  return _generate(*args, **static)


def compiled_generate(model: SaxGPT, src: Array, *, num_steps: int, sampling: SamplingParams, rng: Array,
                      num_samples: int = 1, src_mask: Array | None = None, prompt: Array | None = None) -> Any:
  """The compiled XLA program that `generate` runs for these arguments (`jax.stages.Compiled`): its
  optimised HLO names the kernels of a profile (`bench --profile_dir`)."""
  args, static = _generate_args(model, src, num_steps, sampling, rng, num_samples, src_mask, prompt)
  return _generate.lower(*args, **static).compile()


def _generate_args(model, src, num_steps, sampling, rng, num_samples, src_mask, prompt):
  """`generate`'s arguments checked and converted -> (positional args, static args) of `_generate`."""
  cfg = model.cfg
  if num_steps < 1:
    raise ValueError(f'num_steps must be >= 1, got {num_steps}.')
  if num_steps > cfg.max_seq_len:
    raise ValueError(f'num_steps={num_steps} exceeds model.max_seq_len={cfg.max_seq_len}; '
                     'generate long solos window by window (saxgpt_jax.generate does this).')
  if prompt is not None and (prompt.ndim != 3 or prompt.shape[:2] != src.shape[:2]):
    raise ValueError(f'prompt must be raw frames [B, K, P_f] with B, K of src {src.shape[:2]}, got {prompt.shape}.')
  if prompt is not None and prompt.shape[2] + cfg.num_codebooks >= num_steps:
    raise ValueError(f'a prompt of {prompt.shape[2]} frames leaves nothing to generate in {num_steps} steps.')
  check_cudnn_key_mask(cfg, src_mask)
  graphdef, state = nnx.split(model)
  src = jnp.asarray(src, jnp.int32)
  prompt = None if prompt is None else apply_delay(jnp.asarray(prompt, jnp.int32), cfg.padding_idx)
  return (graphdef, state, src, src_mask, prompt, sampling, rng), dict(num_steps=num_steps, num_samples=num_samples)
