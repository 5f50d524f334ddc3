"""Configuration errors a person can read, and the launchers' way of printing them.

Every check of a configuration (`config.validate`, `aggregators.get`, `attacks.get`, the option
domains in `domains.py`) raises a `ConfigError` (a `ValueError`) whose message names the key,
the value and what is allowed. The absl launchers print it as one short paragraph and exit with
status 2, without a traceback; a command-line override of a key that does not exist is reported
the same way, with the close matches and the keys allowed at that level.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from typing import Any, Callable, Mapping, Sequence


class ConfigError(ValueError):
  """A configuration (or API argument) outside its domain; the message says what is allowed."""


def exit_with(error: BaseException, *, status: int = 2) -> None:
  """Prints `error` as one paragraph on stderr and exits."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  sys.exit(status)


def close_matches(key: str, allowed: Sequence[str]) -> str:
  """' Did you mean 'x'?' for a near miss, else ''."""
  near = difflib.get_close_matches(key, list(allowed), n=3, cutoff=0.6)
  return f" Did you mean {' or '.join(repr(k) for k in near)}?" if near else ""


def unknown_key_message(dotted: str, node: Mapping[str, Any], missing: str) -> str:
  allowed = sorted(node.keys()) if hasattr(node, "keys") else []
  return (f"config key {dotted!r} does not exist: {missing!r} is not a key here."
          f"{close_matches(missing, allowed)} Allowed here: {', '.join(allowed) or 'none'}.")


def check_override_paths(argv: Sequence[str], config: Mapping[str, Any],
                         flag: str = "config") -> None:
  """Raises ConfigError for the first `--config.a.b=v` in `argv` whose path is not in `config`."""
  prefix = f"--{flag}."
  for arg in argv:
    if not arg.startswith(prefix):
      continue
    dotted = arg[len(prefix):].split("=", 1)[0]
    node = config
    for part in dotted.split("."):
      if not hasattr(node, "keys") or part not in node:
        raise ConfigError(unknown_key_message(dotted, node, part))
      node = node[part]


def _load_config_file(path: str):
  path = path.split(":", 1)[0]
  spec = importlib.util.spec_from_file_location("_config_for_errors", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _config_path(argv: Sequence[str], default_config: str, flag: str) -> str:
  path = default_config
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{flag}="):
      path = arg.split("=", 1)[1]
    elif arg == f"--{flag}" and i + 1 < len(argv):
      path = argv[i + 1]
  return path


def define_config_flag(default_config: str, help_text: str, flag: str = "config", **kwargs):
  """`config_flags.DEFINE_config_file`, with a bad override reported as one paragraph.

  With the default config file, ml_collections applies `--config.x=...` overrides while the flag
  is defined (at import), raising a bare AttributeError for a key that does not exist."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  try:
    return config_flags.DEFINE_config_file(flag, default_config, help_text, **kwargs)
  except (AttributeError, KeyError):
    try:
      check_override_paths(sys.argv, _load_config_file(
          _config_path(sys.argv, default_config, flag)), flag)
    except ConfigError as e:
      exit_with(e)
    raise


def run_main(main: Callable[[list[str]], None], default_config: str,
             flag: str = "config") -> None:
  """`absl.app.run(main)`, with configuration errors printed as one paragraph.

  An override of a key that does not exist makes ml_collections raise a bare AttributeError while
  absl parses the flags; it is turned into a message naming the key, the near matches and the
  allowed keys. A ConfigError raised by `main` is printed the same way.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv)
  config_path = _config_path(argv, default_config, flag)
  try:
    app.run(main)
  except ConfigError as e:
    exit_with(e)
  except (AttributeError, KeyError):
    try:
      check_override_paths(argv, _load_config_file(config_path), flag)
    except ConfigError as e:
      exit_with(e)
    raise
