"""Beam DirectRunner worker processes on this machine (multi_processing mode) and the terminal they share.

Around such a run (`on_this_terminal`, in the driver):
- each worker prints its own log lines (Beam only sends them to the driver's job service, which would print
  every warning once more as one long 'Worker: severity: ...' line; that relay is kept quiet);
- Ctrl-C ends the run quietly. The terminal sends SIGINT to the driver and to every worker; without this,
  each worker printed its KeyboardInterrupt traceback twice and aborted in gRPC, and the driver printed the
  gRPC and 'worker exited' errors of its threads: ~200 lines above the one line that says what was kept.

The workers learn that they are such workers from an environment variable they inherit; `in_worker` acts
on it when a worker imports this module, which it does as it starts (a --beam_plugins module, set by
`beam_runners.direct_runner`). They import it, and our stages, from this repository whatever the working
directory. `quiet_beam_logging` sets what the driver prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from absl import logging as absl_logging

WORKER_ENV = 'SAXGPT_BEAM_LOCAL_WORKER'  # set by `on_this_terminal`, inherited by the worker processes
_LEFT_QUIET: list['_QuietAfterInterrupt'] = []  # installed by an interrupted `on_this_terminal`
_JOB_SERVICE_LOGGER = 'apache_beam.runners.portability.local_job_service'


def quiet_beam_logging() -> None:
  """For a command that runs Beam, before it imports apache_beam (which logs at import): our progress at
  INFO; Beam's own loggers (type-hint notes, missing optional modules, and the job service that would repeat
  each worker's lines) only at WARNING. Workers log at `beam_runners.HARNESS_LOG_FLAGS`."""
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('apache_beam').setLevel(logging.WARNING)


def in_worker() -> None:
  """In a worker process of `on_this_terminal` (nothing elsewhere): a stderr handler on the root logger
  (unless one is there) in absl's format, as the driver's, so the worker's log lines (our progress at INFO,
  warnings and errors) are printed; and on Ctrl-C the worker exits at once with status 130, instead of
  logging 'Python sdk harness failed' with a traceback, printing it again and aborting in gRPC's threads
  at shutdown."""
  if not os.environ.get(WORKER_ENV):
    return
  from apache_beam.runners.worker.log_handler import FnApiLogRecordHandler

  root = logging.getLogger()
  if not any(isinstance(h, FnApiLogRecordHandler) for h in root.handlers):
    return  # not a worker process: the driver of a run in its own process
  if not any(type(h) is logging.StreamHandler and h.stream is sys.stderr for h in root.handlers):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(absl_logging.PythonFormatter())  # 'I1207 19:30:00.123456 thread file.py:line] ...'
    root.addHandler(handler)
  for handler in root.handlers:
    if _not_an_interrupt not in handler.filters:
      handler.addFilter(_not_an_interrupt)
  if getattr(sys.excepthook, 'quiet_on_interrupt', False):
    return
  original = sys.excepthook

  def excepthook(kind, value, traceback):
    if issubclass(kind, KeyboardInterrupt):
      sys.stderr.flush()
      os._exit(130)  # pylint: disable=protected-access
    original(kind, value, traceback)

  excepthook.quiet_on_interrupt = True
  sys.excepthook = excepthook


def _not_an_interrupt(record: logging.LogRecord) -> bool:
  """False for a record that carries a KeyboardInterrupt (Beam's 'Python sdk harness failed' on Ctrl-C)."""
  return not (record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt))


@contextlib.contextmanager
def on_this_terminal(options):
  """Around a Beam run with these PipelineOptions (None: no Beam). When they send it to DirectRunner worker
  processes on this machine (`beam_runners.uses_local_workers`): workers print their own log lines, exit
  quietly on Ctrl-C (`in_worker`) and can import this repository's modules; the job service's relay here
  is kept quiet; and once Ctrl-C has come (in the main thread), the errors of Beam's threads as the
  workers go are not printed. The KeyboardInterrupt itself still reaches the caller. Other runners and
  modes are left as Beam sets them up."""
  from preprocessing import beam_runners  # pylint: disable=g-import-not-at-top  # imports apache_beam

  if options is None or not beam_runners.uses_local_workers(options):
    yield
    return
  while _LEFT_QUIET:  # an interrupted run's, in a process that went on (a notebook): this run prints again
    _LEFT_QUIET.pop().remove()
  relay = logging.getLogger(_JOB_SERVICE_LOGGER)
  level, environ = relay.level, dict(os.environ)
  os.environ[WORKER_ENV] = '1'
  paths = [str(Path(__file__).resolve().parents[1]), *os.environ.get('PYTHONPATH', '').split(os.pathsep)]
  os.environ['PYTHONPATH'] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
  relay.setLevel(logging.CRITICAL)
  interrupted = threading.Event()
  quiet = _QuietAfterInterrupt(interrupted)
  # Ctrl-C is seen as it comes only where Python's own handler would raise the KeyboardInterrupt.
  watch = (threading.current_thread() is threading.main_thread()
           and signal.getsignal(signal.SIGINT) is signal.default_int_handler)

  def on_sigint(signum, frame):
    interrupted.set()
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt

  if watch:
    signal.signal(signal.SIGINT, on_sigint)
  quiet.install()
  try:
    yield
  finally:
    relay.setLevel(level)
    for name in (WORKER_ENV, 'PYTHONPATH'):
      os.environ.pop(name, None)
      if name in environ:
        os.environ[name] = environ[name]
    if watch:
      signal.signal(signal.SIGINT, signal.default_int_handler)
    if interrupted.is_set():
      _LEFT_QUIET.append(quiet)  # Beam's threads may still fail as the process ends: stay quiet till then
    else:
      quiet.remove()


class _QuietAfterInterrupt(logging.Filter):
  """Once `interrupted` is set: drops Beam's log records (on the root logger's handlers) and the
  exceptions of threads other than the main one (threading.excepthook)."""

  def __init__(self, interrupted: threading.Event):
    super().__init__()
    self._interrupted = interrupted
    self._handlers: list[logging.Handler] = []
    self._excepthook = threading.excepthook

  def filter(self, record: logging.LogRecord) -> bool:
    return not (self._interrupted.is_set() and record.name.startswith('apache_beam'))

  def _thread_excepthook(self, args):
    if not self._interrupted.is_set():
      self._excepthook(args)

  def install(self) -> None:
    self._handlers = list(logging.getLogger().handlers)
    for handler in self._handlers:
      handler.addFilter(self)
    threading.excepthook = self._thread_excepthook

  def remove(self) -> None:
    for handler in self._handlers:
      handler.removeFilter(self)
    threading.excepthook = self._excepthook


in_worker()
