"""The Beam pipeline end to end on tiny settings: outputs, bad inputs, 1 vs 2 workers, rerun, kill + resume."""

import functools
import http.server
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from apache_beam.options.pipeline_options import PipelineOptions

from configs.data import base
from preprocessing import beam_runners, ingest, local_workers, manifest, pipeline

REPO = Path(__file__).resolve().parents[2]
SR_IN = 16000  # inputs are resampled to 32 kHz
GOOD = {'rec_a': 4.0, 'rec_b': 2.5}
# rec_a's solo is silent in [1.5, 2.5) s: with 1 s frames every 0.5 s it splits into two windows.
EXPECTED_WINDOWS = {('rec_a', 0.0, 2.0), ('rec_a', 2.0, 4.0), ('rec_b', 0.0, 2.5)}
BAD = {  # recording -> (stage, words of the reason)
    'bad_corrupt': ('prepare', 'solo.wav'), 'bad_empty': ('prepare', 'empty'), 'bad_silent': ('prepare', 'silent'),
    'bad_short': ('prepare', 'too short'), 'bad_nobacking': ('prepare', 'does not exist'),
    'bad_quiet_solo': ('select', 'no window')}


def _tone(seconds, freq, amplitude=0.1):
  t = np.arange(int(seconds * SR_IN)) / SR_IN
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope='module')
def stems_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('stems')

  def write(name, backing, solo):
    (root / name).mkdir()
    if backing is not None:
      sf.write(root / name / 'backing.wav', backing, SR_IN)
    if solo is not None:
      sf.write(root / name / 'solo.wav', solo, SR_IN)

  for i, (name, seconds) in enumerate(GOOD.items()):
    solo = _tone(seconds, 440 + 50 * i)
    if name == 'rec_a':
      solo[int(1.5 * SR_IN):int(2.5 * SR_IN)] = 0
    write(name, _tone(seconds, 110 + 10 * i), solo)
  write('bad_corrupt', _tone(3, 110), None)
  (root / 'bad_corrupt' / 'solo.wav').write_bytes(b'RIFF\x00\x00garbage' * 50)
  write('bad_empty', None, _tone(3, 440))
  (root / 'bad_empty' / 'backing.wav').write_bytes(b'')
  write('bad_silent', _tone(3, 110), np.zeros(3 * SR_IN, np.float32))
  write('bad_short', _tone(1, 110), _tone(1, 440))
  write('bad_nobacking', None, _tone(3, 440))
  # Loud for 0.5 s only, then a faint noise floor: normalised to -14 LUFS it never holds 2 s above 0.05.
  quiet = np.concatenate([_tone(0.5, 440), _tone(2.5, 440, 1e-4)])
  write('bad_quiet_solo', _tone(3, 110), quiet)
  return root


def make_config(inputs, output_dir, *, kind='stems', workers=1, build_tfds=False, tfds_dir=''):
  c = base.get_config()
  c.source.kind = kind
  c.source.inputs = str(inputs)
  c.output_dir = str(output_dir)
  c.build_tfds = build_tfds
  c.tfds_data_dir = str(tfds_dir)
  c.codec.weights = 'random:0'
  c.demucs.name = 'demucs_unittest'
  c.select.frame_s, c.select.stride_s, c.select.min_window_s = 1.0, 0.5, 2.0
  c.augment.pitch_semitones, c.augment.tempo_rates = (), ()
  c.beam.num_workers = workers
  # One torch thread in every run: on AVX-512 CPUs torch's convolutions sum in an order that depends on
  # the thread count, which moved a near-tied EnCodec code (1 of 400) between 2 threads and 1.
  c.torch_threads = 1
  c.beam.direct_running_mode = 'multi_processing' if workers > 1 else 'in_memory'
  return c


def read_output(output_dir):
  """{clip_id: (record, backing, lead)} and the failures of a finished run."""
  records = manifest.read_manifest(output_dir)
  clips = {r.clip_id: (r, *manifest.load_clip(output_dir, r)) for r in records}
  failures = [json.loads(line) for line in (Path(output_dir) / manifest.FAILURES_NAME).read_text().splitlines()]
  return clips, failures


def assert_same_output(a, b):
  clips_a, failures_a = read_output(a)
  clips_b, failures_b = read_output(b)
  assert sorted(clips_a) == sorted(clips_b)
  for clip_id, (record, backing, lead) in clips_a.items():
    assert clips_b[clip_id][0] == record
    np.testing.assert_array_equal(clips_b[clip_id][1], backing)
    np.testing.assert_array_equal(clips_b[clip_id][2], lead)
  assert failures_a == failures_b
  assert (Path(a) / manifest.MANIFEST_NAME).read_bytes() == (Path(b) / manifest.MANIFEST_NAME).read_bytes()


@pytest.fixture(scope='module')
def clean_run(stems_root, tmp_path_factory):
  out = tmp_path_factory.mktemp('clean')
  config = make_config(stems_root, out / 'tokens', build_tfds=True, tfds_dir=out / 'tfds')
  config.split_fractions = (0.5, 0.5, 0.0)  # two good recordings
  summary = pipeline.run(config)
  return out / 'tokens', summary


def test_outputs_and_summary(clean_run, stems_root):
  tokens_dir, summary = clean_run
  clips, failures = read_output(tokens_dir)
  assert {(r.recording_id, r.clip_start_s, r.clip_end_s) for r, _, _ in clips.values()} == EXPECTED_WINDOWS
  for record, backing, lead in clips.values():
    assert record.augmentation == 'none' and record.codec.name == 'random:0'
    assert record.clip_id == pipeline.clip_id_for(record.recording_id, record.clip_start_s, record.clip_end_s, 'none')
    assert abs(record.num_frames - 50 * (record.clip_end_s - record.clip_start_s)) <= 1
    assert backing.shape == lead.shape == (4, record.num_frames) and backing.dtype == np.int16
    assert 0 <= backing.min() and lead.max() < 2048
    assert not np.array_equal(backing, lead)
  assert summary.recordings == len(GOOD) and summary.clips == len(EXPECTED_WINDOWS)
  assert summary.hours_kept == pytest.approx(sum(e - s for _, s, e in EXPECTED_WINDOWS) / 3600)
  assert summary.frames == sum(r.num_frames for r, _, _ in clips.values())
  assert summary.counters['clips_written'] == len(EXPECTED_WINDOWS)
  assert summary.counters['recordings_prepared'] == len(GOOD) + 1  # bad_quiet_solo fails in select
  assert summary.tfds_splits is not None and sum(summary.tfds_splits.values()) == len(EXPECTED_WINDOWS)
  # Bad inputs: one line each with the stage and the reason; the rest went on.
  assert sorted(f['item'] for f in failures) == sorted(BAD)
  for f in failures:
    stage, words = BAD[f['item']]
    assert f['stage'] == stage and words in f['reason'] and f['reason'], f
  text = summary.text()
  assert f'recordings {len(GOOD)} | ' in text and f'failures {len(BAD)}' in text and 'FAILED [select] bad_quiet_solo' in text
  assert not list(tokens_dir.rglob('.*.tmp'))
  assert manifest.recorded_sources(tokens_dir) == {name: str(stems_root.resolve() / name) for name in GOOD}


def test_two_workers_same_as_one(clean_run, stems_root, tmp_path, capfd, caplog):
  hooks = (signal.getsignal(signal.SIGINT), threading.excepthook, [h.filters[:] for h in logging.getLogger().handlers])
  summary = pipeline.run(make_config(stems_root, tmp_path / 'tokens', workers=2))
  # The Ctrl-C watch of local_workers.on_this_terminal is gone after a run that was not interrupted.
  assert hooks == (signal.getsignal(signal.SIGINT), threading.excepthook,
                   [h.filters[:] for h in logging.getLogger().handlers])
  assert summary.clips == len(EXPECTED_WINDOWS)
  assert summary.counters['clips_written'] == len(EXPECTED_WINDOWS)  # metrics gathered from both workers
  assert summary.counters['prepare_failed'] == len(BAD) - 1
  assert_same_output(clean_run[0], tmp_path / 'tokens')
  # Each worker warning is printed once, by the worker; the job service here does not repeat it.
  printed = capfd.readouterr().err
  for name, (stage, _) in BAD.items():  # in absl's format, as the driver's lines: 'W1207 19:30:00.123 thread file:line] '
    line = rf'^W\d{{4}} [\d:.]+ +\d+ pipeline\.py:\d+\] {stage} failed for {name}'
    assert len(re.findall(line, printed, re.M)) == 1, printed[-3000:]
  assert not [r for r in caplog.records if r.name.endswith('local_job_service') and r.levelno >= logging.WARNING]


def test_a_worker_process_prints_its_log_lines_itself(monkeypatch):
  """What a DirectRunner worker does on importing pipeline.py (which imports local_workers): add a stderr
  handler once, only when told."""
  from apache_beam.runners.worker import log_handler

  class FakeFnApiHandler(logging.Handler):  # Beam's handler that sends log lines to the job service
    def emit(self, record):
      pass

  monkeypatch.setattr(log_handler, 'FnApiLogRecordHandler', FakeFnApiHandler)
  root = logging.getLogger()
  monkeypatch.setattr(root, 'handlers', [FakeFnApiHandler()])
  monkeypatch.setattr(sys, 'excepthook', sys.excepthook)
  local_workers.in_worker()  # not told (no environment variable): nothing changes
  assert [type(h) for h in root.handlers] == [FakeFnApiHandler]
  monkeypatch.setenv(local_workers.WORKER_ENV, '1')
  local_workers.in_worker()
  local_workers.in_worker()
  assert [type(h) for h in root.handlers] == [FakeFnApiHandler, logging.StreamHandler]
  assert root.handlers[1].stream is sys.stderr
  record = logging.LogRecord('preprocessing.pipeline', logging.INFO, '/x/pipeline.py', 7, 'hi', None, None)
  line = root.handlers[1].format(record)
  assert re.fullmatch(r'I\d{4} [\d:.]+ +\d+ pipeline\.py:7\] hi', line), line  # absl's format, as the driver's
  # On Ctrl-C, Beam's 'Python sdk harness failed' record with the KeyboardInterrupt is printed by neither.
  def record(error):
    try:
      raise error
    except BaseException:  # pylint: disable=broad-except
      return logging.LogRecord('w', logging.CRITICAL, __file__, 1, 'Python sdk harness failed: ', None, sys.exc_info())
  for handler in root.handlers:
    assert not handler.filter(record(KeyboardInterrupt())) and handler.filter(record(ValueError('bad')))
  assert sys.excepthook.quiet_on_interrupt


def test_after_ctrl_c_beam_teardown_errors_are_quiet_until_the_next_run(monkeypatch):
  """local_workers.on_this_terminal in the driver: after a Ctrl-C (SIGINT here) Beam's log records and
  thread errors are dropped while the process ends; a next run in the same process (a notebook) undoes it."""
  monkeypatch.setattr(threading, 'excepthook', threading.excepthook)
  previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal's python
  try:
    before = (threading.excepthook, [h.filters[:] for h in logging.getLogger().handlers])
    beam_record = logging.LogRecord('apache_beam.runners.worker.data_plane', logging.ERROR, __file__, 1,
                                    'Failed to read inputs in the data plane.', None, None)
    ours = logging.LogRecord('preprocessing.pipeline', logging.WARNING, __file__, 1, 'x failed', None, None)
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:
      workers = PipelineOptions(['--runner=DirectRunner', '--direct_running_mode=multi_processing'])
      with pytest.raises(KeyboardInterrupt), local_workers.on_this_terminal(workers):
        assert handler.filter(beam_record)  # before the interrupt: printed
        signal.raise_signal(signal.SIGINT)
      assert not handler.filter(beam_record) and handler.filter(ours)
      assert threading.excepthook is not before[0]
      with local_workers.on_this_terminal(workers):
        assert handler.filter(beam_record)
      assert handler.filters == [] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
      assert threading.excepthook is before[0]
    finally:
      logging.getLogger().removeHandler(handler)
    assert [h.filters for h in logging.getLogger().handlers] == before[1]
  finally:
    signal.signal(signal.SIGINT, previous_sigint)


def test_rerun_skips_finished_work(clean_run, stems_root):
  tokens_dir = clean_run[0]
  before = {p.name: p.stat().st_mtime_ns for p in (tokens_dir / 'clips').iterdir()}
  summary = pipeline.run(make_config(stems_root, tokens_dir))
  assert summary.counters.get('recordings_skipped') == len(GOOD)
  assert 'clips_written' not in summary.counters
  assert {p.name: p.stat().st_mtime_ns for p in (tokens_dir / 'clips').iterdir()} == before
  assert summary.clips == len(EXPECTED_WINDOWS) and len(summary.failures) == len(BAD)  # failures are retried
  assert summary.not_in_inputs == []


def test_recordings_missing_from_the_inputs_are_named_and_kept(clean_run, stems_root, tmp_path):
  tokens_dir, fewer = tmp_path / 'tokens', tmp_path / 'stems'
  shutil.copytree(clean_run[0], tokens_dir)
  shutil.copytree(stems_root / 'rec_b', fewer / 'rec_b')  # moved: keeps its id, skipped as finished
  summary = pipeline.run(make_config(fewer, tokens_dir))
  assert summary.counters.get('recordings_skipped') == 1 and 'clips_written' not in summary.counters
  assert summary.not_in_inputs == ['rec_a'] and summary.clips == len(EXPECTED_WINDOWS)
  assert "1 recording(s) of earlier runs are not among these inputs" in summary.text()


def test_changed_settings_are_refused(clean_run, stems_root):
  config = make_config(stems_root, clean_run[0])
  config.select.threshold = 0.1
  with pytest.raises(pipeline.PipelineError, match='select differ'):
    pipeline.run(config)


def test_unusable_settings_or_weights_stop_the_run_before_it_writes(stems_root, tmp_path, monkeypatch):
  """Bad settings, inputs and missing weights are refused before the output folder exists; a folder whose
  run wrote no clip does not hold later runs to its settings."""
  out = tmp_path / 'tokens'
  config = make_config(stems_root, out)
  config.select.stride_s, config.split_fractions, config.augment.pitch_semitones = 0.0, (0.5, 0.5, 0.5), (2, 2)
  with pytest.raises(pipeline.PipelineError) as e:
    pipeline.run(config)
  for words in ('config.select.stride_s=0.0 (must be > 0 seconds)', 'config.split_fractions=[0.5, 0.5, 0.5]',
                'Repeated augmentation'):
    assert words in str(e.value)
  with pytest.raises(ingest.IngestError):
    pipeline.run(make_config(tmp_path / 'nowhere', out))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('HF_HOME', str(tmp_path / 'hf'))
  config = make_config(stems_root, out)
  config.codec.weights = 'facebook/encodec_32khz'
  with pytest.raises(pipeline.PipelineError, match='huggingface-cli download facebook/encodec_32khz'):
    pipeline.run(config)
  # A remote runner whose packages this Python lacks (here: as if Beam's gcp extras were missing).
  monkeypatch.setitem(beam_runners._NEEDS, 'dataflow', ('saxgpt_no_such_module', 'gcp'))
  with pytest.raises(pipeline.PipelineError, match=re.escape(
      "--runner=DataflowRunner needs Beam's gcp extras, which this Python lacks (No module named "
      "'saxgpt_no_such_module'): pip install 'apache-beam[gcp]==")):
    pipeline.run(make_config(stems_root, out), ['--runner=DataflowRunner', '--project=p', '--region=r'])
  assert not out.exists()
  cfg = json.loads(make_config(stems_root, out).to_json())
  out.mkdir()
  pipeline.check_output_dir({**cfg, 'select': {**cfg['select'], 'threshold': 0.5}})  # a run that then failed
  pipeline.check_output_dir(cfg)  # no clips: the new settings replace the old
  manifest.write_part(out, 'rec_a', [], complete=False)
  with pytest.raises(pipeline.PipelineError, match='select differ'):
    pipeline.check_output_dir({**cfg, 'select': {**cfg['select'], 'threshold': 0.5}})


def test_separated_stems_keep_their_duration_at_any_sample_rate(tmp_path):
  path = tmp_path / 'mix.wav'
  sf.write(path, np.stack([_tone(3, 220) + _tone(3, 660), _tone(3, 330)], 1), SR_IN)
  config = make_config(path, tmp_path / 'tokens', kind='local')
  config.audio.sample_rate = 16000
  prepare = pipeline.Prepare(json.loads(config.to_json()))
  prepare.setup()
  [(_, _, backing, solo)] = prepare.process(ingest.Recording('mix', str(path), mix=str(path)))
  assert backing.shape == solo.shape == (3 * 16000,)


def _cli(stems_root, output_dir, *extra):
  return [sys.executable, '-m', 'preprocessing', '--config=configs/data/synth.py',
          f'--config.source.inputs={stems_root}', f'--config.output_dir={output_dir}', '--config.build_tfds=False',
          '--config.select.frame_s=1.0', '--config.select.stride_s=0.5', '--config.select.min_window_s=2.0',
          '--config.demucs.name=demucs_unittest', '--config.torch_threads=1', *extra]


def _wait_for_a_clip(proc, out):
  """Until the running CLI `proc` has written its first clip into `out`, which must leave work to stop."""
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None and not list((out / 'clips').glob('*.npz')):
    time.sleep(0.02)
  assert proc.poll() is None, 'the run ended before it could be stopped'


def test_ctrl_c_with_worker_processes_prints_one_line(stems_root, tmp_path):
  """Ctrl-C (SIGINT to the terminal's process group: driver and workers) once the first clip is written:
  exit 130 with the line that says what was kept, and no worker's or Beam thread's traceback."""
  out = tmp_path / 'tokens'
  args = _cli(stems_root, out, '--config.beam.direct_running_mode=multi_processing', '--config.beam.num_workers=2')
  # As a shell started from a terminal: SIGINT at its default (a test runner's workers may ignore it).
  enable_sigint = 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])'
  proc = subprocess.Popen([sys.executable, '-c', enable_sigint, *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    _wait_for_a_clip(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
  assert proc.returncode == 130, stderr[-3000:]
  assert f'preprocessing interrupted: the clips finished so far are kept in {out}' in stderr
  for noise in ('Traceback', 'KeyboardInterrupt', 'Aborted', 'harness failed', 'Exception in thread'):
    assert noise not in stderr + stdout, stderr[-3000:]
  assert 0 < len(list((out / 'clips').glob('*.npz'))) < len(EXPECTED_WINDOWS)
  assert not (out / manifest.MANIFEST_NAME).exists()


def test_kill_and_resume(clean_run, stems_root, tmp_path):
  """SIGKILL the CLI once its first clip is written, rerun it: same manifest and tokens as a clean run."""
  out = tmp_path / 'tokens'
  args = _cli(stems_root, out, '--config.beam.direct_running_mode=in_memory', '--config.beam.num_workers=1')
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for_a_clip(proc, out)
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.wait(timeout=30)
  assert 0 < len(list((out / 'clips').glob('*.npz'))) < len(EXPECTED_WINDOWS)
  assert not (out / manifest.MANIFEST_NAME).exists()
  for path in (out / 'clips').glob('*.npz'):  # every clip on disk is whole
    with np.load(path) as z:
      assert z['lead'].shape[0] == 4
  done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180)
  assert done.returncode == 1, done.stderr[-3000:]  # the bad inputs failed
  assert f'clips {len(EXPECTED_WINDOWS)} |' in done.stdout and f'failures {len(BAD)}' in done.stdout
  assert_same_output(clean_run[0], out)
  assert not list(out.rglob('.*.tmp'))


def test_cli_refuses_bad_urls(tmp_path):
  done = subprocess.run(
      [sys.executable, '-m', 'preprocessing', '--config=configs/data/youtube.py',
       '--config.source.inputs=file:///etc/passwd', f'--config.output_dir={tmp_path}'],
      cwd=REPO, capture_output=True, text=True, timeout=60)
  assert done.returncode == 2 and 'only http:// and https://' in done.stderr


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


def test_youtube_stages_with_separation(tmp_path):
  """yt-dlp from a local server -> demucs_unittest -> RMS windows, stage by stage (the stages the youtube
  and local sources add to the pipeline runs above); a missing URL becomes a failure."""
  www = tmp_path / 'www'
  www.mkdir()
  mix = np.stack([_tone(3, 220) + _tone(3, 660), _tone(3, 220) + _tone(3, 330)], 1)
  sf.write(www / 'tune.wav', mix, SR_IN)
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=www))
  thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.1}, daemon=True)
  thread.start()
  host = f'http://127.0.0.1:{server.server_address[1]}'
  config = make_config(f'{host}/tune.wav', tmp_path / 'tokens', kind='youtube')
  config.source.allowed_hosts = ('127.0.0.1',)
  config.source.socket_timeout_s = 5.0
  cfg = json.loads(config.to_json())
  cfg['work_dir'] = str(tmp_path / 'work')
  try:
    [video] = pipeline.ExpandUrls(cfg).process(f'{host}/tune.wav')
    [failure] = pipeline.ExpandUrls(cfg).process(f'{host}/missing.wav')
    [recording] = pipeline.Download(cfg).process(video)
  finally:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
  assert failure.tag == pipeline.FAILURES and failure.value['stage'] == 'expand'
  assert recording == ingest.Recording('generic-tune', f'{host}/tune.wav',
                                       mix=str(tmp_path / 'work' / 'downloads' / 'generic-tune.wav'))
  prepare = pipeline.Prepare(cfg)
  prepare.setup()  # loads demucs_unittest
  [(rid, source, backing, solo)] = prepare.process(recording)
  assert rid == 'generic-tune' and backing.shape == solo.shape == (3 * 32000,) and backing.dtype == np.float32
  assert not np.allclose(backing, solo)
  [task] = pipeline.SelectClips(cfg).process((rid, source, backing, solo))  # separated solo: loud throughout
  assert (task.recording_id, task.start_s, task.end_s) == ('generic-tune', 0.0, 3.0)
  assert task.backing.shape == task.solo.shape == (3 * 32000,)
  manifest.write_part(cfg['output_dir'], rid, [], complete=True)
  assert list(pipeline.Download(cfg).process(video)) == []  # a finished recording is not fetched again
  assert list(prepare.process(recording)) == []


def test_filosax_prepare(tmp_path):
  """FiloSax through the Prepare stage: Backing/01/*.wav summed, each participant's take paired, cropped."""
  root = tmp_path / 'FiloSax'
  for path, wave in {'Backing/01/Bass.wav': _tone(3, 55), 'Backing/01/Piano.wav': _tone(2.5, 262),
                     'Participant 1/01/Sax.wav': _tone(3, 440), 'Participant 2/01/Sax.wav': _tone(3.2, 494),
                     'Participant 2/02/Sax.wav': _tone(3, 523)}.items():
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(root / path, wave, SR_IN)
  recordings = ingest.list_filosax(str(root))
  prepare = pipeline.Prepare(json.loads(make_config(root, tmp_path / 'tokens', kind='filosax').to_json()))
  prepare.setup()
  outputs = {r.recording_id: list(prepare.process(r)) for r in recordings}
  backing, solo = {}, {}
  for rid in ('filosax_p1_01', 'filosax_p2_01'):
    [(out_rid, source, backing[rid], solo[rid])] = outputs[rid]
    assert out_rid == rid and source == str(root / f'Participant {rid[9]}' / '01')
    assert backing[rid].shape == solo[rid].shape == (3 * 32000,)  # cropped to the 3 s backing
  np.testing.assert_array_equal(backing['filosax_p1_01'], backing['filosax_p2_01'])  # one backing per piece
  spectrum = np.abs(np.fft.rfft(backing['filosax_p1_01'][:64000]))  # 2 s: both parts sound
  assert spectrum[55 * 2] > 0.1 * spectrum.max() and spectrum[262 * 2] > 0.1 * spectrum.max()
  [failure] = outputs['filosax_p2_02']
  assert failure.tag == pipeline.FAILURES and 'no backing' in failure.value['reason']
