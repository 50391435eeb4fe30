"""The release's small files: meta.mat, the ground truth and the patches.

Labels are `ILSVRC2010_ID - 1`, i.e. the order of the class IDs of meta.mat
(which is NOT sorted WNID order, unlike TFDS's imagenet2012). Every layout of
these files that a reader of the real release accepts is accepted (the
public converter in mila-iqia/fuel is the reference):

  * meta.mat: `synsets` as a MATLAB struct array of any shape (1xN, Nx1),
    or a cell array of structs, with numbers of any MATLAB class and
    empty `children` ([] or 1x0) for the leaves; the classes are the
    leaves, with IDs 1..N in any file order, and inner nodes of the
    hierarchy (IDs > N) may come anywhere;
  * patches: a patch belongs to the split named by the nearest directory
    above it (".../train/x.JPEG", ".../val/x.JPEG", ".../test/x.JPEG"), a
    patch archive's non-image members are ignored, and a patch replaces
    the image of the same name, the case of the extension aside (x.JPEG
    and x.jpeg are one image).

Only these small files (the devkit, the ground-truth lists,
patch_images.tar) are held in memory.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any, Sequence

from absl import logging
import numpy as np
import scipy.io

from alexnet_jax.data import archives
from alexnet_jax.data import release
from alexnet_jax.data.release import ReleaseFormatError


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


_REDOWNLOAD_DEVKIT = (
    "Is it the ILSVRC-2010 devkit's? Download the devkit "
    "(ILSVRC2010_devkit-1.0.tar.gz) again."
)
# The fields of each synset in meta.mat (the devkit's readme).
SYNSET_FIELDS = (
    "ILSVRC2010_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)


def _mat_str(value: Any) -> str:
  # A MATLAB char array: a str, or an array of one (empty: of none).
  if isinstance(value, np.ndarray):
    return "" if value.size == 0 else str(value.reshape(-1)[0])
  return str(value)


def _mat_int(value: Any) -> int:
  # A MATLAB number of any class (double, uint8, ...), scalar or 1x1.
  array = np.asarray(value).reshape(-1)
  if array.size != 1:
    raise ValueError(f"expected one number, got {array.size}")
  number = float(array[0])
  if number != int(number):
    raise ValueError(f"expected an integer, got {number}")
  return int(number)


def _struct_entries(synsets: np.ndarray) -> list[Any]:
  """The entries of a struct array (any shape) or a cell array of structs."""
  if synsets.dtype.names is not None:
    return list(synsets.reshape(-1))
  if synsets.dtype == object:
    entries = []
    for cell in synsets.reshape(-1):
      cell = np.asarray(cell)
      if cell.dtype.names is None:
        raise ValueError("a cell of 'synsets' is not a struct")
      entries.extend(cell.reshape(-1))
    return entries
  raise ValueError(f"'synsets' is not a struct array (dtype {synsets.dtype})")


def parse_meta_mat(data: bytes, source: str = "meta.mat") -> list[Synset]:
  """Parses meta.mat (a MATLAB struct array `synsets`) into `Synset`s.

  Args:
    data: the bytes of meta.mat.
    source: where it came from, for error messages.

  Raises:
    ReleaseFormatError: the file is not a readable MAT-file with a struct
      array `synsets` with the fields of the devkit's.
  """
  redownload = _REDOWNLOAD_DEVKIT
  try:
    mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=False)
  except NotImplementedError as e:  # scipy's answer to MATLAB v7.3 files.
    raise ReleaseFormatError(
        f"{source} is a MATLAB v7.3 (HDF5) file ({e}), which scipy cannot "
        "read; re-save it with save(..., '-v7') or use the original devkit."
    ) from None
  except Exception as e:  # pylint: disable=broad-except
    # scipy raises many types on a damaged file (ValueError, TypeError,
    # MatReadError, OSError, ...).
    raise ReleaseFormatError(
        f"{source} is not a readable MAT-file: {type(e).__name__}: {e}. "
        + redownload
    ) from None
  if "synsets" not in mat:
    raise ReleaseFormatError(
        f"{source} has no variable 'synsets' (it has "
        f"{sorted(k for k in mat if not k.startswith('__'))}). " + redownload
    )
  try:
    entries = _struct_entries(np.asarray(mat["synsets"]))
  except ValueError as e:
    raise ReleaseFormatError(f"{source}: {e}. {redownload}") from None
  if not entries:
    raise ReleaseFormatError(f"{source}: 'synsets' is empty. {redownload}")
  fields = set(entries[0].dtype.names or ())
  missing = [f for f in SYNSET_FIELDS if f not in fields]
  if missing:
    raise ReleaseFormatError(
        f"{source}: 'synsets' lacks the field(s) {missing}. {redownload}"
    )
  out = []
  for index, s in enumerate(entries):
    field = ""
    try:
      field = "children"
      children = tuple(_mat_int(c) for c in np.asarray(s[field]).reshape(-1))
      values = {}
      for field in (
          "ILSVRC2010_ID",
          "num_children",
          "wordnet_height",
          "num_train_images",
      ):
        values[field] = _mat_int(s[field])
      for field in ("WNID", "words", "gloss"):
        values[field] = _mat_str(s[field])
    except (ValueError, TypeError, IndexError) as e:
      raise ReleaseFormatError(
          f"{source}: synsets({index + 1}).{field} cannot be read: {e}. "
          + redownload
      ) from None
    out.append(
        Synset(
            ilsvrc2010_id=values["ILSVRC2010_ID"],
            wnid=values["WNID"],
            words=values["words"],
            gloss=values["gloss"],
            num_children=values["num_children"],
            children=children,
            wordnet_height=values["wordnet_height"],
            num_train_images=values["num_train_images"],
        )
    )
  return out


def class_synsets(
    synsets: Sequence[Synset], num_classes: int, source: str = "meta.mat"
) -> list[Synset]:
  """Returns the class synsets; entry i has label i (= ILSVRC2010_ID - 1).

  The classes are the leaves of the hierarchy (num_children == 0, empty
  `children`) and have the IDs 1..N; the release lists them first, then
  the inner nodes (IDs > N), but any file order is accepted: labels come
  from the IDs, never from positions. Everything is checked, because a
  mismatch would silently mislabel the whole data set.

  Args:
    synsets: all entries of meta.mat, in file order.
    num_classes: the class count the builder config expects.
    source: where the synsets came from, for error messages.

  Raises:
    ReleaseFormatError: the class count differs from `num_classes`, the
      class IDs are not 1..N, IDs or class WNIDs repeat, or an entry
      with num_children == 0 lists children.
  """
  for s in synsets:
    if s.num_children == 0 and s.children:
      raise ReleaseFormatError(
          f"{source}: synset {s.wnid} (ID {s.ilsvrc2010_id}) has "
          f"num_children 0 but the children {list(s.children)[:5]}. "
          + _REDOWNLOAD_DEVKIT
      )
  ids = [s.ilsvrc2010_id for s in synsets]
  if len(set(ids)) != len(ids):
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    raise ReleaseFormatError(
        f"{source}: ILSVRC2010_IDs repeat: {repeated[:10]}. "
        + _REDOWNLOAD_DEVKIT
    )
  leaves = sorted(
      (s for s in synsets if s.num_children == 0),
      key=lambda s: s.ilsvrc2010_id,
  )
  if len(leaves) != num_classes:
    raise ReleaseFormatError(
        f"{source} describes {len(leaves)} classes (synsets with "
        f"num_children == 0) but the builder config expects {num_classes}. "
        "Use the config whose class count matches these files (e.g. "
        f"get_builder('ilsvrc2010_mini', num_classes={len(leaves)}) for a "
        "generated mini set)."
    )
  leaf_ids = [s.ilsvrc2010_id for s in leaves]
  if leaf_ids != list(range(1, num_classes + 1)):
    raise ReleaseFormatError(
        f"{source}: expected the classes (leaf synsets) to have the "
        f"ILSVRC2010_IDs 1..{num_classes}; got IDs "
        f"{leaf_ids[:5]}...{leaf_ids[-3:]}. " + _REDOWNLOAD_DEVKIT
    )
  wnids = [s.wnid for s in leaves]
  if len(set(wnids)) != num_classes:
    raise ReleaseFormatError(
        f"{source}: class WNIDs are not unique. " + _REDOWNLOAD_DEVKIT
    )
  return leaves


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


# --- Patches. ---
# The directories a patch can sit in, by split (fuel's converter: the
# directory just above the file).
_PATCH_DIRS = {
    "train": "train",
    "val": "val",
    "validation": "val",
    "test": "test",
}
_IMAGE_EXTENSIONS = (".jpeg", ".jpg")


def image_key(file_name: str) -> str:
  """The name an image is matched by: the extension's case does not count.

  "x.JPEG" in an image archive and "x.jpeg" in patch_images.tar are the
  same image.
  """
  stem, ext = os.path.splitext(file_name)
  return stem + ext.lower()


def _is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in _IMAGE_EXTENSIONS


def read_patches(path: str) -> dict[str, dict[str, bytes]]:
  """Reads patch_images.tar: {"train"|"val"|"test": {image key: bytes}}.

  A patch belongs to the split named by the nearest directory above it
  (".../train/x.JPEG"; "validation/" counts as "val/"), whatever comes
  before that directory; it replaces the split's image of the same name
  (`image_key`: the extension's case does not count). Members that are not
  JPEGs are ignored, as are, with a warning, JPEGs under no split
  directory (as fuel's converter does).
  """
  patches: dict[str, dict[str, bytes]] = {"train": {}, "val": {}, "test": {}}
  member_of: dict[tuple[str, str], str] = {}
  unplaced = []
  for name, data in archives.iter_tar_files(path):
    parts = archives.member_parts(name)
    if not parts or not _is_image_name(parts[-1]):
      continue
    split = next(
        (
            _PATCH_DIRS[p.lower()]
            for p in reversed(parts[:-1])
            if p.lower() in _PATCH_DIRS
        ),
        None,
    )
    if split is None:
      unplaced.append(name)
      continue
    key = image_key(parts[-1])
    if key in patches[split] and patches[split][key] != data:
      raise ReleaseFormatError(
          f"{path}: members {member_of[split, key]!r} and {name!r} are two "
          f"different patches of the {split} image {key}."
      )
    patches[split][key] = data
    member_of[split, key] = name
  if unplaced:
    logging.warning(
        "%s: ignored %d image(s) under no train/, val/ or test/ directory: "
        "%s",
        path,
        len(unplaced),
        ", ".join(unplaced[:10]),
    )
  return patches


def read_num_classes(manual_dir: os.PathLike | str) -> int:
  """The class count of the release in `manual_dir` (leaves of meta.mat)."""
  manual_dir = os.fspath(manual_dir)
  release.check_manual_dir(manual_dir)
  devkit_path = os.path.join(manual_dir, release.DEVKIT_TAR)
  devkit = archives.read_members(devkit_path, [release.META_MEMBER])
  synsets = parse_meta_mat(
      devkit[release.META_MEMBER], source=f"{devkit_path}:{release.META_MEMBER}"
  )
  return sum(1 for s in synsets if s.num_children == 0)


def _decode_text(data: bytes, source: str) -> str:
  try:
    return data.decode("ascii")
  except UnicodeDecodeError as e:
    raise ReleaseFormatError(
        f"{source} is not a text file of class IDs ({e}). Is it the "
        "ILSVRC-2010 ground truth? Download it again."
    ) from None


def load_release_metadata(
    manual_dir: os.PathLike | str, num_classes: int
) -> ReleaseMetadata:
  """Loads and checks meta.mat, both ground-truth files and the patches."""
  manual_dir = os.fspath(manual_dir)
  release.check_manual_dir(manual_dir)
  devkit_path = os.path.join(manual_dir, release.DEVKIT_TAR)
  devkit = archives.read_members(
      devkit_path, [release.META_MEMBER, release.VAL_GROUND_TRUTH_MEMBER]
  )
  meta_source = f"{devkit_path}:{release.META_MEMBER}"
  classes = class_synsets(
      parse_meta_mat(devkit[release.META_MEMBER], source=meta_source),
      num_classes,
      source=meta_source,
  )
  val_source = f"{devkit_path}:{release.VAL_GROUND_TRUTH_MEMBER}"
  val_labels = parse_ground_truth(
      _decode_text(devkit[release.VAL_GROUND_TRUTH_MEMBER], val_source),
      num_classes,
      source=val_source,
  )
  test_gt_path = os.path.join(manual_dir, release.TEST_GROUND_TRUTH)
  with open(test_gt_path, "rb") as f:
    test_labels = parse_ground_truth(
        _decode_text(f.read(), test_gt_path), num_classes, test_gt_path
    )
  return ReleaseMetadata(
      classes=tuple(classes),
      validation_labels=tuple(val_labels),
      test_labels=tuple(test_labels),
      patches=read_patches(os.path.join(manual_dir, release.PATCH_TAR)),
  )
