"""Flag parsing for the commands that take `--config=FILE` (train, bench, preprocessing).

`app.run(main, flags_parser=cli.parse_flags)`: a missing config file or a mistyped override such as
`--config.trian.num_steps=5` then stops with one `error:` line (exit 2) instead of a traceback from inside
ml_collections.
"""

from __future__ import annotations

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
