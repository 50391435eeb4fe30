r"""Trains AlexNet: `python -m alexnet_jax.main --config=configs/demo.py`.

  python -m alexnet_jax.main --config=configs/ilsvrc2010.py \
      [--workdir=DIR] [--config.batch_size=256] [--config.mesh.model=1]

Rerunning the same command resumes from the latest checkpoint in the
workdir. The config is checked before any data or device work
(config_validation.py); a mistake is one `error: ...` line, exit status 2. Multi-host: run the same command in every process with
`--multihost` (TPU VMs and clusters JAX detects) or with
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`.
"""

import os

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import config_validation

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Training config file, e.g. configs/demo.py[:ARGS].",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, TensorBoard events and results.json go (default: "
    "workdirs/<config name>). Holding a checkpoint means: resume.",
)
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Call jax.distributed.initialize() (auto-detected "
    "cluster, e.g. all workers of a TPU VM).",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (multi-process)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (multi-process)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index (multi-process)."
)
flags.mark_flags_as_required(["config"])


def default_workdir(config_path: str) -> str:
  """workdirs/<config file name>[_<config args>], e.g. workdirs/demo."""
  path, _, arg = config_path.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  return os.path.join(
      "workdirs", name + ("_" + arg.replace(",", "_") if arg else "")
  )


def check_workdir(workdir: str) -> None:
  """The workdir must be a directory this process can write."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise cli.UserError(
        f"--workdir={workdir} cannot be created: "
        f"{e.strerror}. Choose another --workdir."
    ) from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise cli.UserError(
        f"--workdir={workdir} is not writable by this user. "
        "Choose another --workdir or fix its permissions."
    )


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {argv[1:]}")
  cli.quiet_library_logs()
  config = cli.config_value(_CONFIG)
  config_validation.validate(config)
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  # Fake CPU devices must exist before JAX initializes a backend.
  cli.setup_devices(config)
  if _MULTIHOST.value or _COORDINATOR.value:
    # CPU devices of different processes talk through gloo (only the CPU
    # backend reads this; GPUs and TPUs have their own collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
  workdir = _WORKDIR.value
  if workdir is None:
    workdir = default_workdir(
        config_flags.get_config_filename(flags.FLAGS["config"])
    )
    logging.info("--workdir not given: using %s", workdir)
    print(f"workdir: {workdir}", flush=True)
  config_validation.validate_mesh(config, jax.devices())
  check_workdir(workdir)
  logging.info(
      "process %d of %d; devices: %s",
      jax.process_index(),
      jax.process_count(),
      jax.devices(),
  )
  try:
    results = train.train_and_evaluate(config, workdir)
  except train.USER_ERRORS as e:
    # Errors with a message that says what to do: no traceback.
    logging.error("%s: %s", type(e).__name__, e)
    cli.fail(str(e))
  if jax.process_index() == 0 and results.get("summary"):
    print(results["summary"], flush=True)
  if jax.process_count() > 1:
    jax.distributed.shutdown()  # A barrier: every process is done.


if __name__ == "__main__":
  cli.run(main)
