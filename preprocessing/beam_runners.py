"""The Beam runner a run's options name: the engine a DirectRunner run uses on this machine, whether this
environment can start a remote one, and how much Beam's workers log. Shared by both Beam runs: the
preprocessing pipeline and the TFDS build."""

from __future__ import annotations

import importlib

import apache_beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

LOCAL_WORKERS_MODULE = 'preprocessing.local_workers'  # a --beam_plugins module, by name: no import of it here
# Workers log our progress (the `preprocessing` loggers) at INFO and Beam's own, very chatty harness only at
# ERROR (its warnings are start-up notes such as 'No semi_persistent_directory found', each printed by every
# worker and again by the job service). Later flags win: pass --default_sdk_harness_log_level=INFO in
# --beam_pipeline_options to see everything.
HARNESS_LOG_FLAGS = ('--default_sdk_harness_log_level=ERROR',
                     '--sdk_harness_log_level_overrides={"preprocessing":"INFO"}')

# Runner (lower case, without 'runner') -> (a module its submission imports, Beam's extra that brings it).
_NEEDS = {
    'dataflow': ('apache_beam.runners.dataflow.internal.apiclient', 'gcp'),
    'testdataflow': ('apache_beam.runners.dataflow.internal.apiclient', 'gcp'),
}


def runner_name(options: PipelineOptions) -> str:
  return options.view_as(StandardOptions).runner or 'DirectRunner'


def uses_local_workers(options: PipelineOptions) -> bool:
  """Whether the run goes to DirectRunner worker processes on this machine (`local_workers`)."""
  return (runner_name(options) == 'DirectRunner'
          and options.view_as(DirectOptions).direct_running_mode == 'multi_processing')


def missing_extras(options: PipelineOptions) -> str | None:
  """None if this environment has the packages the options' runner needs to start a job, else what to
  install. Without them, a Dataflow submission first retries the storage service for two minutes and then
  fails on an import, in a traceback of ~140 lines."""
  name = runner_name(options)
  needs = _NEEDS.get(name.lower().removesuffix('runner'))
  if needs is None:
    return None
  module, extra = needs
  try:
    importlib.import_module(module)
  except ImportError as e:
    return (f"--runner={name} needs Beam's {extra} extras, which this Python lacks ({e}): "
            f"pip install 'apache-beam[{extra}]=={apache_beam.__version__}'")
  return None


def direct_runner(options: PipelineOptions):
  """For --runner=DirectRunner: Beam's Python FnApiRunner, the engine that honours direct_running_mode and
  direct_num_workers (Beam 2.77's DirectRunner would first try Prism, a binary it downloads). None for
  any other runner, which Beam then builds from --runner. Its worker processes, if any, import
  `preprocessing.local_workers` as they start."""
  if runner_name(options) != 'DirectRunner':
    return None
  from apache_beam.portability.api import beam_provision_api_pb2  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability.fn_api_runner import fn_runner  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability.portable_runner import JobServiceHandle  # pylint: disable=g-import-not-at-top

  worker_options = options.get_all_options()
  if uses_local_workers(options):  # each worker imports it before its first bundle: quiet on Ctrl-C from the start
    worker_options['beam_plugins'] = [*(worker_options.get('beam_plugins') or []), LOCAL_WORKERS_MODULE]
  encoded = JobServiceHandle.encode_pipeline_options(worker_options)
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))
