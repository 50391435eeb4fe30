"""Tests of the generated mini ILSVRC-2010 release (alexnet_jax.data.mini)."""

import io
import os
import tarfile

import numpy as np
import pytest
import scipy.io

from alexnet_jax.data import mini
from alexnet_jax.data import shapes

TINY = mini.MiniParams(
    num_classes=3,
    train_per_class=4,
    val_per_class=2,
    test_per_class=2,
    image_size=64,
    seed=7,
)
RELEASE_FILES = (
    mini.TRAIN_TAR,
    mini.VAL_TAR,
    mini.TEST_TAR,
    mini.DEVKIT_TAR,
    mini.TEST_GROUND_TRUTH,
    mini.PATCH_TAR,
)


def _read_all(directory):
  out = {}
  for name in RELEASE_FILES:
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = f.read()
  return out


def test_same_seed_gives_byte_identical_files(tmp_path):
  a = mini.generate(str(tmp_path / "a"), TINY)
  b = mini.generate(str(tmp_path / "b"), TINY)
  files_a, files_b = _read_all(a.manual_dir), _read_all(b.manual_dir)
  for name in RELEASE_FILES:
    assert files_a[name] == files_b[name], name
  other = mini.generate(
      str(tmp_path / "c"), mini.MiniParams(**{**TINY.__dict__, "seed": 8})
  )
  files_c = _read_all(other.manual_dir)
  assert files_c[mini.TRAIN_TAR] != files_a[mini.TRAIN_TAR]


def test_ensure_generated_is_idempotent(tmp_path):
  out_dir = str(tmp_path / "m")
  first = mini.ensure_generated(out_dir, TINY)
  path = os.path.join(out_dir, mini.TRAIN_TAR)
  stamp = os.stat(path).st_mtime_ns
  again = mini.ensure_generated(out_dir, TINY)
  assert os.stat(path).st_mtime_ns == stamp  # not rewritten
  assert again == first
  assert mini.ensure_manual_dir(out_dir, TINY) == out_dir
  # Other parameters regenerate.
  changed = mini.MiniParams(**{**TINY.__dict__, "train_per_class": 5})
  mini.ensure_generated(out_dir, changed)
  with tarfile.open(path) as outer:
    inner = outer.extractfile(outer.getmembers()[0]).read()
  with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
    assert len(tar.getnames()) == 5


def test_official_layout_and_meta_mat(mini_dataset):
  manual_dir = mini_dataset.manual_dir
  n = mini_dataset.params.num_classes
  for name in RELEASE_FILES:
    assert os.path.isfile(os.path.join(manual_dir, name)), name
  with tarfile.open(os.path.join(manual_dir, mini.TRAIN_TAR)) as tar:
    class_tars = tar.getnames()
  assert sorted(class_tars) == sorted(f"{w}.tar" for w in mini_dataset.wnids)
  with tarfile.open(os.path.join(manual_dir, mini.DEVKIT_TAR), "r:gz") as tar:
    assert mini.META_MEMBER in tar.getnames()
    assert mini.VAL_GROUND_TRUTH_MEMBER in tar.getnames()
    mat = scipy.io.loadmat(io.BytesIO(tar.extractfile(mini.META_MEMBER).read()))
  synsets = mat["synsets"].reshape(-1)
  assert set(synsets.dtype.names) == {
      "ILSVRC2010_ID",
      "WNID",
      "words",
      "gloss",
      "num_children",
      "children",
      "wordnet_height",
      "num_train_images",
  }
  ids = [int(s["ILSVRC2010_ID"].item()) for s in synsets]
  assert ids == list(range(1, len(synsets) + 1))
  # Classes first (leaves), then internal nodes whose children exist.
  assert [int(s["num_children"].item()) for s in synsets[:n]] == [0] * n
  assert len(synsets) > n
  for s in synsets[n:]:
    children = s["children"].reshape(-1).astype(int)
    assert len(children) == int(s["num_children"].item()) > 0
    assert all(1 <= c <= len(synsets) for c in children)
  assert [str(s["WNID"].item()) for s in synsets[:n]] == list(
      mini_dataset.wnids
  )


def test_params_are_validated():
  with pytest.raises(ValueError, match="num_classes"):
    mini.MiniParams(num_classes=len(shapes.SHAPES) + 1).validate()
  with pytest.raises(ValueError, match="at least one"):
    mini.MiniParams(val_per_class=0).validate()


def test_every_shape_draws_something():
  for shape in shapes.SHAPES:
    rng = np.random.default_rng(0)
    image = np.asarray(shapes.render_image(rng, shape, 96, 80), np.float32)
    assert image.shape == (80, 96, 3)
    assert image.std() > 10.0, shape


def test_nearest_mean_accuracy_can_be_perfect_and_chance():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), 20)
  separable = labels[:, None] * 10.0 + rng.normal(0, 0.5, (80, 6))
  assert mini.nearest_mean_accuracy(separable, labels, separable, labels) == 1.0
  # Every class in both halves (labels 0, 1, 2, 3, 0, ...): on noise the
  # classifier is near chance (0.25), neither perfect nor always wrong.
  noise = rng.normal(0, 1, (80, 6))
  mixed = np.tile(np.arange(4), 20)
  accuracy = mini.nearest_mean_accuracy(
      noise[:40], mixed[:40], noise[40:], mixed[40:]
  )
  assert 0.05 < accuracy < 0.6


def test_trivial_baselines_are_far_from_solving_it(tmp_path):
  # Enough images for stable class means: 10 classes x 40 train, 12 val.
  params = mini.MiniParams(
      num_classes=10,
      train_per_class=40,
      val_per_class=12,
      test_per_class=1,
      image_size=96,
      seed=3,
  )
  manual_dir = mini.ensure_manual_dir(str(tmp_path / "m"), params)
  scores = mini.trivial_baselines(manual_dir)
  assert scores["chance"] == pytest.approx(0.1)
  # Raw pixels and color alone stay near chance (10%); a CNN must use shape.
  assert scores["pixels"] < 0.3
  assert scores["mean_color"] < 0.3
