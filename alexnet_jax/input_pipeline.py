"""The paper's input pipeline on tf.data (paper §2 and §4.1).

Training batches: random `crop_size` crops of the 256x256 image, horizontal
flips with p=0.5, PCA lighting, minus the per-pixel mean image. Evaluation
batches: the center crop or the paper's 10 patches, minus the mean image, the
last batch padded and masked so that every example counts exactly once.

TensorFlow only feeds data: importing this module hides every GPU and TPU from
it, so that it never allocates accelerator memory that JAX needs.

Images
  Our ILSVRC-2010 builder stores JPEGs that are already 256x256 (the paper
  rescales the shorter side to 256 and takes the central 256x256 once, when
  the data set is prepared). TFDS's own `imagenet2012` and `imagenette` store
  images of any size; for those the same rescale + central crop happens on
  the fly, before anything else. A builder that declares fixed 256x256x3
  JPEG images (ours) skips every check; otherwise each image's JPEG header
  decides, so any builder with `image` and `label` features works.

Speed
  Per example only the JPEG is decoded -- for training only the crop
  window (`decode_and_crop_jpeg`), into uint8. Flip, mean subtraction,
  lighting and the float conversion run once per batch as one XLA-compiled
  loop (as separate TensorFlow ops they took more CPU than the decode).
  `python -m alexnet_jax.input_benchmark` measures images/s per core.

PCA lighting and its scale trap
  The paper adds `[p1 p2 p3][a1 l1, a2 l2, a3 l3]^T` to every pixel, with
  `a_i ~ N(0, 0.1)` drawn once per image and `p_i, l_i` the eigenvectors and
  eigenvalues of the 3x3 covariance of the training RGB pixels. Read
  literally, `a_i * l_i` has units of pixel^2 but is added to pixels, so its
  size depends on the pixel scale:
    * on the 0-255 scale the top eigenvalue of ImageNet is about 1.5e4 and the
      "noise" would be about +-1500 levels (the images are destroyed);
    * the widely copied constants (0.2175, 0.0188, 0.0045) are the same
      eigenvalues for pixels in [0, 1]; applied to 0-255 pixels they give a
      noise of about 0.02 levels (a silent no-op), and applied to [0, 1]
      pixels about 5.5 levels of 255 for the top component;
    * the authors' released code stores sqrt(l_i) on the 0-255 scale
      (19.7, 37.1, 121.8 in their meta file): the standard deviation of the
      pixels along p_i, which has pixel units, so the noise (about 12 levels
      for the top component) does not depend on the pixel scale.
  We compute the covariance from the data on the 0-255 scale -- the units of
  the pixels the noise is added to -- and by default use the authors' reading
  (`pca_lighting_scale="std"`): the offset projected on p_i has standard
  deviation `0.1 * sqrt(l_i)` levels. `"unit_variance"` reproduces the
  [0, 1]-variance recipe (offset std `0.1 * l_i / 255` on the 0-255 scale).

Determinism and resume
  The training stream is an endless sequence of epochs of `steps_per_epoch *
  local_batch_size` records (each epoch drops its own remainder; the batches
  never straddle an epoch boundary). Epoch `e` is a buffer shuffle of the
  undecoded records with a seed derived from `(seed, e)`; the record order
  before the shuffle is fixed (TFDS file order shuffled once with `seed`).
  All augmentation randomness (crop offset, flip, lighting) comes from
  stateless ops keyed by `(seed, process_index, e, position in epoch e)`, so
  it does not depend on the iterator's history. Starting at global step `k`
  therefore means: epoch `k // steps_per_epoch`, skip
  `(k % steps_per_epoch) * local_batch_size` shuffled records *before* they
  are decoded (the skip reads and shuffles bytes; it never decodes a JPEG),
  then continue. A checkpoint only needs to store the step. The result is
  bit-identical to an uninterrupted run for the same seed, batch size,
  process count and TensorFlow version. (The shuffle op's seed is combined
  with TensorFlow's global seed: do not call `tf.random.set_seed` between a
  run and its resumption.)

Multi-host
  Each process reads its own contiguous part of every split
  (`tfds.even_splits`), batches `global_batch_size / process_count` examples,
  and `to_global_array` assembles the global batch as a `jax.Array` sharded
  over the mesh's `data` axis. All processes run the same number of training
  steps per epoch (set by the smallest part) and of evaluation batches (set
  by the largest part; the others pad more).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
import io
import math
import os
from typing import Literal

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import parallel


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow only feeds data; JAX owns the accelerators (STYLE.md)."""
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError) as e:
      # RuntimeError: TF already initialized its devices (someone used TF
      # before importing us); ValueError: no such device type in this build.
      logging.warning("Could not hide %s devices from TensorFlow: %s",
                      device_type, e)


_hide_accelerators_from_tensorflow()

# Side of the prepared images: shorter side rescaled to 256, central crop
# (paper §2).
IMAGE_SIZE = 256
# The paper's test-time patches: 4 corners + center and their reflections
# (paper §4.1).
NUM_EVAL_PATCHES = 10
# Fixed so that a seed means the same thing on every machine ("auto_select"
# may pick a different generator on a different device).
_RNG_ALG = "philox"
# Tags that separate the random streams derived from one user seed.
_SHUFFLE_TAG = 1
_AUGMENT_TAG = 2
_STATS_FILE_FORMAT = 1

Crops = Literal["center", "ten"]
LightingScale = Literal["std", "unit_variance"]


# ---------------------------------------------------------------------------
# Training-set statistics: the mean image and the pixel covariance.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InputStats:
  """Training-set statistics used for normalization and PCA lighting.

  Attributes:
    mean_image: [s, s, 3] float32, per-pixel mean of the prepared training
      images on the 0-255 scale (the paper's only normalization, §2); s is
      the prepared image side (256 in the paper).
    pixel_covariance: [3, 3] float64, covariance of all training RGB pixels
      on the 0-255 scale (units: levels^2), for PCA lighting (§4.1).
    num_images: how many training images the statistics were computed from.
  """

  mean_image: np.ndarray
  pixel_covariance: np.ndarray
  num_images: int

  def __post_init__(self):
    shape = self.mean_image.shape
    if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 3:
      raise ValueError(f"mean_image must be [s, s, 3], got {shape}")
    if self.pixel_covariance.shape != (3, 3):
      raise ValueError(
          f"pixel_covariance must be [3, 3], got {self.pixel_covariance.shape}")

  @property
  def image_size(self) -> int:
    """Side of the prepared images the statistics describe."""
    return self.mean_image.shape[0]

  @property
  def pca_eigvals(self) -> np.ndarray:
    """[3] eigenvalues of the pixel covariance, descending (levels^2)."""
    return self._eigh()[0]

  @property
  def pca_eigvecs(self) -> np.ndarray:
    """[3, 3]; column i is the unit eigenvector of `pca_eigvals[i]`."""
    return self._eigh()[1]

  @property
  def pca_stds(self) -> np.ndarray:
    """[3] std of the pixels along each eigenvector, 0-255 scale (levels)."""
    return np.sqrt(np.maximum(self.pca_eigvals, 0.0))

  def _eigh(self) -> tuple[np.ndarray, np.ndarray]:
    eigvals, eigvecs = np.linalg.eigh(self.pixel_covariance)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = eigvals[order], eigvecs[:, order]
    # Fix the sign (largest component positive) so the vectors are a
    # deterministic function of the covariance.
    signs = np.sign(eigvecs[np.argmax(np.abs(eigvecs), axis=0), range(3)])
    return eigvals, eigvecs * signs

  def lighting_matrix(self, scale: LightingScale = "std") -> np.ndarray:
    """[3, 3] M such that the lighting offset is `M @ alpha` (0-255 scale).

    Args:
      scale: "std" uses sqrt(eigenvalue) on the 0-255 scale, as the authors'
        code does; "unit_variance" uses the eigenvalue of pixels in [0, 1]
        and converts the offset back to 0-255. See the module docstring.
    """
    if scale == "std":
      magnitudes = self.pca_stds
    elif scale == "unit_variance":
      # l_i / 255^2 is the eigenvalue for pixels in [0, 1]; the resulting
      # offset is in [0, 1] units, hence * 255 back to levels.
      magnitudes = self.pca_eigvals / 255.0
    else:
      raise ValueError(f"Unknown PCA lighting scale {scale!r}")
    return (self.pca_eigvecs * magnitudes[None, :]).astype(np.float32)

  def save(self, path: str) -> None:
    """Writes the statistics atomically (safe with concurrent writers)."""
    buffer = io.BytesIO()
    np.savez(buffer, mean_image=self.mean_image,
             pixel_covariance=self.pixel_covariance,
             num_images=np.int64(self.num_images))
    tmp_path = f"{path}.tmp-{jax.process_index()}"
    with tf.io.gfile.GFile(tmp_path, "wb") as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp_path, path, overwrite=True)

  @classmethod
  def load(cls, path: str) -> InputStats:
    with tf.io.gfile.GFile(path, "rb") as f:
      arrays = np.load(io.BytesIO(f.read()))
      return cls(mean_image=arrays["mean_image"].astype(np.float32),
                 pixel_covariance=arrays["pixel_covariance"],
                 num_images=int(arrays["num_images"]))


def stats_file_name(builder: tfds.core.DatasetBuilder, split: str,
                    max_images: int | None, image_size: int) -> str:
  """Cache file name: dataset, config, version, split, image size and cap."""
  config = builder.builder_config.name if builder.builder_config else "default"
  cap = "all" if max_images is None else f"first{max_images}"
  return (f"input_stats_v{_STATS_FILE_FORMAT}-{builder.name}-{config}-"
          f"{builder.version}-{split}-{image_size}px-{cap}.npz")


def compute_stats(images: tf.data.Dataset, batch_size: int = 64) -> InputStats:
  """Mean image and pixel covariance of a dataset of uint8 [s, s, 3] images.

  The moments are sums of integers, accumulated exactly (int64 for the
  image sum; float64 holds the pixel products exactly up to 2^53, about
  1.4 M ImageNet-size images' worth); the per-image work runs inside
  tf.data, in parallel.

  Args:
    images: prepared (s x s) images on the 0-255 scale.
    batch_size: images summed per step.

  Returns:
    The statistics.
  """

  def moments(image):
    pixels = tf.cast(tf.reshape(image, [-1, 3]), tf.float64)
    return {"image": image,
            "pixel_sum": tf.reduce_sum(pixels, axis=0),
            "pixel_outer_sum": tf.matmul(pixels, pixels, transpose_a=True)}

  def batch_sums(batch):
    return {"image_sum": tf.reduce_sum(tf.cast(batch["image"], tf.int32),
                                       axis=0),
            "pixel_sum": tf.reduce_sum(batch["pixel_sum"], axis=0),
            "pixel_outer_sum": tf.reduce_sum(batch["pixel_outer_sum"], axis=0),
            "num_images": tf.shape(batch["image"])[0]}

  sums = (images.map(moments, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch_size)
          .map(batch_sums, num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(2))
  image_sum = 0
  pixel_sum = np.zeros(3, np.float64)
  pixel_outer_sum = np.zeros((3, 3), np.float64)
  num_images = 0
  for batch in sums.as_numpy_iterator():
    image_sum = image_sum + batch["image_sum"].astype(np.int64)
    pixel_sum += batch["pixel_sum"]
    pixel_outer_sum += batch["pixel_outer_sum"]
    num_images += int(batch["num_images"])
  if num_images == 0:
    raise ValueError("No images to compute statistics from.")
  num_pixels = image_sum.size // 3 * num_images
  pixel_mean = pixel_sum / num_pixels
  covariance = pixel_outer_sum / num_pixels - np.outer(pixel_mean, pixel_mean)
  mean_image = (image_sum / num_images).astype(np.float32)
  return InputStats(mean_image=mean_image, pixel_covariance=covariance,
                    num_images=num_images)


def compute_or_load_stats(builder: tfds.core.DatasetBuilder, *,
                          max_images: int | None = None,
                          split: str = "train",
                          image_size: int = IMAGE_SIZE,
                          cache_dir: str | None = None) -> InputStats:
  """Training-set statistics, computed once and cached next to the data.

  Args:
    builder: a prepared TFDS builder with `image` and `label` features.
    max_images: use only the first `max_images` images of the split (in the
      stored order, which TFDS already shuffled when writing); None = all,
      as in the paper.
    split: the split to average over.
    image_size: side of the prepared images (paper: 256); images of other
      sizes are rescaled and center-cropped to it first.
    cache_dir: where the cache file lives; default the builder's data dir
      (`<data_dir>/<name>/<config>/<version>`).

  Returns:
    The statistics. Every process computes the same values; the cache write
    is atomic, so concurrent processes are safe.
  """
  path = os.path.join(cache_dir or builder.data_dir,
                      stats_file_name(builder, split, max_images, image_size))
  if tf.io.gfile.exists(path):
    logging.info("Loading input statistics from %s", path)
    return InputStats.load(path)
  logging.info("Computing input statistics over %s[%s] (max_images=%s)",
               builder.name, split, max_images)
  records = _records(builder, split, shuffle_files=False)
  if max_images is not None:
    records = records.take(max_images)
  prepared = images_prepared(builder, image_size)
  images = records.map(
      lambda r: _decode_prepared(r["image"], image_size, prepared),
      num_parallel_calls=tf.data.AUTOTUNE)
  stats = compute_stats(images)
  tf.io.gfile.makedirs(os.path.dirname(path))
  stats.save(path)
  logging.info("Saved input statistics (%d images) to %s", stats.num_images,
               path)
  return stats


# ---------------------------------------------------------------------------
# Splits: what each process reads.
# ---------------------------------------------------------------------------


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"Invalid process_index={process_index} for "
                     f"process_count={process_count}")


def process_split(split: str, process_index: int = 0,
                  process_count: int = 1) -> tfds.typing.SplitArg:
  """The contiguous, disjoint part of `split` that one process reads."""
  _check_process(process_index, process_count)
  # No remainder dropped: for evaluation every example must count once; for
  # training `train_steps_per_epoch` equalizes the processes instead.
  return tfds.even_splits(split, process_count,
                          drop_remainder=False)[process_index]


def num_examples(builder: tfds.core.DatasetBuilder, split: str,
                 process_index: int = 0, process_count: int = 1) -> int:
  """Number of examples of `split` that process `process_index` reads."""
  subsplit = process_split(split, process_index, process_count)
  return builder.info.splits[subsplit].num_examples


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Per-process batch size; validates that the processes split it evenly."""
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple "
        f"of process_count={process_count} (each process feeds the same "
        "number of examples to every global batch).")
  return global_batch_size // process_count


def train_steps_per_epoch(builder: tfds.core.DatasetBuilder, *,
                          global_batch_size: int, process_count: int = 1,
                          split: str = "train") -> int:
  """Training steps per epoch, the same on every process.

  Each process drops the remainder of its own part of the split; the
  smallest part sets the count so that no process runs out first.
  """
  batch = local_batch_size(global_batch_size, process_count)
  smallest = min(num_examples(builder, split, p, process_count)
                 for p in range(process_count))
  steps = smallest // batch
  if steps == 0:
    raise ValueError(f"The {split} split has {smallest} examples per process, "
                     f"fewer than one local batch of {batch}.")
  return steps


def eval_steps(builder: tfds.core.DatasetBuilder, split: str, *,
               global_batch_size: int, process_count: int = 1) -> int:
  """Evaluation batches per process: enough for the largest part, padded."""
  batch = local_batch_size(global_batch_size, process_count)
  largest = max(num_examples(builder, split, p, process_count)
                for p in range(process_count))
  return math.ceil(largest / batch)


def _records(builder: tfds.core.DatasetBuilder, split: tfds.typing.SplitArg,
             *, shuffle_files: bool, seed: int = 0) -> tf.data.Dataset:
  """Undecoded examples: `image` stays the encoded bytes.

  The order is deterministic: file order shuffled with `seed` (or not at
  all), files interleaved deterministically, the same on every iteration.
  """
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(
      shuffle_seed=seed if shuffle_files else None,
      # The file order is the same on every iteration; each epoch's own
      # randomness comes from the record shuffle in `_train_records`.
      shuffle_reshuffle_each_iteration=False,
      skip_prefetch=True,
      options=options)
  return builder.as_dataset(
      split=split, shuffle_files=shuffle_files, read_config=read_config,
      decoders={"image": tfds.decode.SkipDecoding()})


# ---------------------------------------------------------------------------
# Decoding: from JPEG bytes to (windows of) the prepared 256x256 image.
# ---------------------------------------------------------------------------


def _is_prepared_jpeg(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """True if the image is a JPEG that is already prepared (header only)."""

  def has_prepared_size():
    shape = tf.image.extract_jpeg_shape(image_bytes)
    return tf.logical_and(shape[0] == image_size, shape[1] == image_size)

  return tf.cond(tf.io.is_jpeg(image_bytes), has_prepared_size,
                 lambda: tf.constant(False))


def _rescale_and_center_crop(image_bytes: tf.Tensor,
                             image_size: int) -> tf.Tensor:
  """Decodes any image, rescales the shorter side, takes the central square.

  The paper's data preparation (§2), for builders that store original-size
  images (TFDS's `imagenet2012`, `imagenette`).
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = image_size / tf.reduce_min(shape)
  new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32),
                         image_size)
  image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
  top = (new_shape[0] - image_size) // 2
  left = (new_shape[1] - image_size) // 2
  image = image[top:top + image_size, left:left + image_size]
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.ensure_shape(image, (image_size, image_size, 3))


def _decode_prepared(image_bytes: tf.Tensor, image_size: int,
                     prepared: bool | None) -> tf.Tensor:
  """uint8 [s, s, 3]: the whole prepared image.

  Args:
    image_bytes: the encoded image.
    image_size: side s of the prepared image.
    prepared: True if every image is known to be an s x s JPEG (no check);
      None to check each image's header.
  """

  def decode():
    return tf.ensure_shape(tf.io.decode_jpeg(image_bytes, channels=3),
                           (image_size, image_size, 3))

  if prepared:
    return decode()
  return tf.cond(_is_prepared_jpeg(image_bytes, image_size), decode,
                 lambda: _rescale_and_center_crop(image_bytes, image_size))


def _decode_window(image_bytes: tf.Tensor, top: tf.Tensor, left: tf.Tensor,
                   size: int, image_size: int,
                   prepared: bool | None) -> tf.Tensor:
  """uint8 [size, size, 3]: one window of the prepared image.

  For prepared JPEGs only the window is decoded (`decode_and_crop_jpeg`
  skips the blocks outside it). `prepared` as in `_decode_prepared`.
  """

  def decode_window():
    window = tf.stack([top, left, size, size])
    return tf.ensure_shape(
        tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3),
        (size, size, 3))

  def slice_window():
    image = _rescale_and_center_crop(image_bytes, image_size)
    return image[top:top + size, left:left + size]

  if prepared:
    return decode_window()
  return tf.cond(_is_prepared_jpeg(image_bytes, image_size), decode_window,
                 slice_window)


def images_prepared(builder: tfds.core.DatasetBuilder,
                    image_size: int) -> bool | None:
  """True if the builder declares all its images s x s JPEGs, else None.

  Our ILSVRC-2010 builder declares `Image(shape=(256, 256, 3),
  encoding_format="jpeg")`, so the per-image header check is skipped; TFDS's
  `imagenet2012` and `imagenette` declare no size (None: check each image).
  """
  feature = builder.info.features["image"]
  if (getattr(feature, "encoding_format", None) == "jpeg" and
      tuple(feature.shape) == (image_size, image_size, 3)):
    return True
  return None


def _check_crop_size(crop_size: int, image_size: int) -> None:
  if not 0 < crop_size <= image_size:
    raise ValueError(f"crop_size must be in [1, {image_size}] (the prepared "
                     f"image size), got {crop_size}")


def _apply_threading(ds: tf.data.Dataset,
                     threads: int | None) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  if threads is not None:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


def _train_records(records: tf.data.Dataset, *, records_per_epoch: int,
                   start_epoch: int, skip_in_start_epoch: int, seed: int,
                   shuffle_buffer_size: int) -> tf.data.Dataset:
  """Endless (epoch, position, record) stream starting at a given position.

  Epoch e is `records` shuffled with a seed derived from (seed, e), cut to
  `records_per_epoch`. The skip for resuming happens here, on undecoded
  records, after `enumerate` so that positions are those of a full epoch.
  """
  shuffle_key = tf.constant([seed, _SHUFFLE_TAG], tf.int64)

  def epoch_records(epoch):
    epoch_seed = tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(shuffle_key, epoch,
                                                     alg=_RNG_ALG),
        minval=None, maxval=None, dtype=tf.int64, alg=_RNG_ALG)
    ds = records.shuffle(shuffle_buffer_size, seed=epoch_seed,
                         reshuffle_each_iteration=False)
    ds = ds.take(records_per_epoch).enumerate()
    skip = tf.where(epoch == start_epoch, tf.constant(skip_in_start_epoch,
                                                      tf.int64), 0)
    ds = ds.skip(skip)
    return ds.map(lambda position, record: (epoch, position, record))

  return tf.data.Dataset.counter(start_epoch).flat_map(epoch_records)


def train_dataset_from_records(
    records: tf.data.Dataset,
    *,
    records_per_epoch: int,
    batch_size: int,
    crop_size: int,
    seed: int,
    stats: InputStats,
    start_step: int = 0,
    process_index: int = 0,
    shuffle_buffer_size: int = 10_000,
    pca_lighting_std: float = 0.1,
    pca_lighting_scale: LightingScale = "std",
    images_prepared: bool | None = None,
    threads: int | None = None,
) -> tf.data.Dataset:
  """Endless training batches from a dataset of undecoded records.

  The builder-free core of `make_train_dataset` (also used by the benchmark
  and the tests).

  Args:
    records: deterministic dataset of dicts with `image` (encoded bytes) and
      `label` (int); iterated once per epoch.
    records_per_epoch: records used per epoch; a multiple of `batch_size`,
      at most the size of `records`.
    batch_size: this process's batch size.
    crop_size: side of the random crops (paper: 224).
    seed: the run's seed; see the module docstring for what it determines.
    stats: training-set statistics (mean image, pixel covariance).
    start_step: the first batch to produce, counted from the start of
      training.
    process_index: makes the augmentation streams of processes distinct.
    shuffle_buffer_size: records in the shuffle buffer.
    pca_lighting_std: std of the lighting coefficients alpha_i (paper: 0.1;
      0 disables PCA lighting, the paper's ablation).
    pca_lighting_scale: "std" or "unit_variance"; see the module docstring.
    images_prepared: True if every image is a JPEG of the prepared size
      (skips the per-image header check); None: check each image and
      rescale + center-crop those that are not.
    threads: if set, tf.data's private thread pool size (and one thread per
      op), e.g. 1 to measure throughput per core.

  Returns:
    Batches {"image": float32 [b, crop, crop, 3], "label": int32 [b]}.
  """
  image_size = stats.image_size
  _check_crop_size(crop_size, image_size)
  if records_per_epoch % batch_size or records_per_epoch < batch_size:
    raise ValueError(f"records_per_epoch={records_per_epoch} must be a "
                     f"positive multiple of batch_size={batch_size}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  steps_per_epoch = records_per_epoch // batch_size
  start_epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
  stream = _train_records(
      records, records_per_epoch=records_per_epoch, start_epoch=start_epoch,
      skip_in_start_epoch=step_in_epoch * batch_size, seed=seed,
      shuffle_buffer_size=shuffle_buffer_size)

  max_offset = image_size - crop_size
  augment_key = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, _AUGMENT_TAG], tf.int64), process_index,
      alg=_RNG_ALG)

  def decode_and_draw(epoch, position, record):
    # Keyed by (seed, process, epoch, position): independent of iterator
    # history, so a resumed stream draws exactly the same numbers.
    key = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(augment_key, epoch,
                                                 alg=_RNG_ALG),
        position, alg=_RNG_ALG)
    crop_key, flip_key, lighting_key = tf.unstack(
        tf.random.experimental.stateless_split(key, 3, alg=_RNG_ALG))
    # Random crop_size x crop_size window (§4.1), uniform over all offsets.
    top_left = tf.random.stateless_uniform(
        [2], crop_key, minval=0, maxval=max_offset + 1, dtype=tf.int32,
        alg=_RNG_ALG)
    top, left = top_left[0], top_left[1]
    return {
        "pixels": _decode_window(record["image"], top, left, crop_size,
                                 image_size, images_prepared),
        "top": top,
        "left": left,
        # Horizontal reflection with p = 0.5 (§4.1).
        "flip": tf.random.stateless_uniform([], flip_key, alg=_RNG_ALG) < 0.5,
        # PCA lighting (§4.1): one alpha per image.
        "alpha": pca_lighting_std * tf.random.stateless_normal(
            [3], lighting_key, alg=_RNG_ALG),
        "label": tf.cast(record["label"], tf.int32),
    }

  # Per example only the JPEG window is decoded (uint8); everything that
  # touches float pixels runs once per batch in one fused XLA loop.
  ds = stream.map(decode_and_draw, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(_make_train_finish(stats, crop_size, pca_lighting_scale),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return _apply_threading(ds, threads)


def _make_train_finish(stats: InputStats, crop_size: int,
                       pca_lighting_scale: LightingScale):
  """Flip, mean subtraction and lighting of a batch of uint8 crops.

  Done as one XLA-compiled function per batch. As separate TensorFlow ops
  (cast, window of the mean, flip, broadcast add of the offset) each made a
  pass over the float image: in a profile they took more CPU time than the
  JPEG decode, and they were the first to slow down when another job
  competed for memory bandwidth. Fused, they are one pass (~90 us per
  224x224 image on one core in isolation; see input_benchmark).
  """
  mean_image = tf.constant(stats.mean_image)
  lighting = tf.constant(stats.lighting_matrix(pca_lighting_scale))

  @tf.function(jit_compile=True)
  def finish(batch):
    j = tf.range(crop_size)
    # Output column j shows crop column `source[b, j]`: mirrored if flipped.
    source = tf.where(batch["flip"][:, None], crop_size - 1 - j[None], j[None])
    pixels = tf.gather(batch["pixels"], source, axis=2, batch_dims=1)
    # The mean image, cropped with the image's own window and mirrored with
    # it (§2: subtract the per-pixel mean).
    mean = tf.gather(mean_image, batch["top"][:, None] + j[None])
    mean = tf.gather(mean, batch["left"][:, None] + source, axis=2,
                     batch_dims=1)
    # The same lighting offset for every pixel of an image (§4.1).
    offset = tf.linalg.matmul(batch["alpha"], lighting, transpose_b=True)
    image = tf.cast(pixels, tf.float32) - mean + offset[:, None, None, :]
    return {"image": image, "label": batch["label"]}

  return finish


def make_train_dataset(
    builder: tfds.core.DatasetBuilder,
    *,
    global_batch_size: int,
    crop_size: int = 224,
    seed: int,
    stats: InputStats,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train",
    shuffle_buffer_size: int = 10_000,
    pca_lighting_std: float = 0.1,
    pca_lighting_scale: LightingScale = "std",
    threads: int | None = None,
) -> tf.data.Dataset:
  """Endless, resumable training batches for this process (paper §2, §4.1).

  Args:
    builder: a prepared TFDS builder with `image` and `label` features.
    global_batch_size: examples per step over all processes (paper: 128).
    crop_size: side of the random crops (paper: 224).
    seed: the run's seed.
    stats: from `compute_or_load_stats`.
    start_step: global step to start at; the stream from there is identical
      to an uninterrupted run's, and skipped images are not decoded.
    process_index: this process, in [0, process_count).
    process_count: number of JAX processes (hosts).
    split: the training split.
    shuffle_buffer_size: undecoded records in the shuffle buffer (10,000
      prepared 256x256 JPEGs of ~25 KB take ~250 MB).
    pca_lighting_std: std of the lighting coefficients (paper: 0.1; 0 = off).
    pca_lighting_scale: "std" (authors' code) or "unit_variance".
    threads: tf.data private thread pool size (None: TF's default).

  Returns:
    A tf.data.Dataset of {"image": float32 [b, crop, crop, 3],
    "label": int32 [b]} with b = global_batch_size / process_count; iterate
    with `.as_numpy_iterator()` or `global_batches`.
  """
  batch = local_batch_size(global_batch_size, process_count)
  steps = train_steps_per_epoch(builder, global_batch_size=global_batch_size,
                                process_count=process_count, split=split)
  records = _records(builder, process_split(split, process_index,
                                            process_count),
                     shuffle_files=True, seed=seed)
  return train_dataset_from_records(
      records, records_per_epoch=steps * batch, batch_size=batch,
      crop_size=crop_size, seed=seed, stats=stats, start_step=start_step,
      process_index=process_index, shuffle_buffer_size=shuffle_buffer_size,
      pca_lighting_std=pca_lighting_std,
      pca_lighting_scale=pca_lighting_scale,
      images_prepared=images_prepared(builder, stats.image_size),
      threads=threads)


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def eval_patch_offsets(crop_size: int,
                       image_size: int = IMAGE_SIZE) -> list[tuple[int, int]]:
  """(top, left) of the paper's 5 test patches: TL, TR, BL, BR, center.

  The 10-crop `image` holds these 5 patches at indices 0-4 and their
  horizontal reflections, in the same order, at indices 5-9 (§4.1).
  """
  far = image_size - crop_size
  center = far // 2
  return [(0, 0), (0, far), (far, 0), (far, far), (center, center)]


def eval_dataset_from_records(
    records: tf.data.Dataset,
    *,
    num_records: int,
    num_batches: int,
    batch_size: int,
    crop_size: int,
    crops: Crops,
    stats: InputStats,
    extra_keys: Sequence[str] = (),
    images_prepared: bool | None = None,
    threads: int | None = None,
) -> tf.data.Dataset:
  """Evaluation batches from undecoded records; the builder-free core.

  Args:
    records: dataset of dicts with `image` (encoded bytes), `label` and the
      `extra_keys`, of exactly `num_records` elements.
    num_records: size of `records`.
    num_batches: batches to produce; the records are padded up to
      `num_batches * batch_size`.
    batch_size: this process's batch size.
    crop_size: side of the patches (paper: 224).
    crops: "center" or "ten" (the paper's 10 patches).
    stats: training-set statistics (only the mean image is used).
    extra_keys: further features to pass through (e.g. "file_name");
      padding gets their zero value.
    images_prepared: as in `train_dataset_from_records`.
    threads: tf.data private thread pool size.

  Returns:
    Batches {"image": float32 [b, crop, crop, 3] or [b, 10, crop, crop, 3],
    "label": int32 [b], "mask": float32 [b] (1 real, 0 padding)} plus the
    extra keys. Padding examples have image 0 and label 0.
  """
  image_size = stats.image_size
  _check_crop_size(crop_size, image_size)
  num_padding = num_batches * batch_size - num_records
  if num_padding < 0:
    raise ValueError(f"{num_batches} batches of {batch_size} cannot hold "
                     f"{num_records} examples")
  if crops not in ("center", "ten"):
    raise ValueError(f"crops must be 'center' or 'ten', got {crops!r}")

  def decode(record):
    # The whole image, even for the center patch: `decode_and_crop_jpeg`
    # upsamples the chroma of a window's edge pixels from the window alone,
    # which moves them by a few levels from the full decode (harmless noise
    # in training, but evaluation should see exactly the prepared image).
    pixels = _decode_prepared(record["image"], image_size, images_prepared)
    example = {"pixels": pixels,
               "label": tf.cast(record["label"], tf.int32),
               "mask": tf.constant(1.0)}
    example.update({k: record[k] for k in extra_keys})
    return example

  ds = records.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  padding_example = {
      key: tf.zeros(spec.shape, spec.dtype)
      for key, spec in ds.element_spec.items()
  }
  ds = ds.concatenate(
      tf.data.Dataset.from_tensors(padding_example).repeat(num_padding))
  # Exact multiple by construction: drop_remainder only makes the batch
  # dimension static; nothing is dropped.
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(_make_eval_finish(stats, crop_size, crops),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return _apply_threading(ds, threads)


def _make_eval_finish(stats: InputStats, crop_size: int, crops: Crops):
  """Patches minus the mean image, for a batch; one fused XLA loop."""
  image_size = stats.image_size
  offsets = eval_patch_offsets(crop_size, image_size)
  top, left = offsets[4]
  if crops == "center":
    mean = stats.mean_image[top:top + crop_size, left:left + crop_size]
    flat_index = None
  else:
    patches = [stats.mean_image[t:t + crop_size, l:l + crop_size]
               for t, l in offsets]
    mean = np.stack(patches + [p[:, ::-1] for p in patches])
    # Index of each output pixel in the flattened image: the 5 windows, then
    # the same windows mirrored (columns reversed).
    j = np.arange(crop_size)
    index = [(t + j)[:, None] * image_size + (l + j)[None, :]
             for t, l in offsets]
    flat_index = tf.constant(
        np.stack(index + [i[:, ::-1] for i in index]).reshape(-1), tf.int32)
  mean = tf.constant(mean)

  @tf.function(jit_compile=True)
  def normalize(pixels, mask):
    if flat_index is None:
      pixels = pixels[:, top:top + crop_size, left:left + crop_size]
    else:
      flat = tf.reshape(pixels, [-1, image_size * image_size, 3])
      pixels = tf.reshape(tf.gather(flat, flat_index, axis=1),
                          [-1, NUM_EVAL_PATCHES, crop_size, crop_size, 3])
    image = tf.cast(pixels, tf.float32) - mean
    # Padding examples are all zeros, not minus the mean.
    mask = tf.reshape(mask, [-1] + [1] * (len(image.shape) - 1))
    return tf.where(mask > 0, image, 0.0)

  def finish(batch):
    batch = dict(batch)
    batch["image"] = normalize(batch.pop("pixels"), batch["mask"])
    return batch

  return finish


def make_eval_dataset(
    builder: tfds.core.DatasetBuilder,
    split: str,
    *,
    global_batch_size: int,
    crop_size: int = 224,
    crops: Crops = "center",
    stats: InputStats,
    process_index: int = 0,
    process_count: int = 1,
    extra_keys: Sequence[str] = (),
    threads: int | None = None,
) -> tf.data.Dataset:
  """One pass of evaluation batches over this process's part of `split`.

  Every example counts exactly once: the last batches are padded (mask 0),
  never dropped, and every process yields `eval_steps(...)` batches.

  Args:
    builder: a prepared TFDS builder with `image` and `label` features.
    split: e.g. "validation" or "test".
    global_batch_size: examples per step over all processes.
    crop_size: side of the patches (paper: 224).
    crops: "center" (one patch) or "ten" (the paper's 10 patches, §4.1;
      order in `eval_patch_offsets`).
    stats: from `compute_or_load_stats` (the mean image).
    process_index: this process, in [0, process_count).
    process_count: number of JAX processes (hosts).
    extra_keys: features to pass through, e.g. ("file_name",).
    threads: tf.data private thread pool size (None: TF's default).

  Returns:
    Batches {"image": float32 [b, crop, crop, 3] (center) or
    [b, 10, crop, crop, 3] (ten), "label": int32 [b], "mask": float32 [b]}.
  """
  batch = local_batch_size(global_batch_size, process_count)
  subsplit = process_split(split, process_index, process_count)
  return eval_dataset_from_records(
      _records(builder, subsplit, shuffle_files=False),
      num_records=builder.info.splits[subsplit].num_examples,
      num_batches=eval_steps(builder, split,
                             global_batch_size=global_batch_size,
                             process_count=process_count),
      batch_size=batch, crop_size=crop_size, crops=crops, stats=stats,
      extra_keys=extra_keys,
      images_prepared=images_prepared(builder, stats.image_size),
      threads=threads)


# ---------------------------------------------------------------------------
# From process-local numpy batches to global jax.Arrays.
# ---------------------------------------------------------------------------


def to_global_array(batch: Mapping[str, np.ndarray],
                    mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Assembles the global batch from every process's local batch.

  The leading (batch) axis is sharded over the mesh's `data` axis and
  replicated over the others. Each process passes its own local batch,
  whose rows land on the shards of that process's own devices (no data moves
  between hosts). Processes that hold the same data rows (e.g. two hosts
  forming the two towers) must pass the same batch: read it with
  `parallel.process_data_shard(mesh)` as (process_index, process_count).

  Args:
    batch: process-local arrays, all with the same leading size.
    mesh: the device mesh; must have the axis `parallel.DATA`.

  Returns:
    jax.Arrays of global shape [local_batch * distinct data shards, ...].
  """
  sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(parallel.DATA))
  _, num_shards = parallel.process_data_shard(mesh)

  def to_global(key, x):
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
      raise TypeError(f"Batch entry {key!r} has dtype {x.dtype}; only numeric"
                      " arrays can become jax.Arrays (drop it first).")
    global_shape = (x.shape[0] * num_shards,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return {key: to_global(key, x) for key, x in batch.items()}


def global_batches(ds: tf.data.Dataset,
                   mesh: jax.sharding.Mesh) -> Iterator[dict[str, jax.Array]]:
  """Iterates `ds` as global, `data`-sharded jax.Arrays."""
  for batch in ds.as_numpy_iterator():
    yield to_global_array(batch, mesh)
