"""Small shared pieces for the tests (tiny configs, subprocess runners)."""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
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
  full_env = dict(os.environ, JAX_PLATFORMS="cpu", **fake_devices(num_devices))
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


# --- The project's command lines, as the tests start them. ---


def command_env() -> dict[str, str]:
  """The environment of a command line started by a test: the CPU backend
  and the session's XLA_FLAGS (tests/conftest.py: no fake-device flag; a
  command makes its config's devices itself)."""
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")


class _ForkServer:
  """tests/fork_server.py, running (one per test process)."""

  def __init__(self):
    self._log = tempfile.TemporaryFile("w+")
    self._proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fork_server"],
        cwd=REPO_ROOT,
        env=command_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=self._log,
        text=True,
    )

  def request(self, **request):
    self._proc.stdin.write(json.dumps(request) + "\n")
    self._proc.stdin.flush()
    reply = self._proc.stdout.readline()
    if not reply:
      self._log.seek(0)
      raise RuntimeError(f"the fork server ended:\n{self._log.read()}")
    return json.loads(reply)

  def close(self):
    self._proc.stdin.close()
    self._proc.wait(timeout=60)


_fork_server: _ForkServer | None = None


def _server() -> _ForkServer:
  global _fork_server
  if _fork_server is None:
    _fork_server = _ForkServer()
    atexit.register(_fork_server.close)
  return _fork_server


class Command:
  """A command line started by `start_module`: what the tests use of
  `subprocess.Popen` (pid, poll, wait, send_signal, kill, returncode)."""

  def __init__(self, args, pid):
    self.args, self.pid, self.returncode = args, pid, None

  def wait(self, timeout: float | None = None) -> int:
    if self.returncode is None:
      self.returncode = _server().request(wait=self.pid, timeout=timeout)[
          "returncode"
      ]
      if self.returncode is None:
        raise subprocess.TimeoutExpired(self.args, timeout)
    return self.returncode

  def poll(self) -> int | None:
    try:
      return self.wait(timeout=0)
    except subprocess.TimeoutExpired:
      return None

  def send_signal(self, sig: int):
    if self.returncode is None:  # Not yet reaped: the pid is still its own.
      os.kill(self.pid, sig)

  def kill(self):
    self.send_signal(signal.SIGKILL)


def start_module(
    module: str,
    *args: str,
    stdout: str,
    stderr: str | None = None,
    env: dict[str, str] | None = None,
) -> Command:
  """Starts `python -m module args` in the repository root, as a fork of
  tests/fork_server.py (the same run without a new interpreter's start and
  imports; `command_env` plus `env`). Output goes to files (`stderr` None:
  into `stdout`'s file), never to pipes that nobody reads.
  """
  return _start(dict(module=module), ["-m", module], args, stdout, stderr, env)


def start_code(
    code: str,
    *args: str,
    stdout: str,
    stderr: str | None = None,
    env: dict[str, str] | None = None,
) -> Command:
  """Starts `python -c code args` like `start_module`."""
  return _start(dict(code=code), ["-c", "..."], args, stdout, stderr, env)


def _start(what, shown, args, stdout, stderr, env) -> Command:
  request = dict(what, argv=list(args), stdout=stdout, stderr=stderr)
  pid = _server().request(start=dict(request, env=env or {}))["pid"]
  return Command(["python", *shown, *args], pid)


def _run(start, *args, timeout, env=None) -> subprocess.CompletedProcess[str]:
  with tempfile.TemporaryDirectory() as tmp:
    out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
    command = start(*args, stdout=out, stderr=err, env=env)
    try:
      command.wait(timeout)
    finally:
      command.kill()
    return subprocess.CompletedProcess(
        command.args, command.returncode, read(out), read(err)
    )


def run_module(
    module: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
  """Runs `python -m module args` (`start_module`) to its end; returns its
  stdout and stderr; the exit status is not checked."""
  return _run(start_module, module, *args, timeout=timeout)


def run_code(
    code: str, *args: str, num_devices: int, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
  """Runs `python -c code args` (`start_code`) with `num_devices` fake CPU
  devices to its end, like `run_module`."""
  return _run(
      start_code, code, *args, timeout=timeout, env=fake_devices(num_devices)
  )


def fake_devices(num_devices: int) -> dict[str, str]:
  """The environment addition that gives a command `num_devices` CPU
  devices (XLA reads it when the command makes its devices)."""
  flags = os.environ.get("XLA_FLAGS", "")
  return dict(
      XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={num_devices}"
  )


def run_new_process(
    module: str, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
  """`run_module` as a process started from nothing (`python -m`), for the
  few tests that are about the process itself."""
  return subprocess.run(
      [sys.executable, "-m", module, *args],
      cwd=REPO_ROOT,
      env=command_env(),
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
  )


# --- The training program on the `configs/demo.py:smoke` data set (the
# session fixtures `smoke_dirs` and `uninterrupted` in tests/conftest.py). ---


def smoke_config(dirs, arg: str = "smoke", **overrides):
  """configs/demo.py:`arg` reading the smoke data in `dirs`."""
  from configs import demo  # pylint: disable=g-import-not-at-top

  config = demo.get_config(arg)
  config.data_dir, config.manual_dir = dirs
  config.update(overrides)
  return config


def main_args(dirs, workdir, *flags, config="configs/demo.py:smoke"):
  """The flags of `alexnet_jax.main` for a run on the smoke data."""
  return [
      f"--config={config}",
      f"--workdir={workdir}",
      f"--config.data_dir={dirs[0]}",
      f"--config.manual_dir={dirs[1]}",
      *flags,
  ]


def start_main(
    dirs,
    workdir,
    *flags,
    log: str,
    config="configs/demo.py:smoke",
    new_process=False,
) -> Command | subprocess.Popen:
  """Starts the command line; its stdout and stderr go to the file `log`.

  A fork of the fork server (`start_module`), or with `new_process` a
  process started from nothing.
  """
  args = main_args(dirs, workdir, *flags, config=config)
  if not new_process:
    return start_module("alexnet_jax.main", *args, stdout=log)
  with open(log, "w") as f:
    return subprocess.Popen(
        [sys.executable, "-m", "alexnet_jax.main", *args],
        cwd=REPO_ROOT,
        env=command_env(),
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
    new_process=False,
) -> subprocess.CompletedProcess[str]:
  """Runs the command line (`start_main`) to its end (output: stdout and
  stderr, merged, also in the file `log`; default `workdir` + ".log")."""
  log = log or workdir.rstrip("/") + ".log"
  proc = start_main(
      dirs, workdir, *flags, log=log, config=config, new_process=new_process
  )
  try:
    proc.wait(timeout=600)
  finally:
    proc.kill()
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
