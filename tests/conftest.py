"""Shared test set-up.

JAX must see its fake CPU devices before it initializes a backend, so this
file configures them first, before any test module imports JAX code. Tests
that need a different device count run in a subprocess (see
`run_in_subprocess` in tests/helpers.py).
"""
import os

# Four fake CPU devices: enough for the 2-tower mesh and for data x model =
# 2 x 2. Must happen before the first JAX computation.
NUM_FAKE_DEVICES = 4
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", NUM_FAKE_DEVICES)
jax.config.update("jax_platforms", "cpu")


# =============================================================================
# ILSVRC-2010 mini data fixtures (alexnet_jax.data). Session-scoped: the
# small mini release is generated once and built once with the real builder;
# the data builder tests, the input pipeline and the training program reuse
# them. Imports are inside the fixtures so that tests that do not ask for
# them do not import TensorFlow.
# =============================================================================
import pytest  # noqa: E402

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

  out_dir = tmp_path_factory.mktemp("ilsvrc2010_mini_manual")
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

  data_dir = tmp_path_factory.mktemp("tfds_data")
  builder = data.get_builder(
      "ilsvrc2010_mini",
      data_dir=str(data_dir),
      num_classes=MINI_TEST_PARAMS["num_classes"],
      num_workers=2,
  )
  return data.prepare(builder, manual_dir=mini_manual_dir)


# =============================================================================
# The `configs/demo.py:smoke` data set and one complete smoke run of the
# command line, shared by test_train.py and test_user_errors.py (and every
# other test of the training program). The helpers they use are in
# tests/helpers.py (smoke_config, run_main, final_params).
# =============================================================================


@pytest.fixture(scope="session")
def smoke_dirs(tmp_path_factory):
  """Generates and prepares the smoke data once: (data_dir, manual_dir)."""
  # pylint: disable=g-import-not-at-top
  from alexnet_jax import parallel
  from alexnet_jax import run_data
  from tests import helpers

  root = tmp_path_factory.mktemp("smoke_data")
  dirs = (str(root / "tfds"), str(root / "manual"))
  run_data.Data(helpers.smoke_config(dirs), parallel.make_mesh(1, 2))
  return dirs


@pytest.fixture(scope="session")
def uninterrupted(smoke_dirs, tmp_path_factory):
  """A complete smoke run of the command line: (workdir, log).

  A subprocess like the interrupted runs of test_train.py, so that all of
  them run the same compiled programs (the test process has 4 fake devices,
  the command 2), and their parameters can be compared exactly. Never
  change this workdir: copy it.
  """
  from tests import helpers  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  return workdir, helpers.run_main(smoke_dirs, workdir).stdout
