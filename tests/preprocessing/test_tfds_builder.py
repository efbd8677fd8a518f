"""The `saxgpt_tokens` builder: both runners, features, metadata, splits by recording, manifest errors."""

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from preprocessing import manifest, tfds_builder

BEAM_FLAGS = '--runner=DirectRunner --direct_running_mode=multi_processing --direct_num_workers=2'


def write_tokens(tokens_dir, num_recordings=6, clips_per_recording=2, augment=True, seed=0):
  """Random token clips; every clip of recording r also gets a 'pitch+2' copy when augment."""
  rng = np.random.default_rng(seed)
  records, arrays = [], {}
  for r in range(num_recordings):
    for c in range(clips_per_recording):
      n = int(rng.integers(40, 200))
      for aug in (('none', 'pitch+2') if augment else ('none',)):
        clip_id = manifest.safe_id(f'rec{r}_c{c}_{aug}')
        rec = manifest.ClipRecord(clip_id, f'rec{r}', 10.0 * c, 10.0 * c + n / 50, aug, n, manifest.CodecInfo(),
                                  manifest.clip_path(clip_id))
        backing, lead = rng.integers(0, 2048, (2, 4, n), dtype=np.int16)
        manifest.write_clip(tokens_dir, rec, backing, lead)
        records.append(rec)
        arrays[clip_id] = (backing, lead)
  manifest.append_records(tokens_dir, records)
  return records, arrays


@pytest.fixture(scope='module')
def tokens(tmp_path_factory):
  tokens_dir = tmp_path_factory.mktemp('tokens')
  records, arrays = write_tokens(tokens_dir)
  (tokens_dir / manifest.CONFIG_NAME).write_text(json.dumps({'clip_seconds': 4.0, 'codec': 'random:0'}))
  return tokens_dir, records, arrays


@pytest.fixture(scope='module')
def plain_build(tokens, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds_plain')
  counts = tfds_builder.build_dataset(tokens[0], data_dir)
  return data_dir, counts


def read_split(data_dir, split):
  builder = tfds.builder_from_directory(Path(data_dir) / tfds_builder.NAME / '1.0.0')
  return {ex['clip_id'].decode(): ex for ex in builder.as_data_source(split)}


def test_plain_build_writes_every_clip_with_its_features(tokens, plain_build):
  tokens_dir, records, arrays = tokens
  data_dir, counts = plain_build
  assert sum(counts.values()) == len(records) and set(counts) == set(tfds_builder.SPLITS)
  version_dir = Path(data_dir) / tfds_builder.NAME / '1.0.0'
  assert list(version_dir.glob('saxgpt_tokens-train.array_record-*'))
  by_id = {r.clip_id: r for r in records}
  for split in tfds_builder.SPLITS:
    for clip_id, ex in read_split(data_dir, split).items():
      rec = by_id[clip_id]
      np.testing.assert_array_equal(ex['backing'], arrays[clip_id][0])
      np.testing.assert_array_equal(ex['lead'], arrays[clip_id][1])
      assert ex['backing'].dtype == np.int16 and ex['num_frames'] == rec.num_frames
      assert ex['recording_id'].decode() == rec.recording_id and ex['augmentation'].decode() == rec.augmentation
      assert ex['clip_start_s'] == pytest.approx(rec.clip_start_s) and ex['clip_end_s'] == pytest.approx(rec.clip_end_s)
      assert ex['codec']['num_codebooks'] == 4 and ex['codec']['frame_rate'] == 50
  info = tfds.builder_from_directory(version_dir).info
  assert str(info.version) == '1.0.0'
  assert info.metadata['codec'] == {'name': 'facebook/encodec_32khz', 'sample_rate': 32000, 'frame_rate': 50,
                                    'num_codebooks': 4, 'codebook_size': 2048}
  assert info.metadata['preprocessing_config'] == {'clip_seconds': 4.0, 'codec': 'random:0'}


def test_a_runner_this_python_cannot_start_is_refused_before_any_write(tokens, tmp_path, monkeypatch):
  """The runner's packages are checked first (as if Beam's gcp extras were missing; with them, a Dataflow
  job would be submitted). A runner that needs nothing more passes the check."""
  from apache_beam.options.pipeline_options import PipelineOptions
  from preprocessing import beam_runners

  monkeypatch.setitem(beam_runners._NEEDS, 'dataflow', ('saxgpt_no_such_module', 'gcp'))
  with pytest.raises(ValueError, match="--runner=dataflow needs Beam's gcp extras.*pip install 'apache-beam.gcp.=="):
    tfds_builder.build_dataset(tokens[0], tmp_path / 'tfds', beam_pipeline_options='--runner=dataflow --project=p')
  assert not (tmp_path / 'tfds').exists()
  monkeypatch.setitem(beam_runners._NEEDS, 'dataflow', ('json', 'gcp'))
  assert beam_runners.missing_extras(PipelineOptions(['--runner=DataflowRunner'])) is None
  assert beam_runners.missing_extras(PipelineOptions(['--runner=FlinkRunner'])) is None


def test_beam_runner_writes_the_same_dataset(tokens, plain_build, tmp_path, monkeypatch, capfd, caplog):
  caplog.set_level(logging.INFO)  # as preprocessing.build_tfds logs
  scratch = tmp_path / 'scratch'  # this process's temporary folder, and its workers'
  scratch.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(scratch))
  monkeypatch.setenv('TMPDIR', str(scratch))
  environ = dict(os.environ)
  counts = tfds_builder.build_dataset(tokens[0], tmp_path, beam_pipeline_options=BEAM_FLAGS)
  assert not list(scratch.iterdir()), 'Beam and TFDS left temporary folders behind'
  assert tempfile.gettempdir() == str(scratch) and dict(os.environ) == environ
  # The worker processes ran as the preprocessing pipeline's do (`local_workers`): Beam's harness lines are
  # neither printed by the workers nor relayed once more, as 'Worker: severity: ...', by the job service here.
  printed = capfd.readouterr().err + ''.join(f'{r.name}: {r.getMessage()}\n' for r in caplog.records)
  for noise in ('Worker: severity', 'sdk harness', 'control plane', 'Traceback'):
    assert noise not in printed, printed[-3000:]
  assert counts == plain_build[1]
  for split in tfds_builder.SPLITS:
    plain, beam = read_split(plain_build[0], split), read_split(tmp_path, split)
    assert plain.keys() == beam.keys()
    for clip_id in plain:
      np.testing.assert_array_equal(plain[clip_id]['lead'], beam[clip_id]['lead'])


def test_splits_are_disjoint_by_recording_with_augmented_copies(tokens, plain_build):
  recordings = {s: {ex['recording_id'].decode() for ex in read_split(plain_build[0], s).values()}
                for s in tfds_builder.SPLITS}
  assert all(recordings.values())
  assert not (recordings['train'] & recordings['validation'] or recordings['train'] & recordings['test']
              or recordings['validation'] & recordings['test'])
  assert recordings == {s: set(v) for s, v in tfds_builder.split_recordings(plain_build[0]).items()}
  for split in tfds_builder.SPLITS:  # both the source clip and its 'pitch+2' copy landed here
    augs = {}
    for ex in read_split(plain_build[0], split).values():
      augs.setdefault(ex['recording_id'], set()).add(ex['augmentation'])
    assert all(a == {b'none', b'pitch+2'} for a in augs.values())


def test_assign_splits_is_seeded_by_duration_and_fills_small_datasets():
  codec = manifest.CodecInfo()
  recs = [manifest.ClipRecord(f'c{i}', f'r{i}', 0, 1, 'none', 100, codec, f'clips/c{i}.npz') for i in range(50)]
  a = tfds_builder.assign_splits(recs, (0.8, 0.1, 0.1), 3)
  assert a == tfds_builder.assign_splits(recs, (0.8, 0.1, 0.1), 3) != tfds_builder.assign_splits(recs, split_seed=4)
  assert [list(a.values()).count(s) for s in tfds_builder.SPLITS] == [40, 5, 5]
  small = tfds_builder.assign_splits(recs[:3], (0.8, 0.1, 0.1), 0)
  assert sorted(small.values()) == ['test', 'train', 'validation']
  assert set(tfds_builder.assign_splits(recs[:2], (1.0, 0.0, 0.0)).values()) == {'train'}
  with pytest.raises(manifest.ManifestError, match='2 recording'):
    tfds_builder.assign_splits(recs[:2])
  with pytest.raises(ValueError, match='sum'):
    tfds_builder.assign_splits(recs, (0.5, 0.1, 0.1))


def test_missing_and_corrupt_manifest_entries_give_clear_errors(tmp_path):
  tokens_dir = tmp_path / 'tokens'
  records, _ = write_tokens(tokens_dir, num_recordings=3, clips_per_recording=1, augment=False)
  (tokens_dir / records[1].path).write_bytes(b'not an npz')
  with pytest.raises(manifest.ManifestError, match=f'clip {records[1].clip_id}: cannot read'):
    tfds_builder.build_dataset(tokens_dir, tmp_path / 'tfds')
  (tokens_dir / records[1].path).unlink()
  with pytest.raises(manifest.ManifestError, match='does not exist'):
    tfds_builder.build_dataset(tokens_dir, tmp_path / 'tfds')
  with pytest.raises(manifest.ManifestError, match='No manifest.jsonl'):
    tfds_builder.build_dataset(tmp_path / 'nowhere', tmp_path / 'tfds')


def test_cli_and_no_jax_import(tokens, tmp_path):
  root = Path(__file__).resolve().parents[2]
  out = subprocess.run(
      [sys.executable, '-c', 'import sys; from absl import app; import preprocessing.build_tfds as cli; '
       'assert "jax" not in sys.modules, "preprocessing imported jax"; app.run(cli.main)',
       f'--tokens_dir={tokens[0]}', f'--data_dir={tmp_path}', '--split_fractions=0.6,0.2,0.2'],
      cwd=root, capture_output=True, text=True, check=True)
  counts = json.loads(out.stdout.strip().splitlines()[-1])
  assert sum(counts.values()) == len(tokens[1])
  assert f'building TFDS saxgpt_tokens 1.0.0: {len(tokens[1])} clips from' in out.stdout  # not 'Downloading ...'
  assert 'Downloading' not in out.stdout and 'downloaded' not in out.stdout, out.stdout


def test_direct_runner_workers_import_local_workers_as_they_start():
  """So a worker exits quietly on Ctrl-C from its start, not only once its first bundle imports our stages."""
  from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
  from apache_beam.runners.worker import sdk_worker_main
  from google.protobuf import json_format

  from preprocessing import beam_runners

  def worker_plugins(flags):  # the options a worker reads from the runner's provision info, as it reads them
    encoded = beam_runners.direct_runner(PipelineOptions(flags.split()))._provision_info.provision_info
    options = sdk_worker_main._load_pipeline_options(json_format.MessageToJson(encoded.pipeline_options))
    return PipelineOptions.from_dictionary(options).view_as(SetupOptions).beam_plugins

  assert worker_plugins(BEAM_FLAGS) == ['preprocessing.local_workers']
  assert worker_plugins('--runner=DirectRunner --beam_plugins=a.b ' + BEAM_FLAGS.split(' ', 1)[1]) == [
      'a.b', 'preprocessing.local_workers']
  assert not worker_plugins('--runner=DirectRunner --direct_running_mode=in_memory')


def test_cli_ctrl_c_is_one_line_with_status_130(tokens, tmp_path):
  root = Path(__file__).resolve().parents[2]
  code = ('import os, signal; from absl import app; import preprocessing.build_tfds as cli; '
          'from preprocessing import tfds_builder\n'
          'def build(*args, **kwargs):\n  os.kill(os.getpid(), signal.SIGINT)\n  raise AssertionError("not reached")\n'
          'tfds_builder.build_dataset = build; signal.signal(signal.SIGINT, signal.default_int_handler); app.run(cli.main)')
  done = subprocess.run([sys.executable, '-c', code, f'--tokens_dir={tokens[0]}', f'--data_dir={tmp_path}'],
                        cwd=root, capture_output=True, text=True, timeout=120)
  assert done.returncode == 130 and done.stderr.strip() == (
      f'interrupted: no new build was put in {tmp_path} (a build is moved into place only once complete); rerun '
      'the same command.'), done.stderr[-3000:]


def test_a_failed_rebuild_keeps_the_previous_dataset(tmp_path):
  """Too few recordings for the splits, or a corrupt clip: the rebuild fails and the old build stays whole."""
  tokens_dir, data_dir = tmp_path / 'tokens', tmp_path / 'tfds'
  records, _ = write_tokens(tokens_dir, num_recordings=3, clips_per_recording=1, augment=False)
  assert tfds_builder.build_dataset(tokens_dir, data_dir, split_fractions=(1, 0, 0)) == {'train': 3}
  rebuild = lambda: tfds_builder.build_dataset(tokens_dir, data_dir, split_fractions=(0.4, 0.3, 0.3), overwrite=True)
  manifest_path = tokens_dir / manifest.MANIFEST_NAME
  full = manifest_path.read_text()
  manifest_path.write_text(''.join(full.splitlines(keepends=True)[:2]))
  with pytest.raises(manifest.ManifestError, match='2 recording.s. cannot fill 3 splits'):
    rebuild()
  manifest_path.write_text(full)
  clip_bytes = (tokens_dir / records[1].path).read_bytes()
  (tokens_dir / records[1].path).write_bytes(b'not an npz')
  with pytest.raises(manifest.ManifestError, match='cannot read'):
    rebuild()
  assert sorted(read_split(data_dir, 'train')) == sorted(r.clip_id for r in records)  # the old build, whole
  assert not [p.name for p in data_dir.iterdir() if p.name.startswith('.')]  # no staging folder left behind
  (tokens_dir / records[1].path).write_bytes(clip_bytes)
  counts = rebuild()
  assert counts == {'train': 1, 'validation': 1, 'test': 1}
  assert sorted(sum((list(read_split(data_dir, s)) for s in counts), [])) == sorted(r.clip_id for r in records)


def test_a_build_from_the_same_clips_is_kept_and_any_change_rebuilds(tmp_path):
  """What a resumed preprocessing run asks for (overwrite, keep_if_current): nothing new, nothing rebuilt."""
  tokens_dir, data_dir = tmp_path / 'tokens', tmp_path / 'tfds'
  records, _ = write_tokens(tokens_dir, num_recordings=3, clips_per_recording=1, augment=False)
  build = lambda fractions=(0.4, 0.3, 0.3): tfds_builder.build_dataset(
      tokens_dir, data_dir, split_fractions=fractions, overwrite=True, keep_if_current=True)
  info = data_dir / tfds_builder.NAME / '1.0.0' / 'dataset_info.json'
  counts = build()
  built = info.stat().st_mtime_ns
  assert build() == counts and info.stat().st_mtime_ns == built  # the same clips: kept as it was
  for change in (lambda: (os.utime(tokens_dir / records[0].path, ns=(1, 1)), build())[1],  # a clip written again
                 lambda: build((1, 0, 0)),  # other split settings
                 # plain overwrite (build_tfds --overwrite) always rebuilds
                 lambda: tfds_builder.build_dataset(tokens_dir, data_dir, split_fractions=(1, 0, 0), overwrite=True)):
    before = info.stat().st_mtime_ns
    change()
    assert info.stat().st_mtime_ns != before
  assert build((1, 0, 0)) == {'train': 3}
  (info.parent / 'features.json').unlink()  # a damaged build is rebuilt, not an error
  assert build((1, 0, 0)) == {'train': 3} and (info.parent / 'features.json').exists()
