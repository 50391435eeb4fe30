"""Data sets: the ILSVRC-2010 builder, the generated mini set, TFDS ImageNets.

The input pipeline and the training program use only this module's small
API:

  builder = data.get_builder("ilsvrc2010", data_dir=...)
  data.prepare(builder, manual_dir=...)  # Builds once.
  ds = builder.as_dataset(split="train")

and `DATASETS[name]` for what each data set is (class count, split names,
whether its images are already rescaled and cropped to 256x256).

TensorFlow is imported only when a builder is asked for, so that
`alexnet_jax.data.mini` generates data without it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from alexnet_jax.data import release

if TYPE_CHECKING:
  import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline and the trainer need to know about a data set.

  Attributes:
    name: the name `get_builder` takes.
    tfds_name: the TFDS builder name.
    num_classes: class count (the default, where it is an option).
    train_split: split to train on.
    eval_split: split to evaluate on during training.
    test_split: split with labels for the final test, or None if there is
      none (ILSVRC-2010 is the only year with public test labels, §6).
    stored_image_size: side of the stored square images when they were
      already rescaled + center-cropped at preparation time (paper §2); None
      when images keep their original sizes and the pipeline must do it.
    manual_download: the user must fetch the files by hand.
  """

  name: str
  tfds_name: str
  num_classes: int
  train_split: str
  eval_split: str
  test_split: str | None
  stored_image_size: int | None
  manual_download: bool


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="ilsvrc2010",
            tfds_name="ilsvrc2010",
            num_classes=1000,
            train_split="train",
            eval_split="validation",
            test_split="test",
            stored_image_size=256,
            manual_download=True,
        ),
        # The generated demo set (alexnet_jax.data.mini), read by the same
        # builder with a smaller class count; `num_classes` is an option.
        DatasetSpec(
            name="ilsvrc2010_mini",
            tfds_name="ilsvrc2010",
            num_classes=10,
            train_split="train",
            eval_split="validation",
            test_split="test",
            stored_image_size=256,
            manual_download=True,
        ),
        DatasetSpec(
            name="imagenet2012",
            tfds_name="imagenet2012",
            num_classes=1000,
            train_split="train",
            eval_split="validation",
            test_split=None,  # TFDS's test split has no labels.
            stored_image_size=None,
            manual_download=True,
        ),
        # Downloads itself: only for users with network, never in tests.
        DatasetSpec(
            name="imagenette",
            tfds_name="imagenette",
            num_classes=10,
            train_split="train",
            eval_split="validation",
            test_split=None,
            stored_image_size=None,
            manual_download=False,
        ),
    )
}

IMAGENET2012_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
IMAGENET2012_HELP = (
    "The ILSVRC-2012 files are distributed by ImageNet: register at "
    "https://image-net.org/download-images and download them from the "
    "ILSVRC-2012 download page. Put them, unextracted, in the manual "
    "directory."
)


def get_builder(
    name: str,
    *,
    data_dir: str | None,
    **options: Any,
) -> "tfds.core.DatasetBuilder":
  """Returns the TFDS builder for a data set of `DATASETS`.

  Args:
    name: "ilsvrc2010", "ilsvrc2010_mini", "imagenet2012" or "imagenette".
    data_dir: TFDS data directory (None: TFDS's default).
    **options: for "ilsvrc2010": image_size (256), skip_corrupt_images
      (False), num_workers; for "ilsvrc2010_mini" also num_classes (10);
      for "imagenette": config (TFDS config name, e.g. "320px-v2").

  Raises:
    ValueError: unknown name.
    TypeError: an option the data set does not take.
  """
  if name not in DATASETS:
    raise ValueError(f"Unknown data set {name!r}; known: {sorted(DATASETS)}.")
  # Importing the builder also hides accelerators from TensorFlow.
  from alexnet_jax.data import ilsvrc2010  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  allowed = {
      "ilsvrc2010": {"image_size", "skip_corrupt_images", "num_workers"},
      "ilsvrc2010_mini": {
          "num_classes",
          "image_size",
          "skip_corrupt_images",
          "num_workers",
      },
      "imagenet2012": set(),
      "imagenette": {"config"},
  }[name]
  unknown = sorted(set(options) - allowed)
  if unknown:
    raise TypeError(
        f"get_builder({name!r}) takes options {sorted(allowed)}, got "
        f"{unknown}."
    )
  if name.startswith("ilsvrc2010"):
    config = ilsvrc2010.make_config(
        num_classes=options.get("num_classes", DATASETS[name].num_classes),
        image_size=options.get("image_size", release.PAPER_IMAGE_SIZE),
    )
    builder = ilsvrc2010.Ilsvrc2010(
        data_dir=data_dir,
        config=config,
        skip_corrupt_images=options.get("skip_corrupt_images", False),
        num_workers=options.get("num_workers"),
    )
  else:
    builder = tfds.builder(
        DATASETS[name].tfds_name,
        data_dir=data_dir,
        config=options.get("config"),
    )
  return builder


def default_manual_dir(builder: "tfds.core.DatasetBuilder") -> str:
  """TFDS's default manual directory: `<data_dir>/downloads/manual`."""
  return os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")


def check_manual_files(
    builder: "tfds.core.DatasetBuilder", manual_dir: str
) -> None:
  """Raises `MissingManualFilesError` if `builder` lacks release files.

  Data sets that download themselves need nothing and always pass.
  """
  from alexnet_jax.data import ilsvrc2010  # pylint: disable=g-import-not-at-top

  if isinstance(builder, ilsvrc2010.Ilsvrc2010):
    release.check_manual_dir(manual_dir)
  elif builder.name == "imagenet2012":
    missing = [
        f
        for f in IMAGENET2012_FILES
        if not os.path.isfile(os.path.join(manual_dir, f))
    ]
    if missing:
      raise release.MissingManualFilesError(
          manual_dir,
          missing,
          dataset="ILSVRC-2012",
          download_help=IMAGENET2012_HELP,
      )


def prepare(
    builder: "tfds.core.DatasetBuilder", manual_dir: str | None = None
) -> "tfds.core.DatasetBuilder":
  """Builds the data set once (no-op if already built) and returns `builder`.

  The release files are checked first, so a missing file is reported as
  `MissingManualFilesError` naming each file and the directory, before any
  work starts.

  Args:
    builder: from `get_builder`.
    manual_dir: where the manually downloaded (or generated) release files
      are. None: TFDS's default, `<data_dir>/downloads/manual`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if builder.is_prepared():
    return builder
  manual_dir = os.fspath(manual_dir or default_manual_dir(builder))
  check_manual_files(builder, manual_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
  )
  return builder
