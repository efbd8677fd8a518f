"""Import original PyTorch SaxGPT checkpoints (`best.pt`) into the JAX model.

    python -m saxgpt_jax.convert_torch --checkpoint=best.pt --output=DIR [--overwrite]

writes an orbax checkpoint plus `config.json` that `saxgpt_jax.generate` loads and that training starts
from (`--config.init_from=DIR`). DIR must be new or empty; with --overwrite an existing DIR is replaced,
only once the new checkpoint is complete (it is written to a hidden sibling folder first). Any error is
one `error:` line (exit 1). The Python API `load_torch_checkpoint(path)` returns the JAX model with
the float32 weights loaded; `model(src, tgt_in)` then computes the original's logits.

Besides bench's `--reference=torch`, this is the one module of `saxgpt_jax` that imports torch, and only
inside `read_torch_checkpoint`. The state-dict layout is the original's, written out as modules in
`saxgpt_jax/bench/torch_reference.py`.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import numpy as np

from configs import cli
from saxgpt_jax import model as model_lib


class CheckpointFormatError(ValueError):
  """The checkpoint does not match the original SaxGPT layout; the message names the keys."""


def read_torch_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
  """Returns (state dict as float32 numpy with any `module.` prefix removed, model config, other info)."""
  try:
    import torch
  except ImportError as e:
    raise ImportError('Converting PyTorch checkpoints needs torch: pip install -e ".[preprocess]" '
                      '(or pip install torch==2.13.0).') from e
  try:
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
  except FileNotFoundError:
    raise FileNotFoundError(f'No checkpoint at {path}: pass the original run\'s best.pt with --checkpoint.')
  except Exception as e:
    raise CheckpointFormatError(f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}).') from e
  if not isinstance(ckpt, dict) or 'model_state_dict' not in ckpt:
    keys = list(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
    raise CheckpointFormatError(
        f'{path}: expected a dict with "model_state_dict" and "config" (the original SaxGPT format), got {keys}.')
  model_cfg = (ckpt.get('config') or {}).get('model')
  if not model_cfg:
    raise CheckpointFormatError(f'{path}: no config["model"] in the checkpoint; cannot tell the model size.')
  state = {}
  for key, value in ckpt['model_state_dict'].items():
    name = key[len('module.'):] if key.startswith('module.') else key
    state[name] = value.detach().to(torch.float32).numpy()
  info = {k: ckpt.get(k) for k in ('epoch', 'step', 'metrics')}
  return state, dict(model_cfg), info


def model_config_from_torch(torch_cfg: dict[str, Any], dtype: str = 'float32') -> model_lib.ModelConfig:
  """Maps the original config's model section onto ModelConfig (float32 compute by default, as the original)."""
  padding_idx = int(torch_cfg.get('padding_idx', 2048))
  vocab_size = int(torch_cfg.get('vocab_size', padding_idx + 1))
  if vocab_size != padding_idx + 1:
    raise CheckpointFormatError(
        f'vocab_size={vocab_size} with padding_idx={padding_idx}: expected vocab_size = codes + 1 padding row.')
  return model_lib.ModelConfig(
      num_codebooks=int(torch_cfg.get('num_codebooks', 4)),
      codebook_size=padding_idx,
      padding_idx=padding_idx,
      d_model=int(torch_cfg['d_model']),
      num_heads=int(torch_cfg['nhead']),
      num_encoder_layers=int(torch_cfg['num_encoder_layers']),
      num_decoder_layers=int(torch_cfg['num_decoder_layers']),
      dim_feedforward=int(torch_cfg['dim_feedforward']),
      dropout=float(torch_cfg.get('dropout', 0.1)),
      attention_dropout=float(torch_cfg.get('dropout', 0.1)),  # as the PyTorch model's attention does
      activation=str(torch_cfg.get('activation', 'relu')),
      norm_first=bool(torch_cfg.get('norm_first', False)),
      scale_embeddings=bool(torch_cfg.get('scale_embeddings', False)),
      max_seq_len=int(torch_cfg['max_seq_len']),
      dtype=dtype,
      param_dtype='float32',
  )


def _mapping(cfg: model_lib.ModelConfig) -> list[tuple[str, Callable[[Any], Any], Callable[[np.ndarray], np.ndarray], tuple]]:
  """(torch key, JAX parameter getter, torch->JAX layout transform, expected torch shape) for every weight."""
  d, n, h, f, k_count = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.dim_feedforward, cfg.num_codebooks
  t = lambda w: w.T
  ident = lambda w: w
  qkv = lambda w: w.reshape(3, n, h, d).transpose(3, 0, 1, 2)  # [3D, D] -> [D, 3, N, H]
  kv = lambda w: w.reshape(2, n, h, d).transpose(3, 0, 1, 2)  # [2D, D] -> [D, 2, N, H]
  q = lambda w: w.reshape(n, h, d).transpose(2, 0, 1)  # [D, D] -> [D, N, H]
  out = lambda w: w.T.reshape(n, h, d)  # [D, D] (out, in) -> [N, H, D]
  rows: list = []

  def norm(prefix, getter):
    rows.append((f'{prefix}.weight', lambda m: getter(m).scale, ident, (d,)))
    rows.append((f'{prefix}.bias', lambda m: getter(m).bias, ident, (d,)))

  def ff(prefix, getter):
    rows.append((f'{prefix}.linear1.weight', lambda m: getter(m).ff.w1, t, (f, d)))
    rows.append((f'{prefix}.linear1.bias', lambda m: getter(m).ff.b1, ident, (f,)))
    rows.append((f'{prefix}.linear2.weight', lambda m: getter(m).ff.w2, t, (d, f)))
    rows.append((f'{prefix}.linear2.bias', lambda m: getter(m).ff.b2, ident, (d,)))

  for i in range(cfg.num_encoder_layers):
    p, g = f'encoder.layers.{i}', (lambda m, i=i: m.encoder_layers[i])
    rows.append((f'{p}.self_attn.w_qkv.weight', lambda m, g=g: g(m).self_attn.qkv, qkv, (3 * d, d)))
    rows.append((f'{p}.self_attn.w_o.weight', lambda m, g=g: g(m).self_attn.out, out, (d, d)))
    ff(p, g)
    for j in (1, 2):
      norm(f'{p}.norm{j}', lambda m, g=g, j=j: getattr(g(m), f'norm{j}'))
  for i in range(cfg.num_decoder_layers):
    p, g = f'decoder.layers.{i}', (lambda m, i=i: m.decoder_layers[i])
    rows.append((f'{p}.self_attn.w_qkv.weight', lambda m, g=g: g(m).self_attn.qkv, qkv, (3 * d, d)))
    rows.append((f'{p}.self_attn.w_o.weight', lambda m, g=g: g(m).self_attn.out, out, (d, d)))
    rows.append((f'{p}.cross_attn.w_q.weight', lambda m, g=g: g(m).cross_attn.q, q, (d, d)))
    rows.append((f'{p}.cross_attn.w_kv.weight', lambda m, g=g: g(m).cross_attn.kv, kv, (2 * d, d)))
    rows.append((f'{p}.cross_attn.w_o.weight', lambda m, g=g: g(m).cross_attn.out, out, (d, d)))
    ff(p, g)
    for j in (1, 2, 3):
      norm(f'{p}.norm{j}', lambda m, g=g, j=j: getattr(g(m), f'norm{j}'))
  if cfg.norm_first:
    norm('encoder.norm', lambda m: m.encoder_norm)
    norm('decoder.norm', lambda m: m.decoder_norm)
  return rows


def load_into(model: model_lib.SaxGPT, state: dict[str, np.ndarray]) -> model_lib.SaxGPT:
  """Copies an original state dict into `model` in place. Unknown, missing or mis-shaped keys raise
  CheckpointFormatError naming every offending key."""
  cfg = model.cfg
  d, k_count, rows_v = cfg.d_model, cfg.num_codebooks, cfg.embed_rows
  missing, misshaped, assign = [], [], []
  used = set()

  def take(key, shape):
    used.add(key)
    if key not in state:
      missing.append(key)
      return None
    if tuple(state[key].shape) != tuple(shape):
      misshaped.append(f'{key}: {tuple(state[key].shape)}, expected {tuple(shape)}')
      return None
    return state[key]

  for key, getter, transform, shape in _mapping(cfg):
    w = take(key, shape)
    if w is not None:
      assign.append((getter, transform(w)))
  tables = [take(f'embedding.emb.{k}.weight', (rows_v, d)) for k in range(k_count)]
  head_w = [take(f'output_projection.linears.{k}.weight', (cfg.codebook_size, d)) for k in range(k_count)]
  head_b = [take(f'output_projection.linears.{k}.bias', (cfg.codebook_size,)) for k in range(k_count)]
  pe = take('pos_encoder.pe', (1, cfg.max_seq_len, d))
  if pe is not None and not np.allclose(pe[0], model_lib.sinusoidal_positions(cfg.max_seq_len, d), atol=1e-5):
    misshaped.append('pos_encoder.pe: values differ from the sinusoidal table the model computes')
  unknown = sorted(set(state) - used)
  if missing or misshaped or unknown:
    parts = []
    if missing:
      parts.append(f'missing keys ({len(missing)}): {missing}')
    if misshaped:
      parts.append(f'mis-shaped or mismatched ({len(misshaped)}): {misshaped}')
    if unknown:
      parts.append(f'unknown keys ({len(unknown)}): {unknown}')
    raise CheckpointFormatError(
        'The checkpoint does not match the original SaxGPT layout for this config '
        f'(d_model={d}, heads={cfg.num_heads}, layers={cfg.num_encoder_layers}/{cfg.num_decoder_layers}, '
        f'norm_first={cfg.norm_first}):\n  ' + '\n  '.join(parts))
  import jax.numpy as jnp

  assign += [(lambda m: m.embed, np.stack(tables)), (lambda m: m.head_w, np.stack([w.T for w in head_w], axis=1)),
             (lambda m: m.head_b, np.stack(head_b))]
  for getter, value in assign:
    param = getter(model)
    param.set_value(jnp.asarray(value, param.get_value().dtype))
  return model


def load_torch_checkpoint(path: str, *, dtype: str = 'float32') -> model_lib.SaxGPT:
  """The original checkpoint at `path` as a JAX SaxGPT with float32 weights (compute in `dtype`)."""
  from flax import nnx

  state, torch_cfg, _ = read_torch_checkpoint(path)
  cfg = model_config_from_torch(torch_cfg, dtype=dtype)
  return load_into(model_lib.SaxGPT(cfg, rngs=nnx.Rngs(params=0)), state)


def full_config(model_cfg: model_lib.ModelConfig):
  """configs/base.py with the converted model section (and data windows that fit its max_seq_len)."""
  import dataclasses

  from configs import base

  config = base.get_config()
  config.model.update(dataclasses.asdict(model_cfg))
  config.data.seq_len = min(config.data.seq_len, model_cfg.max_seq_len - model_cfg.num_codebooks - 1)
  config.data.stride = min(config.data.stride, config.data.seq_len)
  config.sample.window_stride = min(config.sample.window_stride, max(1, config.data.seq_len // 2))
  return config


def convert(checkpoint: str, output: str, *, overwrite: bool = False) -> str:
  """Converts `checkpoint` (original best.pt) into an orbax checkpoint + config.json under `output`.

  `output` must be new or an empty folder unless `overwrite`; the checkpoint is read and checked before
  `output` is touched, and written to a hidden sibling folder that replaces `output` once complete.
  """
  from flax import nnx

  from saxgpt_jax import checkpoint as ckpt_lib

  out = ckpt_lib.as_path(output)
  if out.exists() and not out.is_dir():
    raise FileExistsError(f'--output={output} is a file; pass a folder for the converted checkpoint.')
  if out.exists() and any(out.iterdir()) and not overwrite:
    raise FileExistsError(f'--output={output} already exists and is not empty; pass a new folder, or '
                          '--overwrite to replace it.')
  state, torch_cfg, info = read_torch_checkpoint(checkpoint)
  cfg = model_config_from_torch(torch_cfg)
  model = load_into(model_lib.SaxGPT(cfg, rngs=nnx.Rngs(params=0)), state)
  staging, replaced = out.parent / f'.{out.name}.converting', out.parent / f'.{out.name}.replaced'
  for leftover in (staging, replaced):  # from an earlier run that was killed half-way
    if leftover.exists():
      leftover.rmtree()
  ckpt_lib.save_params(staging, model, full_config(cfg))
  if out.exists():
    out.rename(replaced)
  staging.rename(out)
  if replaced.exists():
    replaced.rmtree()
  print(f'converted {checkpoint} ({model_lib.count_params(model):,} parameters; original epoch '
        f'{info.get("epoch")}, step {info.get("step")}, metrics {info.get("metrics")}) -> {output}')
  return output


def main(argv):
  cli.no_arguments(argv)
  logging.set_verbosity(logging.WARNING)  # orbax's INFO lines would bury the one-line result
  try:
    with cli.exit_on_ctrl_c(f'{_OUTPUT.value} was not changed (the new checkpoint is written beside it first).'):
      convert(_CHECKPOINT.value, _OUTPUT.value, overwrite=_OVERWRITE.value)
  except (FileNotFoundError, FileExistsError, CheckpointFormatError, ImportError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  from absl import app, flags, logging

  _CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Original PyTorch SaxGPT checkpoint (best.pt).', required=True)
  _OUTPUT = flags.DEFINE_string('output', None, 'Folder for the orbax checkpoint and config.json; must be new or '
                                'empty unless --overwrite.', required=True)
  _OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing --output folder (only once the new '
                                 'checkpoint is complete: it is written to a hidden sibling folder first).')
  app.run(main, flags_parser=cli.parse_flags)
