"""Training-set statistics: the mean image and the pixel covariance.

The mean image is the paper's only normalization (§2); the covariance's
eigenvectors and eigenvalues drive PCA lighting (§4.1). Both are computed
once over the training split, on the 0-255 scale, and cached next to the
data.

PCA lighting and its scale trap (docs/paper.md "PCA lighting units")
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
"""

from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from typing import Literal

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import cli
from alexnet_jax import input_decoding
from alexnet_jax import input_splits

_STATS_FILE_FORMAT = 1

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
          f"pixel_covariance must be [3, 3], got {self.pixel_covariance.shape}"
      )

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
    np.savez(
        buffer,
        mean_image=self.mean_image,
        pixel_covariance=self.pixel_covariance,
        num_images=np.int64(self.num_images),
    )
    tmp_path = f"{path}.tmp-{jax.process_index()}"
    with tf.io.gfile.GFile(tmp_path, "wb") as f:
      f.write(buffer.getvalue())
    tf.io.gfile.rename(tmp_path, path, overwrite=True)

  @classmethod
  def load(cls, path: str) -> InputStats:
    with tf.io.gfile.GFile(path, "rb") as f:
      arrays = np.load(io.BytesIO(f.read()))
      return cls(
          mean_image=arrays["mean_image"].astype(np.float32),
          pixel_covariance=arrays["pixel_covariance"],
          num_images=int(arrays["num_images"]),
      )


class MeanImageError(cli.UserError, ValueError):
  """A mean image file (`config.mean_image_file`) that cannot be used."""


def read_mean_image(
    path: str, where: str, error: type[Exception]
) -> np.ndarray:
  """The `mean_image` of the .npz at `path` (any tf.io.gfile path), float32.

  Raises `error` with a message that starts with `where` (the flag or field
  that named the file) when it is not a readable .npz or has no mean_image.
  Its shape is the caller's to check.
  """
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      arrays = np.load(io.BytesIO(f.read()))
    names = arrays.files
    mean = (
        np.asarray(arrays["mean_image"], np.float32)
        if "mean_image" in names
        else None
    )
  except (OSError, ValueError, zipfile.BadZipFile, tf.errors.OpError) as e:
    raise error(f"{where} is not a readable .npz ({e}).") from None
  if mean is None:
    raise error(
        f"{where} holds {names}, no 'mean_image'. Give the file "
        "`python -m alexnet_jax.weights convert --mean_out=...` wrote, "
        "or a data directory's input_stats_*.npz."
    )
  return mean


def load_mean_image(path: str, image_size: int) -> np.ndarray:
  """The `mean_image` [s, s, 3] (RGB, 0-255) of an .npz; s = `image_size`.

  The file `python -m alexnet_jax.weights convert --mean_out=...` writes
  from Caffe's imagenet_mean.binaryproto, or a data directory's cached
  input_stats_*.npz. `image_size` is the side of the prepared (stored)
  images the mean is subtracted from (256 in the paper, §2).

  Raises:
    MeanImageError: no such file, not an .npz, no `mean_image`, or another
      shape; the message names the file and what to do.
  """
  where = f"config.mean_image_file={path!r}"
  if not tf.io.gfile.exists(path):
    raise MeanImageError(
        f"{where}: no such file. Make it from Caffe's mean with `python -m "
        "alexnet_jax.weights convert --caffemodel=... --out=... "
        "--mean=imagenet_mean.binaryproto --mean_out=FILE`, or leave the "
        "field empty to use the mean of the training images."
    )
  mean = read_mean_image(path, where, MeanImageError)
  if mean.shape != (image_size, image_size, 3):
    raise MeanImageError(
        f"{where}: mean_image has shape {mean.shape}; the data set's "
        f"prepared images are {image_size}x{image_size}, so it must be "
        f"({image_size}, {image_size}, 3) (RGB, 0-255 scale)."
    )
  if not np.isfinite(mean).all():
    raise MeanImageError(f"{where}: mean_image holds NaN or infinite values.")
  return mean


def stats_file_name(
    builder: tfds.core.DatasetBuilder,
    split: str,
    max_images: int | None,
    image_size: int,
) -> str:
  """Cache file name: dataset, config, version, split, image size and cap."""
  config = builder.builder_config.name if builder.builder_config else "default"
  cap = "all" if max_images is None else f"first{max_images}"
  return (
      f"input_stats_v{_STATS_FILE_FORMAT}-{builder.name}-{config}-"
      f"{builder.version}-{split}-{image_size}px-{cap}.npz"
  )


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
    return {
        "image": image,
        "pixel_sum": tf.reduce_sum(pixels, axis=0),
        "pixel_outer_sum": tf.matmul(pixels, pixels, transpose_a=True),
    }

  def batch_sums(batch):
    return {
        "image_sum": tf.reduce_sum(tf.cast(batch["image"], tf.int32), axis=0),
        "pixel_sum": tf.reduce_sum(batch["pixel_sum"], axis=0),
        "pixel_outer_sum": tf.reduce_sum(batch["pixel_outer_sum"], axis=0),
        "num_images": tf.shape(batch["image"])[0],
    }

  sums = (
      images.map(
          input_decoding.no_autograph(moments),
          num_parallel_calls=tf.data.AUTOTUNE,
      )
      .batch(batch_size)
      .map(
          input_decoding.no_autograph(batch_sums),
          num_parallel_calls=tf.data.AUTOTUNE,
      )
      .prefetch(2)
  )
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
  return InputStats(
      mean_image=mean_image, pixel_covariance=covariance, num_images=num_images
  )


def compute_or_load_stats(
    builder: tfds.core.DatasetBuilder,
    *,
    max_images: int | None = None,
    split: str = "train",
    image_size: int = input_decoding.IMAGE_SIZE,
    cache_dir: str | None = None,
) -> InputStats:
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
  path = os.path.join(
      cache_dir or builder.data_dir,
      stats_file_name(builder, split, max_images, image_size),
  )
  if tf.io.gfile.exists(path):
    logging.info("Loading input statistics from %s", path)
    return InputStats.load(path)
  logging.info(
      "Computing input statistics over %s[%s] (max_images=%s)",
      builder.name,
      split,
      max_images,
  )
  records = input_splits.records(builder, split, shuffle_files=False)
  if max_images is not None:
    records = records.take(max_images)
  prepared = input_decoding.images_prepared(builder, image_size)
  images = records.map(
      input_decoding.no_autograph(
          lambda r: input_decoding.decode_prepared(
              r["image"], image_size, prepared
          )
      ),
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  stats = compute_stats(images)
  tf.io.gfile.makedirs(os.path.dirname(path))
  stats.save(path)
  logging.info(
      "Saved input statistics (%d images) to %s", stats.num_images, path
  )
  return stats
