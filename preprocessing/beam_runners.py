"""The Beam runner a run's options name: the engine a DirectRunner run uses on this machine, and whether this
environment can start a remote one."""

from __future__ import annotations

import importlib

import apache_beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

# Runner (lower case, without 'runner') -> (a module its submission imports, Beam's extra that brings it).
_NEEDS = {
    'dataflow': ('apache_beam.runners.dataflow.internal.apiclient', 'gcp'),
    'testdataflow': ('apache_beam.runners.dataflow.internal.apiclient', 'gcp'),
}


def runner_name(options: PipelineOptions) -> str:
  return options.view_as(StandardOptions).runner or 'DirectRunner'


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
  any other runner, which Beam then builds from --runner."""
  if runner_name(options) != 'DirectRunner':
    return None
  from apache_beam.portability.api import beam_provision_api_pb2  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability.fn_api_runner import fn_runner  # pylint: disable=g-import-not-at-top
  from apache_beam.runners.portability.portable_runner import JobServiceHandle  # pylint: disable=g-import-not-at-top

  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))
