r"""Train SaxGPT on a (data, fsdp, tensor) device mesh, with orbax checkpoints that survive preemption.

    python -m saxgpt_jax.train --config=configs/large.py --workdir=DIR [--config.train.num_steps=...]

Every host of a pod or cluster runs the same command. Running it again with the same --workdir resumes
from the latest checkpoint (parameters, optimizer, step, RNG and the input pipeline position), so the
next batch is the one an uninterrupted run would have seen; a run that has finished (and tested) only
reports its test result again. `--config.init_from=DIR` starts from the
parameters of a converted or earlier checkpoint instead of random ones (only for a fresh --workdir; one
with checkpoints resumes). On SIGTERM, a first Ctrl-C, or a JAX preemption notice on multi-host runs, it
saves, waits and exits 0.

Writes DIR/checkpoints/ (orbax, + config.json), DIR/metrics.jsonl and DIR/tensorboard/.
Multi-process CPU/GPU without a cluster manager: pass --coordinator_address=HOST:PORT
--num_processes=N --process_id=I on every process (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID); TPU pods and SLURM are detected automatically.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
from tqdm import tqdm

from configs import cli
from saxgpt_jax import checkpoint
from saxgpt_jax import flops
from saxgpt_jax import losses
from saxgpt_jax import metrics_log
from saxgpt_jax import sharding as sharding_lib
from saxgpt_jax import train_state

VALIDATION_SPLIT = 'validation'
TEST_SPLIT = 'test'


class ConfigError(ValueError):
  """The config cannot work; the message lists every problem and how to fix it."""


class TrainingDivergedError(RuntimeError):
  """The loss or gradient norm became NaN/inf; the last good checkpoint is kept."""


IteratorFactory = Callable[..., Iterator[Mapping[str, np.ndarray]]]


def _default_iterator_factory(config, split, **kwargs):
  from saxgpt_jax import data  # pylint: disable=g-import-not-at-top

  return data.make_iterator(config, split, **kwargs)


# --- Validation -------------------------------------------------------------------------------------


def validate_config(config: ml_collections.ConfigDict, num_devices: int, *, check_dataset: bool = True,
                    process_count: int = 1) -> tuple[int, int, int]:
  """Raises ConfigError naming every problem found before anything compiles; returns the mesh shape."""
  problems = []
  try:
    checkpoint.model_config(config)
  except ValueError as e:
    problems.append(str(e))
  try:
    shape = sharding_lib.mesh_shape(config.mesh, num_devices)
  except sharding_lib.MeshError as e:
    problems.append(str(e))
    shape = None
  train, k = config.train, config.model.num_codebooks
  if train.num_microbatches < 1:
    problems.append(f'train.num_microbatches={train.num_microbatches} must be >= 1')
  elif shape is not None:
    shards = shape[0] * shape[1]
    if train.global_batch_size % (shards * train.num_microbatches):
      problems.append(
          f'train.global_batch_size={train.global_batch_size} is not divisible by mesh.data*mesh.fsdp '
          f'({shards}) x train.num_microbatches ({train.num_microbatches}); use a multiple of '
          f'{shards * train.num_microbatches}')
  if train_state.dropout_rng(train) not in train_state.DROPOUT_RNGS:
    problems.append(f'train.dropout_rng={train.dropout_rng!r} must be one of {", ".join(train_state.DROPOUT_RNGS)}')
  if train.global_batch_size % process_count:
    problems.append(f'train.global_batch_size={train.global_batch_size} is not divisible by the '
                    f'{process_count} processes')
  length = config.data.seq_len + k + 1
  if length > config.model.max_seq_len:
    problems.append(
        f'data.seq_len + K + 1 = {config.data.seq_len} + {k} + 1 = {length} delayed positions exceed '
        f'model.max_seq_len={config.model.max_seq_len}; lower data.seq_len or raise model.max_seq_len')
  if train.global_batch_size < 1:
    problems.append(f'train.global_batch_size={train.global_batch_size} must be >= 1')
  for name in ('seq_len', 'stride'):
    if config.data[name] < 1:
      problems.append(f'data.{name}={config.data[name]} must be >= 1 frame')
  if not train.learning_rate > 0 or train.min_learning_rate < 0:
    problems.append(f'train.learning_rate={train.learning_rate} must be > 0 and train.min_learning_rate='
                    f'{train.min_learning_rate} >= 0')
  for name in ('warmup_steps', 'eval_batches'):
    if train[name] < 0:
      problems.append(f'train.{name}={train[name]} must be >= 0' + (' (0 = the whole split)' * (name == 'eval_batches')))
  if train.num_steps < 1:
    problems.append(f'train.num_steps={train.num_steps} must be >= 1')
  for name in ('log_every', 'eval_every', 'checkpoint_every'):
    if train[name] < 1:
      problems.append(f'train.{name}={train[name]} must be >= 1')
  if train.keep_latest < 1:
    problems.append(f'train.keep_latest={train.keep_latest} must be >= 1 (resuming needs the latest)')
  if check_dataset:
    from saxgpt_jax import data  # pylint: disable=g-import-not-at-top

    try:
      missing = [s for s in (data.TRAIN_SPLIT, VALIDATION_SPLIT, TEST_SPLIT) if s not in data.split_names(config)]
      if missing:
        problems.append(f'{config.data.name} in {config.data.data_dir} has no {" or ".join(missing)} split; training '
                        'evaluates on validation and test. Rebuild it with split fractions above 0 for each '
                        '(python -m preprocessing.build_tfds --split_fractions=0.8,0.1,0.1 --overwrite ...)')
    except FileNotFoundError as e:
      problems.append(str(e))
  if config.init_from and not (checkpoint.checkpoint_dir(config.init_from) / checkpoint.CONFIG_FILE).exists():
    problems.append(f'init_from={config.init_from!r} holds no checkpoint (no config.json); pass a directory '
                    'written by convert_torch / save_params or a training workdir')
  if problems:
    raise ConfigError('invalid config:\n  - ' + '\n  - '.join(problems))
  return shape


def _check_same_model(config: ml_collections.ConfigDict, directory, what: str) -> None:
  """ConfigError if the checkpoint config beside `directory` (if any) has another model architecture."""
  path = checkpoint.checkpoint_dir(directory) / checkpoint.CONFIG_FILE
  if not path.exists():
    return
  try:
    different = checkpoint.architecture_differences(config, checkpoint.read_config(directory))
  except ValueError as e:  # a config.json from another version of this code
    raise ConfigError(f'{what}: its {checkpoint.CONFIG_FILE} does not describe a model this code builds ({e})') from e
  if different:
    raise ConfigError(f'{what} has a different model (checkpoint, config): {different}; pass the matching '
                      f'--config or --config.model.* values (the checkpoint\'s are in {path})')


# --- Multi-host -------------------------------------------------------------------------------------


def maybe_initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
  """Calls jax.distributed.initialize() when the flags, the environment or a cluster say so.

  Explicit: coordinator/num_processes/process_id (flags or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
  JAX_PROCESS_ID). Automatic (JAX reads the cluster): TPU VMs (libtpu installed; a single host is a
  one-process cluster) and SLURM jobs with more than one task. CPU processes talk over gloo. Must run
  before anything touches a JAX backend. Returns whether it initialized.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS') or None
  if num_processes is None and env.get('JAX_NUM_PROCESSES'):
    num_processes = int(env['JAX_NUM_PROCESSES'])
  if process_id is None and env.get('JAX_PROCESS_ID'):
    process_id = int(env['JAX_PROCESS_ID'])
  on_tpu_vm = importlib.util.find_spec('libtpu') is not None and env.get('JAX_PLATFORMS', 'tpu') in ('', 'tpu')
  slurm = int(env.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_JOB_ID' in env
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not (explicit or on_tpu_vm or slurm):
    return False
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  return True


# --- Loop pieces -----------------------------------------------------------------------------------


def _fetch(tree) -> Any:
  return jax.tree.map(np.asarray, jax.device_get(tree))


def evaluate(trainer: train_state.Trainer, params, batches: Iterator[Mapping[str, np.ndarray]],
             max_batches: int = 0) -> dict[str, float]:
  """Loss, accuracy and perplexity (overall and per codebook) over up to `max_batches` (0 = all)."""
  total = None
  for index, local_batch in enumerate(batches):
    if max_batches and index >= max_batches:
      break
    stats = trainer.eval_step(params, sharding_lib.global_batch(local_batch, trainer.mesh))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  if total is None:
    raise ConfigError('the evaluation split gave no batches; check the dataset splits')
  return losses.summarize(_fetch(total))


class _Preemption:
  """Set by SIGTERM or a first Ctrl-C (single process), or JAX's multi-host preemption sync point. A second
  Ctrl-C stops at once (KeyboardInterrupt), without saving. A signal the process was started ignoring (Ctrl-C
  for a background job of a shell script) stays ignored."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self, mngr):
    self._mngr = mngr
    self._event = threading.Event()
    self._previous = {}
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS
                        if signal.getsignal(sig) is not signal.SIG_IGN}

  def _handle(self, signum, frame):
    if signum == signal.SIGINT:
      if self._event.is_set():
        raise KeyboardInterrupt
      print('\nCtrl-C: saving a checkpoint after this step, then exiting (press Ctrl-C again to stop without '
            'saving)', file=sys.stderr, flush=True)
    self._event.set()

  def reached(self, step: int) -> bool:
    return self._event.is_set() or self._mngr.reached_preemption(step)

  def close(self):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    self._previous = {}


class _TrainWindow:
  """Per-step metrics of the steps since the last log line, fetched one step late (no pipeline stall)."""

  def __init__(self):
    self.stats, self.grad_norms, self.steps, self.learning_rate = None, [], 0, 0.0
    self.start = time.perf_counter()

  def add(self, step: int, metrics) -> dict[str, float]:
    metrics = _fetch(metrics)
    loss = float(losses.summarize(metrics['stats'])['loss'])
    grad_norm = float(metrics['grad_norm'])
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      raise TrainingDivergedError(
          f'non-finite training loss {loss} / gradient norm {grad_norm} at step {step}: stopping. The last good '
          'checkpoint is kept; lower train.learning_rate, raise train.warmup_steps, or use model.dtype=float32 '
          'and resume from it')
    self.stats = metrics['stats'] if self.stats is None else jax.tree.map(np.add, self.stats, metrics['stats'])
    self.grad_norms.append(grad_norm)
    self.learning_rate = float(metrics['learning_rate'])
    self.steps += 1
    return loss

  def summary(self, trainer: train_state.Trainer, step_flops: float, peak: float | None) -> dict[str, float]:
    elapsed = time.perf_counter() - self.start
    config = trainer.config
    step_time = elapsed / max(self.steps, 1)
    out = {name: value for name, value in losses.summarize(self.stats).items()}
    out.update(learning_rate=self.learning_rate, grad_norm=float(np.mean(self.grad_norms)), step_time_s=step_time,
               frames_per_s=config.train.global_batch_size * config.data.seq_len / step_time)
    if peak:
      out['mfu'] = flops.mfu(step_flops, step_time, peak, trainer.mesh.size)
    return out


def _startup_report(trainer, compile_s: float | None, workdir, start_step: int, source: str) -> str:
  mesh = dict(trainer.mesh.shape)
  lines = [
      f'workdir {workdir}: {source}; step {start_step} of {trainer.config.train.num_steps}',
      f'processes {jax.process_count()}, devices {jax.device_count()} ({jax.devices()[0].device_kind}), mesh {mesh}',
      f'parameters {train_state.param_count(trainer):,}; params + optimizer state per device '
      f'{train_state.state_bytes_per_device(trainer) / 2**20:.1f} MiB',
      f'global batch {trainer.config.train.global_batch_size} x {trainer.config.train.num_microbatches} '
      f'microbatch(es), {trainer.config.data.seq_len} frames; model dtype {trainer.config.model.dtype}',
      'train step not compiled: only the test evaluation is left' if compile_s is None else
      f'train step compiled in {compile_s:.1f} s',
  ]
  return '\n'.join(lines)


def _finished_run(workdir, step: int) -> dict[str, float] | None:
  """What a run that reached `step` and tested it returned (its train, 'val_*' and 'test_*' metrics, read
  back from metrics.jsonl), or None if it has no test record of `step` (e.g. it was stopped while testing).
  Every process takes process 0's answer, so all of them skip the test evaluation or none does."""
  records = {split: metrics_log.read_metrics(workdir, split).get(step)
             for split in ('train', VALIDATION_SPLIT, TEST_SPLIT)}
  found = records[TEST_SPLIT] is not None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    found = bool(multihost_utils.broadcast_one_to_all(np.int32(found)))
  if not found:
    return None
  result = {}
  for split, prefix in (('train', ''), (VALIDATION_SPLIT, 'val_'), (TEST_SPLIT, 'test_')):
    for name, value in (records[split] or {}).items():
      if name not in ('step', 'split', 'time'):
        result[prefix + name] = math.nan if value is None else float(value)
  return result


def _evaluate_hint(config: ml_collections.ConfigDict, ckpt_dir, workdir) -> str:
  """How to evaluate a finished run on other data, naming this command's data.data_dir when the run was
  trained (and tested) on another one, whose test result the finished run reports."""
  tested_on, asked = checkpoint.read_config(ckpt_dir).get('data', {}).get('data_dir'), str(config.data.data_dir)
  if tested_on is None or checkpoint.expanded(str(tested_on)) == checkpoint.expanded(asked):  # None: a config.json without data settings
    return 'evaluate it on other data with python -m saxgpt_jax.evaluate.'
  return (f'that test ran on data.data_dir={tested_on}, not on this command\'s {asked}; evaluate it there with '
          f'python -m saxgpt_jax.evaluate --checkpoint={workdir} --data_dir={asked}')


# --- Main entry ------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                       devices: Sequence[jax.Device] | None = None,
                       iterator_factory: IteratorFactory | None = None) -> dict[str, float]:
  """Trains to config.train.num_steps (resuming from `workdir`), evaluating and checkpointing on the way.

  Args:
    config: the full ConfigDict (configs/base.py).
    workdir: checkpoints/, metrics.jsonl and tensorboard/ go here; an existing run there resumes.
    devices: devices of the mesh (default all); a subset lets tests compare meshes in one process.
    iterator_factory: `(config, split, *, process_index, process_count, shuffle, num_epochs) -> iterator`
      (default `saxgpt_jax.data.make_iterator`).
  Returns:
    The last metrics: train, validation ('val_*') and test ('test_*') summaries (empty on preemption).
  """
  devices = list(jax.devices() if devices is None else devices)
  validate_config(config, len(devices), check_dataset=iterator_factory is None, process_count=jax.process_count())
  iterator_factory = iterator_factory or _default_iterator_factory
  workdir = checkpoint.as_path(workdir)
  mesh = sharding_lib.make_mesh(config.mesh, devices)
  trainer = train_state.make_trainer(config, mesh)
  ckpt_dir = workdir / checkpoint.CHECKPOINT_SUBDIR
  mngr = checkpoint.manager(ckpt_dir, keep_latest=config.train.keep_latest, keep_best=config.train.keep_best)
  try:
    return _train_loop(config, workdir, ckpt_dir, mngr, devices, iterator_factory, mesh, trainer)
  finally:  # also when resuming is refused: no orbax threads left behind
    mngr.wait_until_finished()
    mngr.close()


def _train_loop(config, workdir, ckpt_dir, mngr, devices, iterator_factory, mesh, trainer) -> dict[str, float]:
  """train_and_evaluate once the mesh, trainer and checkpoint manager exist (the caller closes `mngr`)."""
  is_main = jax.process_index() == 0
  train_cfg = config.train
  shard = {'process_index': jax.process_index(), 'process_count': jax.process_count()}
  train_iter = iterator_factory(config, 'train', **shard)

  latest = mngr.latest_step()
  if latest is not None:
    _check_same_model(config, ckpt_dir, f'the run in {workdir}')
    finished = _finished_run(workdir, latest) if latest >= train_cfg.num_steps else None
    if finished is not None:  # a rerun of a finished command: nothing to restore, compile, train or test
      if is_main:
        print(f'workdir {workdir}: finished at step {latest} (train.num_steps={train_cfg.num_steps}); test: '
              f'loss {finished["test_loss"]:.4f} accuracy {finished["test_accuracy"]:.4f} perplexity '
              f'{finished["test_perplexity"]:.2f} (from {metrics_log.METRICS_FILE}). Raise train.num_steps to train '
              f'on; {_evaluate_hint(config, ckpt_dir, workdir)}', flush=True)
      return finished
    abstract = trainer.abstract_sharded_state()
    checkpoint.check_param_shapes(mngr, latest, abstract.params)
    with checkpoint.restore_errors(ckpt_dir, latest):
      restored = mngr.restore(latest, args=checkpoint.train_restore_args(
          abstract.params, abstract.checkpoint_items(), train_iter))
    state = train_state.TrainState(params=restored[checkpoint.PARAMS_ITEM], **restored[checkpoint.TRAIN_ITEM])
    source = f'resumed from checkpoint {latest}'
  else:
    state = trainer.init(train_cfg.seed)
    source = 'random init'
    if config.init_from:
      _check_same_model(config, config.init_from, f'init_from={config.init_from!r}')
      params, init_step = checkpoint.restore_params(config.init_from, trainer.abstract_sharded_state().params)
      state = state.replace(params=params)
      source = f'parameters from {config.init_from} (step {init_step})'
  checkpoint.write_config(ckpt_dir, config)  # only once the checkpoints fit this config
  start_step = int(state.step)
  if start_step >= train_cfg.num_steps:
    train_step, compile_s = None, None  # only the test evaluation is left
  else:
    start = time.perf_counter()
    train_step = trainer.train_step.lower(trainer.abstract_sharded_state(), trainer.abstract_batch).compile()
    compile_s = time.perf_counter() - start
  report = _startup_report(trainer, compile_s, workdir, start_step, source)
  if is_main:
    print(report, flush=True)
  src_len = config.data.seq_len + config.model.num_codebooks + 1  # delayed; the decoder sees src_len - 1
  step_flops = flops.train_flops_per_step(config.model, train_cfg.global_batch_size, src_len, src_len - 1)
  peak = flops.peak_flops_per_device(devices[0])

  def run_eval(split: str, params) -> dict[str, float]:
    batches = iterator_factory(config, split, shuffle=False, num_epochs=1, **shard)
    return evaluate(trainer, params, batches, train_cfg.eval_batches)

  writer = metrics_log.MetricsWriter(workdir, enabled=is_main, start_step=start_step)
  writer.write_text('startup', report.replace('\n', '  \n'))
  preemption = _Preemption(mngr)
  progress = tqdm(total=train_cfg.num_steps, initial=start_step, desc='train', disable=not is_main,
                  dynamic_ncols=True)
  window, pending, last, postfix = _TrainWindow(), None, {}, {}
  step = start_step
  try:
    while step < train_cfg.num_steps:
      if preemption.reached(step):
        if pending is not None:
          window.add(*pending)
        if mngr.latest_step() != step:  # the step may have just been saved on schedule
          mngr.save(step, args=checkpoint.train_save_args(state.params, state.checkpoint_items(), train_iter),
                    force=True)
        mngr.wait_until_finished()
        if is_main:
          logging.warning('preempted: saved checkpoint %d in %s; exiting so the run can resume', step, ckpt_dir)
        return {}
      batch = sharding_lib.global_batch(next(train_iter), mesh)
      state, metrics = train_step(state, batch)
      step += 1
      if pending is not None:  # the previous step's metrics: ready by now, so no stall
        postfix['loss'] = f'{window.add(*pending):.4f}'
        progress.set_postfix(postfix, refresh=False)
      pending = (step, metrics)
      progress.update(1)

      is_eval = step % train_cfg.eval_every == 0 or step == train_cfg.num_steps
      is_save = is_eval or step % train_cfg.checkpoint_every == 0
      if step % train_cfg.log_every == 0 or is_save:
        window.add(*pending)  # checks the loss of `step` before anything is saved
        pending = None
        last = window.summary(trainer, step_flops, peak)
        writer.write(step, 'train', last)
        postfix.update(loss=f'{last["loss"]:.4f}', frames_s=f'{last["frames_per_s"]:.0f}')
        progress.set_postfix(postfix, refresh=False)
        window = _TrainWindow()
      val = None
      if is_eval:
        val = run_eval(VALIDATION_SPLIT, state.params)
        writer.write(step, VALIDATION_SPLIT, val)
        last.update({f'val_{name}': value for name, value in val.items()})
        if is_main:
          progress.write(f'step {step}: validation loss {val["loss"]:.4f} accuracy {val["accuracy"]:.4f} '
                         f'perplexity {val["perplexity"]:.2f}')
      if is_save:
        writer.flush()  # TensorBoard holds every step up to a checkpoint, so a killed run resumes a full curve
        mngr.save(step, args=checkpoint.train_save_args(state.params, state.checkpoint_items(), train_iter),
                  metrics=None if val is None else {checkpoint.BEST_METRIC: val['loss']}, force=True)
      window.start = time.perf_counter() if (is_eval or is_save) else window.start
    if pending is not None:
      window.add(*pending)
    preemption.close()  # from here a Ctrl-C stops the test (the rerun tests again), it saves nothing
    batches = iterator_factory(config, TEST_SPLIT, shuffle=False, num_epochs=1, **shard)
    test = evaluate(trainer, state.params, batches)  # the whole test split
    writer.write(step, TEST_SPLIT, test)
    last.update({f'test_{name}': value for name, value in test.items()})
    if is_main:
      progress.write(f'test: loss {test["loss"]:.4f} accuracy {test["accuracy"]:.4f} perplexity {test["perplexity"]:.2f}')
    return last
  finally:
    progress.close()
    preemption.close()
    writer.close()


# --- Command line ----------------------------------------------------------------------------------

def _define_flags() -> None:
  """Command-line flags, defined only when run as a program (importing this module defines none)."""
  config_flags.DEFINE_config_file('config', None, 'Training config file, e.g. configs/large.py; override values '
                                  'with --config.train.num_steps=...', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory: checkpoints/, metrics.jsonl, tensorboard/. An existing '
                      'run there resumes.')
  flags.DEFINE_string('coordinator_address', None, 'Multi-process without a cluster manager: HOST:PORT of '
                      'process 0 (or env JAX_COORDINATOR_ADDRESS).')
  flags.DEFINE_integer('num_processes', None, 'Number of processes (or env JAX_NUM_PROCESSES).')
  flags.DEFINE_integer('process_id', None, 'This process (0-based; or env JAX_PROCESS_ID).')
  flags.mark_flags_as_required(['config', 'workdir'])


def _drop_unscored_checkpoint_warning(record) -> bool:
  """Orbax warns on every checkpoint saved without metrics; only eval steps have a validation loss."""
  return 'did not provide metrics' not in record.getMessage()


def main(argv):
  cli.no_arguments(argv)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # library INFO chatter (orbax, tfds, jax) drowns the progress bar
  logging.get_absl_logger().addFilter(_drop_unscored_checkpoint_warning)
  args = flags.FLAGS
  from saxgpt_jax import data  # pylint: disable=g-import-not-at-top  (for its DataError; the run reads data)
  maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.ERROR)
  try:
    # Inside the loop a first Ctrl-C saves a checkpoint and stops; this covers the rest (start-up, compile,
    # the final test, a second Ctrl-C).
    with cli.exit_on_ctrl_c(f'rerun the same command to resume from the last checkpoint in {args.workdir}.'):
      train_and_evaluate(args.config, args.workdir)
  except checkpoint.CheckpointError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    # Nothing is pending (the manager is closed), but array reads a failed restore abandoned can still be
    # finishing, and one that finishes while Python shuts down prints a traceback past any hook: end now.
    os._exit(1)  # pylint: disable=protected-access
  except (ConfigError, data.DataError, TrainingDivergedError) as e:
    sys.exit(f'error: {e}')  # printed by every process of a multi-host run


if __name__ == '__main__':
  _define_flags()
  app.run(main, flags_parser=cli.parse_flags)
