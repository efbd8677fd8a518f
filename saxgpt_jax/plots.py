"""PNG plots for `saxgpt_jax.evaluate`: training curves, spectrograms, token heatmaps, agreement by frame.

Every function builds its own `matplotlib.figure.Figure` on the Agg canvas (no pyplot, so no global figure
state), writes the PNG atomically (temporary file + rename) and returns the path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib import mlab
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

DPI = 110
CODEBOOK_COLORS = ('tab:blue', 'tab:orange', 'tab:green', 'tab:red', 'tab:purple', 'tab:brown', 'tab:pink',
                   'tab:gray')


def _figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.stem}.tmp.png')
  fig.savefig(tmp, format='png')
  os.replace(tmp, path)
  return path


CODEBOOK_MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*')  # codebooks whose lines coincide stay visible


def _color(k: int) -> str:
  return CODEBOOK_COLORS[k % len(CODEBOOK_COLORS)]


def _marker(k: int) -> dict[str, Any]:
  """Line style of codebook k's validation points: its own marker, hollow, larger for lower k."""
  return {'marker': CODEBOOK_MARKERS[k % len(CODEBOOK_MARKERS)], 'markersize': 7 - 1.2 * min(k, 3),
          'markerfacecolor': 'none', 'color': _color(k)}


def _series(records: Mapping[int, Mapping], name: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of metric `name` over {step: record}, skipping records without a finite value."""
  pairs = [(s, r[name]) for s, r in sorted(records.items()) if r.get(name) is not None and np.isfinite(r[name])]
  return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], np.float64)


def training_curves(train: Mapping[int, Mapping], validation: Mapping[int, Mapping], num_codebooks: int,
                    path: str | os.PathLike, title: str = 'Training curves', mark_step: int | None = None) -> Path:
  """Loss (train and validation), learning rate, accuracy and validation perplexity per codebook vs step.

  train / validation: {step: metrics record} as `metrics_log.read_metrics` returns them; mark_step: a step
  to mark with a dashed vertical line in every panel (e.g. the evaluated checkpoint).
  """
  return _save(training_curves_figure(train, validation, num_codebooks, title, mark_step), path)


def training_curves_figure(train: Mapping[int, Mapping], validation: Mapping[int, Mapping], num_codebooks: int,
                           title: str = 'Training curves', mark_step: int | None = None) -> Figure:
  """The figure `training_curves` saves."""
  fig = _figure(11, 7.5)
  fig.suptitle(title)
  ax_loss, ax_lr, ax_acc, ax_ppl = fig.subplots(2, 2).ravel()
  for records, label, style in ((train, 'train', '-'), (validation, 'validation', 'o-')):
    steps, values = _series(records, 'loss')
    if len(steps):
      ax_loss.plot(steps, values, style, label=label, markersize=3)
  ax_loss.set(title='Loss (mean cross-entropy over codebooks)', xlabel='step', ylabel='loss (nats/token)')
  steps, values = _series(train, 'learning_rate')
  ax_lr.plot(steps, values, color='tab:gray')
  ax_lr.set(title='Learning rate', xlabel='step', ylabel='learning rate')
  ax_lr.ticklabel_format(axis='y', style='sci', scilimits=(-2, 2))
  for k in range(num_codebooks):
    steps, values = _series(train, f'accuracy_k{k}')
    if len(steps):
      ax_acc.plot(steps, values, '--', color=_color(k), alpha=0.6, label=f'train k{k}')
    steps, values = _series(validation, f'accuracy_k{k}')
    if len(steps):
      ax_acc.plot(steps, values, '-', label=f'validation k{k}', **_marker(k))
    steps, values = _series(validation, f'perplexity_k{k}')
    if len(steps):
      ax_ppl.plot(steps, values, '-', label=f'codebook {k}', **_marker(k))
  ax_acc.set(title='Next-token accuracy per codebook', xlabel='step', ylabel='accuracy')
  ax_ppl.set(title='Validation perplexity per codebook', xlabel='step', ylabel='perplexity (log scale)')
  if ax_ppl.lines:
    ax_ppl.set_yscale('log')
    low, high = ax_ppl.get_ylim()
    if high < 10 * low:  # within a decade the log locator labels a few round values, maybe none near the lowest
      locator = ticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0))  # denser, and the axis ends on one
      ticks = locator.tick_values(low, high)
      ax_ppl.set_ylim(max([t for t in ticks if t <= low], default=low), min([t for t in ticks if t >= high], default=high))
      ax_ppl.yaxis.set_major_locator(locator)
      ax_ppl.yaxis.set_minor_locator(ticker.NullLocator())
    ax_ppl.yaxis.set_major_formatter(ticker.ScalarFormatter())
    ax_ppl.yaxis.set_minor_formatter(ticker.ScalarFormatter())
  for ax in (ax_loss, ax_lr, ax_acc, ax_ppl):
    ax.grid(alpha=0.3)
    if mark_step is not None and ax.lines:
      ax.axvline(mark_step, color='black', linestyle=':', linewidth=1, label=f'evaluated step {mark_step}')
    if ax.lines and ax is not ax_lr:
      ax.legend(fontsize=7, ncol=2 if ax is ax_acc else 1)
    if not ax.lines:
      ax.text(0.5, 0.5, 'no records', ha='center', va='center', transform=ax.transAxes, color='gray')
  return fig


def stft_db(wave: np.ndarray, sample_rate: int, n_fft: int = 1024, hop: int = 256,
            floor_db: float = -100.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Power spectrogram of float [T] in dB re 1 (Hann window) -> (db [F, frames], freqs_hz [F], times_s [frames])."""
  wave = np.asarray(wave, np.float64).ravel()
  if wave.size < n_fft:
    wave = np.pad(wave, (0, n_fft - wave.size))
  power, freqs, times = mlab.specgram(wave, NFFT=n_fft, Fs=sample_rate, noverlap=n_fft - hop,
                                      window=mlab.window_hanning, mode='psd', scale_by_freq=False)
  return 10.0 * np.log10(np.maximum(power, 10.0 ** (floor_db / 10.0))), freqs, times


def spectrograms(waves: Mapping[str, np.ndarray], sample_rate: int, path: str | os.PathLike,
                 title: str = 'Spectrograms', dynamic_range_db: float = 80.0) -> Path:
  """One STFT-dB panel per named wave (float [T] at `sample_rate`), stacked with a shared time axis and
  one colour scale (the loudest bin of all panels minus `dynamic_range_db`)."""
  if not waves:
    raise ValueError('spectrograms() needs at least one wave.')
  specs = {name: stft_db(w, sample_rate) for name, w in waves.items()}
  top = max(float(db.max()) for db, _, _ in specs.values())
  fig = _figure(10, 2.4 * len(specs) + 0.6)
  fig.suptitle(title)
  axes = np.atleast_1d(fig.subplots(len(specs), 1, sharex=True, squeeze=False)[:, 0])
  image = None
  for ax, (name, (db, freqs, times)) in zip(axes, specs.items()):
    image = ax.pcolormesh(times, freqs / 1000.0, db, shading='auto', cmap='magma', vmin=top - dynamic_range_db,
                          vmax=top, rasterized=True)
    ax.set(title=name, ylabel='frequency (kHz)')
  axes[-1].set_xlabel('time (s)')
  fig.colorbar(image, ax=list(axes), label='power (dB)', shrink=0.9)
  return _save(fig, path)


def token_heatmaps(reference_bkn: np.ndarray, generated_bkn: np.ndarray, real_bn: np.ndarray,
                   codebook_size: int, path: str | os.PathLike, code_bins: int = 64,
                   title: str = 'Tokens per codebook: reference vs generated') -> Path:
  """Per codebook: code-vs-frame count images of the reference and the generated tokens (codes grouped in
  `code_bins` bands, counted over the B windows) and a histogram of code usage of both.

  reference_bkn / generated_bkn: int [B, K, N] raw (not delayed) codes; real_bn: bool [B, N] real frames.
  """
  reference_bkn, generated_bkn = np.asarray(reference_bkn), np.asarray(generated_bkn)
  b, k_count, n = reference_bkn.shape
  real = np.broadcast_to(np.asarray(real_bn, bool)[:, None, :], reference_bkn.shape)
  band = -(-codebook_size // code_bins)  # codes per band
  fig = _figure(13, 2.3 * k_count + 0.8)
  fig.suptitle(f'{title} ({b} window(s), {int(real[:, 0].sum())} real frames)')
  axes = fig.subplots(k_count, 3, squeeze=False, width_ratios=(1, 1, 0.8))
  for k in range(k_count):
    images = []
    for tokens in (reference_bkn, generated_bkn):
      counts = np.zeros((code_bins, n), np.int64)
      bb, tt = np.nonzero(real[:, k])
      np.add.at(counts, (tokens[bb, k, tt] // band, tt), 1)
      images.append(counts)
    vmax = max(1, max(int(c.max()) for c in images))
    for col, (name, counts) in enumerate(zip(('reference', 'generated'), images)):
      ax = axes[k, col]
      image = ax.imshow(counts, origin='lower', aspect='auto', cmap='viridis', vmin=0, vmax=vmax,
                        extent=(-0.5, n - 0.5, 0, code_bins * band), interpolation='nearest')
      ax.set(title=f'codebook {k}: {name}', xlabel='frame (50 per s)', ylabel='code')
    fig.colorbar(image, ax=axes[k, 1], label='count')
    ax = axes[k, 2]
    edges = np.arange(0, code_bins * band + 1, band)
    for name, tokens, color in (('reference', reference_bkn, 'tab:blue'), ('generated', generated_bkn,
                                                                            'tab:orange')):
      ax.hist(tokens[:, k][real[:, k]], bins=edges, histtype='step', color=color, label=name)
    ax.set(title=f'codebook {k}: code usage', xlabel='code', ylabel=f'count per {band} codes')
    ax.legend(fontsize=7)
  return _save(fig, path)


def agreement_by_frame(curves: Mapping[str, np.ndarray], path: str | os.PathLike,
                       title: str = 'Token agreement by frame (mean over windows)') -> Path:
  """One panel per comparison: agreement rate per frame for each codebook.

  curves: {comparison name: float [K, N] rate per codebook and frame (NaN where no window has a real frame)}.
  """
  fig = _figure(11, 2.6 * len(curves) + 0.6)
  fig.suptitle(title)
  axes = np.atleast_1d(fig.subplots(len(curves), 1, sharex=True, squeeze=False)[:, 0])
  for ax, (name, rate_kn) in zip(axes, curves.items()):
    for k, rate in enumerate(np.asarray(rate_kn)):
      ax.plot(np.arange(rate.size), rate, color=_color(k), label=f'codebook {k}', linewidth=1)
    ax.set(title=name, ylabel='agreement rate', ylim=(-0.05, 1.05))
    ax.grid(alpha=0.3)
  axes[-1].set_xlabel('frame (50 per s)')
  fig.legend(*axes[0].get_legend_handles_labels(), loc='outside lower center', ncol=8, fontsize=8)
  return _save(fig, path)

