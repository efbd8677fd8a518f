"""TFDS builder `saxgpt_tokens`: a tokens folder (see `preprocessing.manifest`) -> ArrayRecord shards.

One example per clip: `backing` and `lead` int16 [K, N] raw (not delayed) codes, `clip_id`, `recording_id`,
`clip_start_s`, `clip_end_s`, `augmentation`, `num_frames` and `codec` (name, sample_rate, frame_rate,
num_codebooks). The dataset metadata records the codec, the preprocessing config (when the tokens folder
has `preprocessing_config.json`), the split fractions and seed, and which recordings went to which split.

Splits are drawn by recording (augmented copies share their source's `recording_id`), seeded, by duration.
Two runners: plain Python generation, or Apache Beam when `beam_pipeline_options` are given (DirectRunner
here; Dataflow, Flink or Spark on clusters). TFDS 4.9 writes ArrayRecord without TensorFlow, but its `tfds`
command line needs TensorFlow, so build with `build_dataset` or `python -m preprocessing.build_tfds`.
Importing this module never imports jax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from preprocessing import local_workers, manifest

NAME = 'saxgpt_tokens'
SPLITS = ('train', 'validation', 'test')
DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

log = logging.getLogger(__name__)


def split_fractions_ok(split_fractions: Sequence[float]) -> bool:
  """3 non-negative fractions (train, validation, test) that sum to 1."""
  fractions = np.asarray(split_fractions, np.float64)
  return fractions.shape == (3,) and bool((fractions >= 0).all()) and bool(np.isclose(fractions.sum(), 1.0))


def assign_splits(records: Sequence[manifest.ClipRecord], split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS,
                  split_seed: int = 0) -> dict[str, str]:
  """Maps every recording_id to 'train', 'validation' or 'test' by duration fractions (seeded).

  Recordings are shuffled with `split_seed` and laid end to end by duration (frames of all their clips,
  augmented copies included); each goes to the split its midpoint falls in. When that leaves a split
  with a positive fraction empty, the shortest recording of the largest split moves into it, so with
  at least 3 recordings every split with a positive fraction gets one. Fewer recordings than splits
  with a positive fraction is an error (use split_fractions like (1, 0, 0) for a train-only build).
  """
  if not split_fractions_ok(split_fractions):
    raise ValueError(f'split_fractions must be 3 non-negative numbers (train, validation, test) summing to 1, '
                     f'got {tuple(split_fractions)}.')
  fractions = np.asarray(split_fractions, np.float64)
  frames: dict[str, int] = {}
  for rec in records:
    frames[rec.recording_id] = frames.get(rec.recording_id, 0) + rec.num_frames
  wanted = [s for s, f in zip(SPLITS, fractions) if f > 0]
  if len(frames) < len(wanted):
    raise manifest.ManifestError(
        f'{len(frames)} recording(s) cannot fill {len(wanted)} splits {wanted} without putting one recording in '
        f'two splits. Add recordings, or pass split_fractions with zeros (e.g. (1, 0, 0) builds train only).')
  order = sorted(frames)
  np.random.default_rng(split_seed).shuffle(order)
  durations = np.array([frames[r] for r in order], np.float64)
  midpoints = (np.cumsum(durations) - durations / 2) / durations.sum()
  bounds = np.cumsum(fractions)
  split_of = {r: SPLITS[min(int(np.searchsorted(bounds, m, side='right')), 2)] for r, m in zip(order, midpoints)}
  for split in wanted:
    members = [r for r in order if split_of[r] == split]
    if members:
      continue
    sizes = {s: [r for r in order if split_of[r] == s] for s in wanted}
    donor = max(sizes, key=lambda s: (len(sizes[s]), sum(frames[r] for r in sizes[s])))
    moved = min(sizes[donor], key=lambda r: frames[r])
    split_of[moved] = split
  return split_of


def _example(tokens_dir: str, rec: manifest.ClipRecord) -> tuple[str, dict[str, Any]]:
  """(key, example) for one clip; raises ManifestError on a corrupt clip file."""
  backing, lead = manifest.load_clip(tokens_dir, rec)
  return rec.clip_id, {
      'clip_id': rec.clip_id,
      'recording_id': rec.recording_id,
      'clip_start_s': np.float32(rec.clip_start_s),
      'clip_end_s': np.float32(rec.clip_end_s),
      'augmentation': rec.augmentation,
      'num_frames': np.int32(rec.num_frames),
      'backing': backing.astype(np.int16),
      'lead': lead.astype(np.int16),
      'codec': {
          'name': rec.codec.name,
          'sample_rate': np.int32(rec.codec.sample_rate),
          'frame_rate': np.int32(rec.codec.frame_rate),
          'num_codebooks': np.int32(rec.codec.num_codebooks),
      },
  }


def _example_from_json(line: str, tokens_dir: str) -> tuple[str, dict[str, Any]]:
  return _example(tokens_dir, manifest.ClipRecord.from_dict(json.loads(line)))


def source_fingerprint(tokens_dir: str | os.PathLike, records: Sequence[manifest.ClipRecord],
                       split_fractions: Sequence[float], split_seed: int) -> str:
  """sha256 of what a build is made from: the clip records, each clip file's size and modification time,
  and the split settings. Equal fingerprints give equal datasets."""
  digest = hashlib.sha256(json.dumps([str(SaxgptTokens.VERSION), [float(f) for f in split_fractions],
                                      int(split_seed)]).encode())
  for record in sorted(records, key=lambda r: r.clip_id):
    stat = (Path(tokens_dir) / record.path).stat()
    digest.update(f'{record.to_json()} {stat.st_size} {stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()


class SaxgptTokens(tfds.core.GeneratorBasedBuilder):
  """Backing and lead EnCodec tokens of sax solos over jazz backing tracks, split by recording."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release: int16 [K, N] backing/lead per clip, splits by recording, ArrayRecord.',
  }

  def __init__(self, *, tokens_dir: str | os.PathLike | None = None,
               split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, split_seed: int = 0,
               use_beam: bool = False, **kwargs):
    """tokens_dir is only needed to generate; reading a prepared dataset works without it."""
    self._tokens_dir = None if tokens_dir is None else str(Path(tokens_dir).resolve())
    self._split_fractions = tuple(float(f) for f in split_fractions)
    self._split_seed = int(split_seed)
    self._use_beam = use_beam
    self._records: list[manifest.ClipRecord] | None = None
    self._codec = manifest.CodecInfo()
    if self._tokens_dir is not None:
      self._records = manifest.read_manifest(self._tokens_dir)
      codecs = {r.codec for r in self._records}
      if len(codecs) != 1:
        raise manifest.ManifestError(
            f'{self._tokens_dir}: clips use {len(codecs)} different codecs {sorted(c.name for c in codecs)}; '
            f'a dataset holds one codec. Tokenize everything with the same codec or build separate datasets.')
      self._codec = codecs.pop()
    super().__init__(**kwargs)

  def _log_download_bytes(self) -> None:
    """What tfds prints before generating; its own line ('Downloading and preparing dataset Unknown size
    ...') speaks of a download that a build from local clips does not make."""
    print(f'building TFDS {self.name} {self.version}: {len(self.records)} clips from {self._tokens_dir}', flush=True)

  def _log_download_done(self) -> None:
    """tfds' closing line (which names the staging folder of a rebuild); `build_dataset` logs the result."""

  @property
  def records(self) -> list[manifest.ClipRecord]:
    """The manifest's clips (generation only: needs tokens_dir)."""
    if self._records is None:
      raise manifest.ManifestError(
          f'{NAME}: no tokens_dir given. Build with python -m preprocessing.build_tfds --tokens_dir=... --data_dir=...')
    return self._records

  def _info(self) -> tfds.core.DatasetInfo:
    k = self._codec.num_codebooks
    tokens = lambda: tfds.features.Tensor(shape=(k, None), dtype=np.int16, encoding=tfds.features.Encoding.BYTES)
    return self.dataset_info_from_configs(
        description=__doc__.split('\n')[0],
        features=tfds.features.FeaturesDict({
            'clip_id': tfds.features.Text(),
            'recording_id': tfds.features.Text(),
            'clip_start_s': np.float32,
            'clip_end_s': np.float32,
            'augmentation': tfds.features.Text(),
            'num_frames': np.int32,
            'backing': tokens(),
            'lead': tokens(),
            'codec': tfds.features.FeaturesDict({
                'name': tfds.features.Text(),
                'sample_rate': np.int32,
                'frame_rate': np.int32,
                'num_codebooks': np.int32,
            }),
        }),
        metadata=tfds.core.MetadataDict(),
        homepage='https://github.com/saxgpt/saxgpt-jax',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # everything is local
    split_of = assign_splits(self.records, self._split_fractions, self._split_seed)
    config_path = Path(self._tokens_dir) / manifest.CONFIG_NAME
    preprocessing_config = json.loads(config_path.read_text()) if config_path.exists() else None
    self.info.metadata.update({
        'codec': dataclasses.asdict(self._codec),
        'preprocessing_config': preprocessing_config,
        'split_fractions': list(self._split_fractions),
        'split_seed': self._split_seed,
        'recordings': {s: sorted(r for r, v in split_of.items() if v == s) for s in SPLITS},
        'source_fingerprint': source_fingerprint(self._tokens_dir, self.records, self._split_fractions,
                                                 self._split_seed),
    })
    by_split = {s: [r for r in self._records if split_of[r.recording_id] == s] for s in SPLITS}
    return {s: self._generate_examples(recs) for s, recs in by_split.items() if recs}

  def _generate_examples(self, records: list[manifest.ClipRecord]):
    """Yields (clip_id, example); with use_beam, returns the equivalent Beam PTransform."""
    if self._use_beam:
      import apache_beam as beam

      return (beam.Create([r.to_json() for r in records])
              | beam.Map(_example_from_json, tokens_dir=self._tokens_dir))
    return (_example(self._tokens_dir, r) for r in records)


def beam_options(flags: str | Sequence[str] | None):
  """PipelineOptions from a flag string like '--runner=DirectRunner --direct_num_workers=2', after the
  harness log levels the preprocessing pipeline uses (`beam_runners.HARNESS_LOG_FLAGS`; the flags given win)."""
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  from preprocessing import beam_runners  # pylint: disable=g-import-not-at-top

  if isinstance(flags, str):
    flags = flags.split()
  return PipelineOptions([*beam_runners.HARNESS_LOG_FLAGS, *(flags or [])])


def build_dataset(tokens_dir: str | os.PathLike, data_dir: str | os.PathLike, *,
                  split_fractions: Sequence[float] = DEFAULT_SPLIT_FRACTIONS, split_seed: int = 0,
                  beam_pipeline_options: str | Sequence[str] | Any | None = None,
                  overwrite: bool = False, keep_if_current: bool = False) -> dict[str, int]:
  """Builds `saxgpt_tokens` from `tokens_dir` into `data_dir`; returns {split: number of clips}.

  beam_pipeline_options: None (plain generation), a flag string/list such as
  '--runner=DirectRunner --direct_running_mode=multi_processing --direct_num_workers=2', or PipelineOptions.
  An existing build of the same version is reused unless overwrite=True; a local one is replaced only once
  the new build is complete. keep_if_current: even with overwrite, keep an existing build made from the
  same clips and split settings (its `source_fingerprint`), e.g. when a resumed preprocessing run added
  nothing.
  """
  use_beam = beam_pipeline_options is not None
  options = runner = None
  if use_beam:
    options = (beam_pipeline_options if not isinstance(beam_pipeline_options, (str, list, tuple))
               else beam_options(beam_pipeline_options))
    from preprocessing import beam_runners  # pylint: disable=g-import-not-at-top

    missing = beam_runners.missing_extras(options)
    if missing:
      raise ValueError(missing)
    runner = beam_runners.direct_runner(options)
  mode = (tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS if not overwrite
          else tfds.download.GenerateMode.FORCE_REDOWNLOAD)
  final = Path(data_dir) / NAME / str(SaxgptTokens.VERSION)
  if overwrite and keep_if_current:
    counts = _current_build(tokens_dir, data_dir, split_fractions, split_seed)
    if counts is not None:
      log.info('%s %s in %s is up to date with %s: %s', NAME, SaxgptTokens.VERSION, data_dir, tokens_dir, counts)
      return counts
  # Rebuilding over a local build: write beside it and swap at the end, so a failed rebuild keeps the old one.
  staging = (Path(data_dir) / f'.{NAME}-rebuild' if overwrite and '://' not in str(data_dir)
             and (final / 'dataset_info.json').exists() else None)
  if staging is not None:
    shutil.rmtree(staging, ignore_errors=True)
  with manifest.private_tempdir():  # TFDS (from the builder's creation on) and Beam leave temporary folders
    builder = SaxgptTokens(tokens_dir=tokens_dir, split_fractions=split_fractions, split_seed=split_seed,
                           use_beam=use_beam, data_dir=str(staging or data_dir), file_format='array_record')
    assign_splits(builder.records, split_fractions, split_seed)  # too few recordings: fail before any writes
    try:
      with local_workers.on_this_terminal(options):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            beam_runner=runner, beam_options=options, download_mode=mode))
    finally:
      if staging is not None and not (staging / NAME / final.name / 'dataset_info.json').exists():
        shutil.rmtree(staging, ignore_errors=True)
  if staging is not None:
    old = final.with_name(f'.{final.name}.old')
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(staging / NAME / final.name, final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)
  counts = _split_counts(builder)
  log.info('%s %s in %s: %s', NAME, builder.version, final if staging is not None else builder.data_dir, counts)
  return counts


def _split_counts(builder: tfds.core.DatasetBuilder) -> dict[str, int]:
  """{split: number of clips} of a prepared build."""
  return {name: int(info.num_examples) for name, info in builder.info.splits.items()}


def _current_build(tokens_dir, data_dir, split_fractions, split_seed) -> dict[str, int] | None:
  """{split: number of clips} of the build in `data_dir` if it was made from exactly these clips and split
  settings, else None (none there, an older build without a fingerprint, or anything changed)."""
  try:
    built = tfds.builder_from_directory(_latest_version_dir(data_dir))
    if built.version != SaxgptTokens.VERSION:
      return None
    wanted = source_fingerprint(tokens_dir, manifest.read_manifest(tokens_dir), split_fractions, split_seed)
    if built.info.metadata.get('source_fingerprint') != wanted:
      return None
    return _split_counts(built)
  except Exception:  # pylint: disable=broad-except  # missing, damaged or unreadable: rebuild it
    return None


def split_recordings(data_dir: str | os.PathLike) -> dict[str, list[str]]:
  """The recording ids of each split of a prepared dataset (from its metadata)."""
  builder = tfds.builder_from_directory(_latest_version_dir(data_dir))
  return dict(builder.info.metadata['recordings'])


def _latest_version_dir(data_dir: str | os.PathLike) -> epath.Path:
  root = epath.Path(data_dir) / NAME  # epath: gs:// stays gs://
  versions = sorted((p for p in root.glob('*') if tfds.core.Version.is_valid(p.name)
                     and (p / 'dataset_info.json').exists()), key=lambda p: tfds.core.Version(p.name))
  if not versions:
    raise FileNotFoundError(f'No prepared {NAME} in {data_dir}. Build it with '
                            f'python -m preprocessing.build_tfds --tokens_dir=TOKENS --data_dir={data_dir}')
  return versions[-1]

