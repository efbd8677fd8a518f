"""The preprocessing pipeline on Apache Beam: inputs -> token clips + manifest -> TFDS `saxgpt_tokens`.

  (youtube) URLs --expand--> videos --download--> Recording ┐
  (local / stems / filosax) files ------------------------> Recording
    --prepare--> separate (mixes only; Demucs) with LUFS normalisation before and after, mono, 32 kHz
    --select--> RMS windows on the solo stem --clip--> both stems
    --augment + tokenize--> clips/<clip_id>.npz (EnCodec, int16 [4, N] per stem)
    --group by recording--> parts/<recording_id>.json
  then, in the driver: manifest.jsonl and failures.jsonl are merged from the parts, TFDS is built and a
  summary printed. Models load once per worker (DoFn.setup). The DirectRunner runs it with N processes;
  `--beam_pipeline_options` selects Dataflow, Flink or Spark (output_dir must then be a shared filesystem).

Reliability: every file is written atomically; a recording whose part says complete is skipped, and a clip
whose .npz exists is not recomputed, so a killed run resumes without duplicates. Bad inputs become lines of
failures.jsonl (item, stage, reason) and the rest go on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Any, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from preprocessing import augment, beam_runners, ingest, local_workers, manifest, select

_LOG = logging.getLogger(__name__)
_NAMESPACE = 'saxgpt'
FAILURES = 'failures'
_RANDOM_CODEC = 'random:'  # codec.RANDOM_PREFIX (not imported here: the driver needs torch only to check weights)
# Settings that change what a run writes: a resumed run must use the same ones.
_OUTPUT_KEYS = ('source.kind', 'audio', 'demucs.name', 'demucs.repo', 'demucs.shifts', 'demucs.overlap',
                'demucs.segment', 'select', 'augment', 'codec.weights', 'codec.chunk_s', 'codec.context_s')


def _limit_torch_threads(cfg: dict) -> None:
  """torch threads per worker: config torch_threads, or cores / DirectRunner worker processes, so that
  workers sharing a machine do not oversubscribe it (OpenMP threads spin-wait when they do)."""
  import torch  # pylint: disable=g-import-not-at-top

  threads = cfg.get('torch_threads') or 0
  if not threads:
    beam = cfg['beam']
    local = beam['runner'] == 'DirectRunner' and beam['direct_running_mode'] == 'multi_processing'
    threads = max(1, (os.cpu_count() or 1) // max(1, beam['num_workers'] if local else 1))
  torch.set_num_threads(threads)


class PipelineError(ValueError):
  """A configuration or output folder the pipeline cannot use; the message says what to change."""


def _count(name: str, n: int = 1) -> None:
  Metrics.counter(_NAMESPACE, name).inc(n)


def _failure(stage: str, item: str, source: str, error: BaseException) -> beam.pvalue.TaggedOutput:
  _count(f'{stage}_failed')
  _LOG.warning('%s failed for %s: %s', stage, item, error)
  reason = str(error) or type(error).__name__
  return beam.pvalue.TaggedOutput(
      FAILURES, {'item': item, 'source': source, 'stage': stage, 'error': type(error).__name__, 'reason': reason})


@dataclasses.dataclass(frozen=True)
class ClipTask:
  """One selected window of a recording, both stems at 32 kHz mono float32 [T]."""
  recording_id: str
  source: str
  start_s: float
  end_s: float
  backing: np.ndarray
  solo: np.ndarray


# ------------------------------------------------------------------------------------------ DoFns


class ExpandUrls(beam.DoFn):
  """URL -> Videos (a playlist expands to its entries)."""

  def __init__(self, cfg: dict):
    self._cfg = cfg

  def process(self, url: str):
    try:
      videos = ingest.expand_url(url, self._cfg['source']['allowed_hosts'],
                                 socket_timeout_s=self._cfg['source']['socket_timeout_s'])
    except Exception as e:  # one bad URL must not stop the others
      yield _failure('expand', url, url, e)
      return
    _count('videos', len(videos))
    yield from videos


class Download(beam.DoFn):
  """Video -> Recording of its audio as WAV (skipped when the recording is already complete)."""

  def __init__(self, cfg: dict):
    self._cfg = cfg

  def process(self, video: ingest.Video):
    if manifest.is_complete(self._cfg['output_dir'], video.recording_id):
      _count('recordings_skipped')
      return
    try:
      path = ingest.download_audio(video, Path(_work_dir(self._cfg)) / 'downloads',
                                   socket_timeout_s=self._cfg['source']['socket_timeout_s'])
    except Exception as e:
      yield _failure('download', video.recording_id, video.url, e)
      return
    _count('downloads')
    yield ingest.Recording(video.recording_id, video.url, mix=str(path))


class Prepare(beam.DoFn):
  """Recording -> (recording_id, source, backing [T], solo [T]) at 32 kHz mono, -14 LUFS."""

  def __init__(self, cfg: dict):
    self._cfg = cfg
    self._separator = None

  def setup(self):
    _limit_torch_threads(self._cfg)
    if self._cfg['source']['kind'] in ('youtube', 'local'):
      from preprocessing import separate

      d = self._cfg['demucs']
      self._separator = separate.Separator.load(
          d['name'], repo=d['repo'] or None, shifts=d['shifts'], overlap=d['overlap'],
          segment=d['segment'] or None, device=d['device'])

  def process(self, recording: ingest.Recording):
    if manifest.is_complete(self._cfg['output_dir'], recording.recording_id):
      _count('recordings_skipped')
      return
    try:
      backing, solo = self._stems(recording)
    except Exception as e:
      yield _failure('prepare', recording.recording_id, recording.source, e)
      return
    _count('recordings_prepared')
    yield recording.recording_id, recording.source, backing, solo

  def _stems(self, recording: ingest.Recording) -> tuple[np.ndarray, np.ndarray]:
    from preprocessing import audio

    a, sel = self._cfg['audio'], self._cfg['select']
    sr_out = a['sample_rate']

    def prepare(wave, sr, what):
      _check_usable(wave, sr, what, sel['min_window_s'])
      return audio.prepare(wave, sr, target_sr=sr_out, target_lufs=a['target_lufs'])

    if recording.is_stems:
      if not recording.backing:
        raise audio.AudioError(f'{recording.source}: no backing file found for this solo.')
      backing = prepare(*_mix_files(recording.backing, audio), 'backing')
      solo = prepare(*audio.load_audio(recording.solo), 'solo')
      n = min(len(backing), len(solo))
      if max(len(backing), len(solo)) - n > sr_out:
        _LOG.warning('%s: backing and solo lengths differ by %.1f s; cropping both to the shorter.',
                     recording.recording_id, (max(len(backing), len(solo)) - n) / sr_out)
      return backing[:n], solo[:n]
    from preprocessing import separate

    mix = prepare(*audio.load_audio(recording.mix), 'audio')
    solo, rhythm = self._separator.separate(mix, sr_out)  # at separate.OUTPUT_SR, whatever sr_out is
    return (prepare(rhythm, separate.OUTPUT_SR, 'separated backing'),
            prepare(solo, separate.OUTPUT_SR, 'separated solo'))


class SelectClips(beam.DoFn):
  """(recording_id, source, backing, solo) -> a ClipTask per RMS window of the solo."""

  def __init__(self, cfg: dict):
    self._cfg = cfg

  def process(self, prepared):
    recording_id, source, backing, solo = prepared
    sr, sel = self._cfg['audio']['sample_rate'], self._cfg['select']
    windows = select.rms_windows(solo, sr, threshold=sel['threshold'], frame_s=sel['frame_s'],
                                 stride_s=sel['stride_s'], min_window_s=sel['min_window_s'])
    if not windows:
      yield _failure('select', recording_id, source, ValueError(
          f'no window of at least {sel["min_window_s"]} s where the solo RMS stays >= {sel["threshold"]} '
          f'(frame {sel["frame_s"]} s); the recording is too short or its solo too quiet.'))
      return
    _LOG.info('%s: %d window(s), %.1f of %.1f s kept', recording_id, len(windows),
              sum(w.end - w.start for w in windows) / sr, len(solo) / sr)
    _count('windows', len(windows))
    _count('seconds_kept', int(round(sum(w.end - w.start for w in windows) / sr)))
    for w in windows:
      start_s, end_s = w.seconds(sr)
      yield ClipTask(recording_id, source, start_s, end_s, backing[w.start:w.end], solo[w.start:w.end])


class AugmentTokenize(beam.DoFn):
  """ClipTask -> ((recording_id, source), ('ok', ClipRecord) | ('failed', reason)) per augmented copy;
  writes .npz."""

  def __init__(self, cfg: dict):
    self._cfg = cfg
    self._codec = None

  def setup(self):
    from preprocessing import codec

    _limit_torch_threads(self._cfg)
    c = self._cfg['codec']
    self._codec = codec.Codec.load(c['weights'], chunk_s=c['chunk_s'], context_s=c['context_s'], device=c['device'])

  def process(self, task: ClipTask):
    out_dir, sr = self._cfg['output_dir'], self._cfg['audio']['sample_rate']
    aug = self._cfg['augment']
    for tag in augment.tags(aug['pitch_semitones'], aug['tempo_rates']):
      clip_id = clip_id_for(task.recording_id, task.start_s, task.end_s, tag)
      try:
        record = self._existing(out_dir, clip_id)
        if record is None:
          record = self._encode(out_dir, task, clip_id, tag, sr)
          _LOG.info('wrote %s (%d frames)', record.path, record.num_frames)
          _count('clips_written')
          _count('frames_written', record.num_frames)
        else:
          record = dataclasses.replace(record, recording_id=task.recording_id, clip_start_s=task.start_s,
                                       clip_end_s=task.end_s, augmentation=tag)
          _count('clips_skipped')
      except Exception as e:
        yield (task.recording_id, task.source), ('failed', f'{clip_id}: {e}')
        yield _failure('tokenize', clip_id, task.source, e)
        continue
      yield (task.recording_id, task.source), ('ok', record)

  def _existing(self, out_dir: str, clip_id: str) -> manifest.ClipRecord | None:
    """The record of a clip a previous run finished (its .npz is whole: writes are atomic)."""
    path = Path(out_dir) / manifest.clip_path(clip_id)
    if not path.exists():
      return None
    with np.load(path) as z:
      num_frames = int(z['lead'].shape[1])
    return manifest.ClipRecord(clip_id, '', 0.0, 0.0, '', num_frames, self._codec.info, manifest.clip_path(clip_id))

  def _encode(self, out_dir: str, task: ClipTask, clip_id: str, tag: str, sr: int) -> manifest.ClipRecord:
    backing = augment.apply(tag, task.backing, sr)
    solo = augment.apply(tag, task.solo, sr)
    backing_codes, lead_codes = self._codec.encode(backing, sr), self._codec.encode(solo, sr)
    n = min(backing_codes.shape[1], lead_codes.shape[1])
    record = manifest.ClipRecord(clip_id, task.recording_id, task.start_s, task.end_s, tag, n, self._codec.info,
                                 manifest.clip_path(clip_id))
    manifest.write_clip(out_dir, record, backing_codes[:, :n], lead_codes[:, :n])
    return record


class WritePart(beam.DoFn):
  """((recording_id, source), results) -> parts/<recording_id>.json, complete when no clip failed."""

  def __init__(self, cfg: dict):
    self._cfg = cfg

  def process(self, keyed):
    (recording_id, source), results = keyed
    results = list(results)
    records = [r for status, r in results if status == 'ok']
    complete = len(records) == len(results)
    manifest.write_part(self._cfg['output_dir'], recording_id, records, complete=complete, source=source)
    _count('recordings_done' if complete else 'recordings_partial')
    yield recording_id


class WriteFailure(beam.DoFn):
  """failure dict -> failures/<key>.json (merged into failures.jsonl by the driver)."""

  def __init__(self, cfg: dict):
    self._cfg = cfg

  def process(self, failure: dict):
    manifest.write_failure(self._cfg['output_dir'], failure)
    yield failure['item']


# ------------------------------------------------------------------------------------------ helpers


def clip_id_for(recording_id: str, start_s: float, end_s: float, tag: str) -> str:
  """'<recording_id>__<start ms>-<end ms>__<augmentation>', filesystem-safe and unique per copy."""
  return f'{recording_id}__{int(round(start_s * 1000)):08d}-{int(round(end_s * 1000)):08d}__{augment.id_suffix(tag)}'


def _work_dir(cfg: dict) -> str:
  return cfg['work_dir'] or str(Path(cfg['output_dir']) / 'work')


def _check_usable(wave: np.ndarray, sr: int, what: str, min_s: float) -> None:
  """Raises audio.AudioError for too-short or silent audio (load_audio already refuses empty/corrupt files)."""
  from preprocessing import audio

  seconds = wave.shape[-1] / sr
  if seconds < min_s:
    raise audio.AudioError(f'{what}: too short ({seconds:.2f} s < the {min_s} s minimum window).')
  if audio.is_silent(wave):
    raise audio.AudioError(f'{what}: silent (RMS below {audio.SILENCE_DBFS} dBFS).')


def _mix_files(paths: Sequence[str], audio) -> tuple[np.ndarray, int]:
  """Sums stem files (e.g. FiloSax backing parts) -> (float32 [1, T], sr); all must share one rate."""
  waves, rates = [], set()
  for path in paths:
    wave, sr = audio.load_audio(path)
    waves.append(wave.mean(axis=0))
    rates.add(sr)
  if len(rates) != 1:
    raise audio.AudioError(f'{list(paths)}: backing files have different sample rates {sorted(rates)}.')
  mixed = np.zeros(max(len(w) for w in waves), np.float32)
  for w in waves:
    mixed[:len(w)] += w
  return mixed[None], rates.pop()


def _config_dict(config) -> dict:
  return json.loads(config.to_json())


def _get(cfg: dict, dotted: str):
  for key in dotted.split('.'):
    cfg = cfg[key]
  return cfg


def check_config(cfg: dict) -> None:
  """Raises PipelineError naming every unusable setting, before any folder is written or worker started."""
  problems = []

  def need(ok: bool, key: str, rule: str) -> None:
    if not ok:
      problems.append(f'config.{key}={_get(cfg, key)!r} ({rule})')

  need(cfg['source']['kind'] in ingest.KINDS, 'source.kind', f'use one of {ingest.KINDS}')
  need(cfg['audio']['sample_rate'] > 0, 'audio.sample_rate', 'must be > 0')
  sel = cfg['select']
  for key in ('frame_s', 'stride_s', 'min_window_s'):
    need(sel[key] > 0, f'select.{key}', 'must be > 0 seconds')
  need(sel['threshold'] >= 0, 'select.threshold', 'an RMS level, >= 0')
  need(all(r > 0 for r in cfg['augment']['tempo_rates']), 'augment.tempo_rates', 'rates must be > 0')
  try:
    augment.tags(cfg['augment']['pitch_semitones'], cfg['augment']['tempo_rates'])
  except ValueError as e:
    problems.append(f'config.augment: {e}')
  d = cfg['demucs']
  need(d['shifts'] >= 1, 'demucs.shifts', 'must be >= 1')
  need(0 <= d['overlap'] < 1, 'demucs.overlap', 'a fraction in [0, 1)')
  need(d['segment'] >= 0, 'demucs.segment', "seconds, or 0 for the model's default")
  weights = cfg['codec']['weights']
  need(not weights.startswith(_RANDOM_CODEC) or weights[len(_RANDOM_CODEC):].isdigit(), 'codec.weights',
       'random:SEED takes an integer SEED, e.g. random:0')
  need(cfg['codec']['chunk_s'] > 0, 'codec.chunk_s', 'must be > 0 seconds')
  need(cfg['codec']['context_s'] >= 0, 'codec.context_s', 'must be >= 0 seconds')
  need(cfg['beam']['num_workers'] >= 1, 'beam.num_workers', 'must be >= 1')
  need(cfg['beam']['direct_running_mode'] in ('in_memory', 'multi_threading', 'multi_processing'),
       'beam.direct_running_mode', 'in_memory, multi_threading or multi_processing')
  from preprocessing import tfds_builder  # pylint: disable=g-import-not-at-top

  need(tfds_builder.split_fractions_ok(cfg['split_fractions']), 'split_fractions',
       '3 non-negative numbers, train, validation and test, that sum to 1')
  if problems:
    raise PipelineError('unusable settings:\n  ' + '\n  '.join(problems)
                        + '\n(configs/data/base.py documents every key.)')


def check_models(cfg: dict) -> None:
  """Loads the pretrained codec, and separator where the source needs one, once in the driver so that missing
  weights stop the run with their how-to-fetch message (PipelineError) instead of in every worker. Seeded
  random models (codec random:SEED, demucs_unittest) cannot be missing and are not loaded here."""
  c, d = cfg['codec'], cfg['demucs']
  pretrained_codec = not c['weights'].startswith(_RANDOM_CODEC)
  pretrained_separator = cfg['source']['kind'] in ('youtube', 'local') and d['name'] != 'demucs_unittest'
  if not (pretrained_codec or pretrained_separator):
    return
  from preprocessing import codec, separate  # torch: a few seconds

  try:
    if pretrained_codec:
      codec.Codec.load(c['weights'], chunk_s=c['chunk_s'], context_s=c['context_s'])
    if pretrained_separator:
      separate.Separator.load(d['name'], repo=d['repo'] or None, shifts=d['shifts'], overlap=d['overlap'],
                              segment=d['segment'] or None)
  except (codec.CodecError, separate.SeparatorError) as e:
    raise PipelineError(str(e)) from e


def check_output_dir(cfg: dict) -> None:
  """Writes preprocessing_config.json, or checks a resumed run uses the settings of the run that wrote the
  folder's clips (a folder holding no clips or parts, e.g. after a run that failed, takes the new ones)."""
  path = Path(cfg['output_dir']) / manifest.CONFIG_NAME
  if path.exists() and manifest.has_finished_work(cfg['output_dir']):  # else nothing binds: take these settings
    previous = json.loads(path.read_text(encoding='utf-8'))
    changed = [k for k in _OUTPUT_KEYS if _get(previous, k) != _get(cfg, k)]
    if changed:
      raise PipelineError(
          f'{cfg["output_dir"]} holds clips made with other settings ({", ".join(changed)} differ from '
          f'{path}). Use a new --config.output_dir, or delete that folder to start over.')
  manifest.atomic_write_bytes(path, json.dumps(cfg, indent=2, sort_keys=True).encode())


def pipeline_options(cfg: dict, beam_args: Sequence[str] = ()) -> PipelineOptions:
  """Options from config.beam, then `beam_args` (later flags win: anything can be overridden)."""
  b = cfg['beam']
  args = [f'--runner={b["runner"]}', f'--direct_running_mode={b["direct_running_mode"]}',
          f'--direct_num_workers={b["num_workers"]}', *beam_runners.HARNESS_LOG_FLAGS, *beam_args]
  return PipelineOptions(args)


def build(p: beam.Pipeline, cfg: dict) -> set[str] | None:
  """Adds every stage to `p`; returns the recording ids of a files source (None for youtube, whose ids
  are only known once its URLs are expanded)."""
  kind = cfg['source']['kind']
  if kind == 'youtube':
    urls = ingest.read_url_inputs(cfg['source']['inputs'], cfg['source']['allowed_hosts'])
    expanded = (p | 'Urls' >> beam.Create(urls) | 'SpreadUrls' >> beam.Reshuffle()
                | 'Expand' >> beam.ParDo(ExpandUrls(cfg)).with_outputs(FAILURES, main='videos'))
    downloaded = (expanded.videos | 'ById' >> beam.Map(lambda v: (v.recording_id, v))
                  | 'GroupById' >> beam.GroupByKey()  # a video in two playlists is fetched once
                  | 'OnePerId' >> beam.MapTuple(lambda _, videos: min(videos, key=lambda v: v.url))
                  | 'Download' >> beam.ParDo(Download(cfg)).with_outputs(FAILURES, main='recordings'))
    recordings, failures = downloaded.recordings, [expanded[FAILURES], downloaded[FAILURES]]
  else:
    listed = ingest.list_recordings(kind, cfg['source']['inputs'], cfg['source']['extensions'],
                                    known=manifest.recorded_sources(cfg['output_dir']))
    recordings, failures = p | 'Recordings' >> beam.Create(listed), []
  prepared = (recordings | 'SpreadRecordings' >> beam.Reshuffle()
              | 'Prepare' >> beam.ParDo(Prepare(cfg)).with_outputs(FAILURES, main='stems'))
  clips = prepared.stems | 'Select' >> beam.ParDo(SelectClips(cfg)).with_outputs(FAILURES, main='clips')
  tokenized = (clips.clips | 'SpreadClips' >> beam.Reshuffle()
               | 'AugmentTokenize' >> beam.ParDo(AugmentTokenize(cfg)).with_outputs(FAILURES, main='results'))
  _ = (tokenized.results | 'ByRecording' >> beam.GroupByKey() | 'WritePart' >> beam.ParDo(WritePart(cfg)))
  failures += [prepared[FAILURES], clips[FAILURES], tokenized[FAILURES]]
  _ = (tuple(failures) | 'AllFailures' >> beam.Flatten() | 'WriteFailures' >> beam.ParDo(WriteFailure(cfg)))
  return None if kind == 'youtube' else {r.recording_id for r in listed}


# ------------------------------------------------------------------------------------------ driver


@dataclasses.dataclass
class Summary:
  """What the output folder holds after a run, plus this run's per-stage counts and failures."""
  output_dir: str
  recordings: int  # recordings with at least one clip in the manifest
  hours_kept: float  # source audio inside kept windows (augmented copies not counted again)
  clips: int  # manifest lines, augmented copies included
  frames: int  # codec frames over all clips (one stem)
  failures: list[dict[str, Any]]
  counters: dict[str, int]  # Beam metrics of this run, e.g. clips_written, clips_skipped, prepare_failed
  tfds_splits: dict[str, int] | None  # examples per split; None when not built
  tfds_error: str  # why the TFDS build failed ('' if it did not)
  not_in_inputs: list[str]  # recordings of earlier runs that this run's inputs no longer list (kept)
  seconds: float

  @property
  def ok(self) -> bool:
    return not self.failures and not self.tfds_error

  def text(self) -> str:
    lines = [f'preprocessing summary ({self.output_dir}, {self.seconds:.1f} s):',
             f'  recordings {self.recordings} | hours kept {self.hours_kept:.3f} | clips {self.clips} | '
             f'frames {self.frames} | failures {len(self.failures)}']
    if self.counters:
      lines.append('  this run: ' + ', '.join(f'{k} {v}' for k, v in sorted(self.counters.items())))
    if self.tfds_splits is not None:
      lines.append(f'  TFDS saxgpt_tokens: {self.tfds_splits}')
    if self.not_in_inputs:
      lines.append(f'  {len(self.not_in_inputs)} recording(s) of earlier runs are not among these inputs and stay '
                   f'in the dataset (to drop one, delete its {manifest.PARTS_DIR}/<id>.json and rerun): '
                   + ', '.join(self.not_in_inputs[:5]) + (' ...' if len(self.not_in_inputs) > 5 else ''))
    if self.tfds_error:
      lines.append(f'  TFDS build FAILED: {self.tfds_error}')
    for f in self.failures:
      lines.append(f'  FAILED [{f["stage"]}] {f["item"]}: {f["reason"]}')
    if self.failures:
      lines.append(f'  (listed in {Path(self.output_dir) / manifest.FAILURES_NAME}; fix or drop them and rerun: '
                   f'finished recordings are skipped)')
    return '\n'.join(lines)


def _counters(result) -> dict[str, int]:
  try:
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(_NAMESPACE))
  except (NotImplementedError, AttributeError):  # a runner without metrics
    return {}
  totals: dict[str, int] = {}
  for counter in query['counters']:
    value = counter.committed if counter.committed is not None else counter.attempted
    totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
  return totals


def run(config, beam_args: Sequence[str] = ()) -> Summary:
  """Runs the whole pipeline for `config` (configs/data/base.py) and returns the Summary.

  beam_args: extra Beam flags, e.g. ['--runner=DataflowRunner', '--project=...'] (they override config.beam).
  Raises ingest.IngestError / PipelineError for unusable inputs or settings before any work starts.
  """
  start = time.time()
  cfg = _config_dict(config)
  check_config(cfg)
  cfg['output_dir'] = str(Path(cfg['output_dir']).expanduser().resolve())
  cfg['work_dir'] = str(Path(_work_dir(cfg)).expanduser().resolve())
  cfg['tfds_data_dir'] = os.path.expanduser(cfg['tfds_data_dir'])  # not Path(): keeps gs://
  options = pipeline_options(cfg, beam_args)
  missing = beam_runners.missing_extras(options)
  if missing:
    raise PipelineError(missing)
  direct = beam_runners.direct_runner(options)
  with manifest.private_tempdir():  # Beam leaves temporary folders behind
    p = beam.Pipeline(runner=direct, options=options)
    listed = build(p, cfg)  # lists the inputs: missing ones stop the run here, before the output folder is touched
    if direct is not None:  # workers share this machine's files; a remote runner's may hold other weights
      check_models(cfg)
    Path(cfg['output_dir']).mkdir(parents=True, exist_ok=True)
    check_output_dir(cfg)
    manifest.clear_failures(cfg['output_dir'])
    if manifest.remove_temporaries(cfg['output_dir']):
      _LOG.info('removed temporary files of an interrupted run in %s', cfg['output_dir'])
    ingest.remove_partial_downloads(Path(cfg['work_dir']) / 'downloads')
    with local_workers.on_this_terminal(options):
      result = p.run()
      result.wait_until_finish()

  records = manifest.merge_parts(cfg['output_dir'])
  failures = manifest.merge_failures(cfg['output_dir'])
  windows = {(r.recording_id, r.clip_start_s, r.clip_end_s) for r in records}
  tfds_splits, tfds_error = None, ''
  if cfg['build_tfds'] and records:
    from preprocessing import tfds_builder

    try:
      tfds_splits = tfds_builder.build_dataset(
          cfg['output_dir'], cfg['tfds_data_dir'], split_fractions=tuple(cfg['split_fractions']),
          split_seed=cfg['split_seed'], beam_pipeline_options=list(beam_args) if beam_args else None,
          overwrite=True, keep_if_current=True)
    except manifest.ManifestError as e:  # e.g. too few recordings for the splits: the tokens are kept
      tfds_error = (f'{e} (rebuild later with python -m preprocessing.build_tfds --tokens_dir={cfg["output_dir"]} '
                    f'--data_dir={cfg["tfds_data_dir"]} --overwrite)')
  return Summary(
      output_dir=cfg['output_dir'], recordings=len({r.recording_id for r in records}),
      hours_kept=sum(end - start for _, start, end in windows) / 3600, clips=len(records),
      frames=sum(r.num_frames for r in records), failures=failures, counters=_counters(result),
      tfds_splits=tfds_splits, tfds_error=tfds_error,
      not_in_inputs=[] if listed is None else sorted({r.recording_id for r in records} - listed),
      seconds=time.time() - start)


def split_beam_args(text: str) -> list[str]:
  """'--runner=X --project=Y' -> ['--runner=X', '--project=Y'] (shell quoting rules)."""
  return shlex.split(text or '')
