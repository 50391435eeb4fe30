"""`config.mean_image_file`: a given mean image (Caffe's, converted) in
place of the training images' mean, for evaluation and training
(alexnet_jax/run_data.py, input_stats.load_mean_image).

Runs on the generated smoke data (conftest.smoke_dirs: 72x72 stored
images, 64x64 crops).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from alexnet_jax import cli
from alexnet_jax import input_stats
from alexnet_jax import parallel
from alexnet_jax import run_data
from tests import helpers

STORED, CROP = 72, 64


def first_center_batch(data: run_data.Data) -> dict[str, np.ndarray]:
  batches = data.eval_batches("validation", "center")
  try:
    return {k: np.asarray(v) for k, v in next(batches).items()}
  finally:
    batches.close()


def write_mean(path, shape, seed=0) -> np.ndarray:
  mean = np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)
  np.savez(path, mean_image=mean)
  return mean


def test_evaluation_subtracts_the_given_mean(smoke_dirs, tmp_path, monkeypatch):
  """The same validation images, centred by the computed mean and by the
  file's, differ by exactly the difference of the two means (central
  64x64 of 72x72); evaluation reads no training statistics; training keeps
  the training images' covariance (PCA lighting) with the file's mean."""
  mesh = parallel.make_mesh(1, 1)
  computed = run_data.Data(helpers.smoke_config(smoke_dirs), mesh)
  assert computed.stats.mean_image.shape == (STORED, STORED, 3)
  path = tmp_path / "mean.npz"
  mean = write_mean(path, (STORED, STORED, 3))

  def no_training_statistics(*args, **kwargs):
    raise AssertionError("evaluation read the training statistics")

  with monkeypatch.context() as patch:
    patch.setattr(input_stats, "compute_or_load_stats", no_training_statistics)
    given = run_data.Data(
        helpers.smoke_config(smoke_dirs, mean_image_file=str(path)), mesh
    )
    got = first_center_batch(given)
  want = first_center_batch(computed)
  np.testing.assert_array_equal(got["label"], want["label"])
  top = (STORED - CROP) // 2
  crop = (computed.stats.mean_image - mean)[top : top + CROP, top : top + CROP]
  assert np.abs(crop).max() > 10  # The two means differ visibly.
  np.testing.assert_allclose(
      got["image"] - want["image"],
      np.broadcast_to(crop, got["image"].shape),
      atol=1e-3,
  )

  train = given.train_stats()
  np.testing.assert_array_equal(train.mean_image, mean)
  np.testing.assert_array_equal(
      train.pixel_covariance, computed.stats.pixel_covariance
  )
  assert train.num_images == computed.stats.num_images
  with contextlib.closing(given.train_batches(0)) as batches:
    images = np.asarray(next(batches)["image"])
  assert images.shape[1:] == (CROP, CROP, 3) and np.isfinite(images).all()


@pytest.mark.parametrize(
    "kind,needles",
    [
        ("wrong_shape", ["(64, 64, 3)", "72x72", "(72, 72, 3)"]),
        ("no_mean_image", ["no 'mean_image'", "weights convert"]),
        ("not_npz", ["not a readable .npz"]),
        ("missing", ["no such file", "--mean_out"]),
    ],
)
def test_an_unusable_mean_file_is_a_user_error(
    smoke_dirs, tmp_path, kind, needles
):
  path = tmp_path / "mean.npz"
  if kind == "wrong_shape":  # The crop's size, not the stored images'.
    write_mean(path, (CROP, CROP, 3))
  elif kind == "no_mean_image":
    np.savez(path, mean=np.zeros((STORED, STORED, 3), np.float32))
  elif kind == "not_npz":
    path.write_text("not an archive")
  config = helpers.smoke_config(smoke_dirs, mean_image_file=str(path))
  with pytest.raises(input_stats.MeanImageError) as error:
    run_data.Data(config, parallel.make_mesh(1, 1))
  assert isinstance(error.value, cli.UserError)
  message = str(error.value)
  assert f"config.mean_image_file='{path}'" in message, message
  for needle in needles:
    assert needle in message, (needle, message)


def test_ensemble_members_share_the_mean():
  """`evaluate` prepares the data with the first member's config: members
  with different mean images are refused."""
  # pylint: disable-next=g-import-not-at-top
  from alexnet_jax import eval_lib
  from configs import demo  # pylint: disable=g-import-not-at-top

  first, second = demo.get_config("smoke"), demo.get_config("smoke")
  eval_lib.check_ensemble([first, second])
  second.mean_image_file = "caffe_mean.npz"
  with pytest.raises(cli.UserError, match="caffe_mean.npz"):
    eval_lib.check_ensemble([first, second])
