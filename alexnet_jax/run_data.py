"""The run's data: the prepared data set, its statistics, global batches.

`Data(config, mesh)` is what the training program, `evaluate` and
`neighbors` read: it generates the mini release when the config asks for
it, builds the data set once (data/), computes or loads the input
statistics (input_stats.py; `config.mean_image_file` replaces their mean
image, e.g. by Caffe's) and makes this process's training and
evaluation batches (input_pipeline.py) as global `jax.Array`s sharded over
the mesh's `data` axis.

Multi-host: process 0 prepares the data and the statistics while the others
wait, then every process reads its own part of each split; processes that
hold the same data rows of the mesh (e.g. two hosts forming the two towers)
read the same part.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import dataclasses
from typing import Any

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tensorflow as tf

from alexnet_jax import cli
from alexnet_jax import data as data_lib
from alexnet_jax import input_decoding
from alexnet_jax import input_pipeline
from alexnet_jax import input_splits
from alexnet_jax import input_stats
from alexnet_jax import parallel
from alexnet_jax.data import mini


class StaleDataError(cli.UserError, ValueError):
  """The prepared mini set is not the one the config's generator makes."""


def _check_mini_sizes(builder, config: ml_collections.ConfigDict) -> None:
  """Raises StaleDataError unless every split has config.mini's size.

  TFDS keeps a data set once prepared; the mini set's TFDS name says only
  its class count and image size, so a data_dir prepared from other
  generator parameters (e.g. the `smoke` config's 8 images per class)
  would otherwise be read as if it were this config's.
  """
  p = config.mini
  per_class = dict(
      train=p.train_per_class,
      validation=p.val_per_class,
      test=p.test_per_class,
  )
  for split, n in per_class.items():
    found = builder.info.splits[split].num_examples
    if found != n * p.num_classes:
      raise StaleDataError(
          f"--config.data_dir={config.data_dir} holds a mini data set "
          f"prepared from other generator parameters: its {split} split "
          f"has {found} images, config.mini makes {n * p.num_classes} "
          f"({p.num_classes} classes x {n}). Delete "
          f"{builder.data_dir} to prepare it again, or give another "
          "--config.data_dir."
      )


class Data:
  """The prepared data set, its statistics and this process's batches."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: Any):
    self.config = config
    self.mesh = mesh
    options = dict(config.get("dataset_options", {}) or {})
    if config.dataset == "ilsvrc2010_mini":
      self._generate_mini(config)
    self.builder = data_lib.get_builder(
        config.dataset, data_dir=config.data_dir, **options
    )
    # Process 0 prepares the data and the statistics; the others wait for
    # it and then read what it wrote.
    if jax.process_index() == 0:
      data_lib.prepare(self.builder, manual_dir=config.manual_dir)
    _sync("data prepared")
    if config.dataset == "ilsvrc2010_mini":
      _check_mini_sizes(self.builder, config)
    stored = self.builder.info.features["image"].shape[0]
    self.image_size = stored or input_decoding.IMAGE_SIZE
    # config.mean_image_file (e.g. Caffe's mean, converted): its mean
    # replaces the training images' for training and evaluation. The
    # training set's pixel covariance (PCA lighting, §4.1) stays what it
    # is; only training needs it, so then it is computed on first use and
    # evaluating with a given mean needs no pass over the training images.
    mean_file = config.get("mean_image_file")
    self.mean_image = (
        input_stats.load_mean_image(mean_file, self.image_size)
        if mean_file
        else None
    )
    if self.mean_image is None:
      self.stats = self._computed_stats()
    else:
      # What evaluation reads: the mean (no covariance is known for it).
      self.stats = input_stats.InputStats(
          mean_image=self.mean_image,
          pixel_covariance=np.full((3, 3), np.nan),
          num_images=0,
      )
    # Which slice of every batch this process reads (processes holding the
    # same data rows of the mesh read the same one).
    self.shard, self.num_shards = parallel.process_data_shard(mesh)
    self.steps_per_epoch = input_splits.train_steps_per_epoch(
        self.builder,
        global_batch_size=config.batch_size,
        process_count=self.num_shards,
        split=config.train_split,
    )

  def _generate_mini(self, config):
    """Writes the mini release into manual_dir if it is not there yet."""
    if jax.process_index() == 0:
      mini.ensure_manual_dir(config.manual_dir, mini.MiniParams(**config.mini))
    _sync("mini data generated")

  def baselines(self) -> dict[str, float]:
    """Trivial classifiers' validation errors (mini data only)."""
    if self.config.dataset != "ilsvrc2010_mini":
      return {}
    accuracy = mini.trivial_baselines(self.config.manual_dir)
    return {f"{k}_top1_error": 1.0 - v for k, v in accuracy.items()}

  def _stats(self) -> input_stats.InputStats:
    return input_stats.compute_or_load_stats(
        self.builder,
        max_images=self.config.stats_max_images,
        split=self.config.train_split,
        image_size=self.image_size,
    )

  def _computed_stats(self) -> input_stats.InputStats:
    """The training images' statistics: process 0 computes (or loads)
    them, then every process loads them. Every process must call it."""
    if jax.process_index() == 0:
      self._stats()
    _sync("statistics ready")
    return self._stats()

  def train_stats(self) -> input_stats.InputStats:
    """What training reads: the training images' statistics, their mean
    replaced by `mean_image_file`'s when the config names one. Every
    process must call it (it may compute the statistics)."""
    if self.mean_image is None:
      return self.stats
    return dataclasses.replace(
        self._computed_stats(), mean_image=self.mean_image
    )

  def train_batches(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
    """The endless training stream from `start_step` on (a generator).

    Close it when done (`contextlib.closing`): that destroys its tf.data
    iterator at once, not in interpreter teardown.
    """
    ds = input_pipeline.make_train_dataset(
        self.builder,
        global_batch_size=self.config.batch_size,
        crop_size=self.config.model.image_size,
        seed=self.config.seed,
        stats=self.train_stats(),
        start_step=start_step,
        process_index=self.shard,
        process_count=self.num_shards,
        split=self.config.train_split,
        shuffle_buffer_size=self.config.shuffle_buffer_size,
        pca_lighting_std=self.config.pca_lighting_std,
        pca_lighting_scale=self.config.pca_lighting_scale,
    )
    return global_batches(ds, self.mesh)

  def eval_batches(
      self, split: str, crops: str
  ) -> Iterator[dict[str, jax.Array]]:
    """One pass over `split`, every example once (padded and masked)."""
    ds = input_pipeline.make_eval_dataset(
        self.builder,
        split,
        global_batch_size=self.config.eval_batch_size,
        crop_size=self.config.model.image_size,
        crops=crops,
        stats=self.stats,
        process_index=self.shard,
        process_count=self.num_shards,
    )
    return global_batches(ds, self.mesh)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def to_global_array(
    batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh
) -> dict[str, jax.Array]:
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
      mesh, jax.sharding.PartitionSpec(parallel.DATA)
  )
  _, num_shards = parallel.process_data_shard(mesh)

  def to_global(key, x):
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
      raise TypeError(
          f"Batch entry {key!r} has dtype {x.dtype}; only numeric"
          " arrays can become jax.Arrays (drop it first)."
      )
    global_shape = (x.shape[0] * num_shards,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  return {key: to_global(key, x) for key, x in batch.items()}


def global_batches(
    ds: tf.data.Dataset, mesh: jax.sharding.Mesh
) -> Iterator[dict[str, jax.Array]]:
  """Iterates `ds` as global, `data`-sharded jax.Arrays."""
  for batch in ds.as_numpy_iterator():
    yield to_global_array(batch, mesh)
