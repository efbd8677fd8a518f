"""Command-line plumbing shared by every command: flag parsing, usage errors, and how a Ctrl-C ends them.

`app.run(main, flags_parser=cli.parse_flags)`: `--help` then ends with status 0, and for the commands that
take `--config=FILE` (train, bench, preprocessing) a missing config file or a mistyped override such as
`--config.trian.num_steps=5` stops with one `error:` line (exit 2) instead of a traceback from inside
ml_collections. `usage_error` is the one-line form of absl's `app.UsageError`, which prints the whole help
before its message.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn, Sequence

from absl import flags

_HELP_FLAGS = frozenset({'help', '?', 'helpshort', 'helpfull', 'helpxml'})  # absl's, all of which exit 1
_HINT = 'override a value with --config.SECTION.KEY=VALUE; every key is in the config file'


def parse_flags(argv: list[str]) -> list[str]:
  """absl flags_parser: parses argv (a help flag exits 0 after its text), then, where the command defines
  --config, loads it so its errors surface here."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:  # an unknown flag, a bad value, a required flag not given
    usage_error(str(e))
  except SystemExit as e:  # absl printed the help asked for and exits 1, which scripts read as a failure
    if e.code == 1 and _asks_for_help(argv):
      sys.exit(0)
    raise
  except (KeyError, AttributeError, TypeError, ValueError) as e:  # an override the config cannot take
    _fail(e, _HINT)
  if 'config' not in flags.FLAGS:
    return rest
  try:  # a file that failed to load gives a stand-in that raises on first use
    getattr(flags.FLAGS['config'].value, 'keys', None)
  except (OSError, KeyError, AttributeError, TypeError, ValueError, SyntaxError) as e:
    _fail(e, 'the file must define get_config() returning an ml_collections.ConfigDict')
  return rest


def _asks_for_help(argv: Sequence[str]) -> bool:
  """Whether argv (program name first) holds one of absl's help flags before any `--`."""
  for arg in argv[1:]:
    if arg == '--':
      return False
    if arg.startswith('-') and arg.lstrip('-').split('=', 1)[0] in _HELP_FLAGS:
      return True
  return False


def usage_error(message: str) -> NoReturn:
  """A mistake on the command line: `error: <message>` and a pointer to --help on stderr, exit 2."""
  sys.stderr.write(f'error: {message}\n(run with --help to see every flag)\n')
  sys.exit(2)


def quoted(error: BaseException, limit: int = 300) -> str:
  """`TypeName: first line of its message` (at most `limit` characters of it, no final period): a library's
  error quoted inside a one-line message."""
  line = (str(error).strip().splitlines() or [''])[0][:limit].rstrip('.')
  return f'{type(error).__name__}: {line}'


def no_arguments(argv: Sequence[str]) -> None:
  """For a command that takes flags only: stray words (e.g. `--greedy true`, where a boolean flag takes no
  value) are a usage error instead of being ignored."""
  if len(argv) > 1:
    usage_error(f'unexpected arguments {list(argv[1:])}: this command takes flags only (--name=value, and '
                '--name or --noname for a yes/no flag)')


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
