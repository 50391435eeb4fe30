"""Shared test set-up.

JAX must see its fake CPU devices before it initializes a backend, so this
file configures them first, before any test module imports JAX code. Tests
that need a different device count run in a subprocess (see
`run_in_subprocess` in tests/helpers.py).
"""

import atexit
import contextlib
import fcntl
import os
import pathlib
import shutil
import tempfile

# Four fake CPU devices: enough for the 2-tower mesh and for data x model =
# 2 x 2. Must happen before the first JAX computation.
NUM_FAKE_DEVICES = 4
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# One persistent compilation cache for the session, shared through the
# environment with every subprocess the tests start: the many runs of the
# smoke config through the command line compile the same programs, and
# compiling is most of a smoke run's time. Fresh per session (a cache left
# by another JAX version is never read); a directory already set in the
# environment is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix="alexnet_jax_tests_jit_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
# Every program, however fast it compiles: a smoke run of the command line
# then costs 17 s of CPU instead of 19 s (2 cores, its second run).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# XLA:CPU's LLVM at -O1 instead of its default -O2, for the whole session and
# the commands the tests start (tests/helpers.py passes it on): compiling is
# most of the time of the tests' many small programs, and -O1 compiles them
# in 10-25% less time, and runs them as fast. Their results are -O2's: the
# same bits on jax 0.10 (a reference test's logits; 400 training steps of a
# smoke-size model), the last bits on jax 0.12 (that run's final loss
# 1.4046158 against 1.4046156, the same errors). Every exact comparison in
# the suite is between programs compiled alike. (-O0 compiles faster still,
# but runs elementwise code 3x slower, and its last-bit differences grow in
# training: that run ends at loss 1.77 instead of 1.31 on jax 0.10.)
# Replaces any XLA_FLAGS given to pytest (fake devices come from
# `jax_num_cpu_devices` below).
os.environ["XLA_FLAGS"] = "--xla_backend_optimization_level=1"

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", NUM_FAKE_DEVICES)
jax.config.update("jax_platforms", "cpu")


import pytest  # noqa: E402


@contextlib.contextmanager
def shared_dir(tmp_path_factory, name: str):
  """A directory made once per test session, also across pytest-xdist workers.

  Yields the directory with a lock held, so that one worker builds what the
  others then reuse; what the caller does inside must therefore find and
  keep finished work (the data generators and `data.prepare` do).
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # Shared by the workers of this session.
  path = pathlib.Path(root) / name
  with open(f"{path}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    path.mkdir(exist_ok=True)
    yield path


# =============================================================================
# ILSVRC-2010 mini data fixtures (alexnet_jax.data). Session-scoped: the
# small mini release is generated once and built once with the real builder;
# the data builder tests, the input pipeline and the training program reuse
# them. Imports are inside the fixtures so that tests that do not ask for
# them do not import TensorFlow.
# =============================================================================
# 10 classes x (8 train, 3 val, 3 test): 140 images. Source sides vary
# around 160 px (about 110..270), so the builder's rescale both enlarges and
# shrinks.
MINI_TEST_PARAMS = dict(
    num_classes=10,
    train_per_class=8,
    val_per_class=3,
    test_per_class=3,
    image_size=160,
    seed=2010,
)


@pytest.fixture(scope="session")
def mini_dataset(tmp_path_factory):
  """The generated mini release (`alexnet_jax.data.mini.MiniDataset`)."""
  from alexnet_jax.data import mini  # pylint: disable=g-import-not-at-top

  with shared_dir(tmp_path_factory, "ilsvrc2010_mini_manual") as out_dir:
    return mini.ensure_generated(
        str(out_dir), mini.MiniParams(**MINI_TEST_PARAMS)
    )


@pytest.fixture(scope="session")
def mini_manual_dir(mini_dataset) -> str:
  """Manual directory holding the mini release files."""
  return mini_dataset.manual_dir


@pytest.fixture(scope="session")
def mini_builder(mini_manual_dir, tmp_path_factory):
  """The mini release built with the real ILSVRC-2010 builder (prepared).

  Config "mini10": 10 classes, 256x256 images; splits train (80),
  validation (30), test (30).
  """
  from alexnet_jax import data  # pylint: disable=g-import-not-at-top

  with shared_dir(tmp_path_factory, "tfds_data") as data_dir:
    builder = data.get_builder(
        "ilsvrc2010_mini",
        data_dir=str(data_dir),
        num_classes=MINI_TEST_PARAMS["num_classes"],
        num_workers=2,
    )
    return data.prepare(builder, manual_dir=mini_manual_dir)


# =============================================================================
# The `configs/demo.py:smoke` data set and one complete smoke run of the
# command line, shared by test_train.py, test_resume.py, test_multiprocess.py,
# test_user_errors.py and every other test of the training program. The
# helpers they use are in tests/helpers.py (smoke_config, run_main, ...).
# =============================================================================


@pytest.fixture(scope="session")
def smoke_dirs(tmp_path_factory):
  """Generates and prepares the smoke data once: (data_dir, manual_dir)."""
  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel
  from alexnet_jax import run_data
  from tests import helpers

  with shared_dir(tmp_path_factory, "smoke_data") as root:
    dirs = (str(root / "tfds"), str(root / "manual"))
    run_data.Data(helpers.smoke_config(dirs), parallel.make_mesh(1, 2))
  return dirs


@pytest.fixture(scope="session")
def uninterrupted(smoke_dirs, tmp_path_factory):
  """A complete smoke run of the command line: (workdir, log).

  A process of its own like the interrupted runs of test_resume.py (forks
  of tests/fork_server.py), so that all of them run the same compiled
  programs (the test process has 4 fake devices, the command 2) and their
  parameters can be compared exactly. This one is started from nothing
  (`python -m`), so that test_exit.py times a whole process's end. Never
  change this workdir: copy it.
  """
  from tests import helpers  # pylint: disable=g-import-not-at-top

  with shared_dir(tmp_path_factory, "uninterrupted") as path:
    workdir = str(path)
    log = workdir + ".log"
    if not os.path.exists(os.path.join(workdir, "results.json")):
      helpers.run_main(smoke_dirs, workdir, log=log, new_process=True)
      # When the process had ended (test_exit.py).
      pathlib.Path(workdir + ".ended").touch()
    return workdir, helpers.read(log)
