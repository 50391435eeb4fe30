"""The paper's Figure 1 (relu_vs_tanh) and Figure 3 (conv1's colors).

Figure 4 is in test_neighbors.py; the labelled conv1.png and the color
numbers of a training run are checked in test_train.py.
"""

import gzip
import json
import os

import numpy as np
from PIL import Image
import pytest

from alexnet_jax import figures
from alexnet_jax import relu_vs_tanh
from tests import helpers

# ----------------------------------------------------------------------------
# Figure 3: color specificity of conv1's kernels, the labelled picture.
# ----------------------------------------------------------------------------


def test_color_share_is_0_for_grey_and_1_for_pure_color_kernels():
  rng = np.random.default_rng(0)
  grey = np.repeat(rng.normal(size=(11, 11, 1, 5)), 3, axis=2)
  color = rng.normal(size=(11, 11, 3, 5))
  color -= color.mean(axis=2, keepdims=True)  # No grey component left.
  np.testing.assert_allclose(figures.color_share(grey), 0.0, atol=1e-12)
  np.testing.assert_allclose(figures.color_share(color), 1.0, atol=1e-12)
  # Random kernels: 2/3 of the energy is off the grey axis on average.
  shares = figures.color_share(rng.normal(size=(2, 11, 11, 3, 400)))
  assert shares.shape == (2, 400)
  np.testing.assert_allclose(shares.mean(), 2 / 3, atol=0.01)
  # Per tower: tower 0 grey, tower 1 color.
  summary = figures.color_summary(np.stack([grey, color]))
  np.testing.assert_allclose(summary["tower_mean"], [0.0, 1.0], atol=1e-9)
  assert len(summary["per_kernel"]) == 2 and len(summary["per_kernel"][1]) == 5


def test_conv1_grid_layout_with_tower_labels():
  kernel = np.random.default_rng(0).normal(size=(2, 11, 11, 3, 20))
  plain = figures.conv1_grid(kernel)
  # 20 kernels: 2 rows of 16 columns per tower, 8 pixels between towers.
  cell = 11 * 4 + 1
  assert plain.shape == (2 * 2 * cell + 8, 16 * cell, 3)
  labelled = figures.conv1_grid(kernel, labels=["tower 0", "tower 1"])
  assert labelled.shape == (
      plain.shape[0] + 2 * figures.LABEL_HEIGHT,
      plain.shape[1],
      3,
  )
  # The kernels are the same, below each tower's label line.
  h = figures.LABEL_HEIGHT
  np.testing.assert_array_equal(labelled[h : h + 2 * cell], plain[: 2 * cell])
  # The label lines hold dark text.
  second = 2 * cell + h + 8  # Tower 1's label line.
  assert labelled[:h].min() < 128 and labelled[second : second + h].min() < 128


def test_line_plot():
  picture = figures.line_plot(
      [
          dict(x=[0, 1, 2], y=[0.9, 0.5, 0.2], style="solid", label="relu"),
          dict(x=[0, 1, 2], y=[0.9, 0.7, 0.4], style="dashed", label="tanh"),
      ],
      hlines=[(0.25, "25%")],
      xlabel="epochs",
      ylabel="error",
      y_range=(0, 1),
      size=(320, 240),
  )
  assert picture.shape == (240, 320, 3) and picture.dtype == np.uint8
  assert (picture < 128).any()


# ----------------------------------------------------------------------------
# Figure 1: ReLU vs tanh on Fashion-MNIST.
# ----------------------------------------------------------------------------

FASHION_MNIST = os.path.exists(
    os.path.join(
        relu_vs_tanh.DEFAULT_DATA_DIR, relu_vs_tanh.FILES["train_images"]
    )
)
needs_fashion_mnist = pytest.mark.skipif(
    not FASHION_MNIST,
    reason=f"Fashion-MNIST not installed: apt-get install "
    f"{relu_vs_tanh.DEBIAN_PACKAGE}",
)


def test_first_crossing_interpolates():
  epochs, errors = [0, 0.5, 1.0, 1.5], [0.9, 0.4, 0.2, 0.1]
  assert relu_vs_tanh.first_crossing(epochs, errors, 0.25) == pytest.approx(
      0.5 + 0.5 * 0.15 / 0.2
  )
  assert relu_vs_tanh.first_crossing(epochs, errors, 0.95) == 0
  assert relu_vs_tanh.first_crossing(epochs, errors, 0.05) is None


def test_idx_reader_and_missing_data_message(tmp_path):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = tmp_path / "x-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(
        b"\0\0\x08\x03"
        + b"".join(n.to_bytes(4, "big") for n in images.shape)
        + images.tobytes()
    )
  np.testing.assert_array_equal(relu_vs_tanh.read_idx(str(path)), images)
  with pytest.raises(relu_vs_tanh.DataError, match="dataset-fashion-mnist"):
    relu_vs_tanh.load_fashion_mnist(str(tmp_path))


@needs_fashion_mnist
def test_fashion_mnist_loader():
  raw = relu_vs_tanh.load_fashion_mnist()
  assert raw["train_images"].shape == (60000, 28, 28)
  assert raw["test_images"].shape == (10000, 28, 28)
  assert set(np.unique(raw["train_labels"])) == set(range(10))


# The command's settings (its seed and batch size: the defaults, 0 and 128).
COMMAND_RUN = dict(
    max_train_images=512,
    epochs=1,
    evals_per_epoch=2,
    error_images=256,
    relu_learning_rates="0.02,0.05",
    tanh_learning_rates="0.05",
    target_error=0.8,
    extra_targets=0.5,
)


@pytest.fixture(scope="module")
def relu_vs_tanh_command(tmp_path_factory):
  """The figure's command line, run once: (workdir, stdout, results.json)."""
  workdir = tmp_path_factory.mktemp("relu_vs_tanh")
  proc = helpers.run_module(
      "alexnet_jax.relu_vs_tanh",
      f"--workdir={workdir}",
      *(f"--{k}={v}" for k, v in COMMAND_RUN.items()),
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  with open(workdir / "relu_vs_tanh.json") as f:
    return workdir, proc.stdout, json.load(f)


@needs_fashion_mnist
def test_relu_vs_tanh_command(relu_vs_tanh_command):
  workdir, stdout, result = relu_vs_tanh_command
  assert f"wrote {workdir}/relu_vs_tanh.png" in stdout
  assert "training error 80%:" in stdout
  assert result["data"]["train_images"] == 512
  assert [(r["activation"], r["learning_rate"]) for r in result["runs"]] == [
      ("relu", 0.02),
      ("relu", 0.05),
      ("tanh", 0.05),
  ]
  assert set(result["summary"]) == {"0.8", "0.5"}
  row = result["summary"]["0.8"]
  for activation in ("relu", "tanh"):
    if row[activation] is not None:
      assert 0 <= row[activation]["epochs"] <= 1
  picture = np.asarray(Image.open(workdir / "relu_vs_tanh.png"))
  assert picture.shape == (440, 640, 3)


@needs_fashion_mnist
def test_relu_vs_tanh_is_deterministic(relu_vs_tanh_command):
  """One of the command's runs again, here: the same curve, bit for bit."""
  _, _, result = relu_vs_tanh_command
  c = COMMAND_RUN
  data = relu_vs_tanh.make_data(
      relu_vs_tanh.load_fashion_mnist(),
      c["max_train_images"],
      c["error_images"],
      seed=0,
  )
  again = relu_vs_tanh.run_figure(
      data,
      dict(tanh=[float(c["tanh_learning_rates"])]),
      target=c["target_error"],
      extra_targets=[c["extra_targets"]],
      epochs=c["epochs"],
      evals_per_epoch=c["evals_per_epoch"],
      batch_size=128,  # The command's default, like the seed.
      seed=0,
      log=lambda _: 0,
  )
  (run,) = again["runs"]
  (want,) = [r for r in result["runs"] if r["activation"] == "tanh"]
  assert run["epochs"] == [0.0, 0.5, 1.0]
  assert all(0.0 <= e <= 1.0 for e in run["train_error"])
  assert run["train_error"] == want["train_error"]
  assert run["epochs_to_target"] == want["epochs_to_target"]


def test_missing_fashion_mnist_names_the_package(tmp_path):
  proc = helpers.run_module(
      "alexnet_jax.relu_vs_tanh",
      f"--workdir={tmp_path}",
      f"--data_dir={tmp_path}",
      timeout=120,
  )
  assert proc.returncode != 0
  assert "apt-get install dataset-fashion-mnist" in proc.stderr
  assert "Traceback" not in proc.stderr
