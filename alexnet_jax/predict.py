r"""Classifies photos: `python -m alexnet_jax.predict`.

  python -m alexnet_jax.predict --npz=bvlc_alexnet.npz --input_channels=bgr \
      --config=configs/ilsvrc2012.py:caffe_reference --mean=imagenet_mean.npz \
      [--crops=center|ten] [--top=5] [--labels=synset_words.txt] [--json] \
      photo.jpg [photo2.png ...]

Each photo goes through the paper's test-time preprocessing, with the
evaluation pipeline's own code (input_pipeline.eval_dataset_from_records):
shorter side rescaled to 256 and the central 256x256 kept (§2; the side
is the mean image's, 256 in the paper), minus the mean image, then the
center crop or the 10 patches (§4.1) of `model.image_size`, whose softmax outputs are averaged. It prints the top
classes with their probabilities, by name where the class list has names:
`--labels` (one class per line, e.g. Caffe's synset_words.txt: "n01440764
tench, Tinca tinca"), else the data set's own list (ILSVRC-2010: meta.mat's
words from the manual directory; ILSVRC-2012 and Imagenette: TFDS's WNIDs),
else class numbers. `--json` prints one JSON object instead.

`--mean` is an .npz holding `mean_image` [256, 256, 3] (RGB, 0-255): the
file `python -m alexnet_jax.weights convert --mean=...` writes from Caffe's
imagenet_mean.binaryproto, or the input statistics the training program
cached in the data directory (input_stats_*.npz) for weights trained here
(configs/demo.py prepares 72x72 images: its mean is [72, 72, 3]).
Any mesh of this machine's devices works (`--mesh_data`, `--mesh_model`),
one CPU device included; the result does not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
import json
import math
import os
from typing import Any
import zipfile

from absl import flags
import jax
from jax.sharding import Mesh
import ml_collections
import numpy as np
from ml_collections import config_flags

from alexnet_jax import cli
from alexnet_jax import config_validation
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import steps
from alexnet_jax import weights

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags (defined when run, not when imported)."""
  flags.DEFINE_string("npz", None, "Weights in the Caffe layout (.npz).")
  config_flags.DEFINE_config_file(
      "config",
      None,
      "Config of the --npz model (and its data set's classes).",
      lock_config=True,
  )
  flags.DEFINE_enum(
      "input_channels",
      "rgb",
      ["rgb", "bgr"],
      "Channel order the --npz conv1 expects.",
  )
  flags.DEFINE_string(
      "mean",
      None,
      ".npz with mean_image [256, 256, 3] (the prepared "
      "image side; 256 in the paper), RGB, 0-255.",
  )
  flags.DEFINE_enum(
      "crops",
      "center",
      ["center", "ten"],
      "center crop, or the paper's 10 patches.",
  )
  flags.DEFINE_integer("top", 5, "How many classes to print.")
  flags.DEFINE_string(
      "labels", None, "Class names, one per line in label order."
  )
  flags.DEFINE_boolean("json", False, "Print JSON.")
  flags.DEFINE_integer("mesh_data", -1, "Data axis of the mesh.")
  flags.DEFINE_integer("mesh_model", 1, "Model axis of the mesh.")


class PredictError(cli.UserError):
  """A photo, mean or class list that cannot be used; names it."""


def load_mean(path: str, crop_size: int) -> np.ndarray:
  """The `mean_image` [s, s, 3] of an .npz (module docstring).

  s is the side of the prepared image (256 in the paper, §2), at least the
  crop size.
  """
  # Imported here: reading it needs TensorFlow (tf.io.gfile).
  from alexnet_jax import input_stats  # pylint: disable=g-import-not-at-top

  mean = input_stats.read_mean_image(path, f"--mean={path}", PredictError)
  if (
      mean.ndim != 3
      or mean.shape[0] != mean.shape[1]
      or mean.shape[2] != 3
      or mean.shape[0] < crop_size
  ):
    raise PredictError(
        f"--mean={path}: mean_image has shape {mean.shape}; it must be "
        f"[s, s, 3], s at least the crop size {crop_size} (256 in the "
        "paper)."
    )
  return mean


def read_labels(path: str, num_classes: int) -> list[str]:
  """Class names from a text file, one per line in label order."""
  try:
    with open(path, encoding="utf-8") as f:
      names = [line.strip() for line in f if line.strip()]
  except (OSError, UnicodeDecodeError) as e:
    raise PredictError(f"--labels={path}: {e}.") from None
  if len(names) != num_classes:
    raise PredictError(
        f"--labels={path} names {len(names)} classes; the model has "
        f"{num_classes}."
    )
  return names


def dataset_class_names(config: ml_collections.ConfigDict) -> list[str] | None:
  """The data set's class names in label order, or None if not at hand.

  ILSVRC-2010 (and the generated mini set): meta.mat's `words`, read from
  the devkit in the manual directory. TFDS's ImageNets: their label names
  (WNIDs, sorted, for imagenet2012).
  """
  # pylint: disable=g-import-not-at-top
  from alexnet_jax import data as data_lib
  from alexnet_jax.data import archives
  from alexnet_jax.data import release
  from alexnet_jax.data import release_metadata
  # pylint: enable=g-import-not-at-top

  num_classes = config.model.num_classes
  if config.dataset.startswith("ilsvrc2010"):
    manual_dir = config.get("manual_dir") or os.path.join(
        config.data_dir, "downloads", "manual"
    )
    devkit = os.path.join(manual_dir, release.DEVKIT_TAR)
    if not os.path.isfile(devkit):
      return None
    meta = archives.read_members(devkit, [release.META_MEMBER])
    synsets = release_metadata.class_synsets(
        release_metadata.parse_meta_mat(meta[release.META_MEMBER], devkit),
        num_classes,
        devkit,
    )
    return [f"{s.wnid} {s.words}" for s in synsets]
  builder = data_lib.get_builder(config.dataset, data_dir=config.data_dir)
  names = list(builder.info.features["label"].names)
  return names if len(names) == num_classes else None


def predict_images(
    config: ml_collections.ConfigDict,
    params: Any,
    mesh: Mesh,
    images: Sequence[bytes],
    mean_image: np.ndarray,
    crops: str = "center",
    per_shard: int = 8,
) -> np.ndarray:
  """Class probabilities [N, num_classes] of encoded images (any format).

  The preprocessing is the evaluation pipeline's: shorter side s, central
  s x s, minus `mean_image` [s, s, 3] (s = 256 in the paper), then the
  center crop or the 10 patches of
  `config.model.image_size`, softmax averaged over the crops.

  Args:
    config: a full config (its `model` is used).
    params: the model's parameters, placed for `mesh`.
    mesh: the device mesh (one process).
    images: the encoded images (JPEG, PNG, GIF, BMP).
    mean_image: [s, s, 3] RGB, 0-255.
    crops: "center" or "ten".
    per_shard: examples per data shard and batch.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from alexnet_jax import input_pipeline
  from alexnet_jax import input_stats
  from alexnet_jax import run_data
  # pylint: enable=g-import-not-at-top

  batch_size = mesh.shape[parallel.DATA] * min(
      per_shard, math.ceil(len(images) / mesh.shape[parallel.DATA])
  )
  records = tf.data.Dataset.from_tensor_slices(
      {
          "image": tf.constant(list(images), tf.string),
          "label": tf.zeros(len(images), tf.int64),
      }
  )
  # Only the mean image is read for evaluation batches; the covariance
  # (PCA lighting, training only) is not known for a given mean file.
  stats = input_stats.InputStats(
      mean_image=mean_image,
      pixel_covariance=np.full((3, 3), np.nan),
      num_images=0,
  )
  ds = input_pipeline.eval_dataset_from_records(
      records,
      num_records=len(images),
      num_batches=math.ceil(len(images) / batch_size),
      batch_size=batch_size,
      crop_size=config.model.image_size,
      crops=crops,
      stats=stats,
      images_prepared=None,
  )
  predict = steps.make_predict(config.model, mesh)
  probs = []
  for batch in run_data.global_batches(ds, mesh):
    log_probs = np.asarray(jax.device_get(predict(params, batch["image"])))
    mask = np.asarray(jax.device_get(batch["mask"])) > 0
    probs.append(np.exp(log_probs[mask]))
  return np.concatenate(probs)


def top_classes(
    probs: np.ndarray, k: int, names: Sequence[str] | None
) -> list[dict[str, Any]]:
  """The k most probable classes of one example, most probable first."""
  order = np.argsort(-probs, kind="stable")[:k]
  return [
      dict(
          rank=r + 1,
          label=int(i),
          probability=float(probs[i]),
          name=names[i] if names else f"class {i}",
      )
      for r, i in enumerate(order)
  ]


def read_images(paths: Sequence[str]) -> list[bytes]:
  """The files' bytes; a file TensorFlow cannot decode is named."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  images = []
  for path in paths:
    try:
      with open(path, "rb") as f:
        data = f.read()
      tf.io.decode_image(data, channels=3, expand_animations=False)
    except OSError as e:
      raise PredictError(f"{path}: {e.strerror}.") from None
    except (tf.errors.InvalidArgumentError, ValueError) as e:
      raise PredictError(
          f"{path} is not an image TensorFlow can decode (JPEG, PNG, GIF, "
          f"BMP): {getattr(e, 'message', e)}"
      ) from None
    images.append(data)
  return images


def main(argv: Sequence[str]) -> None:
  paths = list(argv[1:])
  if not paths:
    raise cli.UserError("give one or more photos to classify.")
  npz = FLAGS.npz
  if not npz or not FLAGS.mean:
    raise cli.UserError(
        "give --npz (the weights) and --mean (the mean image, see --help)."
    )
  config = cli.config_value(FLAGS["config"])
  if config is None:
    raise cli.UserError("--npz needs --config (the model it fits).")
  config_validation.validate_model(config)
  if FLAGS.top < 1:
    raise cli.UserError(f"--top={FLAGS.top} must be at least 1.")
  if not os.path.isfile(npz):
    raise cli.UserError(f"--npz={npz}: no such file.")
  mean = load_mean(FLAGS.mean, config.model.image_size)
  images = read_images(paths)
  if FLAGS.labels:
    names = read_labels(FLAGS.labels, config.model.num_classes)
  else:
    names = dataset_class_names(config)
  cli.setup_devices(config)
  mesh = parallel.make_mesh(
      FLAGS.mesh_data, FLAGS.mesh_model, num_towers=config.model.num_towers
  )
  shapes = model_lib.param_shapes(config.model)
  try:
    host = weights.import_npz(npz, shapes, FLAGS.input_channels)
  except weights.WeightsError as e:
    raise cli.UserError(f"--npz={npz}: {e}") from None
  except (OSError, ValueError, zipfile.BadZipFile) as e:
    raise cli.UserError(
        f"--npz={npz} is not a readable .npz file ({e})."
    ) from None
  params = jax.device_put(
      host, parallel.named_shardings(mesh, parallel.param_specs(shapes))
  )
  probs = predict_images(config, params, mesh, images, mean, FLAGS.crops)
  results = [
      dict(file=path, crops=FLAGS.crops, top=top_classes(p, FLAGS.top, names))
      for path, p in zip(paths, probs)
  ]
  if FLAGS.json:
    print(json.dumps(dict(npz=npz, results=results), indent=2))
    return
  for r in results:
    print(f"{r['file']} ({'10 crops' if r['crops'] == 'ten' else '1 crop'})")
    for t in r["top"]:
      print(f"  {t['rank']}. {100 * t['probability']:6.2f}%  {t['name']}")


if __name__ == "__main__":
  _define_flags()
  cli.run(main, user_errors=(parallel.MeshError,))
