"""Starts the project's command lines for the tests, each a fork of itself.

tests/helpers.py runs one of these per pytest worker (`helpers.start_module`).
It imports what the command lines share (JAX, TensorFlow, TFDS, orbax and
the project) once; every command it is asked for is then a fork of it that
runs the module as `python -m` does (`runpy`, `__name__ == "__main__"`) with
its own argv, output files and environment additions, and ends through the
interpreter's own exit (exit status, atexit handlers, teardown). A command
then costs its own work, not the 5-9 s of interpreter start and imports a
new process pays on 2 cores.

Nothing here initializes a JAX backend or starts a thread, so every fork
starts as clean as a new process: its command makes its own devices (XLA
reads `XLA_FLAGS` then, so the environment additions may set it).

Protocol, one JSON object per line (requests on stdin, replies on stdout):
  {"start": {"module": name | "code": source, "argv": [...],
             "stdout": path, "stderr": path or null (= stdout),
             "env": {...}}}                         -> {"pid": pid}
  {"wait": pid, "timeout": seconds or null}         -> {"returncode": int
                                                        or null (running)}
The tests signal a command by its pid themselves (it is an ordinary process).
"""

import importlib
import json
import os
import runpy
import sys
import time
import traceback

# What the command lines share: imported here once, nothing initialized. Not
# the command modules themselves: `runpy` warns when it runs a module that
# is already imported, and absl would refuse a second definition of its
# flags.
SHARED = (
    "jax",
    "ml_collections.config_flags",
    "PIL.Image",
    "alexnet_jax.ablation_report",
    "alexnet_jax.caffe",
    "alexnet_jax.cli",
    "alexnet_jax.eval_lib",
    "alexnet_jax.figures",
    "alexnet_jax.train",  # TensorFlow, TFDS, orbax.
)


def _open(path):
  return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def _child(request):
  """Runs the requested command in this fork; never returns."""
  os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
  os.dup2(_open(request["stdout"]), 1)
  if request.get("stderr"):
    os.dup2(_open(request["stderr"]), 2)
  else:
    os.dup2(1, 2)
  os.environ.update(request.get("env") or {})
  try:
    if "module" in request:
      sys.argv = [request["module"], *request["argv"]]
      runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    else:
      sys.argv = ["-c", *request["argv"]]
      exec(  # pylint: disable=exec-used
          compile(request["code"], "<string>", "exec"), {"__name__": "__main__"}
      )
  except SystemExit:
    raise
  except BaseException:  # pylint: disable=broad-except
    traceback.print_exc()  # As an uncaught exception ends `python`.
    sys.exit(1)
  sys.exit(0)


def _wait(pid, timeout):
  deadline = None if timeout is None else time.monotonic() + timeout
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return os.waitstatus_to_exitcode(status)
    if deadline is not None and time.monotonic() >= deadline:
      return None
    time.sleep(0.02)


def main():
  for name in SHARED:
    importlib.import_module(name)
  while line := sys.stdin.readline():
    request = json.loads(line)
    if "start" in request:
      for path in (request["start"]["stdout"], request["start"]["stderr"]):
        if path:  # Made before the reply: the caller may read them at once.
          os.close(_open(path))
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(request["start"])  # Ends this process (SystemExit).
      reply = {"pid": pid}
    else:
      reply = {"returncode": _wait(request["wait"], request["timeout"])}
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
  main()
