"""Small shared pieces for the tests (tiny configs, subprocess runners)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import ml_collections

from alexnet_jax import model as model_lib
from alexnet_jax import optim

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
  """The paper's network at reduced width and input size (same code).

  99x99 input: conv1 23x23 -> pool 11 -> pool 5 -> pool5 2x2, so fc6's
  (h, w, c) flattening is exercised.
  """
  c = model_lib.default_config()
  c.conv_features = (6, 8, 12, 12, 8)
  c.fc_features = (16, 16)
  c.num_classes = 10
  c.image_size = 99
  c.update(overrides)
  return c


def tiny_config(**model_overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = tiny_model_config(**model_overrides)
  c.optim = optim.default_config()
  return c


def run_in_subprocess(
    code: str,
    num_devices: int,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
  """Runs Python `code` with `num_devices` fake CPU devices; checks rc 0."""
  full_env = dict(os.environ)
  full_env["XLA_FLAGS"] = (
      f"--xla_force_host_platform_device_count={num_devices}"
  )
  full_env["JAX_PLATFORMS"] = "cpu"
  full_env.update(env or {})
  proc = subprocess.run(
      [sys.executable, "-c", code],
      cwd=REPO_ROOT,
      env=full_env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert proc.returncode == 0, (
      f"subprocess failed (rc {proc.returncode}):\n{proc.stdout}\n"
      f"{proc.stderr}"
  )
  return proc


# --- Many runs of one command line, each a fork of one process. ---

# What runs in that process: it imports what the project's command lines
# share, then forks once per run; a child sets its argv and output files and
# runs the module as `python -m` does (runpy, `__name__ == "__main__"`), so
# the command's flags, its `cli.run`, its messages and its exit status are
# the real ones, without paying the interpreter's start and these imports
# for every run (5-9 s each on 2 cores, most of a user-error case).
_FORK_SERVER = r"""
import json
import os
import runpy
import sys
import traceback

import jax  # noqa: F401
from ml_collections import config_flags  # noqa: F401

from alexnet_jax import cli  # noqa: F401
from alexnet_jax import eval_lib  # noqa: F401
from alexnet_jax import train  # noqa: F401 (TensorFlow, TFDS, orbax)

module, runs = sys.argv[1], json.loads(sys.argv[2])
statuses = []
for argv, out, err in runs:
  pid = os.fork()
  if pid == 0:
    for fd, path in ((1, out), (2, err)):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [module, *argv]
    status = 1
    try:
      runpy.run_module(module, run_name="__main__", alter_sys=True)
      status = 0
    except SystemExit as e:
      status = e.code if isinstance(e.code, int) else int(e.code is not None)
    except BaseException:
      traceback.print_exc()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)
  statuses.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(statuses))
"""


def command_env() -> dict[str, str]:
  """The environment of a command line started by a test: the CPU backend
  and no fake-device flags (a command makes its config's devices itself)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  return env


def run_module(
    module: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
  """Runs `python -m module args` in the repository root (`command_env`)
  to its end; its stdout and stderr are captured, the exit status is not
  checked."""
  return subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=REPO_ROOT,
      env=command_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )


def run_forked(
    module: str, runs: list[tuple[list[str], str, str]], timeout: float = 600
) -> list[int]:
  """Runs `python -m module argv` for every (argv, stdout file, stderr file)
  of `runs`, one after the other, as forks of one process (`_FORK_SERVER`);
  returns their exit statuses. Environment: `command_env`.
  """
  proc = subprocess.run(
      [sys.executable, "-c", _FORK_SERVER, module, json.dumps(runs)],
      cwd=REPO_ROOT,
      env=command_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr
  return json.loads(proc.stdout.splitlines()[-1])


# --- The training program on the `configs/demo.py:smoke` data set (the
# session fixtures `smoke_dirs` and `uninterrupted` in tests/conftest.py). ---


def smoke_config(dirs, arg: str = "smoke", **overrides):
  """configs/demo.py:`arg` reading the smoke data in `dirs`."""
  from configs import demo  # pylint: disable=g-import-not-at-top

  config = demo.get_config(arg)
  config.data_dir, config.manual_dir = dirs
  config.update(overrides)
  return config


def main_command(dirs, workdir, *flags, config="configs/demo.py:smoke"):
  return [
      sys.executable,
      "-m",
      "alexnet_jax.main",
      f"--config={config}",
      f"--workdir={workdir}",
      f"--config.data_dir={dirs[0]}",
      f"--config.manual_dir={dirs[1]}",
      *flags,
  ]


def start_main(
    dirs, workdir, *flags, log: str, config="configs/demo.py:smoke"
) -> subprocess.Popen:
  """Starts the command line; its stdout and stderr go to the file `log`.

  A file, not a pipe: a process that logs more than a pipe holds while
  nobody reads it would block.
  """
  with open(log, "w") as f:
    return subprocess.Popen(
        main_command(dirs, workdir, *flags, config=config),
        cwd=REPO_ROOT,
        stdout=f,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


def run_main(
    dirs,
    workdir,
    *flags,
    config="configs/demo.py:smoke",
    check=True,
    log: str | None = None,
) -> subprocess.CompletedProcess[str]:
  """Runs the command line to its end (output: stdout and stderr, merged).

  The output goes to the file `log` (default: `workdir` + ".log").
  """
  log = log or workdir.rstrip("/") + ".log"
  proc = start_main(dirs, workdir, *flags, log=log, config=config)
  proc.wait(timeout=600)
  out = read(log)
  if check:
    assert proc.returncode == 0, out
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def final_params(workdir, config, mesh_shape=(1, 2)):
  """(host parameters, step) of the latest checkpoint in `workdir`."""
  # pylint: disable=g-import-not-at-top
  import jax
  from alexnet_jax import eval_lib
  from alexnet_jax import parallel

  mesh = parallel.make_mesh(*mesh_shape)
  params, step = eval_lib.restore_params(workdir, config, mesh)
  return jax.device_get(params), step


def wait_for_checkpoint(workdir, proc, log, timeout=300):
  """Waits until the run has committed its first checkpoint."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(ckpt_dir) and any(
        name.isdigit()
        and os.path.exists(os.path.join(ckpt_dir, name, "commit_success.txt"))
        for name in os.listdir(ckpt_dir)
    ):
      return
    assert proc.poll() is None, read(log)
    time.sleep(0.2)
  raise TimeoutError("no checkpoint appeared")


def scalars(workdir, tag):
  """{step: value} of a TensorBoard scalar over all event files in workdir.

  A resumed run writes a second event file; the later file wins.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  values = {}
  for name in sorted(
      os.listdir(workdir),
      key=lambda n: os.path.getmtime(os.path.join(workdir, n)),
  ):
    if not name.startswith("events.out.tfevents"):
      continue
    for event in tf.compat.v1.train.summary_iterator(
        os.path.join(workdir, name)
    ):
      for value in event.summary.value:
        if value.tag == tag:
          values[event.step] = value.simple_value
  return values
