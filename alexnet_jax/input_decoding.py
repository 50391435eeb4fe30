"""From JPEG bytes to the prepared image (paper §2), in TensorFlow.

Our ILSVRC-2010 builder stores JPEGs that are already 256x256 (the paper
rescales the shorter side to 256 and takes the central 256x256 once, when
the data set is prepared). TFDS's own `imagenet2012` and `imagenette` store
images of any size; for those the same rescale + central crop happens on
the fly, before anything else. A builder that declares fixed 256x256x3
JPEG images (ours) skips every check; otherwise each image's JPEG header
decides, so any builder with `image` and `label` features works.

TensorFlow only feeds data: importing this module (every input module
does) hides every GPU and TPU from it, so that it never allocates
accelerator memory that JAX needs.
"""

from __future__ import annotations

from absl import logging
import tensorflow as tf
import tensorflow_datasets as tfds


def no_autograph(fn):
  """`fn`, for tf.data to trace as written: without AutoGraph.

  AutoGraph rewrites a function's Python source before tf.data traces it
  (about 0.1 s per function, every time a pipeline is built: 2.7 s of the
  13 s a smoke run of the training program spends in `train_and_evaluate`).
  The input functions here branch on tensors with `tf.cond` and loop with
  tensor ops, never with Python `if`/`for` on tensors, so there is nothing
  for it to convert.
  """
  return tf.autograph.experimental.do_not_convert(fn)


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow only feeds data; JAX owns the accelerators."""
  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except (RuntimeError, ValueError) as e:
      # RuntimeError: TF already initialized its devices (someone used TF
      # before importing us); ValueError: no such device type in this build.
      logging.warning(
          "Could not hide %s devices from TensorFlow: %s", device_type, e
      )


_hide_accelerators_from_tensorflow()

# Side of the prepared images: shorter side rescaled to 256, central crop
# (paper §2).
IMAGE_SIZE = 256


# ---------------------------------------------------------------------------
# Decoding: from JPEG bytes to (windows of) the prepared 256x256 image.
# ---------------------------------------------------------------------------


def _is_prepared_jpeg(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """True if the image is a JPEG that is already prepared (header only)."""

  def has_prepared_size():
    shape = tf.image.extract_jpeg_shape(image_bytes)
    return tf.logical_and(shape[0] == image_size, shape[1] == image_size)

  return tf.cond(
      tf.io.is_jpeg(image_bytes), has_prepared_size, lambda: tf.constant(False)
  )


def _rescale_and_center_crop(
    image_bytes: tf.Tensor, image_size: int
) -> tf.Tensor:
  """Decodes any image, rescales the shorter side, takes the central square.

  The paper's data preparation (§2), for builders that store original-size
  images (TFDS's `imagenet2012`, `imagenette`).
  """
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = image_size / tf.reduce_min(shape)
  new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), image_size)
  image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
  top = (new_shape[0] - image_size) // 2
  left = (new_shape[1] - image_size) // 2
  image = image[top : top + image_size, left : left + image_size]
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return tf.ensure_shape(image, (image_size, image_size, 3))


def decode_prepared(
    image_bytes: tf.Tensor, image_size: int, prepared: bool | None
) -> tf.Tensor:
  """uint8 [s, s, 3]: the whole prepared image.

  Args:
    image_bytes: the encoded image.
    image_size: side s of the prepared image.
    prepared: True if every image is known to be an s x s JPEG (no check);
      None to check each image's header.
  """

  def decode():
    return tf.ensure_shape(
        tf.io.decode_jpeg(image_bytes, channels=3), (image_size, image_size, 3)
    )

  if prepared:
    return decode()
  return tf.cond(
      _is_prepared_jpeg(image_bytes, image_size),
      decode,
      lambda: _rescale_and_center_crop(image_bytes, image_size),
  )


def decode_window(
    image_bytes: tf.Tensor,
    top: tf.Tensor,
    left: tf.Tensor,
    size: int,
    image_size: int,
    prepared: bool | None,
) -> tf.Tensor:
  """uint8 [size, size, 3]: one window of the prepared image.

  For prepared JPEGs only the window is decoded (`decode_and_crop_jpeg`
  skips the blocks outside it). `prepared` as in `decode_prepared`.
  """

  def decode_window():
    window = tf.stack([top, left, size, size])
    return tf.ensure_shape(
        tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3),
        (size, size, 3),
    )

  def slice_window():
    image = _rescale_and_center_crop(image_bytes, image_size)
    return image[top : top + size, left : left + size]

  if prepared:
    return decode_window()
  return tf.cond(
      _is_prepared_jpeg(image_bytes, image_size), decode_window, slice_window
  )


def images_prepared(
    builder: tfds.core.DatasetBuilder, image_size: int
) -> bool | None:
  """True if the builder declares all its images s x s JPEGs, else None.

  Our ILSVRC-2010 builder declares `Image(shape=(256, 256, 3),
  encoding_format="jpeg")`, so the per-image header check is skipped; TFDS's
  `imagenet2012` and `imagenette` declare no size (None: check each image).
  """
  feature = builder.info.features["image"]
  if getattr(feature, "encoding_format", None) == "jpeg" and tuple(
      feature.shape
  ) == (image_size, image_size, 3):
    return True
  return None


def check_crop_size(crop_size: int, image_size: int) -> None:
  if not 0 < crop_size <= image_size:
    raise ValueError(
        f"crop_size must be in [1, {image_size}] (the prepared "
        f"image size), got {crop_size}"
    )
