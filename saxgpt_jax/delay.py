"""MusicGen's delay pattern, exactly as the original SaxGPT applies it.

For codes [K, N] the interleaved stream is [K, N + K + 1]: codebook k gets k+1 padding tokens in front
and K-k behind. Undoing it on a stream of length L keeps, for codebook k, the L-K-1 positions starting
at k+1. Both functions take an optional leading batch dimension and work on numpy or jax arrays
(`xp` is picked from the input), so the data pipeline (numpy) and the model (jnp) share one definition.
"""

from __future__ import annotations

import numpy as np

PADDING_IDX = 2048


def _xp(x):
  if isinstance(x, np.ndarray):
    return np
  import jax.numpy as jnp  # only when handed a jax array

  return jnp


def delayed_length(num_frames: int, num_codebooks: int = 4) -> int:
  """Stream length L = N + K + 1 for N frames."""
  return num_frames + num_codebooks + 1


def apply_delay(codes, padding_idx: int = PADDING_IDX):
  """[..., K, N] raw codes -> [..., K, N+K+1] delayed stream."""
  xp = _xp(codes)
  k_count, n = codes.shape[-2], codes.shape[-1]
  rows = []
  for k in range(k_count):
    front = xp.full(codes.shape[:-2] + (k + 1,), padding_idx, codes.dtype)
    back = xp.full(codes.shape[:-2] + (k_count - k,), padding_idx, codes.dtype)
    rows.append(xp.concatenate([front, codes[..., k, :], back], axis=-1))
  out = xp.stack(rows, axis=-2)
  assert out.shape[-1] == n + k_count + 1
  return out


def undo_delay(stream):
  """[..., K, L] delayed stream -> [..., K, L-K-1] codes (codebook k keeps positions k+1 .. k+L-K-1)."""
  xp = _xp(stream)
  k_count, length = stream.shape[-2], stream.shape[-1]
  n = length - k_count - 1
  if n < 0:
    raise ValueError(f'a delayed stream of {k_count} codebooks needs at least {k_count + 1} positions, got {length}')
  return xp.stack([stream[..., k, k + 1:k + 1 + n] for k in range(k_count)], axis=-2)


def delayed_window(codes: np.ndarray, seq_len: int, padding_idx: int = PADDING_IDX) -> tuple[np.ndarray, np.ndarray]:
  """Raw codes int [K, n] (n <= seq_len) -> (delayed stream int32 [K, L], mask bool [L]), L = seq_len+K+1.

  Frames past n are padding; the mask is True on positions 0 .. n+K (the delayed stream of the real
  frames, its leading and trailing pads included) and False on the padding that fills the window.
  """
  k_count, n = codes.shape
  if n > seq_len:
    raise ValueError(f'{n} frames do not fit a window of {seq_len}.')
  out = np.full((k_count, seq_len), padding_idx, np.int32)
  out[:, :n] = codes
  length = delayed_length(seq_len, k_count)
  return apply_delay(out, padding_idx), np.arange(length) < n + k_count + 1
