"""The paper's input pipeline on tf.data (paper §2 and §4.1).

Training batches: random `crop_size` crops of the 256x256 image, horizontal
flips with p=0.5, PCA lighting, minus the per-pixel mean image. Evaluation
batches: the center crop or the paper's 10 patches, minus the mean image, the
last batch padded and masked so that every example counts exactly once.

The parts: input_decoding.py (JPEG bytes to the prepared 256x256 image),
input_stats.py (the mean image and the pixel covariance; PCA lighting's
units), input_splits.py (what each process reads); run_data.py puts them
together for a run and assembles global `jax.Array` batches.

Speed
  Per example only the JPEG is decoded -- for training only the crop
  window (`decode_and_crop_jpeg`), into uint8. Flip, mean subtraction,
  lighting and the float conversion run once per batch as one XLA-compiled
  loop (as separate TensorFlow ops they took more CPU than the decode).
  `python -m benchmarks.input_pipeline` measures images/s per core.

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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import input_decoding
from alexnet_jax import input_splits
from alexnet_jax.input_decoding import IMAGE_SIZE
from alexnet_jax.input_stats import InputStats
from alexnet_jax.input_stats import LightingScale

# The paper's test-time patches: 4 corners + center and their reflections
# (paper §4.1).
NUM_EVAL_PATCHES = 10
# Fixed so that a seed means the same thing on every machine ("auto_select"
# may pick a different generator on a different device).
_RNG_ALG = "philox"
# Tags that separate the random streams derived from one user seed.
_SHUFFLE_TAG = 1
_AUGMENT_TAG = 2

Crops = Literal["center", "ten"]


def _apply_threading(
    ds: tf.data.Dataset, threads: int | None
) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  if threads is not None:
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


# ---------------------------------------------------------------------------
# Training.
# ---------------------------------------------------------------------------


def _train_records(
    records: tf.data.Dataset,
    *,
    records_per_epoch: int,
    start_epoch: int,
    skip_in_start_epoch: int,
    seed: int,
    shuffle_buffer_size: int,
) -> tf.data.Dataset:
  """Endless (epoch, position, record) stream starting at a given position.

  Epoch e is `records` shuffled with a seed derived from (seed, e), cut to
  `records_per_epoch`. The skip for resuming happens here, on undecoded
  records, after `enumerate` so that positions are those of a full epoch.
  """
  shuffle_key = tf.constant([seed, _SHUFFLE_TAG], tf.int64)

  def epoch_records(epoch):
    epoch_seed = tf.random.stateless_uniform(
        [],
        tf.random.experimental.stateless_fold_in(
            shuffle_key, epoch, alg=_RNG_ALG
        ),
        minval=None,
        maxval=None,
        dtype=tf.int64,
        alg=_RNG_ALG,
    )
    ds = records.shuffle(
        shuffle_buffer_size, seed=epoch_seed, reshuffle_each_iteration=False
    )
    ds = ds.take(records_per_epoch).enumerate()
    skip = tf.where(
        epoch == start_epoch, tf.constant(skip_in_start_epoch, tf.int64), 0
    )
    ds = ds.skip(skip)
    return ds.map(
        input_decoding.no_autograph(
            lambda position, record: (epoch, position, record)
        )
    )

  return tf.data.Dataset.counter(start_epoch).flat_map(
      input_decoding.no_autograph(epoch_records)
  )


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
    pca_lighting_scale: "std" or "unit_variance"; see input_stats.py.
    images_prepared: True if every image is a JPEG of the prepared size
      (skips the per-image header check); None: check each image and
      rescale + center-crop those that are not.
    threads: if set, tf.data's private thread pool size (and one thread per
      op), e.g. 1 to measure throughput per core.

  Returns:
    Batches {"image": float32 [b, crop, crop, 3], "label": int32 [b]}.
  """
  image_size = stats.image_size
  input_decoding.check_crop_size(crop_size, image_size)
  if records_per_epoch % batch_size or records_per_epoch < batch_size:
    raise ValueError(
        f"records_per_epoch={records_per_epoch} must be a "
        f"positive multiple of batch_size={batch_size}"
    )
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  steps_per_epoch = records_per_epoch // batch_size
  start_epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
  stream = _train_records(
      records,
      records_per_epoch=records_per_epoch,
      start_epoch=start_epoch,
      skip_in_start_epoch=step_in_epoch * batch_size,
      seed=seed,
      shuffle_buffer_size=shuffle_buffer_size,
  )

  max_offset = image_size - crop_size
  augment_key = tf.random.experimental.stateless_fold_in(
      tf.constant([seed, _AUGMENT_TAG], tf.int64), process_index, alg=_RNG_ALG
  )

  def decode_and_draw(epoch, position, record):
    # Keyed by (seed, process, epoch, position): independent of iterator
    # history, so a resumed stream draws exactly the same numbers.
    key = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(
            augment_key, epoch, alg=_RNG_ALG
        ),
        position,
        alg=_RNG_ALG,
    )
    crop_key, flip_key, lighting_key = tf.unstack(
        tf.random.experimental.stateless_split(key, 3, alg=_RNG_ALG)
    )
    # Random crop_size x crop_size window (§4.1), uniform over all offsets.
    top_left = tf.random.stateless_uniform(
        [2],
        crop_key,
        minval=0,
        maxval=max_offset + 1,
        dtype=tf.int32,
        alg=_RNG_ALG,
    )
    top, left = top_left[0], top_left[1]
    return {
        "pixels": input_decoding.decode_window(
            record["image"], top, left, crop_size, image_size, images_prepared
        ),
        "top": top,
        "left": left,
        # Horizontal reflection with p = 0.5 (§4.1).
        "flip": tf.random.stateless_uniform([], flip_key, alg=_RNG_ALG) < 0.5,
        # PCA lighting (§4.1): one alpha per image.
        "alpha": pca_lighting_std
        * tf.random.stateless_normal([3], lighting_key, alg=_RNG_ALG),
        "label": tf.cast(record["label"], tf.int32),
    }

  # Per example only the JPEG window is decoded (uint8); everything that
  # touches float pixels runs once per batch in one fused XLA loop.
  ds = stream.map(
      input_decoding.no_autograph(decode_and_draw),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(
      _make_train_finish(stats, crop_size, pca_lighting_scale),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return _apply_threading(ds, threads)


def _make_train_finish(
    stats: InputStats, crop_size: int, pca_lighting_scale: LightingScale
):
  """Flip, mean subtraction and lighting of a batch of uint8 crops.

  Done as one XLA-compiled function per batch. As separate TensorFlow ops
  (cast, window of the mean, flip, broadcast add of the offset) each made a
  pass over the float image: in a profile they took more CPU time than the
  JPEG decode, and they were the first to slow down when another job
  competed for memory bandwidth. Fused, they are one pass (~90 us per
  224x224 image on one core in isolation; benchmarks/input_pipeline.py).
  """
  mean_image = tf.constant(stats.mean_image)
  lighting = tf.constant(stats.lighting_matrix(pca_lighting_scale))

  @tf.function(jit_compile=True, autograph=False)
  def finish(batch):
    j = tf.range(crop_size)
    # Output column j shows crop column `source[b, j]`: mirrored if flipped.
    source = tf.where(batch["flip"][:, None], crop_size - 1 - j[None], j[None])
    pixels = tf.gather(batch["pixels"], source, axis=2, batch_dims=1)
    # The mean image, cropped with the image's own window and mirrored with
    # it (§2: subtract the per-pixel mean).
    mean = tf.gather(mean_image, batch["top"][:, None] + j[None])
    mean = tf.gather(
        mean, batch["left"][:, None] + source, axis=2, batch_dims=1
    )
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
    stats: from `input_stats.compute_or_load_stats`.
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
    with `.as_numpy_iterator()` or `run_data.global_batches`.
  """
  batch = input_splits.local_batch_size(global_batch_size, process_count)
  steps = input_splits.train_steps_per_epoch(
      builder,
      global_batch_size=global_batch_size,
      process_count=process_count,
      split=split,
  )
  records = input_splits.records(
      builder,
      input_splits.process_split(split, process_index, process_count),
      shuffle_files=True,
      seed=seed,
  )
  return train_dataset_from_records(
      records,
      records_per_epoch=steps * batch,
      batch_size=batch,
      crop_size=crop_size,
      seed=seed,
      stats=stats,
      start_step=start_step,
      process_index=process_index,
      shuffle_buffer_size=shuffle_buffer_size,
      pca_lighting_std=pca_lighting_std,
      pca_lighting_scale=pca_lighting_scale,
      images_prepared=input_decoding.images_prepared(builder, stats.image_size),
      threads=threads,
  )


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def eval_patch_offsets(
    crop_size: int, image_size: int = IMAGE_SIZE
) -> list[tuple[int, int]]:
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
  input_decoding.check_crop_size(crop_size, image_size)
  num_padding = num_batches * batch_size - num_records
  if num_padding < 0:
    raise ValueError(
        f"{num_batches} batches of {batch_size} cannot hold "
        f"{num_records} examples"
    )
  if crops not in ("center", "ten"):
    raise ValueError(f"crops must be 'center' or 'ten', got {crops!r}")

  def decode(record):
    # The whole image, even for the center patch: `decode_and_crop_jpeg`
    # upsamples the chroma of a window's edge pixels from the window alone,
    # which moves them by a few levels from the full decode (harmless noise
    # in training, but evaluation should see exactly the prepared image).
    pixels = input_decoding.decode_prepared(
        record["image"], image_size, images_prepared
    )
    example = {
        "pixels": pixels,
        "label": tf.cast(record["label"], tf.int32),
        "mask": tf.constant(1.0),
    }
    example.update({k: record[k] for k in extra_keys})
    return example

  ds = records.map(
      input_decoding.no_autograph(decode), num_parallel_calls=tf.data.AUTOTUNE
  )
  padding_example = {
      key: tf.zeros(spec.shape, spec.dtype)
      for key, spec in ds.element_spec.items()
  }
  ds = ds.concatenate(
      tf.data.Dataset.from_tensors(padding_example).repeat(num_padding)
  )
  # Exact multiple by construction: drop_remainder only makes the batch
  # dimension static; nothing is dropped.
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.map(
      _make_eval_finish(stats, crop_size, crops),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return _apply_threading(ds, threads)


def _make_eval_finish(stats: InputStats, crop_size: int, crops: Crops):
  """Patches minus the mean image, for a batch; one fused XLA loop."""
  image_size = stats.image_size
  offsets = eval_patch_offsets(crop_size, image_size)
  top, left = offsets[4]
  if crops == "center":
    mean = stats.mean_image[top : top + crop_size, left : left + crop_size]
    flat_index = None
  else:
    patches = [
        stats.mean_image[t : t + crop_size, l : l + crop_size]
        for t, l in offsets
    ]
    mean = np.stack(patches + [p[:, ::-1] for p in patches])
    # Index of each output pixel in the flattened image: the 5 windows, then
    # the same windows mirrored (columns reversed).
    j = np.arange(crop_size)
    index = [
        (t + j)[:, None] * image_size + (l + j)[None, :] for t, l in offsets
    ]
    flat_index = tf.constant(
        np.stack(index + [i[:, ::-1] for i in index]).reshape(-1), tf.int32
    )
  mean = tf.constant(mean)

  @tf.function(jit_compile=True, autograph=False)
  def normalize(pixels, mask):
    if flat_index is None:
      pixels = pixels[:, top : top + crop_size, left : left + crop_size]
    else:
      flat = tf.reshape(pixels, [-1, image_size * image_size, 3])
      pixels = tf.reshape(
          tf.gather(flat, flat_index, axis=1),
          [-1, NUM_EVAL_PATCHES, crop_size, crop_size, 3],
      )
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
  never dropped, and every process yields `input_splits.eval_steps(...)`
  batches.

  Args:
    builder: a prepared TFDS builder with `image` and `label` features.
    split: e.g. "validation" or "test".
    global_batch_size: examples per step over all processes.
    crop_size: side of the patches (paper: 224).
    crops: "center" (one patch) or "ten" (the paper's 10 patches, §4.1;
      order in `eval_patch_offsets`).
    stats: from `input_stats.compute_or_load_stats` (the mean image).
    process_index: this process, in [0, process_count).
    process_count: number of JAX processes (hosts).
    extra_keys: features to pass through, e.g. ("file_name",).
    threads: tf.data private thread pool size (None: TF's default).

  Returns:
    Batches {"image": float32 [b, crop, crop, 3] (center) or
    [b, 10, crop, crop, 3] (ten), "label": int32 [b], "mask": float32 [b]}.
  """
  batch = input_splits.local_batch_size(global_batch_size, process_count)
  subsplit = input_splits.process_split(split, process_index, process_count)
  return eval_dataset_from_records(
      input_splits.records(builder, subsplit, shuffle_files=False),
      num_records=builder.info.splits[subsplit].num_examples,
      num_batches=input_splits.eval_steps(
          builder,
          split,
          global_batch_size=global_batch_size,
          process_count=process_count,
      ),
      batch_size=batch,
      crop_size=crop_size,
      crops=crops,
      stats=stats,
      extra_keys=extra_keys,
      images_prepared=input_decoding.images_prepared(builder, stats.image_size),
      threads=threads,
  )
