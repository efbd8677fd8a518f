"""Orbax checkpoints of SaxGPT: parameters-only (converted models) and full training state.

Layout (one orbax CheckpointManager directory):
```
DIR/config.json            the full ConfigDict the model was built from
DIR/<step>/params/          pure dict of float32 parameter arrays (every checkpoint has it)
DIR/<step>/train/           training checkpoints only: {'opt_state', 'step', 'rng'}
DIR/<step>/data_iter/       training checkpoints only: the grain iterator state of each process
DIR/<step>/metrics/         training checkpoints saved after an eval: {'val_loss', ...}
```
A training run keeps its checkpoints in `WORKDIR/checkpoints`; `load_model` takes either that
directory or the workdir. Restoring reads only the items it is asked for, with the shardings of the
target arrays, so a checkpoint saved on 8 devices restores on 1 (or on another mesh).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import Mesh, SingleDeviceSharding

from configs import cli
from saxgpt_jax import model as model_lib
from saxgpt_jax import sharding as sharding_lib

CONFIG_FILE = 'config.json'
CHECKPOINT_SUBDIR = 'checkpoints'
PARAMS_ITEM = 'params'
TRAIN_ITEM = 'train'
DATA_ITER_ITEM = 'data_iter'
BEST_METRIC = 'val_loss'  # lower is better


class CheckpointError(RuntimeError):
  """A checkpoint directory is missing, empty or inconsistent."""


def as_path(directory: str | os.PathLike) -> epath.Path:
  """An etils path: local paths expanded and absolute; gs:// and other remote URLs as they are.
  CheckpointError for a gs:// path when gcsfs (in the `train` extra) is missing."""
  if os.fspath(directory).startswith('gs://') and importlib.util.find_spec('gcsfs') is None:
    raise CheckpointError(f'{os.fspath(directory)}: gs:// paths need gcsfs, which is not installed; install the '
                          "project with pip install '.[train]' (or pip install gcsfs==2026.10.1)")
  return expanded(directory)


def expanded(directory: str | os.PathLike) -> epath.Path:
  """`as_path` without its gcsfs check: local paths expanded and absolute, remote URLs as they are."""
  path = epath.Path(directory)
  return path if is_remote(path) else epath.Path(Path(directory).expanduser().resolve())


def is_remote(path: str | os.PathLike) -> bool:
  return '://' in os.fspath(path)


def checkpoint_dir(directory: str | os.PathLike) -> epath.Path:
  """The CheckpointManager directory for a checkpoint directory or a training workdir."""
  directory = as_path(directory)
  if (directory / CHECKPOINT_SUBDIR / CONFIG_FILE).exists():
    return directory / CHECKPOINT_SUBDIR
  return directory


def write_config(directory: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Writes `directory/config.json` atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  directory = as_path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if is_remote(directory):  # object stores replace whole objects atomically
    (directory / CONFIG_FILE).write_text(text)
    return
  tmp = directory / f'.{CONFIG_FILE}.tmp'
  tmp.write_text(text)
  os.replace(tmp, directory / CONFIG_FILE)


def read_config(directory: str | os.PathLike) -> ml_collections.ConfigDict:
  """The ConfigDict saved beside a checkpoint (`checkpoint_dir(directory)/config.json`)."""
  path = checkpoint_dir(directory) / CONFIG_FILE
  if not path.exists():
    raise CheckpointError(
        f'{path} not found: pass a directory written by checkpoint.save_params, '
        'convert_torch or saxgpt_jax.train (a workdir or its checkpoints/ folder)')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def architecture_differences(config: ml_collections.ConfigDict, other: ml_collections.ConfigDict
                             ) -> dict[str, tuple[Any, Any]]:
  """{field: (other's value, config's value)} for the model.ARCHITECTURE_FIELDS that differ (defaults fill
  fields a config leaves out)."""
  mine, theirs = (dataclasses.asdict(model_config(c)) for c in (config, other))
  return {key: (theirs[key], mine[key]) for key in model_lib.ARCHITECTURE_FIELDS if theirs[key] != mine[key]}


def _is_late_read_callback(unraisable) -> bool:
  """The error a TensorStore read still in flight raises when it completes after orbax's event loop closed."""
  return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == 'Event loop is closed'


def _silence_late_read_callbacks() -> None:
  """When a read of a damaged checkpoint fails (a restore, or the metadata read of check_param_shapes), the
  array reads orbax started and abandoned finish one by one and each prints a 'RuntimeError: Event loop is
  closed' traceback (sys.unraisablehook): dozens of them around the one error that matters. From the first
  manager on, drop those; every other unraisable exception goes to the hook there was before."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_late_read_callbacks', False):
    return

  def hook(unraisable):
    if not _is_late_read_callback(unraisable):
      previous(unraisable)

  hook.drops_late_read_callbacks = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def restore_errors(directory: str | os.PathLike, step: int):
  """Turns an orbax / TensorStore failure while restoring `step` into one CheckpointError naming it."""
  try:
    yield
  except CheckpointError:
    raise
  except Exception as e:  # orbax raises many types (ValueError, KeyError, TensorStore's)
    root = e
    while root.__cause__ is not None:  # e.g. TensorStore's error, naming the array and file, under orbax's
      root = root.__cause__
    why = _quoted(e) + ('' if root is e else f'; cause: {_quoted(root)}')
    raise CheckpointError(
        f'checkpoint {step} in {directory} cannot be read ({why}). If that step is damaged (an interrupted '
        f'copy, a full disk), delete the folder {directory}/{step} to use the one before it.') from e


def _quoted(e: BaseException) -> str:
  """`cli.quoted(e)` without the TensorStore spec orbax appends to its messages."""
  return cli.quoted(e, limit=600).split(' See full TensorStore details')[0].rstrip('.')


def construct_model(model_cfg, seed):
  """SaxGPT(model_cfg) with params from `seed` (an int, traced or not), without eager sharding."""
  with nnx.use_eager_sharding(False):
    return model_lib.SaxGPT(model_cfg, rngs=nnx.Rngs(params=jax.random.key(seed)))


def model_config(config: ml_collections.ConfigDict):
  """The frozen `model.ModelConfig` of `config.model`."""
  return model_lib.ModelConfig.from_config(config.model)


@functools.partial(jax.jit, static_argnums=0)
def _init_state(model_cfg, seed):
  return nnx.split(construct_model(model_cfg, seed))[1]


def abstract_model(config: ml_collections.ConfigDict):
  """(graphdef, abstract params nnx.State, rest nnx.State) of SaxGPT without allocating weights."""
  model = nnx.eval_shape(lambda: construct_model(model_config(config), 0))
  return nnx.split(model, nnx.Param, ...)


def build_model(config: ml_collections.ConfigDict, *, seed: int = 0):
  """SaxGPT with seeded random weights, initialised in one compiled call (logical sharding names stay
  metadata: no eager sharding)."""
  model_cfg = model_config(config)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: construct_model(model_cfg, 0)))
  return nnx.merge(graphdef, _init_state(model_cfg, seed))


def non_param_state(config: ml_collections.ConfigDict, abstract_rest: nnx.State) -> nnx.State:
  """Values of the model's non-parameter variables (buffers), computed without the parameters."""
  if not jax.tree.leaves(abstract_rest):
    return abstract_rest
  return nnx.split(build_model(config), nnx.Param, ...)[2]


def manager(directory: str | os.PathLike, *, keep_latest: int | None = None,
            keep_best: int | None = None, async_save: bool = True,
            read_only: bool = False, with_metrics: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over `directory`, keeping the latest `keep_latest` checkpoints plus the
  `keep_best` with the lowest validation loss (None keeps all). `read_only` creates nothing and
  removes nothing (for restoring). `with_metrics=False`: its saves carry no metrics (no best step)."""
  _silence_late_read_callbacks()
  policies = []
  if keep_latest is not None:
    policies.append(ocp.checkpoint_managers.LatestN(n=keep_latest))
  if keep_best is not None:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: -metrics[BEST_METRIC], n=keep_best,
        keep_checkpoints_without_metrics=False))
  preservation = ocp.checkpoint_managers.AnyPreservationPolicy(policies) if policies else None
  options = ocp.CheckpointManagerOptions(
      create=not read_only, enable_async_checkpointing=async_save,
      preservation_policy=preservation, cleanup_tmp_directories=not read_only,
      best_fn=(lambda metrics: metrics[BEST_METRIC]) if with_metrics else None,  # best_fn: orbax writes metrics
      best_mode='min')
  return ocp.CheckpointManager(as_path(directory), options=options)


def best_step(mngr: ocp.CheckpointManager) -> int | None:
  """The step with the lowest saved `val_loss`, or None when no checkpoint has metrics."""
  scored = []
  for step in mngr.all_steps():
    metrics = mngr.metrics(step)
    if metrics and BEST_METRIC in metrics and math.isfinite(metrics[BEST_METRIC]):
      scored.append((metrics[BEST_METRIC], step))
  return min(scored)[1] if scored else None


def resolve_step(mngr: ocp.CheckpointManager, step: int | None = None, best: bool = False) -> int:
  """The step to restore: `step` if given (must exist), else the best or the latest one."""
  steps = mngr.all_steps()
  if not steps:
    raise CheckpointError(f'no checkpoints in {mngr.directory}')
  if step is not None:
    if step not in steps:
      raise CheckpointError(f'step {step} is not in {mngr.directory}; available steps: {sorted(steps)}')
    return step
  if best:
    chosen = best_step(mngr)
    if chosen is None:
      raise CheckpointError(
          f'no checkpoint in {mngr.directory} has a {BEST_METRIC} metric; drop best=True to load the latest')
    return chosen
  return mngr.latest_step()


def _shapes_by_name(tree: Any) -> dict[str, tuple[int, ...]]:
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def check_param_shapes(mngr: ocp.CheckpointManager, step: int, abstract_params: Any) -> None:
  """Raises CheckpointError naming the parameters whose stored shapes differ from `abstract_params`
  (another model config, or a checkpoint of an older parameter layout), before orbax fails mid-restore."""
  try:
    # The item's handler reads its tree metadata; a StandardCheckpointer would also look for a step-level
    # _CHECKPOINT_METADATA inside the item folder and log a warning on every load.
    item = as_path(mngr.directory) / str(step) / PARAMS_ITEM
    stored = _shapes_by_name(ocp.StandardCheckpointHandler().metadata(item))
  except Exception:  # pylint: disable=broad-except  # no readable metadata: orbax reports on restore
    return
  expected = _shapes_by_name(abstract_params)
  problems = [f'{name}: stored {stored.get(name, "missing")}, model {shape}'
              for name, shape in expected.items() if stored.get(name) != shape]
  problems += [f'{name}: stored {stored[name]}, not in the model' for name in sorted(set(stored) - set(expected))]
  if problems:
    raise CheckpointError(
        f'checkpoint {step} in {mngr.directory} does not fit this model ({len(problems)} parameters differ: '
        + '; '.join(problems[:6]) + ('; ...' if len(problems) > 6 else '') + '). It was written with another '
        'model config, or by saxgpt-jax before 2026-11-25 (head_w was [K, D, V], now [D, K, V]). Train into '
        'a new --workdir (or delete this one), or read it with the saxgpt-jax version that wrote it.')


def save_params(directory: str | os.PathLike, model: nnx.Module, config: ml_collections.ConfigDict,
                *, step: int = 0) -> epath.Path:
  """Saves the model's parameters as checkpoint `step` (item 'params') plus `config.json`.

  Returns the checkpoint directory. `config.model` must describe `model` (load_model rebuilds from it).
  """
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  with manager(directory, async_save=False, with_metrics=False) as mngr:
    mngr.save(step, args=ocp.args.Composite(**{PARAMS_ITEM: ocp.args.StandardSave(params)}), force=True)
    mngr.wait_until_finished()
    write_config(mngr.directory, config)
    return as_path(mngr.directory)


@contextlib.contextmanager
def _reading(directory: str | os.PathLike):
  """A read-only manager over the checkpoints of `directory` (a workdir, its checkpoints/ folder, or a
  converted checkpoint)."""
  directory = checkpoint_dir(directory)
  if not directory.is_dir():
    raise CheckpointError(f'checkpoint directory {directory} does not exist; pass a training workdir, its '
                          'checkpoints/ folder, or a convert_torch output.')
  with manager(directory, read_only=True, async_save=False) as mngr:
    yield mngr


def chosen_step(directory: str | os.PathLike, *, best: bool = False) -> int:
  """The step that `load_model(directory, best=best)` restores: the best or else the latest checkpoint.
  CheckpointError for a missing folder, a missing config.json, or no (best) checkpoint."""
  with _reading(directory) as mngr:
    read_config(directory)  # its clear error, before the manager's
    return resolve_step(mngr, None, best)


def restore_params(directory: str | os.PathLike, abstract_params: Any, *, step: int | None = None,
                   best: bool = False) -> tuple[Any, int]:
  """Restores only the 'params' item into the structure, dtypes and shardings of `abstract_params`
  (a pure dict of ShapeDtypeStructs). Returns (params, step)."""
  with _reading(directory) as mngr:
    step = resolve_step(mngr, step, best)
    check_param_shapes(mngr, step, abstract_params)
    with restore_errors(mngr.directory, step):
      restored = mngr.restore(step, args=ocp.args.Composite(
          **{PARAMS_ITEM: ocp.args.StandardRestore(abstract_params)}))
  return restored[PARAMS_ITEM], step


def load_model(directory: str | os.PathLike, *, step: int | None = None, best: bool = False,
               mesh: Mesh | None = None):
  """(SaxGPT, ConfigDict) from a converted or training checkpoint directory (or a workdir).

  Args:
    directory: a directory written by `save_params` / convert_torch, a training workdir, or its
      `checkpoints/` folder.
    step: which checkpoint; default the latest (or the best with `best=True`).
    best: take the checkpoint with the lowest validation loss.
    mesh: shard the parameters over this mesh by the logical axis rules; default one device.
  """
  config = read_config(directory)
  graphdef, abstract_params, rest = abstract_model(config)
  if mesh is None:
    device = SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, nnx.to_pure_dict(abstract_params))
  else:
    shardings = sharding_lib.param_shardings(abstract_params, mesh)
  target = sharding_lib.abstract_with_shardings(nnx.to_pure_dict(abstract_params), shardings)
  params, _ = restore_params(directory, target, step=step, best=best)
  return nnx.merge(graphdef, params, non_param_state(config, rest)), config


def train_save_args(params: Any, train: Mapping[str, Any], data_iter=None,
                    ) -> ocp.args.Composite:
  """Composite save args of a training checkpoint (params + optimizer/step/rng + grain iterator)."""
  import grain  # pylint: disable=g-import-not-at-top

  items = {PARAMS_ITEM: ocp.args.StandardSave(params), TRAIN_ITEM: ocp.args.StandardSave(dict(train))}
  if data_iter is not None:
    items[DATA_ITER_ITEM] = grain.checkpoint.CheckpointSave(data_iter)
  return ocp.args.Composite(**items)


def train_restore_args(abstract_params: Any, abstract_train: Mapping[str, Any], data_iter=None,
                       ) -> ocp.args.Composite:
  """Composite restore args matching `train_save_args`; `data_iter` is restored in place."""
  import grain  # pylint: disable=g-import-not-at-top

  items = {PARAMS_ITEM: ocp.args.StandardRestore(abstract_params),
           TRAIN_ITEM: ocp.args.StandardRestore(dict(abstract_train))}
  if data_iter is not None:
    items[DATA_ITER_ITEM] = grain.checkpoint.CheckpointRestore(data_iter)
  return ocp.args.Composite(**items)
