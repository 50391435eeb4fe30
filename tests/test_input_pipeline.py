"""Tests of the paper's input pipeline (alexnet_jax/input_*.py, run_data.py).

Geometry and randomness are checked on small synthetic JPEGs fed through the
builder-free cores (`*_dataset_from_records`); everything that depends on a
real TFDS builder (statistics, splits, evaluation counts, resume) runs on the
shared session fixture `mini_builder` (tests/conftest.py: 10 classes, splits
train 80 / validation 30 / test 30, 256x256 JPEGs).
"""

from __future__ import annotations

import collections
import io
import os

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import input_decoding
from alexnet_jax import input_pipeline as ip
from alexnet_jax import input_splits
from alexnet_jax import input_stats
from alexnet_jax import run_data

SIZE = ip.IMAGE_SIZE


def _jpeg(pixels: np.ndarray, quality: int = 100) -> bytes:
  buffer = io.BytesIO()
  # 4:4:4 so that smooth ramps survive within +-1 level.
  Image.fromarray(pixels).save(
      buffer, format="JPEG", quality=quality, subsampling=0
  )
  return buffer.getvalue()


def _png(pixels: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="PNG")
  return buffer.getvalue()


def _records(images: list[bytes], labels=None) -> tf.data.Dataset:
  labels = np.arange(len(images)) if labels is None else np.asarray(labels)
  return tf.data.Dataset.from_tensor_slices(
      {
          "image": tf.constant(images),
          "label": tf.constant(labels, tf.int64),
      }
  )


def _zero_stats(size: int = SIZE) -> input_stats.InputStats:
  return input_stats.InputStats(
      mean_image=np.zeros((size, size, 3), np.float32),
      pixel_covariance=np.eye(3),
      num_images=1,
  )


def _coordinate_image() -> np.ndarray:
  """Red = column, green = row: every pixel says where it is."""
  rows, cols = np.mgrid[0:SIZE, 0:SIZE]
  return np.stack([cols, rows, np.full_like(rows, 128)], axis=-1).astype(
      np.uint8
  )


def _recover_window(
    crop: np.ndarray, image: np.ndarray
) -> tuple[int, int, bool]:
  """(top, left, flipped) of a crop of the decoded coordinate image.

  Estimates the window from the encoded coordinates, then finds the window
  of `image` that the crop equals exactly; fails if there is none.
  """
  c = crop.shape[0]
  j = np.arange(c)
  red, green = crop[..., 0], crop[..., 1]
  flipped = red[:, -1].mean() < red[:, 0].mean()
  columns = (c - 1 - j) if flipped else j
  left = int(np.round(np.median(red - columns[None, :])))
  top = int(np.round(np.median(green - j[:, None])))
  # JPEG error can move the estimate by a pixel or two.
  for dt in range(-3, 4):
    for dl in range(-3, 4):
      t, l = top + dt, left + dl
      if 0 <= t <= image.shape[0] - c and 0 <= l <= image.shape[1] - c:
        window = image[t : t + c, l : l + c]
        if flipped:
          window = window[:, ::-1]
        if np.array_equal(crop, window):
          return t, l, bool(flipped)
  raise AssertionError(
      f"The crop is no window of the image (estimate "
      f"top={top}, left={left}, flipped={flipped})."
  )


def _take(ds: tf.data.Dataset, n: int) -> list[dict[str, np.ndarray]]:
  return list(ds.take(n).as_numpy_iterator())


def _split_images(builder, split) -> dict[bytes, tuple[np.ndarray, int]]:
  """file_name -> (decoded uint8 image, label), decoded by TFDS itself."""
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return {
      ex["file_name"]: (ex["image"], int(ex["label"]))
      for ex in tfds.as_numpy(ds)
  }


@pytest.fixture(scope="module")
def mini_stats(mini_builder):
  # The default cache location (the builder's data dir), shared with every
  # other user of the fixture.
  return input_stats.compute_or_load_stats(mini_builder)


# --------------------------------------------------------------------------
# Import-time behavior.
# --------------------------------------------------------------------------


def test_tensorflow_sees_no_accelerator(monkeypatch):
  assert tf.config.get_visible_devices("GPU") == []
  # The check above passes on any machine without a GPU; what the module
  # does on one with a GPU or TPU is to hide them (an empty device list).
  calls = []
  monkeypatch.setattr(
      tf.config,
      "set_visible_devices",
      lambda devices, kind: calls.append((devices, kind)),
  )
  # pylint: disable-next=protected-access
  input_decoding._hide_accelerators_from_tensorflow()
  assert calls == [([], "GPU"), ([], "TPU")]

  def too_late(devices, kind):
    raise RuntimeError(f"{kind} already initialized")

  # TensorFlow initialized before the import: a warning, not a crash.
  monkeypatch.setattr(tf.config, "set_visible_devices", too_late)
  # pylint: disable-next=protected-access
  input_decoding._hide_accelerators_from_tensorflow()


# --------------------------------------------------------------------------
# Training transforms on synthetic images.
# --------------------------------------------------------------------------


def test_random_crops_lie_inside_and_flips_are_fair():
  crop = 96
  num = 400
  jpeg = _jpeg(_coordinate_image())
  ds = ip.train_dataset_from_records(
      _records([jpeg] * num),
      records_per_epoch=num,
      batch_size=100,
      crop_size=crop,
      seed=0,
      stats=_zero_stats(),
      pca_lighting_std=0.0,
      images_prepared=True,
  )
  # 4:4:4 JPEG: decode_and_crop_jpeg's window equals the full decode's.
  reference = tf.io.decode_jpeg(jpeg).numpy().astype(np.float32)
  tops, lefts, flips = [], [], []
  for batch in _take(ds, num // 100):
    assert batch["image"].shape == (100, crop, crop, 3)
    assert batch["image"].dtype == np.float32
    for image in batch["image"]:
      # Exactly a (possibly mirrored) window inside the image.
      top, left, flipped = _recover_window(image, reference)
      tops.append(top)
      lefts.append(left)
      flips.append(flipped)
  # Offsets are uniform over [0, 160]: both ends are reached (a miss has
  # probability < 1e-9).
  assert min(tops) <= 10 and max(tops) >= SIZE - crop - 10
  assert min(lefts) <= 10 and max(lefts) >= SIZE - crop - 10
  # Flips ~ Binomial(400, 0.5): std 10; +-50 is 5 standard deviations.
  assert abs(sum(flips) - num / 2) < 50


def test_paper_crop_size_224():
  jpeg = _jpeg(_coordinate_image())
  ds = ip.train_dataset_from_records(
      _records([jpeg] * 32),
      records_per_epoch=32,
      batch_size=32,
      crop_size=224,
      seed=1,
      stats=_zero_stats(),
      pca_lighting_std=0.0,
  )
  (batch,) = _take(ds, 1)
  assert batch["image"].shape == (32, 224, 224, 3)
  assert batch["label"].dtype == np.int32
  reference = tf.io.decode_jpeg(jpeg).numpy().astype(np.float32)
  for image in batch["image"]:
    top, left, _ = _recover_window(image, reference)
    assert 0 <= top <= 32 and 0 <= left <= 32


def test_mean_image_is_cropped_and_flipped_with_the_image():
  # A mean image equal to the image itself: every crop must come out zero,
  # whatever its window and flip.
  pixels = _coordinate_image()
  jpeg = _jpeg(pixels)
  decoded = tf.io.decode_jpeg(jpeg).numpy().astype(np.float32)
  stats = input_stats.InputStats(
      mean_image=decoded, pixel_covariance=np.eye(3), num_images=1
  )
  ds = ip.train_dataset_from_records(
      _records([jpeg] * 64),
      records_per_epoch=64,
      batch_size=64,
      crop_size=100,
      seed=2,
      stats=stats,
      pca_lighting_std=0.0,
  )
  (batch,) = _take(ds, 1)
  np.testing.assert_allclose(batch["image"], 0.0, atol=1e-4)


@pytest.mark.parametrize("scale", ["std", "unit_variance"])
def test_pca_lighting_has_the_intended_scale(scale):
  """Offsets projected on the eigenvectors have std 0.1 * magnitude_i."""
  size, crop, num = 16, 8, 2000
  rng = np.random.default_rng(0)
  # A covariance on the 0-255 scale with distinct eigenvalues and
  # non-trivial eigenvectors.
  basis, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  eigvals = np.array([3600.0, 400.0, 25.0])
  covariance = basis @ np.diag(eigvals) @ basis.T
  stats = input_stats.InputStats(
      mean_image=np.zeros((size, size, 3), np.float32),
      pixel_covariance=covariance,
      num_images=1,
  )
  jpeg = _jpeg(rng.integers(60, 200, (size, size, 3), dtype=np.uint8))
  common = dict(
      records_per_epoch=num,
      batch_size=num // 4,
      crop_size=crop,
      seed=3,
      stats=stats,
      pca_lighting_scale=scale,
  )
  lit = _take(
      ip.train_dataset_from_records(_records([jpeg] * num), **common), 4
  )
  dark = _take(
      ip.train_dataset_from_records(
          _records([jpeg] * num), pca_lighting_std=0.0, **common
      ),
      4,
  )
  offsets = np.concatenate([a["image"] - b["image"] for a, b in zip(lit, dark)])
  # Lighting is one RGB offset per image, the same for every pixel; crops
  # and flips do not depend on it.
  per_image = offsets[:, 0, 0, :]
  np.testing.assert_allclose(
      offsets,
      np.broadcast_to(per_image[:, None, None, :], offsets.shape),
      atol=1e-3,
  )
  magnitudes = np.sqrt(eigvals) if scale == "std" else eigvals / 255.0
  np.testing.assert_allclose(stats.pca_eigvals, eigvals, rtol=1e-9)
  projected = per_image @ stats.pca_eigvecs
  # Relative standard error of a std from 2000 samples: 1.6%.
  np.testing.assert_allclose(projected.std(axis=0), 0.1 * magnitudes, rtol=0.08)
  np.testing.assert_allclose(
      projected.mean(axis=0),
      0.0,
      atol=5 * 0.1 * magnitudes.max() / np.sqrt(num),
  )
  correlation = np.corrcoef(projected.T)
  assert np.abs(correlation[np.triu_indices(3, 1)]).max() < 0.12


def test_lighting_matrix_units():
  # The trap (paper §4.1 units): variances on the 0-255 scale must not be used
  # as offsets directly. With the default scale the offset along p_i has
  # the pixels' own std along p_i as its unit.
  stats = input_stats.InputStats(
      mean_image=np.zeros((4, 4, 3), np.float32),
      pixel_covariance=np.diag([14000.0, 1200.0, 300.0]),
      num_images=1,
  )
  norms = np.linalg.norm(stats.lighting_matrix("std"), axis=0)
  np.testing.assert_allclose(
      norms, np.sqrt([14000.0, 1200.0, 300.0]), rtol=1e-6
  )
  norms = np.linalg.norm(stats.lighting_matrix("unit_variance"), axis=0)
  np.testing.assert_allclose(
      norms, np.array([14000.0, 1200.0, 300.0]) / 255, rtol=1e-6
  )


def test_images_of_any_size_are_rescaled_and_center_cropped():
  # 300 x 600, left/middle/right thirds red/green/blue. Shorter side -> 256
  # makes it 256 x 512; the central 256 columns are 128..384, i.e. red up
  # to column 42.7, green to 213.3, blue after.
  pixels = np.zeros((300, 600, 3), np.uint8)
  pixels[:, :200, 0] = 255
  pixels[:, 200:400, 1] = 255
  pixels[:, 400:, 2] = 255
  records = _records([_jpeg(pixels, quality=95), _png(pixels)])
  ds = ip.eval_dataset_from_records(
      records,
      num_records=2,
      num_batches=1,
      batch_size=2,
      crop_size=SIZE,
      crops="center",
      stats=_zero_stats(),
  )
  (batch,) = _take(ds, 1)
  for image in batch["image"]:
    assert image.shape == (SIZE, SIZE, 3)
    dominant = image.mean(axis=0).argmax(axis=-1)
    assert (dominant[:38] == 0).all()
    assert (dominant[48:208] == 1).all()
    assert (dominant[219:] == 2).all()


def test_training_crops_of_images_of_any_size_come_from_the_rescaled_image():
  # The on-the-fly path of builders that store original sizes (imagenet2012,
  # imagenette): each training crop is a window of the image rescaled and
  # center-cropped to 256, the same window a prepared 256 x 256 copy gives.
  rows, cols = np.meshgrid(np.arange(300), np.arange(420), indexing="ij")
  pixels = np.stack(
      [rows * 255 // 299, cols * 255 // 419, (rows + 2 * cols) % 256], -1
  ).astype(np.uint8)
  # pylint: disable-next=protected-access
  prepared = input_decoding._rescale_and_center_crop(
      tf.constant(_png(pixels)), SIZE
  ).numpy()

  def crops(image):
    ds = ip.train_dataset_from_records(
        _records([_png(image)]),
        records_per_epoch=1,
        batch_size=1,
        crop_size=224,
        seed=5,
        stats=_zero_stats(),
        pca_lighting_std=0.0,
    )
    return np.stack([b["image"][0] for b in _take(ds, 6)])

  got, want = crops(pixels), crops(prepared)
  assert got.shape == (6, 224, 224, 3)
  np.testing.assert_allclose(got, want, atol=1)
  # Windows at different places (a constant window would pass trivially).
  assert np.abs(want[1:] - want[0]).max() > 20


def test_prepared_png_takes_the_generic_path_unchanged():
  pixels = _coordinate_image()
  ds = ip.eval_dataset_from_records(
      _records([_png(pixels)]),
      num_records=1,
      num_batches=1,
      batch_size=1,
      crop_size=SIZE,
      crops="center",
      stats=_zero_stats(),
  )
  (batch,) = _take(ds, 1)
  np.testing.assert_allclose(batch["image"][0], pixels, atol=1)


def test_invalid_arguments_fail_clearly():
  records = _records([_jpeg(_coordinate_image())])
  with pytest.raises(ValueError, match="crop_size"):
    ip.train_dataset_from_records(
        records,
        records_per_epoch=1,
        batch_size=1,
        crop_size=SIZE + 1,
        seed=0,
        stats=_zero_stats(),
    )
  with pytest.raises(ValueError, match="crops"):
    ip.eval_dataset_from_records(
        records,
        num_records=1,
        num_batches=1,
        batch_size=1,
        crop_size=8,
        crops="five",
        stats=_zero_stats(),
    )
  with pytest.raises(ValueError, match="process_count"):
    input_splits.local_batch_size(10, 3)


# --------------------------------------------------------------------------
# Statistics on the mini data set.
# --------------------------------------------------------------------------


def test_stats_match_numpy_and_are_cached(mini_builder, tmp_path, monkeypatch):
  images = np.stack(
      [image for image, _ in _split_images(mini_builder, "train").values()]
  )
  assert images.shape == (80, SIZE, SIZE, 3)
  stats = input_stats.compute_or_load_stats(
      mini_builder, cache_dir=str(tmp_path)
  )
  np.testing.assert_allclose(
      stats.mean_image, images.astype(np.float64).mean(axis=0), atol=1e-3
  )
  pixels = images.reshape(-1, 3).astype(np.float64)
  np.testing.assert_allclose(
      stats.pixel_covariance, np.cov(pixels.T, bias=True), rtol=1e-6
  )
  assert stats.num_images == 80
  # 0-255 units (the trap): natural-ish images vary by tens of levels.
  assert 100 < stats.pca_eigvals[0] < 128**2

  files = os.listdir(tmp_path)
  assert files == [
      input_stats.stats_file_name(mini_builder, "train", None, SIZE)
  ]
  for part in (
      "ilsvrc2010",
      mini_builder.builder_config.name,
      str(mini_builder.version),
      "all",
  ):
    assert part in files[0]

  # A second call loads the file instead of recomputing.
  def fail(*args, **kwargs):
    raise AssertionError("recomputed despite the cache")

  monkeypatch.setattr(input_stats, "compute_stats", fail)
  again = input_stats.compute_or_load_stats(
      mini_builder, cache_dir=str(tmp_path)
  )
  np.testing.assert_array_equal(again.mean_image, stats.mean_image)
  np.testing.assert_array_equal(again.pixel_covariance, stats.pixel_covariance)


def test_stats_cap_uses_the_first_images(mini_builder, tmp_path):
  stats = input_stats.compute_or_load_stats(
      mini_builder, max_images=5, cache_dir=str(tmp_path)
  )
  assert stats.num_images == 5
  first = np.stack(
      [
          ex["image"]
          for ex in tfds.as_numpy(
              mini_builder.as_dataset(split="train", shuffle_files=False).take(
                  5
              )
          )
      ]
  )
  np.testing.assert_allclose(
      stats.mean_image, first.astype(np.float64).mean(axis=0), atol=1e-3
  )
  assert "first5" in input_stats.stats_file_name(mini_builder, "train", 5, SIZE)
  assert os.listdir(tmp_path) == [
      input_stats.stats_file_name(mini_builder, "train", 5, SIZE)
  ]


def test_default_stats_cache_lives_next_to_the_data(mini_builder, mini_stats):
  path = os.path.join(
      mini_builder.data_dir,
      input_stats.stats_file_name(mini_builder, "train", None, SIZE),
  )
  assert os.path.exists(path)
  assert mini_stats.num_images == 80


# --------------------------------------------------------------------------
# Evaluation on the mini data set.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("crops", ["center", "ten"])
def test_eval_patches_match_numpy_slicing(mini_builder, mini_stats, crops):
  crop = 224
  expected_images = _split_images(mini_builder, "validation")
  ds = ip.make_eval_dataset(
      mini_builder,
      "validation",
      global_batch_size=8,
      crop_size=crop,
      crops=crops,
      stats=mini_stats,
      extra_keys=("file_name",),
  )
  mean = mini_stats.mean_image
  far, center = SIZE - crop, (SIZE - crop) // 2
  windows = [(0, 0), (0, far), (far, 0), (far, far), (center, center)]
  seen = 0
  for batch in ds.as_numpy_iterator():
    expected_shape = (
        (8, crop, crop, 3)
        if crops == "center"
        else (8, ip.NUM_EVAL_PATCHES, crop, crop, 3)
    )
    assert batch["image"].shape == expected_shape
    assert batch["image"].dtype == np.float32
    for image, name, mask in zip(
        batch["image"], batch["file_name"], batch["mask"]
    ):
      if not mask:
        np.testing.assert_array_equal(image, 0.0)
        continue
      seen += 1
      full = expected_images[name][0].astype(np.float32) - mean
      patches = [full[t : t + crop, l : l + crop] for t, l in windows]
      if crops == "center":
        np.testing.assert_allclose(image, patches[4], atol=1e-3)
      else:
        # Order: TL, TR, BL, BR, center, then the same mirrored.
        expected = np.stack(patches + [p[:, ::-1] for p in patches])
        np.testing.assert_allclose(image, expected, atol=1e-3)
  assert seen == 30


@pytest.mark.parametrize("process_count,global_batch", [(1, 8), (3, 9), (4, 8)])
def test_eval_counts_every_example_once(
    mini_builder, mini_stats, process_count, global_batch
):
  expected = _split_images(mini_builder, "validation")
  steps = input_splits.eval_steps(
      mini_builder,
      "validation",
      global_batch_size=global_batch,
      process_count=process_count,
  )
  names = []
  for process in range(process_count):
    ds = ip.make_eval_dataset(
        mini_builder,
        "validation",
        global_batch_size=global_batch,
        crop_size=32,
        stats=mini_stats,
        process_index=process,
        process_count=process_count,
        extra_keys=("file_name",),
    )
    batches = list(ds.as_numpy_iterator())
    # Every process runs the same number of steps (collectives need it).
    assert len(batches) == steps
    for batch in batches:
      assert batch["mask"].shape == (global_batch // process_count,)
      real = batch["mask"] == 1
      assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
      for name, label in zip(batch["file_name"][real], batch["label"][real]):
        assert expected[name][1] == label
        names.append(name)
  # Sum of masks == split size, each file exactly once.
  assert len(names) == 30
  assert collections.Counter(names) == collections.Counter(expected.keys())


def test_process_splits_are_disjoint_and_cover(mini_builder, mini_stats):
  for split, size in (("train", 80), ("validation", 30)):
    for process_count in (2, 3):
      parts = []
      for process in range(process_count):
        ds = ip.make_eval_dataset(
            mini_builder,
            split,
            global_batch_size=process_count,
            crop_size=8,
            stats=mini_stats,
            process_index=process,
            process_count=process_count,
            extra_keys=("file_name",),
        )
        names = [
            n
            for b in ds.as_numpy_iterator()
            for n, m in zip(b["file_name"], b["mask"])
            if m
        ]
        assert len(names) == input_splits.num_examples(
            mini_builder, split, process, process_count
        )
        parts.append(set(names))
      assert sum(len(p) for p in parts) == size
      assert set.union(*parts) == set(_split_images(mini_builder, split))


# --------------------------------------------------------------------------
# Training on the mini data set: determinism, epochs, resume, processes.
# --------------------------------------------------------------------------


def _train(builder, stats, **kwargs):
  kwargs.setdefault("global_batch_size", 8)
  kwargs.setdefault("crop_size", 32)
  kwargs.setdefault("seed", 0)
  return ip.make_train_dataset(builder, stats=stats, **kwargs)


def test_train_batches_shapes_and_epochs(mini_builder, mini_stats):
  assert (
      input_splits.train_steps_per_epoch(mini_builder, global_batch_size=8)
      == 10
  )
  batches = _take(_train(mini_builder, mini_stats), 20)
  for batch in batches:
    assert batch["image"].shape == (8, 32, 32, 3)
    assert batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32
  # Each epoch is a permutation of the split (8 images per class) ...
  for epoch in range(2):
    labels = np.concatenate(
        [b["label"] for b in batches[10 * epoch : 10 * epoch + 10]]
    )
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), 8)
  # ... and a different one each epoch.
  order = lambda e: np.concatenate(  # pylint: disable=g-long-lambda
      [b["label"] for b in batches[10 * e : 10 * e + 10]]
  )
  assert not np.array_equal(order(0), order(1))


def test_same_seed_same_batches(mini_builder, mini_stats):
  first = _take(_train(mini_builder, mini_stats, seed=5), 3)
  second = _take(_train(mini_builder, mini_stats, seed=5), 3)
  other = _take(_train(mini_builder, mini_stats, seed=6), 3)
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(first[0]["image"], other[0]["image"])


@pytest.mark.parametrize("start_step", [7, 10])
def test_resume_equals_uninterrupted_run(mini_builder, mini_stats, start_step):
  # 10 steps per epoch: resuming at 7 crosses the epoch boundary at 10;
  # resuming at 10 starts exactly on it.
  uninterrupted = _take(_train(mini_builder, mini_stats), 15)
  resumed = _take(
      _train(mini_builder, mini_stats, start_step=start_step), 15 - start_step
  )
  for a, b in zip(uninterrupted[start_step:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_resume_does_not_decode_skipped_images():
  num, batch, start_step = 32, 4, 3
  good = _jpeg(_coordinate_image(), quality=90)
  common = dict(
      records_per_epoch=num,
      batch_size=batch,
      crop_size=16,
      seed=7,
      stats=_zero_stats(),
      images_prepared=True,
  )
  run = _take(
      ip.train_dataset_from_records(_records([good] * num), **common),
      num // batch,
  )
  # Labels are record ids: these records feed the steps before start_step.
  skipped = set(np.concatenate([b["label"] for b in run[:start_step]]))
  images = [b"not a JPEG" if i in skipped else good for i in range(num)]
  resumed = _take(
      ip.train_dataset_from_records(
          _records(images), start_step=start_step, **common
      ),
      num // batch - start_step,
  )
  for a, b in zip(run[start_step:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  # Control: decoding a corrupt record does fail.
  with pytest.raises(tf.errors.InvalidArgumentError):
    _take(
        ip.train_dataset_from_records(_records(images), **common), num // batch
    )


def test_processes_train_on_their_own_parts(mini_builder, mini_stats):
  with pytest.raises(ValueError, match="multiple of process_count"):
    _train(mini_builder, mini_stats, global_batch_size=9, process_count=2)
  for process in range(2):
    assert (
        input_splits.train_steps_per_epoch(
            mini_builder, global_batch_size=8, process_count=2
        )
        == 10
    )
    batches = _take(
        _train(
            mini_builder, mini_stats, process_index=process, process_count=2
        ),
        10,
    )
    assert batches[0]["image"].shape == (4, 32, 32, 3)
    labels = np.concatenate([b["label"] for b in batches])
    part = mini_builder.as_dataset(
        split=input_splits.process_split("train", process, 2),
        shuffle_files=False,
    )
    part_labels = [int(ex["label"]) for ex in tfds.as_numpy(part)]
    # One epoch of this process = a permutation of its own part.
    np.testing.assert_array_equal(
        np.bincount(labels, minlength=10),
        np.bincount(part_labels, minlength=10),
    )


# --------------------------------------------------------------------------
# Global arrays.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_shape", [(2, 1), (2, 2)])
def test_to_global_array_shards_over_data(mesh_shape):
  num_devices = mesh_shape[0] * mesh_shape[1]
  mesh = jax.make_mesh(
      mesh_shape, ("data", "model"), devices=jax.devices()[:num_devices]
  )
  batch = {
      "image": np.arange(8 * 4 * 4 * 3, dtype=np.float32).reshape(8, 4, 4, 3),
      "label": np.arange(8, dtype=np.int32),
  }
  arrays = run_data.to_global_array(batch, mesh)
  for key, local in batch.items():
    array = arrays[key]
    assert array.shape == local.shape  # one process: global == local
    assert array.dtype == local.dtype
    assert array.sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(array.addressable_shards) == num_devices
    for shard in array.addressable_shards:
      # Split over `data` (4 rows each), replicated over `model`.
      assert shard.data.shape[0] == 4
      np.testing.assert_array_equal(np.asarray(shard.data), local[shard.index])
    np.testing.assert_array_equal(np.asarray(array), local)
  with pytest.raises(TypeError, match="file_name"):
    run_data.to_global_array({"file_name": np.array([b"a", b"b"])}, mesh)
