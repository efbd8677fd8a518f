"""Command-line plumbing shared by the commands: flag parsing for those that take `--config=FILE` (train,
bench, preprocessing), and how a Ctrl-C ends them.

`app.run(main, flags_parser=cli.parse_flags)`: a missing config file or a mistyped override such as
`--config.trian.num_steps=5` then stops with one `error:` line (exit 2) instead of a traceback from inside
ml_collections.
"""

from __future__ import annotations

import contextlib
import os
import sys

from absl import flags

_HINT = 'override a value with --config.SECTION.KEY=VALUE; every key is in the config file'


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags_parser: parses argv, then loads --config (every caller defines it) so its errors surface here."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # absl's own wording and exit status for a bad flag
    sys.stderr.write(f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n')
    sys.exit(1)
  except (KeyError, AttributeError, TypeError, ValueError) as e:  # an override the config cannot take
    _fail(e, _HINT)
  try:  # a file that failed to load gives a stand-in that raises on first use
    getattr(flags.FLAGS['config'].value, 'keys', None)
  except (OSError, KeyError, AttributeError, TypeError, ValueError, SyntaxError) as e:
    _fail(e, 'the file must define get_config() returning an ml_collections.ConfigDict')
  return rest


def _fail(error: BaseException, hint: str) -> None:
  while error.args and isinstance(error.args[0], BaseException):  # ml_collections wraps a KeyError in another
    error = error.args[0]
  message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  sys.stderr.write(f'error: --config: {message}\n({hint})\n')
  sys.exit(2)


@contextlib.contextmanager
def exit_on_ctrl_c(kept: str):
  """Around a command's work: Ctrl-C (KeyboardInterrupt) prints `interrupted: <kept>` and ends the process
  at once with status 130, instead of a traceback and Python's shutdown, during which XLA threads stopped
  mid-compile can crash it (a segmentation fault after the traceback). `kept`: what the user still has."""
  try:
    yield
  except KeyboardInterrupt:
    sys.stdout.flush()
    print(f'\ninterrupted: {kept}', file=sys.stderr, flush=True)
    os._exit(130)  # pylint: disable=protected-access
