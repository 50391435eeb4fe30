"""TFDS builder for ILSVRC-2010, the data set of the paper (PAPER.md §3).

TFDS ships no ILSVRC-2010 builder, so this module provides `Ilsvrc2010`. It
reads the official release files from a manual directory and stores every
image already rescaled so its shorter side is `image_size` (256 in the
paper) and center-cropped to `image_size` x `image_size` -- the paper does
this once, when the data set is prepared (§2; PAPER.md §3).

Manual directory (PAPER.md §3 lists the files):

  ILSVRC2010_images_train.tar     tar of per-class tars `<WNID>.tar`
  ILSVRC2010_images_val.tar       JPEGs; labels by sorted file name order
  ILSVRC2010_images_test.tar      JPEGs; labels by sorted file name order
  ILSVRC2010_devkit-1.0.tar.gz    devkit-1.0/data/meta.mat and, in the
                                  same folder,
                                  ILSVRC2010_validation_ground_truth.txt
  ILSVRC2010_test_ground_truth.txt
  patch_images.tar                replacements for blank images, under
                                  train/, val/, test/

Labels are `ILSVRC2010_ID - 1`, i.e. the order of the class entries of
meta.mat (which is NOT sorted WNID order, unlike TFDS's imagenet2012).

The archives are streamed (the train tar is ~130 GB): nothing is extracted
to disk and no archive is read into memory whole. Only the small files (the
devkit, the ground-truth lists, patch_images.tar) are held in memory.

The generic reading code (`iter_examples`) does not depend on TFDS, so the
same path that builds the data set can be reused, e.g. for a baseline.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gzip
import io
import os
import tarfile
import zlib
from typing import Any, Callable, Iterable, Iterator, Sequence

from absl import logging
import numpy as np
from PIL import Image
import scipy.io
import tensorflow as tf
import tensorflow_datasets as tfds

# TensorFlow only feeds data; the accelerators belong to JAX (STYLE.md).
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # Already initialized, or no GPU support.
  pass

# --- The release files (PAPER.md §3), in release.py. ---
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

# Split name -> (image archive, top-level directory in patch_images.tar).
SPLIT_ARCHIVES = {
    "train": (TRAIN_TAR, "train"),
    "validation": (VAL_TAR, "val"),
    "test": (TEST_TAR, "test"),
}

DOWNLOAD_HELP = (
    "The ILSVRC-2010 files are distributed by ImageNet: register (free for "
    "non-commercial research) at https://image-net.org/download-images , "
    "then download them from the ILSVRC-2010 download page linked from "
    "https://image-net.org/challenges/LSVRC/2010/ . Put the files, "
    "unextracted, in the manual directory."
)

PAPER_NUM_CLASSES = 1000
PAPER_IMAGE_SIZE = 256  # §2: shorter side 256, then the central 256x256.
# Quality of the re-encoded, cropped images. High enough that the stored
# copy adds little beyond the original JPEG artifacts.
JPEG_QUALITY = 90
# JPEGs in the release that are gzip-compressed without a .gz suffix
# (PAPER.md §3) start with the gzip magic bytes.
_GZIP_MAGIC = b"\x1f\x8b"


# --- Errors. ---
class Ilsvrc2010Error(Exception):
  """Base class of this module's errors."""


class MissingManualFilesError(Ilsvrc2010Error, FileNotFoundError):
  """Release files are missing from the manual directory."""

  def __init__(
      self,
      manual_dir: os.PathLike | str,
      missing: Sequence[str],
      *,
      dataset: str = "ILSVRC-2010",
      download_help: str = DOWNLOAD_HELP,
  ):
    self.manual_dir = os.fspath(manual_dir)
    self.missing = tuple(missing)
    where = self.manual_dir
    if not os.path.isdir(self.manual_dir):
      where += " (this directory does not exist)"
    lines = [
        f"{dataset}: {len(self.missing)} release file(s) missing from the "
        f"manual directory {where}:",
        *(f"  - {f}  (looked for {os.path.join(self.manual_dir, f)})"
          for f in self.missing),
        download_help,
    ]
    super().__init__("\n".join(lines))


class CorruptImageError(Ilsvrc2010Error):
  """An image in an archive cannot be decoded."""

  def __init__(self, archive: str, member: str, cause: BaseException):
    self.archive = archive
    self.member = member
    super().__init__(
        f"Corrupt or truncated image {member!r} in {archive}: "
        f"{type(cause).__name__}: {cause}. Rebuild with "
        "skip_corrupt_images=True to leave it out (it is then logged), or "
        "replace the archive."
    )


class ReleaseFormatError(Ilsvrc2010Error, ValueError):
  """The release files do not have the expected content or layout."""


# --- Manual directory. ---
def missing_manual_files(manual_dir: os.PathLike | str) -> list[str]:
  """Returns the release files that are not in `manual_dir`, in order."""
  return [
      f for f in REQUIRED_FILES
      if not os.path.isfile(os.path.join(manual_dir, f))
  ]


def check_manual_dir(manual_dir: os.PathLike | str) -> None:
  """Raises `MissingManualFilesError` naming every missing release file."""
  missing = missing_manual_files(manual_dir)
  if missing:
    raise MissingManualFilesError(manual_dir, missing)


# --- Metadata. ---
@dataclasses.dataclass(frozen=True)
class Synset:
  """One entry of the `synsets` struct array of the devkit's meta.mat."""

  ilsvrc2010_id: int
  wnid: str
  words: str
  gloss: str
  num_children: int
  children: tuple[int, ...]
  wordnet_height: int
  num_train_images: int


def _mat_str(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return "" if value.size == 0 else str(value.reshape(-1)[0])
  return str(value)


def _mat_int(value: Any) -> int:
  return int(np.asarray(value).reshape(-1)[0])


def parse_meta_mat(data: bytes) -> list[Synset]:
  """Parses meta.mat (a MATLAB struct array `synsets`) into `Synset`s."""
  mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=False)
  if "synsets" not in mat:
    raise ReleaseFormatError("meta.mat has no variable 'synsets'.")
  synsets = mat["synsets"].reshape(-1)
  out = []
  for s in synsets:
    children = np.asarray(s["children"]).reshape(-1)
    out.append(
        Synset(
            ilsvrc2010_id=_mat_int(s["ILSVRC2010_ID"]),
            wnid=_mat_str(s["WNID"]),
            words=_mat_str(s["words"]),
            gloss=_mat_str(s["gloss"]),
            num_children=_mat_int(s["num_children"]),
            children=tuple(int(c) for c in children),
            wordnet_height=_mat_int(s["wordnet_height"]),
            num_train_images=_mat_int(s["num_train_images"]),
        )
    )
  return out


def class_synsets(
    synsets: Sequence[Synset], num_classes: int, source: str = "meta.mat"
) -> list[Synset]:
  """Returns the class synsets; entry i has label i (= ILSVRC2010_ID - 1).

  The classes are the leaves of the hierarchy (num_children == 0); the
  release puts them first, with IDs 1..N. Everything is checked, because a
  mismatch would silently mislabel the whole data set.

  Args:
    synsets: all entries of meta.mat, in file order.
    num_classes: the class count the builder config expects.
    source: where the synsets came from, for error messages.

  Raises:
    ReleaseFormatError: the class count differs from `num_classes`, or the
      class entries are not the first entries with IDs 1..N.
  """
  leaves = [s for s in synsets if s.num_children == 0]
  if len(leaves) != num_classes:
    raise ReleaseFormatError(
        f"{source} describes {len(leaves)} classes (synsets with "
        f"num_children == 0) but the builder config expects {num_classes}. "
        "Use the config whose class count matches these files (e.g. "
        f"get_builder('ilsvrc2010_mini', num_classes={len(leaves)}) for a "
        "generated mini set)."
    )
  ids = [s.ilsvrc2010_id for s in synsets[:num_classes]]
  if ids != list(range(1, num_classes + 1)) or any(
      s.num_children for s in synsets[:num_classes]
  ):
    raise ReleaseFormatError(
        f"{source}: expected the first {num_classes} synsets to be the "
        f"classes with ILSVRC2010_ID 1..{num_classes}; got IDs "
        f"{ids[:5]}...{ids[-3:]}."
    )
  wnids = [s.wnid for s in synsets[:num_classes]]
  if len(set(wnids)) != num_classes:
    raise ReleaseFormatError(f"{source}: class WNIDs are not unique.")
  return list(synsets[:num_classes])


def parse_ground_truth(text: str, num_classes: int, source: str) -> list[int]:
  """Parses a ground-truth file (one 1-based ID a line) to 0-based labels."""
  labels = []
  for lineno, line in enumerate(text.splitlines(), start=1):
    line = line.strip()
    if not line:
      continue
    try:
      class_id = int(line)
    except ValueError:
      raise ReleaseFormatError(
          f"{source}:{lineno}: expected an integer class ID, got {line!r}."
      ) from None
    if not 1 <= class_id <= num_classes:
      raise ReleaseFormatError(
          f"{source}:{lineno}: class ID {class_id} outside 1..{num_classes}."
      )
    labels.append(class_id - 1)
  return labels


@dataclasses.dataclass(frozen=True)
class ReleaseMetadata:
  """The small files of the release, loaded and checked."""

  classes: tuple[Synset, ...]  # index = label
  validation_labels: tuple[int, ...]  # by sorted file name
  test_labels: tuple[int, ...]  # by sorted file name
  # patch directory ("train"/"val"/"test") -> file name -> JPEG bytes.
  patches: dict[str, dict[str, bytes]]

  def labels_for(self, split: str) -> tuple[int, ...]:
    return {"validation": self.validation_labels, "test": self.test_labels}[
        split
    ]


def _read_members(path: str, names: Iterable[str]) -> dict[str, bytes]:
  """Reads the named members of a (possibly compressed) tar, streaming it."""
  wanted = set(names)
  found = {}
  with tarfile.open(path, mode="r|*") as tar:
    for member in tar:
      if member.name in wanted and member.isfile():
        found[member.name] = tar.extractfile(member).read()
  missing = sorted(wanted - set(found))
  if missing:
    raise ReleaseFormatError(f"{path} lacks {', '.join(missing)}.")
  return found


def read_patches(path: str) -> dict[str, dict[str, bytes]]:
  """Reads patch_images.tar: {"train"|"val"|"test": {file name: bytes}}.

  Replacements are matched to images by file name within their split; the
  top-level directory names the split.
  """
  patches: dict[str, dict[str, bytes]] = {"train": {}, "val": {}, "test": {}}
  for name, data in iter_tar_files(path):
    parts = name.strip("./").split("/")
    if len(parts) < 2 or parts[0] not in patches:
      raise ReleaseFormatError(
          f"{path}: member {name!r} is not under train/, val/ or test/."
      )
    patches[parts[0]][parts[-1]] = data
  return patches


def read_num_classes(manual_dir: os.PathLike | str) -> int:
  """The class count of the release in `manual_dir` (leaves of meta.mat)."""
  manual_dir = os.fspath(manual_dir)
  check_manual_dir(manual_dir)
  devkit = _read_members(os.path.join(manual_dir, DEVKIT_TAR), [META_MEMBER])
  synsets = parse_meta_mat(devkit[META_MEMBER])
  return sum(1 for s in synsets if s.num_children == 0)


def load_release_metadata(
    manual_dir: os.PathLike | str, num_classes: int
) -> ReleaseMetadata:
  """Loads and checks meta.mat, both ground-truth files and the patches."""
  manual_dir = os.fspath(manual_dir)
  check_manual_dir(manual_dir)
  devkit_path = os.path.join(manual_dir, DEVKIT_TAR)
  devkit = _read_members(devkit_path, [META_MEMBER, VAL_GROUND_TRUTH_MEMBER])
  classes = class_synsets(
      parse_meta_mat(devkit[META_MEMBER]),
      num_classes,
      source=f"{devkit_path}:{META_MEMBER}",
  )
  val_labels = parse_ground_truth(
      devkit[VAL_GROUND_TRUTH_MEMBER].decode("ascii"),
      num_classes,
      source=f"{devkit_path}:{VAL_GROUND_TRUTH_MEMBER}",
  )
  test_gt_path = os.path.join(manual_dir, TEST_GROUND_TRUTH)
  with open(test_gt_path, "r", encoding="ascii") as f:
    test_labels = parse_ground_truth(f.read(), num_classes, test_gt_path)
  return ReleaseMetadata(
      classes=tuple(classes),
      validation_labels=tuple(val_labels),
      test_labels=tuple(test_labels),
      patches=read_patches(os.path.join(manual_dir, PATCH_TAR)),
  )


# --- Streaming the archives. ---
def iter_tar_files(
    path_or_fileobj: str | io.IOBase,
) -> Iterator[tuple[str, bytes]]:
  """Yields (member name, bytes) for each regular file, streaming the tar.

  Stream mode ("r|") reads the archive strictly forward, so this works on a
  member of an enclosing tar (the per-class train tars) as well as on files.
  """
  if isinstance(path_or_fileobj, (str, os.PathLike)):
    tar = tarfile.open(os.fspath(path_or_fileobj), mode="r|*")
  else:
    tar = tarfile.open(fileobj=path_or_fileobj, mode="r|*")
  with tar:
    for member in tar:
      if member.isfile():
        yield member.name, tar.extractfile(member).read()
      # tarfile keeps every TarInfo it has seen; the test tar has 150,000.
      tar.members = []


def list_tar_file_names(path: str) -> list[str]:
  """Base names of the regular files of an uncompressed tar, in tar order.

  Reads only the headers: on a seekable, uncompressed tar the data is
  skipped over with seeks.
  """
  names = []
  with tarfile.open(path, mode="r:") as tar:
    for member in tar:
      if member.isfile():
        names.append(os.path.basename(member.name))
      tar.members = []
  return names


@dataclasses.dataclass(frozen=True)
class RawImage:
  """One image as found in the release, before decoding."""

  archive: str  # e.g. "ILSVRC2010_images_train.tar/n01440764.tar"
  member: str  # the name inside that archive
  file_name: str  # base name, e.g. "n01440764_10026.JPEG"
  label: int
  data: bytes
  patched: bool


def _patched(
    data: bytes, file_name: str, patches: dict[str, bytes], used: set[str]
) -> tuple[bytes, bool]:
  # The release's blank images are replaced by the same-named file of
  # patch_images.tar (PAPER.md §3: they must be applied).
  if file_name in patches:
    used.add(file_name)
    return patches[file_name], True
  return data, False


def _check_all_patches_used(
    patch_dir: str, patches: dict[str, bytes], used: set[str]
) -> None:
  unused = sorted(set(patches) - used)
  if unused:
    raise ReleaseFormatError(
        f"patch_images.tar has {len(unused)} {patch_dir}/ replacement(s) "
        f"that match no image of the split: {unused[:10]}. The patches "
        "must be applied, so the names have to match."
    )


def iter_raw_images(
    manual_dir: os.PathLike | str, split: str, meta: ReleaseMetadata
) -> Iterator[RawImage]:
  """Yields the images of a split with their labels, patches applied.

  Train labels come from the per-class tar's WNID; validation and test
  labels from the ground-truth files, line i labelling the i-th file name
  in sorted order (PAPER.md §3) -- not the tar order.
  """
  archive_name, patch_dir = SPLIT_ARCHIVES[split]
  path = os.path.join(os.fspath(manual_dir), archive_name)
  patches = meta.patches[patch_dir]
  used: set[str] = set()
  if split == "train":
    label_of_wnid = {s.wnid: i for i, s in enumerate(meta.classes)}
    seen = set()
    for class_tar, class_bytes_iter in _iter_class_tars(path):
      wnid = os.path.basename(class_tar)[: -len(".tar")]
      if wnid not in label_of_wnid:
        raise ReleaseFormatError(
            f"{archive_name}: class tar {class_tar!r} names no class of "
            "meta.mat."
        )
      seen.add(wnid)
      for member, data in class_bytes_iter:
        file_name = os.path.basename(member)
        if not file_name.startswith(wnid + "_"):
          # The file name carries the WNID too; a disagreement would mean a
          # wrong label, so stop rather than guess.
          raise ReleaseFormatError(
              f"{archive_name}/{class_tar}: member {member!r} does not "
              f"start with the class WNID {wnid}."
          )
        data, patched = _patched(data, file_name, patches, used)
        yield RawImage(
            archive=f"{archive_name}/{class_tar}",
            member=member,
            file_name=file_name,
            label=label_of_wnid[wnid],
            data=data,
            patched=patched,
        )
    missing = sorted(set(label_of_wnid) - seen)
    if missing:
      raise ReleaseFormatError(
          f"{archive_name} has no per-class tar for {len(missing)} "
          f"class(es) of meta.mat: {missing[:10]}."
      )
  else:
    labels = meta.labels_for(split)
    names = list_tar_file_names(path)
    if len(names) != len(labels) or len(set(names)) != len(names):
      raise ReleaseFormatError(
          f"{archive_name} holds {len(names)} files ({len(set(names))} "
          f"distinct names) but the ground truth has {len(labels)} lines."
      )
    index_of = {name: i for i, name in enumerate(sorted(names))}
    for member, data in iter_tar_files(path):
      file_name = os.path.basename(member)
      data, patched = _patched(data, file_name, patches, used)
      yield RawImage(
          archive=archive_name,
          member=member,
          file_name=file_name,
          label=labels[index_of[file_name]],
          data=data,
          patched=patched,
      )
  _check_all_patches_used(patch_dir, patches, used)


def _iter_class_tars(
    path: str,
) -> Iterator[tuple[str, Iterator[tuple[str, bytes]]]]:
  """Yields (class tar name, its files) for the tar of per-class tars.

  Each inner tar is streamed straight out of the outer one (no copy in
  memory, unlike TFDS's imagenet2012, which reads each ~150 MB class tar
  whole). The caller must consume the inner iterator before advancing.
  """
  with tarfile.open(path, mode="r|") as outer:
    for member in outer:
      if member.isfile():
        if not member.name.endswith(".tar"):
          raise ReleaseFormatError(
              f"{path}: member {member.name!r} is not a per-class .tar."
          )
        yield member.name, iter_tar_files(outer.extractfile(member))
      outer.members = []


# --- Image processing. ---
def decode_image(data: bytes) -> Image.Image:
  """Decodes release image bytes into an RGB PIL image.

  Handles the release's quirks (PAPER.md §3): gzip-compressed JPEGs without
  a .gz suffix, and CMYK or grayscale JPEGs (stored as RGB, the network's
  three input channels).

  Raises:
    OSError, ValueError, EOFError, zlib.error: the bytes are not a complete
      image (PIL refuses truncated images unless told otherwise).
  """
  if data[:2] == _GZIP_MAGIC:
    data = gzip.decompress(data)
  image = Image.open(io.BytesIO(data))
  image.load()  # Decode now, so that truncation is detected here.
  if image.mode != "RGB":
    image = image.convert("RGB")
  return image


def resize_and_center_crop(image: Image.Image, size: int) -> Image.Image:
  """Rescales the shorter side to `size`, then crops the central square.

  This is the paper's one-time preprocessing (§2) with `size` = 256.
  """
  width, height = image.size
  scale = size / min(width, height)
  # max(size, ...) keeps the shorter side exactly `size` despite rounding.
  new_w = size if width <= height else max(size, round(width * scale))
  new_h = size if height < width else max(size, round(height * scale))
  if (new_w, new_h) != (width, height):
    # Bicubic with PIL's built-in antialiasing when shrinking.
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
  left = (new_w - size) // 2
  top = (new_h - size) // 2
  return image.crop((left, top, left + size, top + size))


def process_image(raw: RawImage, image_size: int) -> bytes:
  """Decodes, rescales + crops and re-encodes one image as JPEG.

  Raises:
    CorruptImageError: naming the archive member, if it cannot be decoded.
  """
  try:
    image = decode_image(raw.data)
  except (OSError, ValueError, EOFError, zlib.error) as e:
    raise CorruptImageError(raw.archive, raw.member, e) from e
  image = resize_and_center_crop(image, image_size)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
  return buffer.getvalue()


def _ordered_map(
    fn: Callable[[RawImage], bytes],
    items: Iterable[RawImage],
    num_workers: int,
) -> Iterator[tuple[RawImage, concurrent.futures.Future]]:
  """Maps `fn` over `items` on threads, in order, with bounded look-ahead.

  PIL releases the GIL while it decodes, resizes and encodes, so threads
  scale on the CPU-bound part; reading the tar stays on the caller's thread.
  """
  max_pending = 4 * num_workers
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    for item in items:
      pending.append((item, pool.submit(fn, item)))
      if len(pending) >= max_pending:
        yield pending.popleft()
    while pending:
      yield pending.popleft()


def iter_examples(
    manual_dir: os.PathLike | str,
    split: str,
    meta: ReleaseMetadata,
    *,
    image_size: int = PAPER_IMAGE_SIZE,
    skip_corrupt_images: bool = False,
    num_workers: int = 1,
    on_skip: Callable[[CorruptImageError], None] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
  """Yields (key, example) for a split, in the builder's feature format.

  Args:
    manual_dir: the directory holding the release files.
    split: "train", "validation" or "test".
    meta: from `load_release_metadata`.
    image_size: the stored square size (256 in the paper).
    skip_corrupt_images: leave out (and log) images that cannot be decoded
      instead of raising `CorruptImageError`.
    num_workers: threads for decoding/resizing/encoding.
    on_skip: called with the error of each skipped image.

  Yields:
    (file name, {"image": JPEG bytes, "label", "class_name", "wnid",
    "file_name"}).
  """
  raws = iter_raw_images(manual_dir, split, meta)
  for raw, future in _ordered_map(
      lambda r: process_image(r, image_size), raws, max(1, num_workers)
  ):
    try:
      jpeg = future.result()
    except CorruptImageError as e:
      if not skip_corrupt_images:
        raise
      logging.warning("Skipping corrupt image: %s", e)
      if on_skip is not None:
        on_skip(e)
      continue
    synset = meta.classes[raw.label]
    yield raw.file_name, {
        "image": jpeg,
        "label": raw.label,
        "class_name": synset.words,
        "wnid": synset.wnid,
        "file_name": raw.file_name,
    }


# --- The TFDS builder. ---
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


def mini_config(
    num_classes: int = 10, image_size: int = PAPER_IMAGE_SIZE
) -> Ilsvrc2010Config:
  """The config for a generated mini set (see `alexnet_jax.data.mini`)."""
  return make_config(num_classes, image_size)


class Ilsvrc2010(tfds.core.GeneratorBasedBuilder):
  """ILSVRC-2010, stored rescaled and center-cropped as in the paper (§2)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version: patched, RGB, 256x256 crops."}
  BUILDER_CONFIGS = [PAPER_CONFIG, MINI_CONFIG]
  DEFAULT_BUILDER_CONFIG_NAME = PAPER_CONFIG.name
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put these ILSVRC-2010 release files, unextracted, in the manual "
      "directory: " + ", ".join(REQUIRED_FILES) + ". " + DOWNLOAD_HELP
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
        build with `CorruptImageError`, which is the default.
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
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(size, size, 3), encoding_format="jpeg"
            ),
            "label": tfds.features.ClassLabel(
                num_classes=self.builder_config.num_classes
            ),
            "class_name": tfds.features.Text(),  # meta.mat `words`
            "wnid": tfds.features.Text(),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="https://image-net.org/challenges/LSVRC/2010/",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = _manual_dir_of(dl_manager)
    # Before any work: name every missing file, in our words.
    check_manual_dir(manual_dir)
    meta = load_release_metadata(manual_dir, self.builder_config.num_classes)
    self.skipped_images = []
    return {
        split: self._generate_examples(manual_dir, split, meta)
        for split in SPLIT_ARCHIVES
    }

  def _generate_examples(
      self, manual_dir: str, split: str, meta: ReleaseMetadata
  ):
    def on_skip(error: CorruptImageError) -> None:
      self.skipped_images.append(f"{error.archive}:{error.member}")

    before = len(self.skipped_images)
    yield from iter_examples(
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
    # empty; fall back to the configured path so that `check_manual_dir`
    # can name each missing file.
    manual_dir = getattr(dl_manager, "_manual_dir", None)
    if manual_dir is None:
      raise
    return os.fspath(manual_dir)
