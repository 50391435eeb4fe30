"""What each process reads: its part of a split, batch sizes, step counts.

Multi-host: each process reads its own contiguous part of every split
(`tfds.even_splits`), batches `global_batch_size / process_count` examples,
and `run_data.to_global_array` assembles the global batch as a `jax.Array`
sharded over the mesh's `data` axis. All processes run the same number of
training steps per epoch (set by the smallest part) and of evaluation
batches (set by the largest part; the others pad more).
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_datasets as tfds

# Imported first for its side effect: TensorFlow never sees an accelerator.
from alexnet_jax import input_decoding  # pylint: disable=unused-import

# ---------------------------------------------------------------------------
# Splits: what each process reads.
# ---------------------------------------------------------------------------


def _check_process(process_index: int, process_count: int) -> None:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"Invalid process_index={process_index} for "
        f"process_count={process_count}"
    )


def process_split(
    split: str, process_index: int = 0, process_count: int = 1
) -> tfds.typing.SplitArg:
  """The contiguous, disjoint part of `split` that one process reads."""
  _check_process(process_index, process_count)
  # No remainder dropped: for evaluation every example must count once; for
  # training `train_steps_per_epoch` equalizes the processes instead.
  return tfds.even_splits(split, process_count, drop_remainder=False)[
      process_index
  ]


def num_examples(
    builder: tfds.core.DatasetBuilder,
    split: str,
    process_index: int = 0,
    process_count: int = 1,
) -> int:
  """Number of examples of `split` that process `process_index` reads."""
  subsplit = process_split(split, process_index, process_count)
  return builder.info.splits[subsplit].num_examples


def local_batch_size(global_batch_size: int, process_count: int) -> int:
  """Per-process batch size; validates that the processes split it evenly."""
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple "
        f"of process_count={process_count} (each process feeds the same "
        "number of examples to every global batch)."
    )
  return global_batch_size // process_count


def train_steps_per_epoch(
    builder: tfds.core.DatasetBuilder,
    *,
    global_batch_size: int,
    process_count: int = 1,
    split: str = "train",
) -> int:
  """Training steps per epoch, the same on every process.

  Each process drops the remainder of its own part of the split; the
  smallest part sets the count so that no process runs out first.
  """
  batch = local_batch_size(global_batch_size, process_count)
  smallest = min(
      num_examples(builder, split, p, process_count)
      for p in range(process_count)
  )
  steps = smallest // batch
  if steps == 0:
    raise ValueError(
        f"The {split} split has {smallest} examples per process, "
        f"fewer than one local batch of {batch}."
    )
  return steps


def eval_steps(
    builder: tfds.core.DatasetBuilder,
    split: str,
    *,
    global_batch_size: int,
    process_count: int = 1,
) -> int:
  """Evaluation batches per process: enough for the largest part, padded."""
  batch = local_batch_size(global_batch_size, process_count)
  largest = max(
      num_examples(builder, split, p, process_count)
      for p in range(process_count)
  )
  return math.ceil(largest / batch)


def records(
    builder: tfds.core.DatasetBuilder,
    split: tfds.typing.SplitArg,
    *,
    shuffle_files: bool,
    seed: int = 0,
) -> tf.data.Dataset:
  """Undecoded examples: `image` stays the encoded bytes.

  The order is deterministic: file order shuffled with `seed` (or not at
  all), files interleaved deterministically, the same on every iteration.
  """
  options = tf.data.Options()
  options.deterministic = True
  read_config = tfds.ReadConfig(
      shuffle_seed=seed if shuffle_files else None,
      # The file order is the same on every iteration; each epoch's own
      # randomness comes from the record shuffle of input_pipeline.py.
      shuffle_reshuffle_each_iteration=False,
      skip_prefetch=True,
      options=options,
  )
  return builder.as_dataset(
      split=split,
      shuffle_files=shuffle_files,
      read_config=read_config,
      decoders={"image": tfds.decode.SkipDecoding()},
  )
