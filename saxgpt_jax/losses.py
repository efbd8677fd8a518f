"""Cross-entropy over all codebooks with padding targets ignored, and per-codebook metrics.

`token_stats` returns sums, not means, so microbatches, devices and eval batches add up exactly;
`summarize` turns summed stats into loss / accuracy / perplexity, overall and per codebook.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from saxgpt_jax.delay import PADDING_IDX


def token_stats(logits_bktv: jax.Array, targets_bkt: jax.Array, padding_idx: int = PADDING_IDX) -> dict:
  """Summed NLL, correct predictions and counted targets per codebook, each float32 [K].

  logits_bktv: float [B,K,T,V] over the V real codes; targets_bkt: int [B,K,T], where `padding_idx`
  (the delay padding, or padded frames) is ignored.
  """
  logits = logits_bktv.astype(jnp.float32)
  valid = targets_bkt != padding_idx
  safe_targets = jnp.where(valid, targets_bkt, 0)
  logz = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, safe_targets[..., None], axis=-1)[..., 0]
  nll = (logz - target_logit) * valid
  correct = (jnp.argmax(logits, axis=-1) == targets_bkt) & valid
  return {
      'nll_sum': nll.sum(axis=(0, 2)),
      'correct': correct.sum(axis=(0, 2)).astype(jnp.float32),
      'count': valid.sum(axis=(0, 2)).astype(jnp.float32),
  }


def mean_loss(stats: dict) -> jax.Array:
  """The training objective: mean NLL over every non-padding target of every codebook."""
  return stats['nll_sum'].sum() / jnp.maximum(stats['count'].sum(), 1.0)


def summarize(stats: dict) -> dict[str, float]:
  """Summed stats -> python floats: loss, accuracy, perplexity, and loss_k{k}/accuracy_k{k}/perplexity_k{k}."""
  nll, correct, count = (np.asarray(stats[k], np.float64) for k in ('nll_sum', 'correct', 'count'))
  out: dict[str, float] = {}

  def put(suffix, n, c, t):
    loss = float(n / t) if t else float('nan')
    out[f'loss{suffix}'] = loss
    out[f'accuracy{suffix}'] = float(c / t) if t else float('nan')
    out[f'perplexity{suffix}'] = float(math.exp(min(loss, 700.0))) if t else float('nan')

  put('', nll.sum(), correct.sum(), count.sum())
  for k in range(nll.shape[0]):
    put(f'_k{k}', nll[k], correct[k], count[k])
  out['num_tokens'] = float(count.sum())
  return out
