"""Training end to end on CPU through `python -m saxgpt_jax.train`: mesh equivalence, two processes over
gloo, exact resume after kill -9, SIGTERM checkpoints, divergence handling, and config errors.

All runs share one tiny model (1+1 layers, d_model 32, 16-frame windows, dropout on) and a TFDS dataset of
random tokens built once. The uninterrupted one-device run is the reference the other runs must match.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tiny
from saxgpt_jax import checkpoint
from saxgpt_jax import metrics_log
from saxgpt_jax import sharding
from saxgpt_jax import train
from saxgpt_jax import train_state
from tests.conftest import build_token_dataset, damage_train_shards

REPO_ROOT = Path(__file__).resolve().parents[2]
NUM_STEPS = 8
OVERRIDES = {
    'model.num_encoder_layers': 1, 'model.num_decoder_layers': 1, 'model.d_model': 32,
    'model.dim_feedforward': 64, 'model.max_seq_len': 21, 'data.seq_len': 16, 'data.stride': 8,
    'train.global_batch_size': 8, 'train.num_steps': NUM_STEPS, 'train.log_every': 1,
    'train.eval_every': 100, 'train.eval_batches': 1, 'train.checkpoint_every': 2,
}
SUBPROCESS_TIMEOUT_S = 240


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  """12 clips of 20..60 random frames in 6 recordings, split 3/1.5/1.5 by recording."""
  return build_token_dataset(tmp_path_factory.mktemp('data'), min_frames=20, max_frames=60)


def make_config(data_dir, **overrides):
  config = tiny.get_config()
  for key, value in {**OVERRIDES, 'data.data_dir': str(data_dir), **overrides}.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def train_losses(workdir):
  return {step: record['loss'] for step, record in metrics_log.read_metrics(workdir, 'train').items()}


def assert_losses_close(got, want, rtol):
  assert sorted(got) == sorted(want), (sorted(got), sorted(want))
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=rtol)


def test_config_errors_are_clear_and_early(data_dir, tmp_path):
  bad = make_config(tmp_path / 'nowhere', **{
      'model.num_heads': 5, 'mesh.data': 3, 'train.global_batch_size': 6, 'model.max_seq_len': 20,
      'train.dropout_rng': 'philox'})
  with pytest.raises(train.ConfigError) as error:
    train.validate_config(bad, 8)
  message = str(error.value)
  for expected in ('num_heads=5 does not divide', 'mesh', 'max_seq_len=20', 'no TFDS dataset',
                   "dropout_rng='philox' must be one of threefry2x32, philox4x32, rbg"):
    assert expected in message, message
  with pytest.raises(train.ConfigError, match='not divisible by mesh.data'):
    train.validate_config(make_config(data_dir, **{'train.num_microbatches': 3}), 8)
  assert train.validate_config(make_config(data_dir, **{'mesh.fsdp': 2}), 8) == (4, 2, 1)
  bad = make_config(data_dir, **{'train.global_batch_size': 0, 'data.stride': 0, 'train.learning_rate': -1.0,
                                 'train.eval_batches': -1, 'model.dtype': 'float64x'})
  with pytest.raises(train.ConfigError) as error:
    train.validate_config(bad, 1)
  for expected in ('global_batch_size=0 must be >= 1', 'data.stride=0', 'learning_rate=-1.0 must be > 0',
                   'eval_batches=-1 must be >= 0', "model.dtype='float64x'"):
    assert expected in str(error.value), str(error.value)
  train_only = build_token_dataset(tmp_path / 'train_only', min_frames=20, max_frames=30, num_clips=4,
                                   split_fractions=(1.0, 0.0, 0.0))
  with pytest.raises(train.ConfigError, match='has no validation or test split'):
    train.validate_config(make_config(train_only), 1)


def test_first_ctrl_c_or_sigterm_asks_for_a_checkpoint_and_a_second_ctrl_c_stops():
  class NoNotice:
    reached_preemption = staticmethod(lambda step: False)

  started_with = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal's python
  try:
    for first in (signal.SIGTERM, signal.SIGINT):
      preemption = train._Preemption(NoNotice())
      try:
        assert not preemption.reached(1)
        os.kill(os.getpid(), first)
        assert preemption.reached(1)
        with pytest.raises(KeyboardInterrupt):
          os.kill(os.getpid(), signal.SIGINT)
          time.sleep(0.1)  # the handler runs between bytecodes
      finally:
        preemption.close()
      assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # Started ignoring Ctrl-C (a background job of a shell script): it stays ignored; SIGTERM still counts.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preemption = train._Preemption(NoNotice())
    try:
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
      assert not preemption.reached(1) and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
      os.kill(os.getpid(), signal.SIGTERM)
      assert preemption.reached(1)
    finally:
      preemption.close()
  finally:
    signal.signal(signal.SIGINT, started_with)



def test_dropout_rng_gives_seeded_masks_in_its_own_impl():
  key = jax.random.fold_in(jax.random.key(0), 3)
  masks = {}
  for impl in train_state.DROPOUT_RNGS:
    keep = lambda k: np.asarray(jax.random.bernoulli(train_state.dropout_key(k, impl), 0.9, (64, 64)))
    assert str(jax.random.key_impl(train_state.dropout_key(key, impl))) == impl
    masks[impl] = keep(key)
    np.testing.assert_array_equal(keep(key), masks[impl])  # seeded
    assert not np.array_equal(keep(jax.random.fold_in(key, 1)), masks[impl])  # another microbatch or step
    assert abs(masks[impl].mean() - 0.9) < 0.03
  assert not np.array_equal(masks['rbg'], masks['threefry2x32'])


FAST_COMPILE = {'xla_backend_optimization_level': 0}


def compiled_step(trainer):
  """The train step compiled with the fast CPU compile options."""
  return trainer.train_step.lower(trainer.abstract_sharded_state(), trainer.abstract_batch).compile(
      compiler_options=FAST_COMPILE)


def test_microbatches_and_remat_give_the_full_batch_step(data_dir):
  """2 microbatches (scan inside the step) give the loss, gradient norm and update of one big batch;
  padding differs between rows, so the loss is normalised over all targets, not per microbatch. So do
  2 microbatches with the layers rematerialised (`model.remat`, a scan over the layers)."""
  rng = np.random.default_rng(0)
  length = OVERRIDES['data.seq_len'] + 4 + 1
  batch = {'src': rng.integers(0, 2048, (8, 4, length)), 'src_mask': np.ones((8, length), bool),
           'tgt_in': rng.integers(0, 2048, (8, 4, length - 1)), 'tgt_out': rng.integers(0, 2048, (8, 4, length - 1))}
  batch['tgt_out'][::3, :, 5:] = 2048
  batch = {name: value.astype(np.int32) if value.dtype != bool else value for name, value in batch.items()}
  mesh = sharding.make_mesh({'data': 2, 'fsdp': 1, 'tensor': 1}, jax.devices()[:2])
  results, initial = [], None
  for microbatches, remat in ((1, False), (2, False), (2, True)):
    config = make_config(data_dir, **{'train.num_microbatches': microbatches, 'model.dropout': 0.0,
                                      'model.remat': remat})
    trainer = train_state.make_trainer(config, mesh)
    if initial is None:
      initial = jax.device_get(trainer.init.lower(0).compile(compiler_options=FAST_COMPILE)(0))
    state = jax.device_put(initial, trainer.state_shardings)
    new_state, metrics = compiled_step(trainer)(state, sharding.global_batch(batch, mesh))
    results.append((jax.device_get(new_state.params), jax.device_get(metrics)))
  (params1, metrics1), *others = results
  for params2, metrics2 in others:
    for name in ('nll_sum', 'correct', 'count'):
      np.testing.assert_allclose(metrics2['stats'][name], metrics1['stats'][name], rtol=1e-5)
    np.testing.assert_allclose(metrics2['grad_norm'], metrics1['grad_norm'], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), params2, params1)


# --- The real command line in subprocesses ----------------------------------------------------------
# Each subprocess has its own XLA_FLAGS (device count; optimization level 0 compiles this tiny model ~8x
# faster) and shares one persistent compilation cache, so reruns of the same program do not compile again.


@pytest.fixture(scope='module')
def compile_cache(tmp_path_factory):
  return tmp_path_factory.mktemp('jax_cache')


def command(data_dir, workdir, **overrides):
  config = {**OVERRIDES, 'data.data_dir': str(data_dir), **overrides}
  return [sys.executable, '-m', 'saxgpt_jax.train', '--config=configs/tiny.py', f'--workdir={workdir}'] + [
      f'--config.{key}={value}' for key, value in config.items()]


def environment(compile_cache, devices=1):
  env = dict(os.environ)
  env.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0',
             JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(compile_cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', PYTHONUNBUFFERED='1')
  return env


def start(args, env, log_path):
  with open(log_path, 'w') as log:
    return subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(process, log_path):
  """Waits (bounded) and returns (exit code, output)."""
  try:
    process.wait(timeout=SUBPROCESS_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
    pytest.fail(f'timed out after {SUBPROCESS_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}')
  return process.returncode, log_path.read_text()


def run(args, env, log_path):
  code, output = finish(start(args, env, log_path), log_path)
  assert code == 0, output[-3000:]
  return output


def wait_for_checkpoint(process, directory, step, log_path):
  deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
  while not (directory / str(step) / 'commit_success.txt').exists():
    if process.poll() is not None:
      pytest.fail(f'training exited ({process.returncode}) before checkpoint {step}:\n{log_path.read_text()[-3000:]}')
    if time.monotonic() > deadline:
      process.kill()
      process.wait()
      pytest.fail(f'no checkpoint {step} after {SUBPROCESS_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}')
    time.sleep(0.01)


@pytest.fixture(scope='module')
def reference(data_dir, compile_cache, tmp_path_factory):
  """One device, one process, uninterrupted: ({step: train loss}, workdir, output)."""
  workdir = tmp_path_factory.mktemp('reference')
  output = run(command(data_dir, workdir), environment(compile_cache), workdir.parent / 'reference.log')
  losses = train_losses(workdir)
  assert sorted(losses) == list(range(1, NUM_STEPS + 1)), output[-3000:]
  assert all(np.isfinite(list(losses.values())))
  return losses, workdir, output


def test_command_trains_evaluates_checkpoints_and_reports(reference):
  _, workdir, output = reference
  for expected in ("mesh {'data': 1, 'fsdp': 1, 'tensor': 1}", 'parameters ', 'MiB', 'train step compiled in',
                   'validation loss', 'test: loss'):
    assert expected in output, output[-3000:]
  final = metrics_log.read_metrics(workdir, 'train')[NUM_STEPS]
  assert {'learning_rate', 'grad_norm', 'frames_per_s', 'step_time_s', 'accuracy_k3'} <= set(final)
  assert set(metrics_log.read_metrics(workdir, 'validation')) == {NUM_STEPS}
  assert metrics_log.read_metrics(workdir, 'test')[NUM_STEPS]['perplexity'] > 1
  assert any((workdir / 'tensorboard').iterdir())
  with checkpoint.manager(workdir / 'checkpoints', read_only=True) as mngr:
    assert mngr.all_steps() == [4, 6, 8]  # keep_latest=3; step 8 is also the best (only) validated one
    assert checkpoint.best_step(mngr) == NUM_STEPS
  model, config = checkpoint.load_model(workdir, best=True)
  assert config.model.d_model == 32 and model.cfg.d_model == 32


def test_a_resume_with_another_model_or_a_damaged_checkpoint_is_refused_and_changes_nothing(data_dir, reference,
                                                                                             compile_cache, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(reference[1], workdir)
  saved = (workdir / 'checkpoints' / 'config.json').read_text()
  for changes, words in (({'model.activation': 'relu', 'model.scale_embeddings': False},
                          "'activation': ('gelu', 'relu'), 'scale_embeddings': (True, False)"),
                         ({'model.d_model': 48}, "'d_model': (32, 48)")):
    with pytest.raises(train.ConfigError, match=re.escape(words)):
      train.train_and_evaluate(make_config(data_dir, **changes), workdir)
    assert (workdir / 'checkpoints' / 'config.json').read_text() == saved
  array_data = list((workdir / 'checkpoints' / str(NUM_STEPS) / 'params').glob('ocdbt.process_*/d/*'))
  assert array_data, 'orbax wrote its array data elsewhere: update this test'
  for path in array_data:
    path.write_bytes(b'')  # the array data of the latest checkpoint lost, its metadata intact
  longer = {'train.num_steps': NUM_STEPS + 2}  # a finished run restores nothing: ask for more steps
  with pytest.raises(checkpoint.CheckpointError, match=f'checkpoint {NUM_STEPS} in .* cannot be read') as error:
    train.train_and_evaluate(make_config(data_dir, **longer), workdir)
  # It names what failed (TensorStore's error under orbax's: the array, the file, an empty value), without
  # the TensorStore spec orbax's own message goes on with.
  assert re.search(r'; cause: ValueError: .*Error reading "[^"]+" in .* local file "[^"]+".* size 0\)',
                   str(error.value)), str(error.value)
  assert 'TensorStore details' not in str(error.value) and 'bound method' not in str(error.value)
  # On the command line that is all the user sees: one line, not also a traceback from every array read
  # orbax abandoned.
  code, output = finish(start(command(data_dir, workdir, **longer), environment(compile_cache), tmp_path / 'damaged.log'),
                        tmp_path / 'damaged.log')
  assert code == 1 and output.startswith(f'error: checkpoint {NUM_STEPS} in ') and output.count('\n') == 1, output


def test_a_damaged_dataset_is_one_error_line_before_the_run_writes_anything(data_dir, compile_cache, tmp_path):
  damaged = damage_train_shards(data_dir, tmp_path / 'damaged')
  workdir = tmp_path / 'run'
  code, output = finish(start(command(damaged, workdir), environment(compile_cache), tmp_path / 'run.log'),
                        tmp_path / 'run.log')
  assert code == 1 and output.count('\n') == 1, output
  assert output.startswith(f"error: saxgpt_tokens split 'train' in {damaged}: record "), output
  assert output.rstrip().endswith(f'--data_dir={damaged} --overwrite'), output
  assert not list(workdir.glob('checkpoints/*')) and not (workdir / metrics_log.METRICS_FILE).exists()


def test_a_finished_run_says_when_its_test_result_is_from_other_data(data_dir, reference, tmp_path, capsys):
  """Rerun with another data.data_dir: the recorded test result is named as the old data's, with the
  evaluate command for the new; the same folder under another spelling is the same data."""
  workdir, moved = tmp_path / 'run', tmp_path / 'moved'
  shutil.copytree(reference[1], workdir)
  shutil.copytree(data_dir, moved)
  recorded = metrics_log.read_metrics(workdir, 'test')[NUM_STEPS]
  for where in (moved, f'{data_dir}/../{data_dir.name}/'):
    capsys.readouterr()
    result = train.train_and_evaluate(make_config(where), workdir)
    assert result['test_loss'] == recorded['loss']
    printed = capsys.readouterr().out
    assert f'finished at step {NUM_STEPS}' in printed, printed
    hint = (f"that test ran on data.data_dir={data_dir}, not on this command's {where}; evaluate it there with "
            f'python -m saxgpt_jax.evaluate --checkpoint={workdir} --data_dir={where}')
    assert (hint in printed) == (where == moved), printed


@pytest.mark.slow
def test_mesh_2x2x2_equals_one_device_and_its_checkpoint_resumes_on_one(data_dir, reference, compile_cache, tmp_path):
  args = command(data_dir, tmp_path, **{'mesh.data': 2, 'mesh.fsdp': 2, 'mesh.tensor': 2})
  output = run(args, environment(compile_cache, devices=8), tmp_path / 'run.log')
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in output
  assert_losses_close(train_losses(tmp_path), reference[0], rtol=1e-5)
  # The same command again: the run is finished, so it only reports the test result it recorded.
  records = (tmp_path / 'metrics.jsonl').read_text()
  output = run(args, environment(compile_cache, devices=8), tmp_path / 'again.log')
  test_loss = metrics_log.read_metrics(tmp_path, 'test')[NUM_STEPS]['loss']
  assert f'finished at step {NUM_STEPS}' in output and f'test: loss {test_loss:.4f}' in output, output[-3000:]
  assert 'compiled' not in output and (tmp_path / 'metrics.jsonl').read_text() == records
  # As if it had been stopped while testing, on one device: restores the 8-device checkpoint (state
  # re-sharded), compiles no train step, and gives the reference's test loss.
  (tmp_path / 'metrics.jsonl').write_text(''.join(
      line + '\n' for line in records.splitlines() if json.loads(line)['split'] != 'test'))
  output = run(command(data_dir, tmp_path), environment(compile_cache, devices=1), tmp_path / 'one.log')
  assert 'train step not compiled' in output, output[-3000:]
  assert f'resumed from checkpoint {NUM_STEPS}' in output and "mesh {'data': 1," in output, output[-3000:]
  ref_test = metrics_log.read_metrics(reference[1], 'test')[NUM_STEPS]['loss']
  np.testing.assert_allclose(metrics_log.read_metrics(tmp_path, 'test')[NUM_STEPS]['loss'], ref_test, rtol=1e-5)


@pytest.mark.slow
def tensorboard_scalars(logdir, tag):
  """(the steps of the SessionLog START events, {step: [values of `tag`]} as TensorBoard shows them): event
  files in name (time) order, and a START at step P hides the events read so far whose step is >= P."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  starts, shown = [], {}
  for path in sorted(Path(logdir).glob('events.out.tfevents.*')):
    data, pos = path.read_bytes(), 0
    while pos < len(data):  # TFRecord framing: uint64 length, uint32 crc, the event, uint32 crc
      length = int.from_bytes(data[pos:pos + 8], 'little')
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      if event.HasField('session_log') and event.session_log.status == event_pb2.SessionLog.START:
        starts.append(event.step)
        shown = {step: values for step, values in shown.items() if step < event.step}
      for value in event.summary.value:
        if value.tag == tag:
          shown.setdefault(event.step, []).append(np.float32(value.simple_value))
  return starts, shown


def test_kill_9_then_rerun_continues_exactly(data_dir, reference, compile_cache, tmp_path):
  workdir, log_path = tmp_path / 'run', tmp_path / 'first.log'
  first = start(command(data_dir, workdir), environment(compile_cache), log_path)
  wait_for_checkpoint(first, workdir / 'checkpoints', 2, log_path)
  first.send_signal(signal.SIGKILL)
  assert finish(first, log_path)[0] == -signal.SIGKILL
  assert not metrics_log.read_metrics(workdir, 'test'), 'the run ended before kill -9: nothing was tested'
  seen = len((workdir / 'metrics.jsonl').read_text().splitlines())

  output = run(command(data_dir, workdir), environment(compile_cache), tmp_path / 'second.log')
  assert 'resumed from checkpoint' in output, output[-3000:]
  resumed_from = int(output.split('resumed from checkpoint ')[1].split(';')[0])
  assert 2 <= resumed_from < NUM_STEPS
  new_records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()[seen:]]
  resumed = {r['step']: r['loss'] for r in new_records if r['split'] == 'train'}
  want = {step: loss for step, loss in reference[0].items() if step > resumed_from}
  assert resumed == want  # same program, same batches, same dropout: bit-identical
  # TensorBoard hides what the killed run logged past its checkpoint: one point per step, no doubling back.
  starts, shown = tensorboard_scalars(workdir / metrics_log.TENSORBOARD_DIR, 'train/loss')
  assert resumed_from + 1 in starts, starts
  assert shown == {step: [np.float32(loss)] for step, loss in reference[0].items()}, shown


@pytest.mark.slow
def test_init_from_then_sigterm_saves_and_exits_0(data_dir, reference, compile_cache, tmp_path):
  workdir, log_path = tmp_path / 'run', tmp_path / 'run.log'
  args = command(data_dir, workdir, **{'train.num_steps': 10_000, 'init_from': reference[1]})
  process = start(args, environment(compile_cache), log_path)
  wait_for_checkpoint(process, workdir / 'checkpoints', 2, log_path)
  process.send_signal(signal.SIGTERM)
  code, output = finish(process, log_path)
  assert code == 0, output[-3000:]
  assert 'preempted: saved checkpoint' in output, output[-3000:]
  saved = int(output.split('preempted: saved checkpoint ')[1].split()[0])
  with checkpoint.manager(workdir / 'checkpoints', read_only=True) as mngr:
    assert mngr.latest_step() == saved >= 2
  # Started from the reference's trained parameters: the same first batch already has a lower loss.
  assert f'parameters from {reference[1]} (step {NUM_STEPS})' in output, output[-3000:]
  assert train_losses(workdir)[1] < reference[0][1]


@pytest.mark.slow
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, compile_cache, tmp_path):
  # Adam moves every weight by ~lr: 1e37 keeps step 1 finite and overflows the activations of step 2.
  args = command(data_dir, tmp_path, **{'train.learning_rate': 1e37, 'train.warmup_steps': 0,
                                        'train.checkpoint_every': 1})
  code, output = finish(start(args, environment(compile_cache), tmp_path / 'run.log'), tmp_path / 'run.log')
  assert code == 1, output[-3000:]
  assert 'non-finite training loss' in output and 'at step 2' in output, output[-3000:]
  with checkpoint.manager(tmp_path / 'checkpoints', read_only=True) as mngr:
    assert mngr.all_steps() == [1]
  assert sorted(train_losses(tmp_path)) == [1]


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_over_gloo_equal_one_process(data_dir, reference, compile_cache, tmp_path):
  workdir = tmp_path / 'run'

  def run_both(name):
    port, processes, outputs = free_port(), [], []
    for process_id in range(2):
      args = command(data_dir, workdir) + [
          f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={process_id}']
      log_path = tmp_path / f'{name}{process_id}.log'
      processes.append((start(args, environment(compile_cache), log_path), log_path))
    for process, log_path in processes:
      code, output = finish(process, log_path)
      assert code == 0, output[-3000:]
      outputs.append(output)
    return outputs

  outputs = run_both('process')
  assert "processes 2, devices 2" in outputs[0] and "mesh {'data': 2" in outputs[0], outputs[0][-3000:]
  assert 'parameters' not in outputs[1]  # only process 0 reports
  assert_losses_close(train_losses(workdir), reference[0], rtol=1e-5)
  ref_test = metrics_log.read_metrics(reference[1], 'test')[NUM_STEPS]['loss']
  np.testing.assert_allclose(metrics_log.read_metrics(workdir, 'test')[NUM_STEPS]['loss'], ref_test, rtol=1e-5)
  # Run again: both processes agree (process 0's answer) that the run is finished, and nothing is tested or
  # written again.
  records = (workdir / 'metrics.jsonl').read_text()
  outputs = run_both('again')
  assert f'finished at step {NUM_STEPS}' in outputs[0] and 'finished at step' not in outputs[1], outputs
  assert (workdir / 'metrics.jsonl').read_text() == records
