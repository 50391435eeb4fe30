"""A generated mini ILSVRC-2010 ("the demo data"), in the official layout.

Writes the six release files listed in README "Data: ILSVRC-2010" -- a
tar of per-class tars, the val and test tars, the devkit tar.gz with a real
meta.mat and the validation ground truth, the test ground truth and
patch_images.tar -- for a small, procedurally drawn recognition problem,
so that the real builder (`alexnet_jax.data.ilsvrc2010`) and everything
downstream run unchanged without the 150 GB release.

The release's quirks are reproduced on purpose: a few JPEGs are
gzip-compressed without a .gz suffix, a few are CMYK or grayscale, and a
few are blank in the main archives with the real image in
patch_images.tar. The class IDs of meta.mat are NOT in sorted WNID order,
and the val/test tars are not in file-name order, so a reader that sorts
WNIDs or trusts tar order gets wrong labels.

Images: one shape per class (circle, square, triangle, star, ...) at a
random position, scale and rotation, in a random color, over a random
background (shapes.py, with its difficulty knobs). Color and position carry
no class information, so nearest class-mean on raw pixels stays near chance
(`trivial_baselines`) while the shapes stay plainly visible to a CNN.

Same arguments (seed included) give byte-identical files.

Usage:
  python -m alexnet_jax.data.mini --out_dir=data/ilsvrc2010_mini/manual \
      [--data_dir=data/tfds] [--baseline]
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import sys
import tarfile
import time
from typing import Any, Sequence

import numpy as np
from PIL import Image
import scipy.io

from alexnet_jax.data import release_metadata
from alexnet_jax.data import release_reader
from alexnet_jax.data import shapes

# The release's file names, shared with the builder (TensorFlow-free).
# pylint: disable=unused-import
from alexnet_jax.data.release import DEVKIT_TAR
from alexnet_jax.data.release import META_MEMBER
from alexnet_jax.data.release import PATCH_TAR
from alexnet_jax.data.release import REQUIRED_FILES
from alexnet_jax.data.release import TEST_GROUND_TRUTH
from alexnet_jax.data.release import TEST_TAR
from alexnet_jax.data.release import TRAIN_TAR
from alexnet_jax.data.release import VAL_GROUND_TRUTH_MEMBER
from alexnet_jax.data.release import VAL_TAR

# pylint: enable=unused-import
# Written last: its presence with matching parameters means "complete".
STAMP_FILE = "MINI_DATASET.json"
# Bump when the output for given parameters changes.
GENERATOR_VERSION = 2

# Fixed archive timestamps (2010-06-01 UTC), for byte-identical output.
_MTIME = 1275350400
_JPEG_QUALITY = 90


# How many images of each split carry each release quirk.
_QUIRKS = ("gzip", "cmyk", "gray", "blank")
_QUIRKS_PER_SPLIT = {"train": 2, "val": 1, "test": 1}


@dataclasses.dataclass(frozen=True)
class MiniParams:
  """What to generate.

  Attributes:
    num_classes: classes (one shape each), at most len(shapes.SHAPES).
    train_per_class: training images per class.
    val_per_class: validation images per class.
    test_per_class: test images per class.
    image_size: typical source side in pixels; each image's width and height
      vary around it (aspect ratios up to 2), so the builder's rescale and
      center crop both enlarge and shrink.
    seed: everything is a function of the seed.
  """

  num_classes: int = 10
  train_per_class: int = 300
  val_per_class: int = 50
  test_per_class: int = 50
  image_size: int = 192
  seed: int = 0

  def validate(self) -> None:
    if not 2 <= self.num_classes <= len(shapes.SHAPES):
      raise ValueError(
          f"num_classes must be in 2..{len(shapes.SHAPES)} (one shape per "
          f"class), got {self.num_classes}."
      )
    if min(self.train_per_class, self.val_per_class, self.test_per_class) < 1:
      raise ValueError("Need at least one image per class in every split.")
    if self.image_size < 32:
      raise ValueError(f"image_size must be >= 32, got {self.image_size}.")


def _image_dims(rng: np.random.Generator, base: int) -> tuple[int, int]:
  """Width and height around `base`, aspect ratio at most 2."""
  w = base * rng.uniform(0.7, 1.7)
  h = base * rng.uniform(0.7, 1.7)
  if max(w, h) > 2 * min(w, h):
    if w > h:
      w = 2 * h
    else:
      h = 2 * w
  return int(round(w)), int(round(h))


def _encode_jpeg(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=_JPEG_QUALITY)
  return buffer.getvalue()


def _encode_with_quirk(image: Image.Image, quirk: str | None) -> bytes:
  """Encodes as the release would store it, quirks included (§3)."""
  if quirk == "cmyk":
    return _encode_jpeg(image.convert("CMYK"))
  if quirk == "gray":
    return _encode_jpeg(image.convert("L"))
  if quirk == "gzip":
    # gzip without a .gz suffix; mtime=0 keeps the bytes reproducible.
    return gzip.compress(_encode_jpeg(image), mtime=0)
  if quirk == "blank":
    # What the release holds for these: a flat image; the real one goes to
    # patch_images.tar.
    return _encode_jpeg(Image.new("RGB", image.size, (128, 128, 128)))
  return _encode_jpeg(image)


# --- Archives. ---
def _tar_info(name: str, size: int) -> tarfile.TarInfo:
  info = tarfile.TarInfo(name)
  info.size = size
  info.mtime = _MTIME
  info.mode = 0o644
  info.uid = info.gid = 0
  info.uname = info.gname = ""
  return info


def _write_tar(fileobj: Any, members: Sequence[tuple[str, bytes]]) -> None:
  with tarfile.open(
      fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT
  ) as tar:
    for name, data in members:
      tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def _tar_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
  buffer = io.BytesIO()
  _write_tar(buffer, members)
  return buffer.getvalue()


def _write_file_atomic(path: str, data: bytes) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _meta_mat_bytes(synsets: list[dict[str, Any]]) -> bytes:
  """meta.mat: a MATLAB struct array `synsets` laid out like the real one."""
  fields = release_metadata.SYNSET_FIELDS
  array = np.empty((len(synsets), 1), dtype=[(f, object) for f in fields])
  for i, s in enumerate(synsets):
    for f in fields:
      value = s[f]
      if f == "children":
        # MATLAB stores numbers as double; an empty list is a 1x0 array.
        value = np.asarray(value, dtype=np.float64).reshape(1, -1)
      elif isinstance(value, int):
        value = float(value)
      array[f][i, 0] = value
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {"synsets": array}, format="5")
  data = bytearray(buffer.getvalue())
  # The 116-byte text header holds the creation time; fix it so the same
  # seed gives the same bytes.
  header = b"MATLAB 5.0 MAT-file, generated by alexnet_jax.data.mini"
  data[:116] = header.ljust(116, b" ")
  return bytes(data)


@dataclasses.dataclass(frozen=True)
class MiniDataset:
  """What `generate` wrote.

  Attributes:
    manual_dir: the directory holding the release files.
    params: the parameters it was generated with.
    wnids: class WNIDs; index = label = ILSVRC2010_ID - 1.
    shapes: class shape names, same order.
    quirks: split ("train"/"val"/"test") -> quirk -> file names.
  """

  manual_dir: str
  params: MiniParams
  wnids: tuple[str, ...]
  shapes: tuple[str, ...]
  quirks: dict[str, dict[str, list[str]]]


def _split_rng(seed: int, *keys: int) -> np.random.Generator:
  # Independent streams per (split, image): one image does not depend on
  # how many were drawn before it.
  return np.random.default_rng([seed, *keys])


def generate(out_dir: str, params: MiniParams = MiniParams()) -> MiniDataset:
  """Writes the mini release into `out_dir` (overwriting it) and returns it."""
  params.validate()
  os.makedirs(out_dir, exist_ok=True)
  stamp = os.path.join(out_dir, STAMP_FILE)
  if os.path.exists(stamp):
    os.remove(stamp)
  n = params.num_classes
  rng = _split_rng(params.seed, 0)
  class_shapes = shapes.SHAPES[:n]
  # Fake WNIDs in a random order: ID order != sorted WNID order, as in the
  # real meta.mat, so a reader that sorts WNIDs fails the tests.
  wnid_numbers = rng.integers(10**7, 10**8, size=n)
  while len(set(wnid_numbers.tolist())) < n:  # Practically never loops.
    wnid_numbers = rng.integers(10**7, 10**8, size=n)
  if n > 1 and np.all(np.diff(wnid_numbers) > 0):
    wnid_numbers = wnid_numbers[::-1]
  wnids = tuple(f"n{int(x):08d}" for x in wnid_numbers)

  # (file name, label) per split, in canonical (file name) order.
  train_items = []
  for label, wnid in enumerate(wnids):
    numbers = np.sort(
        rng.choice(
            np.arange(1, 100 * params.train_per_class + 1),
            size=params.train_per_class,
            replace=False,
        )
    )
    train_items += [(f"{wnid}_{int(k)}.JPEG", label) for k in numbers]
  split_items = {"train": train_items}
  for split, per_class in (
      ("val", params.val_per_class),
      ("test", params.test_per_class),
  ):
    labels = rng.permutation(np.repeat(np.arange(n), per_class))
    split_items[split] = [
        (f"ILSVRC2010_{split}_{i + 1:08d}.JPEG", int(label))
        for i, label in enumerate(labels)
    ]

  quirks: dict[str, dict[str, list[str]]] = {}
  encoded: dict[str, list[tuple[str, int, bytes]]] = {}
  patches: list[tuple[str, bytes]] = []
  for split_code, split in enumerate(("train", "val", "test"), start=1):
    items = split_items[split]
    count = _QUIRKS_PER_SPLIT[split]
    chosen = rng.choice(
        len(items), size=min(len(items), count * len(_QUIRKS)), replace=False
    )
    quirk_of = {}
    quirks[split] = {q: [] for q in _QUIRKS}
    for j, index in enumerate(chosen):
      quirk = _QUIRKS[j % len(_QUIRKS)]
      quirk_of[int(index)] = quirk
      quirks[split][quirk].append(items[index][0])
    encoded[split] = []
    for index, (name, label) in enumerate(items):
      image_rng = _split_rng(params.seed, split_code, index)
      width, height = _image_dims(image_rng, params.image_size)
      image = shapes.render_image(image_rng, class_shapes[label], width, height)
      quirk = quirk_of.get(index)
      encoded[split].append((name, label, _encode_with_quirk(image, quirk)))
      if quirk == "blank":
        patches.append((f"{split}/{name}", _encode_jpeg(image)))

  # Train: a tar of per-class tars, classes in a shuffled order.
  class_tars = []
  for label in rng.permutation(n):
    members = [
        (name, data) for name, lab, data in encoded["train"] if lab == label
    ]
    class_tars.append((f"{wnids[label]}.tar", _tar_bytes(members)))
  _write_file_atomic(os.path.join(out_dir, TRAIN_TAR), _tar_bytes(class_tars))

  # Val/test: flat tars whose member order is NOT file-name order; the
  # labels follow sorted file names (as in the real release).
  for split, archive in (("val", VAL_TAR), ("test", TEST_TAR)):
    items = encoded[split]
    order = rng.permutation(len(items))
    _write_file_atomic(
        os.path.join(out_dir, archive),
        _tar_bytes([(items[i][0], items[i][2]) for i in order]),
    )

  ground_truth = {
      split: "".join(f"{label + 1}\n" for _, label, _ in encoded[split])
      for split in ("val", "test")
  }
  _write_file_atomic(
      os.path.join(out_dir, TEST_GROUND_TRUTH),
      ground_truth["test"].encode("ascii"),
  )
  _write_file_atomic(os.path.join(out_dir, PATCH_TAR), _tar_bytes(patches))

  # Devkit: meta.mat (classes first, IDs 1..N, then internal nodes) and the
  # validation ground truth, in a tar.gz with fixed gzip header fields.
  synsets = _synsets(wnids, class_shapes, params.train_per_class)
  devkit_members = [
      (
          "devkit-1.0/readme.txt",
          b"Mini ILSVRC-2010 devkit generated by alexnet_jax.data.mini.\n",
      ),
      (META_MEMBER, _meta_mat_bytes(synsets)),
      (VAL_GROUND_TRUTH_MEMBER, ground_truth["val"].encode("ascii")),
  ]
  buffer = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
    _write_tar(gz, devkit_members)
  _write_file_atomic(os.path.join(out_dir, DEVKIT_TAR), buffer.getvalue())

  dataset = MiniDataset(
      manual_dir=out_dir,
      params=params,
      wnids=wnids,
      shapes=tuple(class_shapes),
      quirks=quirks,
  )
  _write_file_atomic(stamp, _stamp_json(dataset).encode("utf-8"))
  return dataset


def _synsets(
    wnids: Sequence[str], class_shapes: Sequence[str], train_per_class: int
) -> list[dict[str, Any]]:
  """The meta.mat entries: the classes (leaves), then a small hierarchy."""
  synsets = []
  for i, (wnid, shape) in enumerate(zip(wnids, class_shapes)):
    synsets.append(
        {
            "ILSVRC2010_ID": i + 1,
            "WNID": wnid,
            "words": shape.replace("_", " "),
            "gloss": f"a drawn {shape.replace('_', ' ')} (mini ILSVRC-2010 class)",
            "num_children": 0,
            "children": [],
            "wordnet_height": 0,
            "num_train_images": train_per_class,
        }
    )
  n = len(wnids)
  round_ids = [
      i + 1 for i, s in enumerate(class_shapes) if s in shapes.ROUND_SHAPES
  ]
  polygon_ids = [
      i + 1 for i, s in enumerate(class_shapes) if s not in shapes.ROUND_SHAPES
  ]
  internal = [
      ("round shape", "a shape bounded by curves", round_ids, 1),
      ("polygon", "a shape bounded by straight edges", polygon_ids, 1),
  ]
  internal = [node for node in internal if node[2]]
  internal_ids = list(range(n + 1, n + 1 + len(internal)))
  internal.append(("shape", "any drawn shape", internal_ids, 2))
  for k, (words, gloss, children, height) in enumerate(internal):
    synsets.append(
        {
            "ILSVRC2010_ID": n + 1 + k,
            "WNID": f"n{99000000 + k:08d}",
            "words": words,
            "gloss": gloss,
            "num_children": len(children),
            "children": children,
            "wordnet_height": height,
            "num_train_images": 0,
        }
    )
  # The real meta.mat counts the images under internal nodes too.
  by_id = {s["ILSVRC2010_ID"]: s for s in synsets}
  for s in synsets[n:]:
    s["num_train_images"] = sum(
        by_id[c]["num_train_images"] for c in s["children"]
    )
  return synsets


def _stamp_json(dataset: MiniDataset) -> str:
  return json.dumps(
      {
          "generator_version": GENERATOR_VERSION,
          "params": dataclasses.asdict(dataset.params),
          "wnids": list(dataset.wnids),
          "shapes": list(dataset.shapes),
          "quirks": dataset.quirks,
      },
      indent=1,
      sort_keys=True,
  )


def ensure_generated(
    out_dir: str, params: MiniParams = MiniParams()
) -> MiniDataset:
  """Returns the mini release in `out_dir`, generating it if absent.

  Idempotent: if `out_dir` already holds a complete set generated with the
  same parameters (and generator version), nothing is written.
  """
  stamp = os.path.join(out_dir, STAMP_FILE)
  if os.path.exists(stamp) and all(
      os.path.exists(os.path.join(out_dir, f)) for f in REQUIRED_FILES
  ):
    with open(stamp, "r", encoding="utf-8") as f:
      recorded = json.load(f)
    if recorded.get("generator_version") == GENERATOR_VERSION and recorded.get(
        "params"
    ) == dataclasses.asdict(params):
      return MiniDataset(
          manual_dir=out_dir,
          params=params,
          wnids=tuple(recorded["wnids"]),
          shapes=tuple(recorded["shapes"]),
          quirks=recorded["quirks"],
      )
  return generate(out_dir, params)


def ensure_manual_dir(out_dir: str, params: MiniParams = MiniParams()) -> str:
  """Like `ensure_generated`, returning just the manual directory."""
  return ensure_generated(out_dir, params).manual_dir


# --- The trivial baseline. ---
def nearest_mean_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
) -> float:
  """Accuracy of the nearest class-mean classifier (Euclidean, raw inputs)."""
  train_x = train_x.reshape(len(train_x), -1).astype(np.float64)
  eval_x = eval_x.reshape(len(eval_x), -1).astype(np.float64)
  classes = np.unique(train_y)
  means = np.stack([train_x[train_y == c].mean(0) for c in classes])
  distances = ((eval_x[:, None, :] - means[None]) ** 2).sum(-1)
  predictions = classes[np.argmin(distances, axis=1)]
  return float(np.mean(predictions == eval_y))


def trivial_baselines(manual_dir: str, *, size: int = 16) -> dict[str, float]:
  """Validation accuracy of trivial classifiers, to report beside the CNN.

  Both are nearest class-mean classifiers fitted on the train split and
  scored on the validation split of the release in `manual_dir`, reading it
  with the builder's own code (patches, quirks, rescale + center crop):

    "pixels": raw pixels, downscaled to `size` x `size` x 3;
    "mean_color": the image's mean RGB color only.

  Chance is 1 / num_classes. Reads the release as the builder does
  (release_reader.py), without TensorFlow.
  """
  num_classes = release_metadata.read_num_classes(manual_dir)
  meta = release_metadata.load_release_metadata(manual_dir, num_classes)
  arrays = {}
  for split in ("train", "validation"):
    xs, ys = [], []
    for raw in release_reader.iter_raw_images(manual_dir, split, meta):
      image = release_reader.resize_and_center_crop(
          release_reader.decode_image(raw.data), size
      )
      xs.append(np.asarray(image, dtype=np.float32))
      ys.append(raw.label)
    arrays[split] = (np.stack(xs), np.array(ys))
  (train_x, train_y), (val_x, val_y) = arrays["train"], arrays["validation"]
  return {
      "pixels": nearest_mean_accuracy(train_x, train_y, val_x, val_y),
      "mean_color": nearest_mean_accuracy(
          train_x.mean((1, 2)), train_y, val_x.mean((1, 2)), val_y
      ),
      "chance": 1.0 / num_classes,
  }


# --- Command line. ---
def main(argv: Sequence[str] | None = None) -> int:
  """Generates (and optionally builds and scores) the mini release."""
  import argparse  # pylint: disable=g-import-not-at-top

  defaults = MiniParams()
  parser = argparse.ArgumentParser(
      prog="python -m alexnet_jax.data.mini", description=__doc__.split("\n")[0]
  )
  parser.add_argument(
      "--out_dir",
      required=True,
      help="manual directory to write the release files to",
  )
  parser.add_argument("--num_classes", type=int, default=defaults.num_classes)
  parser.add_argument(
      "--train_per_class", type=int, default=defaults.train_per_class
  )
  parser.add_argument(
      "--val_per_class", type=int, default=defaults.val_per_class
  )
  parser.add_argument(
      "--test_per_class", type=int, default=defaults.test_per_class
  )
  parser.add_argument(
      "--image_size",
      type=int,
      default=defaults.image_size,
      help="typical source image side (pixels)",
  )
  parser.add_argument("--seed", type=int, default=defaults.seed)
  parser.add_argument(
      "--force",
      action="store_true",
      help="regenerate even if the files are up to date",
  )
  parser.add_argument(
      "--data_dir",
      default=None,
      help="if set, also build the TFDS data set here",
  )
  parser.add_argument(
      "--baseline",
      action="store_true",
      help="report the nearest class-mean baselines",
  )
  args = parser.parse_args(argv)
  params = MiniParams(
      num_classes=args.num_classes,
      train_per_class=args.train_per_class,
      val_per_class=args.val_per_class,
      test_per_class=args.test_per_class,
      image_size=args.image_size,
      seed=args.seed,
  )
  start = time.perf_counter()
  if args.force:
    dataset = generate(args.out_dir, params)
  else:
    dataset = ensure_generated(args.out_dir, params)
  print(
      f"mini ILSVRC-2010 release in {dataset.manual_dir} "
      f"({time.perf_counter() - start:.1f} s)"
  )
  if args.data_dir:
    from alexnet_jax import data  # pylint: disable=g-import-not-at-top

    start = time.perf_counter()
    builder = data.get_builder(
        "ilsvrc2010_mini",
        data_dir=args.data_dir,
        num_classes=params.num_classes,
    )
    data.prepare(builder, manual_dir=dataset.manual_dir)
    sizes = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(
        f"built {builder.info.full_name} in {builder.data_dir} {sizes} "
        f"({time.perf_counter() - start:.1f} s)"
    )
  if args.baseline:
    start = time.perf_counter()
    scores = trivial_baselines(dataset.manual_dir)
    print(
        "nearest class-mean validation accuracy: "
        f"raw 16x16 pixels {scores['pixels']:.1%}, "
        f"mean color {scores['mean_color']:.1%}, "
        f"chance {scores['chance']:.1%} "
        f"({time.perf_counter() - start:.1f} s)"
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
