r"""The paper's Figure 4 (§6.1): nearest neighbours in the last hidden layer.

  python -m alexnet_jax.neighbors --workdir=workdirs/demo \
      [--split=test] [--num_queries=500] [--show=8] [--max_train_images=0]

§6.1: test images and the six training images whose last hidden layer (the
4096-d fc7 after ReLU, `model.make_features`) is closest by Euclidean
distance. The workdir's latest checkpoint and config are loaded (as in
`alexnet_jax.evaluate`), the center crops of the query split and of the
training split are passed through the network, and each query's six nearest
training images are found twice: by the features and, for comparison, by
the raw pixels of the same crops. Reported: the fraction of those
neighbours that share the query's label, for both.

Writes `neighbors.png` (one row per shown query: the query, its six feature
neighbours, then its six pixel neighbours; a green frame marks a neighbour
with the query's label, a red one another label) and `neighbors.json` into
the workdir and prints their paths. Single-process.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from typing import Any

from absl import app
from absl import flags
import jax
import numpy as np

from alexnet_jax import cli
from alexnet_jax import eval_lib
from alexnet_jax import model as model_lib
from alexnet_jax import parallel

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags; defined only when it runs as a program.

  absl flags are global: defined at import, they would collide with
  another program's (e.g. --workdir) in a process that imports both
  (the tests).
  """
  flags.DEFINE_string("workdir", None, "A training workdir.")
  flags.DEFINE_string("split", "test", "Split of the query images.")
  flags.DEFINE_integer(
      "num_queries", 0, "Query images (the first N of the split; 0 = all)."
  )
  flags.DEFINE_integer("show", 8, "Queries drawn in the picture.")
  flags.DEFINE_integer("neighbors", 6, "Neighbours per query.")
  flags.DEFINE_integer(
      "max_train_images", 0, "Search the first N training images (0 = all)."
  )
  flags.DEFINE_integer("mesh_model", 1, "Model axis of the mesh (any).")
  flags.DEFINE_string(
      "output_dir", None, "Where the PNG and JSON go (default: --workdir)."
  )
  flags.mark_flags_as_required(["workdir"])


def nearest(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
  """Indices [Q, k] of each query's k nearest rows of `base` (Euclidean).

  Ties go to the lower index (a stable sort), so the result is
  deterministic.
  """
  queries = queries.reshape(len(queries), -1).astype(np.float64)
  base = base.reshape(len(base), -1).astype(np.float64)
  d2 = (
      np.square(queries).sum(1)[:, None]
      - 2 * queries @ base.T
      + np.square(base).sum(1)[None, :]
  )
  return np.argsort(d2, axis=1, kind="stable")[:, :k]


def label_agreement(
    query_labels: np.ndarray, base_labels: np.ndarray, index: np.ndarray
) -> float:
  """Fraction of the neighbours `index` [Q, k] with their query's label."""
  return float(np.mean(base_labels[index] == query_labels[:, None]))


def compute_features(
    config, params, mesh, host_batches, limit: int = 0
) -> dict[str, np.ndarray]:
  """Features, crops and labels of the (unpadded) examples of a split.

  Args:
    config: the workdir's config.
    params: the model parameters placed for `mesh`.
    mesh: the device mesh.
    host_batches: host batches {"image", "label", "mask"} (center crops).
    limit: stop after this many examples (0 = all).
  """
  from alexnet_jax import run_data  # pylint: disable=g-import-not-at-top

  features_fn = jax.jit(
      model_lib.make_features(config.model, mesh),
      compiler_options=parallel.compiler_options(mesh),
  )
  feats, images, labels = [], [], []
  count = 0
  for batch in host_batches:
    batch = {k: batch[k] for k in ("image", "label", "mask")}
    keep = np.asarray(batch["mask"]) > 0
    f = features_fn(params, run_data.to_global_array(batch, mesh)["image"])
    feats.append(np.asarray(jax.device_get(f))[keep])
    images.append(np.asarray(batch["image"])[keep])
    labels.append(np.asarray(batch["label"])[keep])
    count += int(keep.sum())
    if limit and count >= limit:
      break
  out = dict(
      features=np.concatenate(feats),
      images=np.concatenate(images),
      labels=np.concatenate(labels),
  )
  if limit:
    out = {k: v[:limit] for k, v in out.items()}
  return out


def draw(
    queries: dict[str, np.ndarray],
    base: dict[str, np.ndarray],
    feature_index: np.ndarray,
    pixel_index: np.ndarray,
    mean_crop: np.ndarray,
    show: int,
    scale: int = 1,
) -> np.ndarray:
  """The grid: per row a query, its feature neighbours, its pixel neighbours.

  Images are the mean-subtracted crops plus `mean_crop` (0-255 scale).
  Neighbours are framed green when their label is the query's, else red.

  Returns:
    uint8 [H, W, 3]: `show` rows of 1 + 2k cells of (crop + 4) pixels
    (times `scale`), under a header line.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top

  from alexnet_jax import figures  # pylint: disable=g-import-not-at-top

  crop = queries["images"].shape[1] * scale
  k = feature_index.shape[1]
  cell, gap, header = crop + 4, 12, 20
  show = min(show, len(queries["labels"]))
  width = cell * (1 + 2 * k) + 2 * gap
  image = Image.new("RGB", (width, header + show * cell), "white")
  pen = ImageDraw.Draw(image)
  small = figures.font(12)
  pen.text((2, header // 2), "query", "black", small, anchor="lm")
  pen.text(
      (cell + gap + 2, header // 2),
      f"{k} nearest by the fc7 features",
      "black",
      small,
      anchor="lm",
  )
  pen.text(
      (cell * (1 + k) + 2 * gap + 2, header // 2),
      f"{k} nearest by raw pixels",
      "black",
      small,
      anchor="lm",
  )

  def paste(x_img, left, top, frame=None):
    pixels = np.clip(np.round(x_img + mean_crop), 0, 255).astype(np.uint8)
    if scale > 1:
      pixels = np.kron(pixels, np.ones((scale, scale, 1), np.uint8))
    if frame is not None:
      pen.rectangle([left, top, left + crop + 3, top + crop + 3], fill=frame)
    image.paste(Image.fromarray(pixels), (left + 2, top + 2))

  for row in range(show):
    top = header + row * cell
    paste(queries["images"][row], 0, top)
    label = queries["labels"][row]
    for block, index in enumerate((feature_index, pixel_index)):
      for j, n in enumerate(index[row]):
        left = cell * (1 + block * k + j) + gap * (1 + block)
        same = base["labels"][n] == label
        paste(
            base["images"][n], left, top, (0, 160, 0) if same else (200, 0, 0)
        )
  return np.asarray(image)


def find_neighbors(
    queries: dict[str, np.ndarray], base: dict[str, np.ndarray], k: int
) -> dict[str, Any]:
  """Each query's k nearest training examples by features and by pixels."""
  feature_index = nearest(queries["features"], base["features"], k)
  pixel_index = nearest(queries["images"], base["images"], k)
  return dict(
      feature_index=feature_index,
      pixel_index=pixel_index,
      feature_same_label=label_agreement(
          queries["labels"], base["labels"], feature_index
      ),
      pixel_same_label=label_agreement(
          queries["labels"], base["labels"], pixel_index
      ),
  )


def main(argv: Sequence[str]) -> None:
  # Imported here like evaluate.py: the data need TensorFlow.
  from PIL import Image  # pylint: disable=g-import-not-at-top

  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline
  from alexnet_jax import run_data
  from alexnet_jax.data import release
  # pylint: enable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  start = time.time()
  workdir = FLAGS.workdir
  config = eval_lib.load_workdir_config(workdir)
  cli.setup_devices(config)
  if jax.process_count() > 1:
    raise cli.UserError("neighbors runs in one process.")
  mesh = parallel.make_mesh(
      -1, FLAGS.mesh_model, num_towers=config.model.num_towers
  )
  try:
    params, step = eval_lib.restore_params(workdir, config, mesh)
    data = run_data.Data(config, mesh)
  except release.Ilsvrc2010Error as e:  # Preparing the data.
    raise cli.UserError(str(e)) from None

  def batches(split):
    ds = input_pipeline.make_eval_dataset(
        data.builder,
        split,
        global_batch_size=config.eval_batch_size,
        crop_size=config.model.image_size,
        crops="center",
        stats=data.stats,
    )
    return ds.as_numpy_iterator()

  queries = compute_features(
      config, params, mesh, batches(FLAGS.split), FLAGS.num_queries
  )
  base = compute_features(
      config, params, mesh, batches(config.train_split), FLAGS.max_train_images
  )
  found = find_neighbors(queries, base, FLAGS.neighbors)
  size = data.stats.image_size
  top = input_pipeline.eval_patch_offsets(config.model.image_size, size)[4]
  crop = config.model.image_size
  mean_crop = data.stats.mean_image[
      top[0] : top[0] + crop, top[1] : top[1] + crop
  ]
  scale = max(1, 96 // crop)
  grid = draw(
      queries,
      base,
      found["feature_index"],
      found["pixel_index"],
      mean_crop,
      FLAGS.show,
      scale,
  )
  out_dir = FLAGS.output_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  png = os.path.join(out_dir, "neighbors.png")
  path = os.path.join(out_dir, "neighbors.json")
  Image.fromarray(grid).save(png)
  show = min(FLAGS.show, len(queries["labels"]))
  result = dict(
      workdir=workdir,
      step=step,
      split=FLAGS.split,
      queries=len(queries["labels"]),
      train_images=len(base["labels"]),
      neighbors=FLAGS.neighbors,
      feature_dim=int(queries["features"].shape[1]),
      feature_same_label=found["feature_same_label"],
      pixel_same_label=found["pixel_same_label"],
      shown=dict(
          query_labels=queries["labels"][:show].tolist(),
          feature_neighbor_labels=base["labels"][
              found["feature_index"][:show]
          ].tolist(),
          pixel_neighbor_labels=base["labels"][
              found["pixel_index"][:show]
          ].tolist(),
      ),
      seconds=time.time() - start,
  )
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  print(
      f"{result['queries']} {FLAGS.split} queries, "
      f"{result['train_images']} training images, "
      f"{result['feature_dim']}-d features: neighbours with the query's "
      f"label: {100 * result['feature_same_label']:.1f}% (fc7 features) "
      f"vs {100 * result['pixel_same_label']:.1f}% (raw pixels)"
  )
  print(f"wrote {png}\nwrote {path}")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
