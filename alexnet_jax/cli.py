"""What every command line of the project shares: clean user errors, and
the fake CPU devices of a config (`setup_devices`, before JAX starts).

A user's mistake (a bad flag, a typo in a `--config.x=y` override, a config
value that is not allowed, a missing file) is printed as one line
`error: ...` that names the thing and says what to do, with exit status 2
and no traceback. A bug still shows its traceback.

  def main(argv): ...
  if __name__ == "__main__":
    cli.run(main)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import logging as logging_std
import os
import re
import sys
from typing import Any, NoReturn

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

# Exit status of a usage or configuration error (as argparse and absl's
# flag errors use).
USAGE_ERROR = 2


class UserError(Exception):
  """A mistake of the user's; its message says what is wrong and what to do.

  Raise it (or a subclass) anywhere: `run` prints it without a traceback.
  """


def fail(message: str) -> NoReturn:
  """Prints `error: message` to stderr and exits with status 2.

  The process ends without interpreter teardown: after an error, background
  threads of orbax or tensorstore (a checkpointer left open on the error's
  way out) would otherwise print their own shutdown tracebacks under the
  message.
  Whatever must be on disk is written before an error reaches here.
  """
  logging.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  # The message is the last output: whatever other threads would still
  # print goes to /dev/null.
  stderr = os.dup(2)
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 1)
  os.dup2(devnull, 2)
  os.write(stderr, f"error: {message}\n".encode())
  os._exit(USAGE_ERROR)  # pylint: disable=protected-access


def setup_devices(config: ml_collections.ConfigDict) -> None:
  """Makes `config.cpu_devices` fake CPU devices. Call before JAX starts.

  Only the CPU backend is affected: on a GPU or TPU host the mesh is made of
  the accelerators as usual.
  """
  if config.get("cpu_devices", 0):
    jax.config.update("jax_num_cpu_devices", config.cpu_devices)


def _message(error: BaseException) -> str:
  """The text of an exception; KeyError's repr quotes are taken off."""
  text = (
      error.args[0]
      if error.args and isinstance(error.args[0], str)
      else (str(error))
  )
  while len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
    text = text[1:-1].replace("\\'", "'").replace("\\n", "\n")
  return text.replace("\n", " ")


def _cause(text: str) -> str:
  """The final `SomeError: message` of text that embeds a traceback."""
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  for line in reversed(lines):
    m = re.match(r"^[\w.]*(?:Error|Exception): (.*)", line)
    if m:
      return m.group(1)
  return lines[-1] if lines else text


def _culprit(argv: Sequence[str], message: str) -> str | None:
  """The command-line argument an error message is about, if it names one."""
  for name in re.findall(r"'([\w.]+)'", message):
    for arg in argv[1:]:
      if arg.startswith("--") and re.search(rf"\b{re.escape(name)}\b", arg):
        return arg
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with clean errors for flags and config overrides.

  ml_collections reports a typo in `--config.x=y`, a value of the wrong
  type, a missing config file or a bad config argument (`--config=FILE:ARG`)
  as an ordinary exception while the flags are parsed; they are user errors
  here.
  """
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if "Traceback" in text:  # A config file that failed to load.
      config = next(
          (a for a in argv[1:] if a.startswith("--config=")), "--config"
      )
      fail(f"{config}: {_cause(text)}")
    fail(f"{text}. Run with --help for the flags.")
  except (AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    message = _message(e)
    culprit = _culprit(argv, message)
    if culprit is None:
      culprit = next(
          (a for a in argv[1:] if a.startswith("--config")), "--config"
      )
    fail(f"{culprit}: {message}")


def config_value(holder: flags.FlagHolder) -> Any:
  """The config of a config_flags flag, or None if it was not given.

  config_flags defers a config file's failure to load (a missing file, an
  unknown config argument) to the first use of the value; here it is a user
  error naming the flag and the cause.
  """
  config = holder.value
  if config is None:
    return None
  try:
    config.get("")
  except OSError as e:
    given = config_flags.get_config_filename(flags.FLAGS[holder.name])
    raise UserError(f"--{holder.name}={given}: {_cause(str(e))}") from None
  return config


class _QuietLibraries(logging_std.Filter):
  """Drops INFO chatter of orbax and TFDS (warnings and errors pass)."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    if record.levelno >= logging_std.WARNING:
      return True
    return not any(
        f"{os.sep}{name}{os.sep}" in record.pathname
        for name in ("orbax", "tensorflow_datasets")
    )


def quiet_library_logs() -> None:
  """Keeps the log of a long run readable: orbax's and TFDS's INFO lines go,
  their warnings and errors stay."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def run(
    main: Callable[[list[str]], Any],
    user_errors: tuple[type[BaseException], ...] = (),
) -> None:
  """`app.run(main)` with clean messages for user errors (see the module).

  `user_errors`: more exception types whose message is meant for the user
  (besides `UserError`, `app.UsageError` and flag errors).
  """
  caught = (UserError, app.UsageError) + tuple(user_errors)

  def guarded(argv):
    try:
      return main(argv)
    except caught as e:
      fail(_message(e))

  app.run(guarded, flags_parser=parse_flags)
