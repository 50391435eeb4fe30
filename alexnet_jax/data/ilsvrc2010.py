"""TFDS builder for ILSVRC-2010, the data set of the paper (§2).

TFDS ships no ILSVRC-2010 builder, so this module provides `Ilsvrc2010`. It
reads the official release files from a manual directory (release.py) with
the TensorFlow-free reader (release_reader.py) and stores every image
already rescaled so its shorter side is `image_size` (256 in the paper)
and center-cropped to `image_size` x `image_size` -- the paper does this
once, when the data set is prepared (§2). Labels are `ILSVRC2010_ID - 1`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import release
from alexnet_jax.data import release_metadata
from alexnet_jax.data import release_reader
from alexnet_jax.data.release import PAPER_IMAGE_SIZE

# TensorFlow only feeds data; the accelerators belong to JAX.
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # Already initialized, or no GPU support.
  pass

PAPER_NUM_CLASSES = 1000


@dataclasses.dataclass(eq=False)
class Ilsvrc2010Config(tfds.core.BuilderConfig):
  """Which release is read (class count) and how it is stored.

  Attributes:
    num_classes: class count of meta.mat (1000 for the real release).
    image_size: side of the stored square images (256 in the paper, §2).
  """

  num_classes: int = PAPER_NUM_CLASSES
  image_size: int = PAPER_IMAGE_SIZE


def config_name(num_classes: int, image_size: int) -> str:
  """Names a config: "paper" is 1000 classes at 256; "mini10" 10 at 256."""
  base = "paper" if num_classes == PAPER_NUM_CLASSES else f"mini{num_classes}"
  if image_size != PAPER_IMAGE_SIZE:
    base += f"_{image_size}px"
  return base


def _new_config(num_classes: int, image_size: int) -> Ilsvrc2010Config:
  if num_classes < 2 or image_size < 1:
    raise ValueError(
        f"Need num_classes >= 2 and image_size >= 1, got {num_classes}, "
        f"{image_size}."
    )
  return Ilsvrc2010Config(
      name=config_name(num_classes, image_size),
      description=(
          f"{num_classes} classes, images rescaled (shorter side "
          f"{image_size}) and center-cropped to {image_size}x{image_size}."
      ),
      num_classes=num_classes,
      image_size=image_size,
  )


PAPER_CONFIG = _new_config(PAPER_NUM_CLASSES, PAPER_IMAGE_SIZE)
MINI_CONFIG = _new_config(10, PAPER_IMAGE_SIZE)
_CONFIGS = {c.name: c for c in (PAPER_CONFIG, MINI_CONFIG)}


def make_config(
    num_classes: int = PAPER_NUM_CLASSES, image_size: int = PAPER_IMAGE_SIZE
) -> Ilsvrc2010Config:
  """Returns the config for a class count and stored image size.

  The same object is returned for the same arguments: TFDS refuses two
  different config objects with one name.
  """
  name = config_name(num_classes, image_size)
  if name not in _CONFIGS:
    _CONFIGS[name] = _new_config(num_classes, image_size)
  return _CONFIGS[name]


class Ilsvrc2010(tfds.core.GeneratorBasedBuilder):
  """ILSVRC-2010, stored rescaled and center-cropped as in the paper (§2)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version: patched, RGB, 256x256 crops."}
  BUILDER_CONFIGS = [PAPER_CONFIG, MINI_CONFIG]
  DEFAULT_BUILDER_CONFIG_NAME = PAPER_CONFIG.name
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put these ILSVRC-2010 release files, unextracted, in the manual "
      "directory: "
      + ", ".join(release.REQUIRED_FILES)
      + ". "
      + release.DOWNLOAD_HELP
  )

  def __init__(
      self,
      *,
      skip_corrupt_images: bool = False,
      num_workers: int | None = None,
      **kwargs: Any,
  ):
    """Constructs the builder.

    Args:
      skip_corrupt_images: when an image cannot be decoded, leave it out and
        log its name (kept in `skipped_images`) instead of failing the
        build with `release.CorruptImageError`, which is the default.
      num_workers: threads that decode and resize; default: all CPUs.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (data_dir, config,
        version, ...).
    """
    self.skip_corrupt_images = skip_corrupt_images
    self.num_workers = num_workers or os.cpu_count() or 1
    # "archive:member" of every image left out by the last build.
    self.skipped_images: list[str] = []
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls) -> None:
    # Nothing is downloaded, so there are no checksums. TFDS's own lookup
    # (through `code_path`) needs `importlib_resources`, which TFDS only
    # installs for Python < 3.9, for builders defined outside TFDS.
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "ILSVRC-2010 (Krizhevsky et al. 2012, §2): every image rescaled "
            f"so its shorter side is {size} and center-cropped to "
            f"{size}x{size}; blank images replaced from patch_images.tar; "
            "CMYK, grayscale and gzip-compressed JPEGs decoded to RGB. "
            "label = ILSVRC2010_ID - 1."
        ),
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(
                    shape=(size, size, 3), encoding_format="jpeg"
                ),
                "label": tfds.features.ClassLabel(
                    num_classes=self.builder_config.num_classes
                ),
                "class_name": tfds.features.Text(),  # meta.mat `words`
                "wnid": tfds.features.Text(),
                "file_name": tfds.features.Text(),
            }
        ),
        supervised_keys=("image", "label"),
        homepage="https://image-net.org/challenges/LSVRC/2010/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = _manual_dir_of(dl_manager)
    # Before any work: name every missing file, in our words.
    release.check_manual_dir(manual_dir)
    meta = release_metadata.load_release_metadata(
        manual_dir, self.builder_config.num_classes
    )
    self.skipped_images = []
    return {
        split: self._generate_examples(manual_dir, split, meta)
        for split in release.SPLIT_ARCHIVES
    }

  def _generate_examples(
      self, manual_dir: str, split: str, meta: release_metadata.ReleaseMetadata
  ):
    def on_skip(error: release.CorruptImageError) -> None:
      self.skipped_images.append(f"{error.archive}:{error.member}")

    before = len(self.skipped_images)
    yield from release_reader.iter_examples(
        manual_dir,
        split,
        meta,
        image_size=self.builder_config.image_size,
        skip_corrupt_images=self.skip_corrupt_images,
        num_workers=self.num_workers,
        on_skip=on_skip,
    )
    skipped = self.skipped_images[before:]
    if skipped:
      logging.warning(
          "ILSVRC-2010 %s: skipped %d corrupt image(s): %s",
          split,
          len(skipped),
          ", ".join(skipped),
      )


def _manual_dir_of(dl_manager: tfds.download.DownloadManager) -> str:
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError:
    # TFDS raises a bare AssertionError when the directory is missing or
    # empty; fall back to the configured path so that `release.check_manual_dir`
    # can name each missing file.
    manual_dir = getattr(dl_manager, "_manual_dir", None)
    if manual_dir is None:
      raise
    return os.fspath(manual_dir)
