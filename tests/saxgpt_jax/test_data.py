"""The grain pipeline: batch format, windows and delay, padding, process sharding, eval passes, checkpoints."""

import subprocess
import sys
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from saxgpt_jax import data
from tests.conftest import build_token_dataset, damage_train_shards

SEQ_LEN, STRIDE, K = 32, 16, 4


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """6 recordings x 2 clips of 20..90 frames (some shorter than a window), built with the plain runner."""
  return build_token_dataset(tmp_path_factory.mktemp('data'), min_frames=20, max_frames=90)


def make_config(data_dir, global_batch=4, **data_overrides):
  c = tiny.get_config()
  c.data.data_dir = str(data_dir)
  c.data.seq_len, c.data.stride, c.data.worker_count = SEQ_LEN, STRIDE, 0
  c.train.global_batch_size = global_batch
  c.data.update(data_overrides)
  return c


def reference_delay(codes):
  """The fixture README's definition: position p of codebook k holds codes[k, p-k-1], else 2048."""
  k_count, n = codes.shape
  out = np.full((k_count, n + k_count + 1), 2048, np.int64)
  for k in range(k_count):
    for p in range(out.shape[1]):
      if 0 <= p - k - 1 < n:
        out[k, p] = codes[k, p - k - 1]
  return out


def reference_windows(config, split):
  """{src bytes: (clip, start, expected example)} for every fixed window of the split."""
  source = data.data_source(config, split)
  out = {}
  for clip in range(len(source)):
    ex = source[clip]
    n = int(ex['num_frames'])
    for start in range(0, max(n - SEQ_LEN, 0) + 1, STRIDE):
      real = min(SEQ_LEN, n - start)
      pad = lambda codes: np.pad(codes[:, start:start + real], ((0, 0), (0, SEQ_LEN - real)), constant_values=2048)
      src, tgt = reference_delay(pad(ex['backing'])), reference_delay(pad(ex['lead']))
      mask = np.zeros(SEQ_LEN + K + 1, bool)
      mask[:real + K + 1] = True
      out[src.astype(np.int32).tobytes()] = (clip, start, {'src': src, 'src_mask': mask, 'tgt_in': tgt[:, :-1],
                                                         'tgt_out': tgt[:, 1:]})
  return out


def rows(batches):
  return [{k: b[k][i] for k in b} for b in batches for i in range(len(b['src']))]


def test_batch_format(data_dir):
  batch = next(data.make_iterator(make_config(data_dir), 'train', process_index=0, process_count=2))
  length = SEQ_LEN + K + 1
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      'src': ((2, K, length), np.int32), 'src_mask': ((2, length), bool),
      'tgt_in': ((2, K, length - 1), np.int32), 'tgt_out': ((2, K, length - 1), np.int32)}


def test_windows_and_delay_match_the_fixture_definition_and_short_clips_are_padded(data_dir):
  config = make_config(data_dir)
  expected = reference_windows(config, 'train')
  got = rows(data.make_iterator(config, 'train', process_index=0, process_count=1, num_epochs=1))
  real = [r for r in got if r['src_mask'].any()]
  assert len(real) == len(expected) == data.num_windows(config, 'train')
  assert len(got) % config.train.global_batch_size == 0 and len(got) - len(real) < config.train.global_batch_size
  for row in real:
    _, _, want = expected[row['src'].tobytes()]
    for key in want:
      np.testing.assert_array_equal(row[key], want[key], err_msg=key)
  assert any(not r['src_mask'].all() for r in real), 'the fixture should hold clips shorter than a window'
  for row in got:
    assert (row['tgt_out'][:, ~row['src_mask'][1:]] == 2048).all()


def test_processes_split_each_global_batch_and_cover_every_window_once(data_dir):
  config = make_config(data_dir, global_batch=4)
  one = list(data.make_iterator(config, 'train', process_index=0, process_count=1, num_epochs=2))
  parts = [list(data.make_iterator(config, 'train', process_index=p, process_count=2, num_epochs=2)) for p in (0, 1)]
  assert len(parts[0]) == len(parts[1]) == len(one)
  for i, batch in enumerate(one):
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([parts[0][i][key], parts[1][i][key]]), batch[key])
  keys = [r['src'].tobytes() for r in rows(one) if r['src_mask'].any()]
  windows = set(reference_windows(config, 'train'))
  assert sorted(keys) == sorted(list(windows) * 2), 'each window once per epoch'
  epoch_len = len(windows)
  assert keys[:epoch_len] != keys[epoch_len:], 'the second epoch is reshuffled'
  again = next(data.make_iterator(config, 'train', process_index=0, process_count=1))
  np.testing.assert_array_equal(again['src'], one[0]['src'])
  other_seed = next(data.make_iterator(make_config(data_dir, seed=7), 'train', process_index=0, process_count=1))
  assert not np.array_equal(other_seed['src'], one[0]['src'])


def test_eval_split_is_one_deterministic_padded_pass(data_dir):
  config = make_config(data_dir, global_batch=4)
  first = list(data.make_iterator(config, 'validation', process_index=0, process_count=1))
  second = list(data.make_iterator(config, 'validation', process_index=0, process_count=1))
  assert len(first) == -(-data.num_windows(config, 'validation') // 4)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a['tgt_out'], b['tgt_out'])
  padding = [r for r in rows(first) if not r['src_mask'].any()]
  assert len(padding) == len(first) * 4 - data.num_windows(config, 'validation')
  assert all((r['tgt_out'] == 2048).all() and (r['src'] == 2048).all() for r in padding)


def test_random_offsets_change_per_epoch_and_stay_inside_the_clip(data_dir):
  config = make_config(data_dir, global_batch=2, random_offsets=True)
  source = data.data_source(config, 'train')
  batches = list(data.make_iterator(config, 'train', process_index=0, process_count=1, shuffle=False, num_epochs=2))
  got = [r for r in rows(batches) if r['src_mask'].any()]
  epoch_len = data.num_windows(config, 'train')
  assert len(got) == 2 * epoch_len
  index = data.window_index(data.clip_frames(source), SEQ_LEN, STRIDE)
  starts = []
  for row, (clip, _) in zip(got, np.concatenate([index, index])):
    backing = source[int(clip)]['backing']
    n = backing.shape[1]
    start = next(s for s in range(max(n - SEQ_LEN, 0) + 1)
                 if np.array_equal(row['src'][0, 1:1 + min(SEQ_LEN, n)], backing[0, s:s + SEQ_LEN]))
    starts.append(start)
  assert starts[:epoch_len] != starts[epoch_len:]
  again = list(data.make_iterator(config, 'train', process_index=0, process_count=1, shuffle=False, num_epochs=2))
  np.testing.assert_array_equal(again[-1]['src'], batches[-1]['src'])


def test_iterator_state_roundtrips_through_orbax(data_dir, tmp_path):
  config = make_config(data_dir)
  it = data.make_iterator(config, 'train', process_index=0, process_count=1)
  for _ in range(3):
    next(it)
  with ocp.CheckpointManager(tmp_path / 'ckpt') as mngr:
    mngr.save(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    expected = next(it)
    restored = data.make_iterator(config, 'train', process_index=0, process_count=1)
    mngr.restore(3, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
  got = next(restored)
  for key in expected:
    np.testing.assert_array_equal(got[key], expected[key])


def test_worker_processes_give_the_same_batches(data_dir):
  config = make_config(data_dir)
  want = list(data.make_iterator(config, 'train', process_index=0, process_count=1, num_epochs=1))
  config.data.worker_count = 2
  got = list(data.make_iterator(config, 'train', process_index=0, process_count=1, num_epochs=1))
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a['src'], b['src'])


def test_clear_errors(data_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=f'data_dir={str(tmp_path)!r}.*build_tfds'):
    data.make_iterator(make_config(tmp_path), 'train')
  with pytest.raises(ValueError, match='not divisible by process_count 3'):
    data.make_iterator(make_config(data_dir), 'train', process_index=0, process_count=3)
  with pytest.raises(ValueError, match="no split 'dev'"):
    data.data_source(make_config(data_dir), 'dev')


def test_a_damaged_shard_stops_a_pass_before_its_first_batch_with_the_rebuild_command(data_dir, tmp_path):
  damaged = tmp_path / 'damaged'
  config = make_config(damage_train_shards(data_dir, damaged))
  words = (rf"saxgpt_tokens split 'train' in {damaged}: record \d+ of \d+ cannot be read \(.*\)\. If a rerun "
           rf'fails the same way, its shards are damaged .*preprocessing.build_tfds --tokens_dir=TOKENS_DIR '
           rf'--data_dir={damaged} --overwrite$')
  for make in (lambda: data.make_iterator(config, 'train'), lambda: data.num_windows(config, 'train')):
    with pytest.raises(data.DataError, match=words):
      make()
  assert data.num_windows(config, 'validation') == data.num_windows(make_config(data_dir), 'validation')


def test_importing_data_does_not_import_torch():
  root = Path(__file__).resolve().parents[2]
  subprocess.run([sys.executable, '-c', 'import sys, saxgpt_jax.data; assert "torch" not in sys.modules'],
                 cwd=root, check=True)
