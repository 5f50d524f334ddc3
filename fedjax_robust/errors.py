"""Configuration errors a person can read, and the launchers' way of printing them.

Every check of a configuration (`config.validate`, `aggregators.get`, `attacks.get`, the option
domains in `domains.py`) raises a `ConfigError` (a `ValueError`) whose message names the key,
the value and what is allowed. The absl launchers (`run_main`) print it as one short paragraph
`error: ...` and exit with status 2, without a traceback; so are the command line's own
refusals, before any work: a flag that does not exist or does not parse (absl would exit 1), an
argument that is not a flag, a config file that is missing, does not run or has no
`get_config()` (`load_config_file`), and a `--config.a.b=v` override of a key that does not
exist (with the close matches and the keys allowed at that level).
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import os
import sys
import traceback
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


def load_config_file(path: str, flag: str = "config"):
  """`get_config()` of the config file `path` ("file.py", or "file.py:arg" passing arg, as
  ml_collections reads --config), loaded the way ml_collections loads it.

  A file that does not exist, does not run or has no get_config() is a ConfigError naming the
  flag, the file, the exception and the line of the file it came from: the file is the user's
  input, and absl would show a traceback through ml_collections (or a deferred OSError)."""
  file, *arg = path.split(":", 1)
  if not os.path.isfile(file):
    raise ConfigError(f"--{flag}={path}: no such file {file!r} (a relative path starts at "
                      f"{os.getcwd()}).")
  loader = importlib.machinery.SourceFileLoader(f"_{flag}_file", file)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
  try:
    loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # the user's file: any exception
    raise ConfigError(f"--{flag}={path}: the file does not load: {_where(e, file)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"--{flag}={path}: the file defines no get_config() (a config file "
                      "returns its ConfigDict from get_config()).")
  try:
    return module.get_config(*arg)
  except ConfigError as e:
    raise ConfigError(f"--{flag}={path}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  # the user's file: any exception
    raise ConfigError(f"--{flag}={path}: its get_config() raised {_where(e, file)}") from None


def _where(error: BaseException, file: str) -> str:
  """'Type: message (file, line N: the line)' at the last line of `file` the error passed."""
  message = str(error)
  if isinstance(error, SyntaxError) and error.lineno:
    message, line, text = error.msg, error.lineno, (error.text or "").strip()
  else:
    frames = [fr for fr in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(fr.filename) == os.path.abspath(file)]
    line, text = (frames[-1].lineno, frames[-1].line) if frames else (None, "")
  at = f" ({file}, line {line}: {text})" if line else ""
  return f"{type(error).__name__}: {message}{at}."


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
      check_override_paths(sys.argv, load_config_file(
          _config_path(sys.argv, default_config, flag), flag), flag)
    except ConfigError as e:
      exit_with(e)
    raise


def parse_flags(argv: Sequence[str], config_path: str | None = None, flag: str = "config",
                flag_values=None) -> list[str]:
  """absl's flag parsing (`flag_values`, default absl.flags.FLAGS) with its refusals as
  ConfigErrors: a flag that does not exist or whose value does not parse (absl prints "FATAL
  Flags parsing error" and exits 1), a config file `config_path` that does not load
  (`load_config_file`), an override of a config key that does not exist (ml_collections raises a
  bare AttributeError or KeyError while it applies the overrides)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  if config_path is not None:
    load_config_file(config_path, flag)
  try:
    return flag_values(list(argv))
  except flags.Error as e:
    raise ConfigError(f"{' '.join(str(e).split())} (--helpshort or --helpfull lists the "
                      "flags).") from None
  except (AttributeError, KeyError):
    if config_path is not None:
      check_override_paths(argv, load_config_file(config_path, flag), flag)
    raise


def run_main(main: Callable[[list[str]], None], default_config: str,
             flag: str = "config") -> None:
  """`absl.app.run(main)`, with configuration errors printed as one paragraph, exit status 2.

  The flags are parsed by `parse_flags` (the config file is checked first when --config names
  one; the default file was loaded when its flag was defined, `define_config_flag`); `main` gets
  no positional arguments (one is a ConfigError) and a ConfigError it raises is printed the same
  way.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  argv = list(sys.argv)
  path = _config_path(argv, default_config, flag)

  def parse(args):
    try:
      return parse_flags(args, None if path == default_config else path, flag)
    except ConfigError as e:
      exit_with(e)

  def checked_main(args):
    if len(args) > 1:
      raise ConfigError(f"unexpected argument(s) {' '.join(args[1:])!r}: the launcher takes "
                        f"only flags (--{flag}=<file>, --{flag}.<key>=<value>, --workdir=...; "
                        "--helpshort lists them).")
    return main(args)

  try:
    app.run(checked_main, flags_parser=parse)
  except ConfigError as e:
    exit_with(e)
