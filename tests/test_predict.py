"""`python -m alexnet_jax.predict` on real photographs.

The photos are the sample images scikit-image installs with its package
(no download): a cat (chelsea.png, 451x300), a rocket (rocket.jpg, 640x427,
a JPEG that is not 256x256) and a grey camera man (camera.png, one
channel). The network is configs/ilsvrc2012.py:caffe_reference (227 crops,
Caffe's LRN) at reduced widths with random weights: the test is about the
path from files to ranked classes, not about accuracy.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import jax
import numpy as np
import pytest
from skimage import data as skimage_data

from alexnet_jax import cli
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import predict
from alexnet_jax import weights
from configs import ilsvrc2012
from tests import helpers

PHOTOS = ("chelsea.png", "rocket.jpg", "camera.png")
# The reduced network, as command-line overrides of the config.
OVERRIDES = (
    "--config.model.conv_features=(4,4,6,6,4)",
    "--config.model.fc_features=(8,8)",
    "--config.model.num_classes=10",
)


def photo_paths() -> list[str]:
  folder = os.path.dirname(skimage_data.__file__)
  paths = [os.path.join(folder, name) for name in PHOTOS]
  for path in paths:
    assert os.path.isfile(path), f"scikit-image does not ship {path}"
  return paths


def small_config():
  config = ilsvrc2012.get_config("caffe_reference")
  config.model.conv_features = (4, 4, 6, 6, 4)
  config.model.fc_features = (8, 8)
  config.model.num_classes = 10
  return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(config, host params, mean image, encoded photos, files)."""
  folder = tmp_path_factory.mktemp("predict")
  config = small_config()
  params = jax.device_get(
      model_lib.init_params(config.model, jax.random.key(0))
  )
  # Larger weights than the init's, so that the classes are well apart.
  params = jax.tree.map(lambda x: x * 8.0, params)
  rng = np.random.default_rng(0)
  mean = (100 + 30 * rng.random((256, 256, 3))).astype(np.float32)
  npz, mean_npz, labels = (
      folder / "w.npz",
      folder / "mean.npz",
      folder / "labels.txt",
  )
  weights.export_npz(npz, params)
  np.savez(mean_npz, mean_image=mean)
  labels.write_text("".join(f"n0{i:07d} class number {i}\n" for i in range(10)))
  images = []
  for path in photo_paths():
    with open(path, "rb") as f:
      images.append(f.read())
  return (
      config,
      params,
      mean,
      images,
      dict(npz=npz, mean=mean_npz, labels=labels),
  )


@pytest.fixture(scope="module")
def probabilities(setup):
  """{(crops, mesh shape): [photos, classes]} on 1x1 and 1x2 meshes."""
  config, params, mean, images, _ = setup
  out = {}
  for shape in ((1, 1), (1, 2)):
    mesh = parallel.make_mesh(*shape)
    placed = jax.device_put(
        params, parallel.named_shardings(mesh, parallel.param_specs(params))
    )
    for crops in ("center", "ten"):
      out[crops, shape] = predict.predict_images(
          config, placed, mesh, images, mean, crops
      )
  return out


@pytest.mark.parametrize("crops", ["center", "ten"])
def test_same_top5_on_one_and_two_devices(probabilities, crops):
  one, two = probabilities[crops, (1, 1)], probabilities[crops, (1, 2)]
  assert one.shape == (len(PHOTOS), 10)
  np.testing.assert_allclose(one.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(one, two, rtol=1e-4, atol=1e-6)
  for p1, p2 in zip(one, two):
    assert [t["label"] for t in predict.top_classes(p1, 5, None)] == [
        t["label"] for t in predict.top_classes(p2, 5, None)
    ]


def test_photos_and_crops_differ(probabilities):
  """Each photo gets its own answer, and the 10 patches are not the
  center crop alone."""
  center, ten = probabilities["center", (1, 1)], probabilities["ten", (1, 1)]
  assert np.abs(center[0] - center[1]).max() > 1e-3
  assert np.abs(center - ten).max() > 1e-4


def test_top_classes_are_ranked_and_named():
  probs = np.array([0.1, 0.5, 0.05, 0.3, 0.05], np.float32)
  top = predict.top_classes(probs, 3, ["a", "b", "c", "d", "e"])
  assert [(t["rank"], t["label"], t["name"]) for t in top] == [
      (1, 1, "b"),
      (2, 3, "d"),
      (3, 0, "a"),
  ]
  assert predict.top_classes(probs, 1, None)[0]["name"] == "class 1"


def run_predict(*args) -> subprocess.CompletedProcess[str]:
  return helpers.run_module("alexnet_jax.predict", *args)  # One CPU device.


def test_command_line_on_one_cpu_device(setup, probabilities):
  """End to end: files in, JSON out, the same classes as above."""
  _, _, _, _, files = setup
  proc = run_predict(
      f"--npz={files['npz']}",
      f"--mean={files['mean']}",
      f"--labels={files['labels']}",
      "--config=configs/ilsvrc2012.py:caffe_reference",
      *OVERRIDES,
      "--crops=ten",
      "--json",
      *photo_paths(),
  )
  assert proc.returncode == 0, proc.stderr
  results = json.loads(proc.stdout)["results"]
  assert [os.path.basename(r["file"]) for r in results] == list(PHOTOS)
  for r, probs in zip(results, probabilities["ten", (1, 1)]):
    assert r["crops"] == "ten" and len(r["top"]) == 5
    expected = predict.top_classes(probs, 5, None)
    assert [t["label"] for t in r["top"]] == [t["label"] for t in expected]
    np.testing.assert_allclose(
        [t["probability"] for t in r["top"]],
        [t["probability"] for t in expected],
        rtol=1e-4,
    )
    assert r["top"][0]["name"] == (
        f"n0{r['top'][0]['label']:07d} class number {r['top'][0]['label']}"
    )


def test_a_file_that_is_no_image_is_named(tmp_path):
  """A user error (cli.UserError: one message, exit status 2)."""
  not_image = tmp_path / "notes.jpg"
  not_image.write_text("not a photo")
  with pytest.raises(
      predict.PredictError, match=re.escape(f"{not_image} is not an image")
  ):
    predict.read_images([photo_paths()[0], str(not_image)])
  assert issubclass(predict.PredictError, cli.UserError)


def test_ilsvrc2010_names_come_from_meta_mat(mini_manual_dir):
  """The generated mini release's devkit, read as the real one is."""
  config = ilsvrc2012.get_config()
  config.dataset, config.manual_dir = "ilsvrc2010_mini", mini_manual_dir
  config.model.num_classes = 10
  names = predict.dataset_class_names(config)
  assert len(names) == 10 and len(set(names)) == 10
  assert all(name.startswith("n") and " " in name for name in names), names
  config.manual_dir = os.path.dirname(mini_manual_dir)  # No devkit there.
  assert predict.dataset_class_names(config) is None


def test_prepared_side_is_the_mean_images(tmp_path):
  """configs/demo.py's models read 72x72 prepared images (64 crops): the
  photos are rescaled to the mean image's side."""
  config = small_config()
  config.model.image_size = 64
  params = jax.device_get(
      model_lib.init_params(config.model, jax.random.key(1))
  )
  mean_path = tmp_path / "mean.npz"
  np.savez(mean_path, mean_image=np.full((72, 72, 3), 120, np.float32))
  mean = predict.load_mean(str(mean_path), 64)
  probs = predict.predict_images(
      config,
      params,
      parallel.make_mesh(1, 1),
      predict.read_images(photo_paths()[:1]),
      mean,
      "ten",
  )
  assert probs.shape == (1, 10)
  np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)
  with pytest.raises(predict.PredictError, match=r"crop size 227"):
    predict.load_mean(str(mean_path), 227)
