"""grain input pipeline: `saxgpt_tokens` ArrayRecord shards -> delayed, masked, per-process batches.

Stages: `tfds` data source of clips (backing/lead int16 [K, N]) -> an index of (clip, window start) pairs
-> seeded shuffle and repeat (train) -> windows of `seq_len` frames (clips shorter than a window are
padded with 2048 and masked, never dropped) -> the delay pattern (`saxgpt_jax.delay.apply_delay`) -> batches.

Batches (L = seq_len + K + 1, b = global_batch_size // process_count):
  src      int32 [b, K, L]     delayed backing
  src_mask bool  [b, L]        True on the delayed stream of real frames, False on padding
  tgt_in   int32 [b, K, L-1]   delayed lead[:, :-1]
  tgt_out  int32 [b, K, L-1]   delayed lead[:, 1:]  (2048 = ignored by the loss)

Sharding: the global stream is cut into per-process blocks of b windows; global batch i is the blocks
i*P .. i*P+P-1 in process order, so process p reads only its own windows, the same seed gives the same
global batches on any number of processes P, and concatenating the processes' batch i gives the
one-process batch i. Finite streams (eval splits, or train with num_epochs) end with a global batch
filled up by padding windows whose targets are all 2048, so they add nothing to a loss.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any, Sequence

from absl import flags
from etils import epath
import grain
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from configs import cli
from saxgpt_jax.delay import PADDING_IDX, delayed_window

log = logging.getLogger(__name__)
TRAIN_SPLIT = 'train'
PADDING_SPEC = np.array([-1, 0], np.int64)  # (clip, start) of a padding window


def version_dir(data_dir: str, name: str) -> epath.Path:
  """The newest prepared version folder of `name` under `data_dir` (local or gs://), or FileNotFoundError
  naming the folder and how to build the dataset."""
  root = epath.Path(os.path.expanduser(data_dir)) / name
  versions = sorted((p for p in (root.glob('*') if root.exists() else ()) if tfds.core.Version.is_valid(p.name)
                     and (p / 'dataset_info.json').exists()), key=lambda p: tfds.core.Version(p.name))
  if not versions:
    raise FileNotFoundError(
        f'There is no TFDS dataset {name!r} under data_dir={data_dir!r} (looked for {root}/<version>/'
        f'dataset_info.json). Build it with: python -m preprocessing.build_tfds --tokens_dir=TOKENS_DIR '
        f'--data_dir={data_dir}, or point at where it was built (train: --config.data.data_dir=DIR; evaluate: '
        f'--data_dir=DIR).')
  return versions[-1]


class DataError(ValueError):
  """A prepared dataset whose records cannot be read (a damaged shard); the message names the fix."""


def split_names(config: ml_collections.ConfigDict) -> list[str]:
  """The splits of the prepared dataset of config.data (FileNotFoundError when there is none)."""
  return sorted(_builder(config).info.splits)


def _builder(config: ml_collections.ConfigDict):
  return tfds.builder_from_directory(version_dir(config.data.data_dir, config.data.name))


def data_source(config: ml_collections.ConfigDict, split: str) -> Sequence[dict[str, Any]]:
  """Random-access source of clip dicts: backing/lead int16 [K, N], num_frames, recording_id (bytes), ..."""
  builder = _builder(config)
  if split not in builder.info.splits:
    raise ValueError(f'{config.data.name} in {config.data.data_dir} has no split {split!r}; '
                     f'it has {sorted(builder.info.splits)}.')
  return builder.as_data_source(split)


def clip_frames(source: Sequence[dict[str, Any]]) -> np.ndarray:
  """int64 [num_clips]: frames N of every clip (one pass over the source, which decodes every record:
  DataError names the first that cannot be read)."""
  frames = np.zeros(len(source), np.int64)
  for i in tqdm(range(len(source)), desc='indexing clips', leave=False, disable=len(source) < 1000):
    try:
      frames[i] = int(source[i]['num_frames'])
    except Exception as e:  # ArrayRecord, TFDS decoding: a truncated or overwritten shard
      raise DataError(f'record {i} of {len(source)} cannot be read ({cli.quoted(e)})') from e
  return frames


def indexed_source(config: ml_collections.ConfigDict, split: str) -> tuple[Sequence[dict[str, Any]], np.ndarray]:
  """`data_source(config, split)` and its `clip_frames`, every record read once before any batch, so that a
  damaged shard stops a run at its start with one DataError naming the split and the rebuild command."""
  source = data_source(config, split)
  try:
    return source, clip_frames(source)
  except DataError as e:
    raise DataError(
        f'{config.data.name} split {split!r} in {config.data.data_dir}: {e}. If a rerun fails the same way, '
        'its shards are damaged (an interrupted copy, a full disk): rebuild the dataset with python -m '
        f'preprocessing.build_tfds --tokens_dir=TOKENS_DIR --data_dir={config.data.data_dir} --overwrite'
    ) from e.__cause__


def window_index(frames: np.ndarray, seq_len: int, stride: int) -> np.ndarray:
  """int64 [M, 2] (clip, start) of every fixed window: starts 0, stride, ... while a whole window fits.

  A clip shorter than seq_len gets one window at 0 (padded later).
  """
  if seq_len <= 0 or stride <= 0:
    raise ValueError(f'seq_len ({seq_len}) and stride ({stride}) must be positive.')
  rows = [(clip, start) for clip, n in enumerate(frames) for start in range(0, max(int(n) - seq_len, 0) + 1, stride)]
  return np.array(rows, np.int64).reshape(-1, 2)


def num_windows(config: ml_collections.ConfigDict, split: str) -> int:
  """Fixed windows in `split` (what one epoch of it holds, before any padding to the global batch)."""
  _, frames = indexed_source(config, split)
  return len(window_index(frames, config.data.seq_len, config.data.stride))


class _PadToMultiple(grain.MapDataset):
  """The parent's (clip, start) rows, then PADDING_SPEC rows up to the next multiple of `multiple`."""

  def __init__(self, parent: grain.MapDataset, multiple: int):
    super().__init__(parent)
    self._length = math.ceil(len(parent) / multiple) * multiple

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f'PadToMultiple(length={self._length})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[index] if index < len(self._parent) else PADDING_SPEC


def _window_example(spec: np.ndarray, rng: np.random.Generator | None = None, *,
                    source: Sequence[dict[str, Any]], frames: np.ndarray, seq_len: int,
                    num_codebooks: int) -> dict[str, np.ndarray]:
  """One example from a (clip, start) spec; a random start when `rng` is given; clip -1 -> padding."""
  length = seq_len + num_codebooks + 1
  clip, start = int(spec[0]), int(spec[1])
  if clip < 0:
    pad = np.full((num_codebooks, length), PADDING_IDX, np.int32)
    return {'src': pad, 'src_mask': np.zeros(length, bool), 'tgt_in': pad[:, :-1], 'tgt_out': pad[:, 1:]}
  if rng is not None:
    start = int(rng.integers(0, max(int(frames[clip]) - seq_len, 0) + 1))
  example = source[clip]
  backing, lead = example['backing'], example['lead']
  if backing.shape[0] != num_codebooks:
    raise ValueError(f'clip {clip} has {backing.shape[0]} codebooks; config.model.num_codebooks is {num_codebooks}.')
  real = min(seq_len, backing.shape[1] - start)
  src, src_mask = delayed_window(backing[:, start:start + real], seq_len)
  tgt, _ = delayed_window(lead[:, start:start + real], seq_len)
  return {'src': src, 'src_mask': src_mask, 'tgt_in': tgt[:, :-1], 'tgt_out': tgt[:, 1:]}


def _process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    jax_shard = grain.sharding.ShardByJaxProcess()
    process_index = jax_shard.shard_index if process_index is None else process_index
    process_count = jax_shard.shard_count if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} is not in [0, process_count={process_count}).')
  return process_index, process_count


def make_dataset(config: ml_collections.ConfigDict, split: str, *, process_index: int | None = None,
                 process_count: int | None = None, shuffle: bool | None = None,
                 num_epochs: int | None = None) -> grain.IterDataset:
  """This process's batches of `split` as a grain IterDataset (see the module docstring).

  shuffle: None = shuffle train only. num_epochs: None = repeat train forever and make one pass over
  other splits; a positive int = that many passes (the last global batch padded). Random window offsets
  (config.data.random_offsets) apply to train only; eval splits always use fixed windows.
  """
  process_index, process_count = _process_shard(process_index, process_count)
  global_batch = config.train.global_batch_size
  if global_batch % process_count:
    raise ValueError(f'train.global_batch_size {global_batch} is not divisible by process_count {process_count}; '
                     f'pick a global batch that is a multiple of the number of processes.')
  batch = global_batch // process_count
  is_train = split == TRAIN_SPLIT
  shuffle = is_train if shuffle is None else shuffle
  if num_epochs is None:
    num_epochs = None if is_train else 1
  elif num_epochs < 1:
    raise ValueError(f'num_epochs must be None or a positive int, got {num_epochs}.')
  source, frames = indexed_source(config, split)
  index = window_index(frames, config.data.seq_len, config.data.stride)
  short = int((frames < config.data.seq_len).sum())
  log.info('%s/%s: %d clips, %d windows of %d frames; %d clip(s) shorter than a window are padded and masked.',
           config.data.name, split, len(frames), len(index), config.data.seq_len, short)

  ds = grain.MapDataset.source(index)
  if shuffle:
    ds = ds.shuffle(seed=config.data.seed)
  ds = ds.repeat(num_epochs)
  if num_epochs is not None:
    ds = _PadToMultiple(ds, global_batch)
  load = functools.partial(_window_example, source=source, frames=frames, seq_len=config.data.seq_len,
                           num_codebooks=config.model.num_codebooks)
  if is_train and config.data.random_offsets:
    ds = ds.random_map(load, seed=config.data.seed)
  else:
    ds = ds.map(load)
  ds = ds.batch(batch)[process_index::process_count]
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.data.read_threads,
                                            prefetch_buffer_size=config.data.prefetch_buffer_size))
  if config.data.worker_count > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read an absl flag; outside app.run use the defaults
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.worker_count,
                                                     per_worker_buffer_size=config.data.prefetch_buffer_size))
  return it


def make_iterator(config: ml_collections.ConfigDict, split: str, *, process_index: int | None = None,
                  process_count: int | None = None, shuffle: bool | None = None,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """Iterator over `make_dataset(...)`; checkpoint it with grain.checkpoint.CheckpointSave/CheckpointRestore."""
  return iter(make_dataset(config, split, process_index=process_index, process_count=process_count,
                           shuffle=shuffle, num_epochs=num_epochs))
