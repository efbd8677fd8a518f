r"""Evaluate a SaxGPT checkpoint on a dataset split: metrics, generation checks, report.json and PNG plots.

    python -m saxgpt_jax.evaluate --checkpoint=runs/demo/train --split=test [--output=DIR] [--max_batches=N]
        [--num_examples=8] [--codec=random:0|none] [--data_dir=data/tfds] [--best]

What it measures (all in OUTPUT/report.json, written atomically; OUTPUT defaults to CHECKPOINT/eval_<split>):
  teacher_forced   loss (nats/token), accuracy and perplexity, overall and per codebook (`_k{k}`), over one
                   deterministic pass of the split (the padded last batch adds nothing).
  generation       for the first --num_examples windows with real frames, per codebook, over real frames:
                   - ar_vs_tf: greedy autoregressive generation (`decode.generate`, num_steps = window + K)
                     against the teacher-forced argmax of model(src, tgt_in) on the same window; their
                     agreement rate and, per window, the first frame where any codebook differs (null when
                     they never differ). Both predict frame 0 of codebook 0 from the same start token, so
                     they always agree there; after that AR conditions on its own tokens, TF on the reference.
                   - ar_vs_reference, tf_vs_reference: agreement of each with the reference solo.
  distribution     token entropy (bits) per codebook of the reference, greedy and sampled (config.sample
                   settings, --seed) tokens on those windows, plus the reference over the whole split; and
                   KL(generated || reference) in bits per codebook. The KL uses additive smoothing: each of
                   the V codes gets `--kl_smoothing` pseudo-counts (default 0.5, the Krichevsky-Trofimov /
                   Jeffreys estimator) in both histograms, p = (c + a) / (n + a V), so codes unseen on one side
                   do not make the KL infinite. Identical histograms give exactly 0.
Plots (PNG in OUTPUT): training_curves.png (from metrics.jsonl when --checkpoint is a training workdir or its
checkpoints/ folder), token_heatmaps.png, agreement_by_frame.png, and spectrograms.png of the first window's
backing, reference solo and sampled solo decoded with --codec (needs the `preprocess` extra). A --codec given
on the command line that cannot be loaded stops the run before the passes; the checkpoint config's codec, or
--codec=none, only skips the spectrograms, and the report says why.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from flax import nnx
from tqdm import tqdm

from configs import cli
from saxgpt_jax import checkpoint as ckpt_lib
from saxgpt_jax import decode, losses, metrics_log, plots
from saxgpt_jax.delay import PADDING_IDX, undo_delay

REPORT_FILE = 'report.json'
NO_CODEC = 'none'
DEFAULT_KL_SMOOTHING = 0.5


class EvaluationError(RuntimeError):
  """The evaluation cannot run as asked; the message says how to fix it."""


# --- Pure metrics (numpy) ------------------------------------------------------------------------------------


def real_frames(reference_bkn: np.ndarray, padding_idx: int = PADDING_IDX) -> np.ndarray:
  """bool [B, N]: frames where every codebook of the reference holds a real code (not padding)."""
  return (np.asarray(reference_bkn) != padding_idx).all(axis=1)


def agreement(a_bkn: np.ndarray, b_bkn: np.ndarray, real_bn: np.ndarray) -> dict[str, Any]:
  """How often two token arrays int [B, K, N] agree over the real frames bool [B, N].

  Returns rate_k: float [K] (NaN when there is no real frame), rate: float over all codebooks,
  first_divergence: int [B] the first real frame where any codebook differs (-1: never), and
  rate_by_frame: float [K, N] the agreement per codebook and frame over the windows real there (NaN if none).
  """
  a_bkn, b_bkn, real_bn = np.asarray(a_bkn), np.asarray(b_bkn), np.asarray(real_bn, bool)
  if a_bkn.shape != b_bkn.shape or a_bkn.ndim != 3 or real_bn.shape != (a_bkn.shape[0], a_bkn.shape[2]):
    raise ValueError(f'agreement needs two [B, K, N] arrays and a [B, N] mask, got {a_bkn.shape}, '
                     f'{b_bkn.shape}, {real_bn.shape}.')
  same = a_bkn == b_bkn
  real = np.broadcast_to(real_bn[:, None, :], same.shape)
  hits_k, count_k = (same & real).sum(axis=(0, 2)), real.sum(axis=(0, 2))
  diverged = (~same).any(axis=1) & real_bn  # [B, N]
  count_kn = real.sum(axis=0)
  with np.errstate(invalid='ignore', divide='ignore'):
    return {
        'rate_k': np.where(count_k > 0, hits_k / np.maximum(count_k, 1), np.nan),
        'rate': float(hits_k.sum() / count_k.sum()) if count_k.sum() else float('nan'),
        'first_divergence': np.where(diverged.any(axis=1), diverged.argmax(axis=1), -1),
        'rate_by_frame': np.where(count_kn > 0, (same & real).sum(axis=0) / np.maximum(count_kn, 1), np.nan),
    }


def code_histograms(tokens_bkn: np.ndarray, real: np.ndarray, codebook_size: int) -> np.ndarray:
  """int64 [K, V]: how often each code occurs in each codebook of int [B, K, N] where `real` is True
  (bool [B, N] real frames, or [B, K, N] per codebook)."""
  tokens_bkn, real = np.asarray(tokens_bkn), np.asarray(real, bool)
  real = np.broadcast_to(real[:, None, :] if real.ndim == 2 else real, tokens_bkn.shape)
  return np.stack([np.bincount(tokens_bkn[:, k][real[:, k]], minlength=codebook_size)[:codebook_size]
                   for k in range(tokens_bkn.shape[1])]).astype(np.int64)


def entropy_bits(counts_kv: np.ndarray) -> np.ndarray:
  """float [K]: Shannon entropy in bits of each row of counts [K, V] (NaN for an empty row)."""
  counts = np.asarray(counts_kv, np.float64)
  total = counts.sum(axis=-1, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    p = counts / total
    terms = np.where(counts > 0, -p * np.log2(np.where(counts > 0, p, 1.0)), 0.0)
  return np.where(total[..., 0] > 0, terms.sum(axis=-1), np.nan)


def kl_divergence_bits(p_counts_kv: np.ndarray, q_counts_kv: np.ndarray,
                       smoothing: float = DEFAULT_KL_SMOOTHING) -> np.ndarray:
  """float [K]: KL(P || Q) in bits per row of two count arrays [K, V], each smoothed additively with
  `smoothing` pseudo-counts per code: p = (c + a) / (n + a V)."""
  p_counts, q_counts = np.asarray(p_counts_kv, np.float64), np.asarray(q_counts_kv, np.float64)
  if p_counts.shape != q_counts.shape:
    raise ValueError(f'histograms differ in shape: {p_counts.shape} vs {q_counts.shape}.')
  if smoothing <= 0:
    raise ValueError(f'smoothing must be > 0 (pseudo-counts per code), got {smoothing}.')
  p = (p_counts + smoothing) / (p_counts + smoothing).sum(axis=-1, keepdims=True)
  q = (q_counts + smoothing) / (q_counts + smoothing).sum(axis=-1, keepdims=True)
  return np.maximum((p * np.log2(p / q)).sum(axis=-1), 0.0)


# --- Model passes (jax) --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=('graphdef',))
def eval_step(graphdef, state, batch):
  """(token stats f32 [K] each, teacher-forced argmax int32 [B, K, T]) of one batch; one compile per
  model structure and batch shape (graphdef is static, so repeated evaluations reuse it)."""
  model = nnx.merge(graphdef, state)
  logits = model(batch['src'], batch['tgt_in'], batch['src_mask'])
  return (losses.token_stats(logits, batch['tgt_out'], model.cfg.padding_idx),
          jnp.argmax(logits, -1).astype(jnp.int32))


def delayed_to_frames(stream_bkl: np.ndarray) -> np.ndarray:
  """A delayed stream int [B, K, L] starting with the start token -> raw frames int32 [B, K, L-K-1]."""
  return np.asarray(undo_delay(np.asarray(stream_bkl, np.int32)))


@dataclasses.dataclass
class Examples:
  """The evaluated windows kept for generation (E of them, L = seq_len + K + 1)."""
  src: np.ndarray  # int32 [E, K, L] delayed backing
  src_mask: np.ndarray  # bool [E, L]
  tgt_in: np.ndarray  # int32 [E, K, L-1]
  tgt_out: np.ndarray  # int32 [E, K, L-1]
  tf_argmax: np.ndarray  # int32 [E, K, L-1] teacher-forced argmax predicting tgt_out


def teacher_forced_pass(model, batches, *, max_batches: int, num_examples: int, codebook_size: int,
                        progress: bool = True) -> tuple[dict[str, float], Examples, np.ndarray]:
  """Summed token stats over the batches -> (losses.summarize(...) + num_batches/num_windows, the first
  `num_examples` windows with real targets, reference code histograms int64 [K, V] over every window; frames
  of overlapping windows count once per window)."""
  graphdef, state = nnx.split(model)
  total, kept, batches_seen, windows = None, [], 0, 0
  reference_counts = None
  bar = tqdm(total=max_batches or None, desc='teacher-forced eval', unit='batch', disable=not progress)
  for batch in batches:
    if max_batches and batches_seen >= max_batches:
      break
    stats, argmax = jax.device_get(eval_step(graphdef, state, {k: jnp.asarray(v) for k, v in batch.items()}))
    stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
    total = stats if total is None else {k: total[k] + stats[k] for k in total}
    tgt_out = np.asarray(batch['tgt_out'])
    has_real = (tgt_out != PADDING_IDX).any(axis=(1, 2))
    windows += int(has_real.sum())
    counts = code_histograms(tgt_out, tgt_out != PADDING_IDX, codebook_size)
    reference_counts = counts if reference_counts is None else reference_counts + counts
    for i in np.flatnonzero(has_real)[:max(0, num_examples - len(kept))]:
      kept.append({name: np.asarray(batch[name][i]) for name in ('src', 'src_mask', 'tgt_in', 'tgt_out')}
                  | {'tf_argmax': np.asarray(argmax[i])})
    batches_seen += 1
    bar.update(1)
    bar.set_postfix(loss=f'{stats["nll_sum"].sum() / max(stats["count"].sum(), 1):.3f}', refresh=False)
  bar.close()
  if total is None or not windows:
    raise EvaluationError('the split gave no windows with real frames; check the dataset split and '
                          'data.seq_len (see saxgpt_jax.data).')
  summary = losses.summarize(total) | {'num_batches': batches_seen, 'num_windows': windows}
  examples = Examples(**{name: np.stack([e[name] for e in kept]) for name in kept[0]}) if kept else None
  return summary, examples, reference_counts


def generation_checks(model, examples: Examples, sampling: decode.SamplingParams, seed: int,
                      kl_smoothing: float) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Greedy and sampled generation on the example windows against teacher forcing and the reference.

  Returns (report section, arrays for plots: reference/greedy/sampled/tf frames int32 [E, K, N], real [E, N],
  rate_by_frame per comparison float [K, N]).
  """
  cfg = model.cfg
  src, mask = jnp.asarray(examples.src), jnp.asarray(examples.src_mask)
  num_steps = examples.tgt_in.shape[-1]  # = window + K: positions after the start token
  start = examples.tgt_in[:, :, :1]
  run = lambda params, key: np.asarray(decode.generate(model, src, num_steps=num_steps, sampling=params,
                                                       rng=key, src_mask=mask))[:, 0]  # [E, K, L]
  greedy = delayed_to_frames(run(decode.SamplingParams.make(greedy=True), jax.random.key(seed)))
  sampled = delayed_to_frames(run(sampling, jax.random.key(seed)))  # same program: sampling values are arrays
  reference = delayed_to_frames(np.concatenate([start, examples.tgt_out], axis=-1))
  teacher = delayed_to_frames(np.concatenate([start, examples.tf_argmax], axis=-1))
  real = real_frames(reference, cfg.padding_idx)
  comparisons = {'ar_vs_tf': (greedy, teacher), 'ar_vs_reference': (greedy, reference),
                 'tf_vs_reference': (teacher, reference), 'sampled_vs_reference': (sampled, reference)}
  section: dict[str, Any] = {'num_windows': int(real.shape[0]), 'real_frames': real.sum(axis=1).tolist(),
                             'num_steps': int(num_steps)}
  rate_by_frame = {}
  for name, (a, b) in comparisons.items():
    result = agreement(a, b, real)
    entry = {'agreement': result['rate'], 'agreement_k': result['rate_k'].tolist()}
    if name == 'ar_vs_tf':
      first = result['first_divergence']
      entry['first_divergence_frame'] = [None if f < 0 else int(f) for f in first]
      diverged = first[first >= 0]
      entry['mean_first_divergence_frame'] = float(diverged.mean()) if diverged.size else None
      entry['never_diverged_windows'] = int((first < 0).sum())
    section[name] = entry
    rate_by_frame[name] = result['rate_by_frame']
  counts = {name: code_histograms(tokens, real, cfg.codebook_size)
            for name, tokens in (('reference', reference), ('greedy', greedy), ('sampled', sampled))}
  distribution = {'reference': {'entropy_bits_k': entropy_bits(counts['reference']).tolist()}}
  for name in ('greedy', 'sampled'):
    distribution[name] = {
        'entropy_bits_k': entropy_bits(counts[name]).tolist(),
        'kl_to_reference_bits_k': kl_divergence_bits(counts[name], counts['reference'], kl_smoothing).tolist()}
  arrays = {'reference': reference, 'greedy': greedy, 'sampled': sampled, 'teacher_forced': teacher,
            'real': real, 'rate_by_frame': rate_by_frame}
  return {'agreement': section, 'distribution': distribution}, arrays


# --- Plots and audio -----------------------------------------------------------------------------------------


def metrics_workdir(checkpoint: str | os.PathLike) -> Path | None:
  """The training workdir holding metrics.jsonl for a workdir or its checkpoints/ folder, else None."""
  ckpt = ckpt_lib.checkpoint_dir(checkpoint)
  for candidate in (Path(checkpoint).expanduser().resolve(), ckpt, ckpt.parent):
    if (candidate / metrics_log.METRICS_FILE).exists():
      return candidate
  return None


def _load_codec(codec_spec: str) -> tuple[Any, str | None]:
  """(the loaded preprocessing Codec, None), or (None, why it cannot be used)."""
  if codec_spec == NO_CODEC:
    return None, '--codec=none'
  try:
    from preprocessing import codec as codec_lib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, f'the preprocess extra is not installed ({e}); pip install -e ".[preprocess]"'
  try:
    return codec_lib.Codec.load(codec_spec), None
  except codec_lib.CodecError as e:
    return None, f'codec {codec_spec!r} could not be used: {e}'


def _decode_audio(codec, arrays: dict[str, np.ndarray], src_frames: np.ndarray) -> dict[str, np.ndarray]:
  """The first window's backing / reference / sampled solo, decoded with `codec`."""
  n = int(arrays['real'][0].sum())
  return {'backing': codec.decode(src_frames[:, :n]),
          'reference solo': codec.decode(arrays['reference'][0][:, :n]),
          'generated solo (sampled)': codec.decode(arrays['sampled'][0][:, :n])}


def make_plots(output: Path, *, checkpoint: str, step: int, config: ml_collections.ConfigDict,
               arrays: dict | None, examples: Examples | None, codec_spec: str,
               codec: Any = None) -> dict[str, Any]:
  """Writes every PNG it can; returns {'files': {name: path}, 'skipped': {name: reason}}. `codec`: one
  loaded already (else `codec_spec` is loaded here, and the spectrograms are skipped if it cannot be)."""
  files, skipped = {}, {}
  k_count = config.model.num_codebooks
  workdir = metrics_workdir(checkpoint)
  if workdir is None:
    skipped['training_curves'] = f'no {metrics_log.METRICS_FILE} beside {checkpoint} (not a training workdir)'
  else:
    files['training_curves'] = str(plots.training_curves(
        metrics_log.read_metrics(workdir, 'train'), metrics_log.read_metrics(workdir, 'validation'), k_count,
        output / 'training_curves.png', title=f'Training curves: {checkpoint}', mark_step=step))
  if arrays is None:
    skipped.update({name: 'no example windows (--num_examples=0)' for name in
                    ('token_heatmaps', 'agreement_by_frame', 'spectrograms')})
    return {'files': files, 'skipped': skipped}
  files['token_heatmaps'] = str(plots.token_heatmaps(
      arrays['reference'], arrays['sampled'], arrays['real'], config.model.codebook_size,
      output / 'token_heatmaps.png', title='Tokens per codebook: reference vs generated (sampled)'))
  files['agreement_by_frame'] = str(plots.agreement_by_frame(
      {'greedy autoregressive vs teacher-forced argmax': arrays['rate_by_frame']['ar_vs_tf'],
       'greedy autoregressive vs reference': arrays['rate_by_frame']['ar_vs_reference'],
       'teacher-forced argmax vs reference': arrays['rate_by_frame']['tf_vs_reference']},
      output / 'agreement_by_frame.png'))
  why = None
  if codec is None:
    codec, why = _load_codec(codec_spec)
  if codec is None:
    skipped['spectrograms'] = why  # printed with the summary
  else:
    waves = _decode_audio(codec, arrays, delayed_to_frames(examples.src[:1])[0])
    files['spectrograms'] = str(plots.spectrograms(
        waves, codec.sample_rate, output / 'spectrograms.png',
        title=f'First evaluated window, decoded with {codec_spec}'))
  return {'files': files, 'skipped': skipped}


# --- Entry ---------------------------------------------------------------------------------------------------


def _json_safe(value):
  """NaN/inf -> None, numpy scalars/arrays -> python, recursively."""
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.ndarray):
    return _json_safe(value.tolist())
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path: Path, data: Mapping) -> None:
  """Atomic JSON write (temporary file + rename); NaN/inf become null."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp')
  tmp.write_text(json.dumps(_json_safe(data), indent=2))
  os.replace(tmp, path)


def _iterator_factory(config, split):
  from saxgpt_jax import data  # pylint: disable=g-import-not-at-top

  return data.make_iterator(config, split, process_index=0, process_count=1, shuffle=False, num_epochs=1)


def evaluate(checkpoint: str, split: str, *, output: str | None = None, max_batches: int = 0,
             num_examples: int = 8, codec_spec: str | None = None, data_dir: str | None = None,
             best: bool = False, batch_size: int | None = None, seed: int = 0,
             kl_smoothing: float = DEFAULT_KL_SMOOTHING, progress: bool = True,
             iterator_factory=_iterator_factory) -> dict[str, Any]:
  """Runs every measurement, writes OUTPUT/report.json and the plots; returns the report.

  Args:
    checkpoint: training workdir, its checkpoints/ folder, or a converted checkpoint directory.
    split: dataset split to evaluate ('test', 'validation', 'train').
    output: report folder (default CHECKPOINT/eval_<split>: the `checkpoint` folder as given, e.g. a
      training workdir, not its checkpoints/ folder).
    max_batches: stop the teacher-forced pass after this many batches (0 = the whole split).
    num_examples: windows for the generation checks and plots (0 = skip them).
    codec_spec: EnCodec weights for the spectrograms (default config.data.codec; 'none' skips them).
    data_dir: TFDS data_dir (default the checkpoint config's data.data_dir).
    best: evaluate the checkpoint with the lowest validation loss instead of the latest.
    batch_size: windows per batch (default config.train.global_batch_size).
    seed: RNG seed of the sampled generation.
    kl_smoothing: additive pseudo-counts per code in the KL histograms.
    iterator_factory: `(config, split) -> iterator of batches` (default one deterministic pass with grain).
  """
  if max_batches < 0 or num_examples < 0:
    raise EvaluationError(f'--max_batches ({max_batches}) and --num_examples ({num_examples}) must be >= 0.')
  if not kl_smoothing > 0:  # checked here, not after the whole teacher-forced pass
    raise EvaluationError(f'--kl_smoothing must be > 0 (pseudo-counts per code, e.g. {DEFAULT_KL_SMOOTHING}), '
                          f'got {kl_smoothing}.')
  step = ckpt_lib.chosen_step(checkpoint, best=best)
  model, config = ckpt_lib.load_model(checkpoint, step=step)
  config = ml_collections.ConfigDict(config.to_dict())
  if data_dir is not None:
    config.data.data_dir = data_dir
  if batch_size is not None:
    if batch_size < 1:
      raise EvaluationError(f'--batch_size must be >= 1, got {batch_size}.')
    config.train.global_batch_size = batch_size
  cfg = model.cfg
  length = config.data.seq_len + cfg.num_codebooks + 1
  if length > cfg.max_seq_len:
    raise EvaluationError(f'data.seq_len {config.data.seq_len} + K + 1 = {length} positions exceed the model\'s '
                          f'max_seq_len {cfg.max_seq_len}; the checkpoint config is inconsistent.')
  out_dir = Path(output) if output else ckpt_lib.as_path(checkpoint) / f'eval_{split}'  # beside, not in, checkpoints/
  if out_dir.exists() and not out_dir.is_dir():
    raise EvaluationError(f'--output={out_dir} is a file; pass a folder for report.json and the plots.')
  codec = None  # loaded at plot time; a codec named on the command line is checked before the long passes
  if codec_spec and codec_spec != NO_CODEC and num_examples > 0:
    codec, why = _load_codec(codec_spec)
    if codec is None:
      raise EvaluationError(f'--codec={codec_spec}: {why}')
  codec_spec = codec_spec or config.data.get('codec', 'facebook/encodec_32khz')
  sampling = decode.SamplingParams.make(temperature=config.sample.temperature, top_k=config.sample.top_k,
                                        top_p=config.sample.top_p, greedy=config.sample.greedy)

  teacher_forced, examples, split_counts = teacher_forced_pass(
      model, iterator_factory(config, split), max_batches=max_batches, num_examples=num_examples,
      codebook_size=cfg.codebook_size, progress=progress)
  report: dict[str, Any] = {
      'checkpoint': str(checkpoint), 'step': int(step), 'split': split, 'output': str(out_dir),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'settings': {'max_batches': max_batches, 'num_examples': num_examples, 'batch_size':
                   config.train.global_batch_size, 'seq_len': config.data.seq_len, 'data_dir': config.data.data_dir,
                   'dataset': config.data.name, 'codec': codec_spec, 'best': best, 'seed': seed,
                   'kl_smoothing': kl_smoothing, 'model_dtype': cfg.dtype,
                   'sampling': {k: np.asarray(v).item() for k, v in dataclasses.asdict(sampling).items()}},
      'teacher_forced': teacher_forced,
  }
  arrays = None
  if examples is not None:
    generation, arrays = generation_checks(model, examples, sampling, seed, kl_smoothing)
    generation['distribution']['split_reference'] = {'entropy_bits_k': entropy_bits(split_counts).tolist()}
    report.update(generation)
  report['plots'] = make_plots(out_dir, checkpoint=checkpoint, step=step, config=config, arrays=arrays, examples=examples,
                               codec_spec=codec_spec, codec=codec)
  write_json(out_dir / REPORT_FILE, report)
  return _json_safe(report)


def summary_lines(report: Mapping[str, Any]) -> list[str]:
  """A few human-readable lines of a report."""
  tf = report['teacher_forced']
  k_count = sum(1 for key in tf if key.startswith('loss_k'))
  fmt = lambda xs: ' '.join('n/a' if x is None else f'{x:.3f}' for x in xs)
  lines = [f"{report['split']} @ step {report['step']}: loss {tf['loss']:.4f}  accuracy {tf['accuracy']:.4f}  "
           f"perplexity {tf['perplexity']:.2f}  ({tf['num_windows']} windows)",
           'per codebook accuracy: ' + fmt([tf[f'accuracy_k{k}'] for k in range(k_count)])]
  if 'agreement' in report:
    agree = report['agreement']
    lines.append(f"AR vs TF agreement per codebook: {fmt(agree['ar_vs_tf']['agreement_k'])}; first divergence "
                 f"frames: {agree['ar_vs_tf']['first_divergence_frame']}")
    dist = report['distribution']
    lines.append(f"entropy bits ref {fmt(dist['reference']['entropy_bits_k'])} | sampled "
                 f"{fmt(dist['sampled']['entropy_bits_k'])}; KL(sampled||ref) bits "
                 f"{fmt(dist['sampled']['kl_to_reference_bits_k'])}")
  for name, why in report['plots']['skipped'].items():
    lines.append(f'skipped {name}: {why}')
  return lines


def define_flags() -> None:
  """Defines the command-line flags. Called only when run as a program, so importing this module next to
  others that define --checkpoint/--output (e.g. saxgpt_jax.generate) never clashes in absl's registry."""
  flags.DEFINE_string('checkpoint', None, 'Checkpoint: a training workdir, its checkpoints/ folder, or a '
                      'convert_torch / save_params output.')
  flags.DEFINE_string('split', 'test', 'Dataset split to evaluate (train, validation, test).')
  flags.DEFINE_string('output', None, 'Folder for report.json and the PNGs (default CHECKPOINT/eval_<split>).')
  flags.DEFINE_integer('max_batches', 0, 'Teacher-forced batches to evaluate; 0 = the whole split.')
  flags.DEFINE_integer('num_examples', 8, 'Windows for the generation checks, token plots and spectrograms '
                       '(the first ones of the split); 0 = skip generation.')
  flags.DEFINE_string('codec', None, 'EnCodec weights to decode spectrogram audio: hub id, local folder, '
                      'random:SEED, or none to skip (default: the checkpoint config\'s data.codec).')
  flags.DEFINE_string('data_dir', None, 'TFDS data_dir override (default: config data.data_dir).')
  flags.DEFINE_bool('best', False, 'Evaluate the checkpoint with the lowest validation loss, not the latest.')
  flags.DEFINE_integer('batch_size', None, 'Windows per batch (default config train.global_batch_size).')
  flags.DEFINE_integer('seed', 0, 'Seed of the sampled generation (config.sample settings).')
  flags.DEFINE_float('kl_smoothing', DEFAULT_KL_SMOOTHING, 'Additive pseudo-counts per code in both '
                     'histograms of the KL divergence.')


def main(argv):
  """Entry point for app.run after define_flags()."""
  cli.no_arguments(argv)
  opts = flags.FLAGS
  if not opts.checkpoint:
    cli.usage_error('--checkpoint is required, e.g. --checkpoint=runs/demo/train')
  if not opts['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax/tfds INFO chatter drowns the progress bars
  try:
    with cli.exit_on_ctrl_c('report.json was not written; rerun the command to evaluate.'):
      report = evaluate(opts.checkpoint, opts.split, output=opts.output, max_batches=opts.max_batches,
                        num_examples=opts.num_examples, codec_spec=opts.codec, data_dir=opts.data_dir,
                        best=opts.best, batch_size=opts.batch_size, seed=opts.seed, kl_smoothing=opts.kl_smoothing)
  except (ckpt_lib.CheckpointError, EvaluationError, FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  print('\n'.join(summary_lines(report)))
  print(f'wrote {Path(report["output"]) / REPORT_FILE} and {len(report["plots"]["files"])} plot(s)')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
