"""TFDS builder for ILSVRC-2010, the data set of the paper (§2).

TFDS ships no ILSVRC-2010 builder, so this module provides `Ilsvrc2010`. It
reads the official release files from a manual directory and stores every
image already rescaled so its shorter side is `image_size` (256 in the
paper) and center-cropped to `image_size` x `image_size` -- the paper does
this once, when the data set is prepared (§2).

Manual directory (README "Data: ILSVRC-2010" lists the files):

  ILSVRC2010_images_train.tar     tar of per-class tars `<WNID>.tar`
  ILSVRC2010_images_val.tar       JPEGs; labels by sorted file name order
  ILSVRC2010_images_test.tar      JPEGs; labels by sorted file name order
  ILSVRC2010_devkit-1.0.tar.gz    devkit-1.0/data/meta.mat and, in the
                                  same folder,
                                  ILSVRC2010_validation_ground_truth.txt
  ILSVRC2010_test_ground_truth.txt
  patch_images.tar                replacements for blank images, under
                                  train/, val/, test/

Labels are `ILSVRC2010_ID - 1`, i.e. the order of the class IDs of meta.mat
(which is NOT sorted WNID order, unlike TFDS's imagenet2012).

Every layout of these files that a reader of the real release accepts is
accepted (the public converter in mila-iqia/fuel is the reference):

  * member paths: images, per-class tars and devkit files are found by
    their base names, whatever directory prefix (or "./") they carry; a
    patch belongs to the split named by the nearest directory above it
    (".../train/x.JPEG", ".../val/x.JPEG", ".../test/x.JPEG"), and a
    patch archive's non-image members are ignored;
  * image names: a patch replaces the image of the same name, the case of
    the extension aside (x.JPEG and x.jpeg are one image);
  * meta.mat: `synsets` as a MATLAB struct array of any shape (1xN, Nx1),
    or a cell array of structs, with numbers of any MATLAB class and
    empty `children` ([] or 1x0) for the leaves; the classes are the
    leaves, with IDs 1..N in any file order, and inner nodes of the
    hierarchy (IDs > N) may come anywhere.

Bad input ends the build with one `Ilsvrc2010Error` that names the file
(and member) and says what to do: missing files (with a diagnosis of what
the directory holds instead, e.g. an ILSVRC-2012 release), truncated or
corrupt archives (`ArchiveError`; a tar cut at a member boundary, which
`tarfile` takes for its end, is caught by checking the end-of-archive
marker), an unreadable meta.mat or ground truth (`ReleaseFormatError`) and
undecodable images (`CorruptImageError`, unless they are skipped).

The archives are streamed (the train tar is ~130 GB): nothing is extracted
to disk and no archive is read into memory whole. Only the small files (the
devkit, the ground-truth lists, patch_images.tar) are held in memory.

The generic reading code (`iter_examples`) does not depend on TFDS, so the
same path that builds the data set can be reused, e.g. for a baseline.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import gzip
import io
import os
import re
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

# --- The release files, in release.py. ---
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

# Split name -> (image archive, directory of its patches in
# patch_images.tar).
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
# (a quirk of the release) start with the gzip magic bytes.
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
      hint: str | None = None,
  ):
    self.manual_dir = os.fspath(manual_dir)
    self.missing = tuple(missing)
    self.hint = hint
    where = self.manual_dir
    if not os.path.exists(self.manual_dir):
      where += " (this directory does not exist)"
    elif not os.path.isdir(self.manual_dir):
      where += " (this is a file, not a directory)"
    lines = [
        f"{dataset}: {len(self.missing)} release file(s) missing from the "
        f"manual directory {where}:",
        *(f"  - {f}  (looked for {os.path.join(self.manual_dir, f)})"
          for f in self.missing),
        *([hint] if hint else []),
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


class ArchiveError(ReleaseFormatError):
  """A release archive cannot be read: truncated, corrupt or not a tar."""

  def __init__(self, path: str, detail: str, member: str | None = None):
    self.path = path
    self.member = member
    try:
      size = f"{os.path.getsize(path):,} bytes"
    except OSError:
      size = "size unknown"
    where = f"{path} ({size})"
    if member is not None:
      where += f", inside its member {member!r},"
    super().__init__(
        f"{where} cannot be read: {detail}. The archive is truncated or "
        "corrupt -- an interrupted download or copy? Download it again and "
        "compare its size and MD5 with those on the ImageNet download page."
    )


# What reading a damaged archive can raise: tarfile.ReadError (a short
# member, a bad first header), EOFError and zlib.error (a cut or damaged
# gzip stream), gzip.BadGzipFile and other OSErrors.
_ARCHIVE_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@contextlib.contextmanager
def _archive_errors(path: str, member: Callable[[], str | None] = lambda: None):
  """Turns read errors of the archive at `path` into `ArchiveError`.

  Args:
    path: the archive file.
    member: returns the member being read when the error happened, if any
      (e.g. the per-class tar inside the train tar).
  """
  try:
    yield
  except Ilsvrc2010Error:
    raise
  except _ARCHIVE_READ_ERRORS as e:
    raise ArchiveError(path, f"{type(e).__name__}: {e}", member()) from None


def _check_end_of_archive(path: str, tar: tarfile.TarFile) -> None:
  """Raises `ArchiveError` unless `tar` stopped at an end-of-archive marker.

  `tarfile` ends the iteration without complaint where the file ends, or
  holds garbage, in place of a member header: a tar cut at a member
  boundary would silently lose all the members after the cut. A complete
  tar has a zero block there. A gzip-compressed tar (the devkit, small) is
  instead read to its end once more, which checks the gzip trailer.
  """
  comptype = getattr(tar.fileobj, "comptype", "tar")
  if comptype == "gz":
    with gzip.open(path, "rb") as f:
      while f.read(1 << 20):
        pass
    return
  if comptype != "tar":
    return
  with open(path, "rb") as f:
    f.seek(tar.offset)
    block = f.read(tarfile.BLOCKSIZE)
  if block != tarfile.NUL * tarfile.BLOCKSIZE:
    what = "the file ends" if not block else "garbage follows"
    raise ArchiveError(
        path,
        f"{what} at byte {tar.offset:,} where the next member header or "
        "the end-of-archive marker should be",
    )


# --- Manual directory. ---
def missing_manual_files(manual_dir: os.PathLike | str) -> list[str]:
  """Returns the release files that are not in `manual_dir`, in order."""
  return [
      f for f in REQUIRED_FILES
      if not os.path.isfile(os.path.join(manual_dir, f))
  ]


# Files of other ILSVRC years, e.g. ILSVRC2012_img_train.tar.
_OTHER_YEAR = re.compile(r"^ILSVRC[-_]?(20\d\d)", re.IGNORECASE)
# What an extracted release leaves: the archives' directories, per-class
# tars, or loose images.
_EXTRACTED = re.compile(
    r"^(ILSVRC2010_images_(train|val|test)|devkit-1\.0|patch_images|"
    r"train|val|test|n\d{8}(\.tar)?|.*\.jpe?g)$",
    re.IGNORECASE,
)


def diagnose_manual_dir(manual_dir: os.PathLike | str) -> str | None:
  """Says what `manual_dir` holds instead of the release, if it can tell.

  Recognizes a release of another year (ILSVRC-2012's
  ILSVRC2012_img_train.tar, ...), the release one directory further down,
  an extracted release, and otherwise lists what is there. Returns None
  when the directory looks like a partial ILSVRC-2010 release.
  """
  manual_dir = os.fspath(manual_dir)
  if not os.path.isdir(manual_dir):
    return None
  entries = sorted(os.listdir(manual_dir))
  present = [f for f in REQUIRED_FILES if f in entries]
  years = collections.defaultdict(list)
  for name in entries:
    match = _OTHER_YEAR.match(name)
    if match and match.group(1) != "2010":
      years[match.group(1)].append(name)
  if years:
    found = "; ".join(
        f"ILSVRC-{year}: {', '.join(names[:4])}"
        + (f" (+{len(names) - 4})" if len(names) > 4 else "")
        for year, names in sorted(years.items())
    )
    hint = (
        f"This directory holds files of another ILSVRC release ({found}), "
        "not the ILSVRC-2010 release this builder reads (the paper's data "
        "set). Point the manual directory at the ILSVRC-2010 files"
    )
    if "2012" in years:
      hint += (
          ", or, to train on ILSVRC-2012, use the data set 'imagenet2012' "
          "(get_builder('imagenet2012'), TFDS's builder)"
      )
    return hint + "."
  if present:
    return None
  for name in entries:
    sub = os.path.join(manual_dir, name)
    if os.path.isdir(sub) and any(
        os.path.isfile(os.path.join(sub, f)) for f in REQUIRED_FILES
    ):
      return (
          f"The release files seem to be one directory further down, in "
          f"{sub}: use that as the manual directory."
      )
  extracted = [name for name in entries if _EXTRACTED.match(name)]
  if extracted:
    return (
        "This looks like an extracted release (found "
        f"{', '.join(extracted[:5])}): the builder reads the archives "
        "themselves, unextracted, as downloaded."
    )
  if not entries:
    return "The directory is empty."
  listed = ", ".join(entries[:8]) + (
      f" and {len(entries) - 8} more" if len(entries) > 8 else ""
  )
  return (
      f"None of the release files is here; the directory holds {listed}. "
      "Is this the right directory?"
  )


def check_manual_dir(manual_dir: os.PathLike | str) -> None:
  """Raises `MissingManualFilesError` naming every missing release file.

  The error also says what the directory seems to hold instead (see
  `diagnose_manual_dir`), e.g. an ILSVRC-2012 release.
  """
  missing = missing_manual_files(manual_dir)
  if missing:
    raise MissingManualFilesError(
        manual_dir, missing, hint=diagnose_manual_dir(manual_dir)
    )


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
_SYNSET_FIELDS = (
    "ILSVRC2010_ID", "WNID", "words", "gloss", "num_children", "children",
    "wordnet_height", "num_train_images",
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
  missing = [f for f in _SYNSET_FIELDS if f not in fields]
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
      for field in ("ILSVRC2010_ID", "num_children", "wordnet_height",
                    "num_train_images"):
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


# --- Member names. ---
# The directories a patch can sit in, by split (fuel's converter: the
# directory just above the file).
_PATCH_DIRS = {"train": "train", "val": "val", "validation": "val",
               "test": "test"}
_IMAGE_EXTENSIONS = (".jpeg", ".jpg")


def _member_parts(name: str) -> list[str]:
  """The path components of a tar member name, without "." and "" parts."""
  return [p for p in name.split("/") if p not in ("", ".")]


def _base_name(name: str) -> str:
  parts = _member_parts(name)
  return parts[-1] if parts else ""


def image_key(file_name: str) -> str:
  """The name an image is matched by: the extension's case does not count.

  "x.JPEG" in an image archive and "x.jpeg" in patch_images.tar are the
  same image.
  """
  stem, ext = os.path.splitext(file_name)
  return stem + ext.lower()


def _is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in _IMAGE_EXTENSIONS


def _find_member(names: Sequence[str], wanted: str, path: str) -> str:
  """The member of `names` that is `wanted`, whatever its path prefix.

  The exact path (after dropping "./") wins, then a path ending in it (a
  prefixed copy), then a unique member with the same base name.
  """
  wanted_parts = _member_parts(wanted)
  by_rank = collections.defaultdict(list)
  for name in names:
    parts = _member_parts(name)
    if parts == wanted_parts:
      by_rank[0].append(name)
    elif parts[-len(wanted_parts):] == wanted_parts:
      by_rank[1].append(name)
    elif parts and parts[-1] == wanted_parts[-1]:
      by_rank[2].append(name)
  for rank in range(3):
    candidates = by_rank[rank]
    if len(candidates) == 1:
      return candidates[0]
    if len(candidates) > 1:
      raise ReleaseFormatError(
          f"{path}: more than one member could be {wanted}: {candidates}."
      )
  raise ReleaseFormatError(
      f"{path} lacks {wanted} (under any directory). Is it the ILSVRC-2010 "
      "devkit? Download it again."
  )


def _read_members(path: str, names: Sequence[str]) -> dict[str, bytes]:
  """Reads the named members of a (possibly compressed) tar, streaming it.

  A member is found whatever directory prefix it carries (`_find_member`);
  the result is keyed by the names asked for.
  """
  base_names = {_member_parts(n)[-1] for n in names}
  found: dict[str, bytes] = {}
  with _archive_errors(path):
    with tarfile.open(path, mode="r|*") as tar:
      for member in tar:
        if member.isfile() and _base_name(member.name) in base_names:
          found[member.name] = tar.extractfile(member).read()
        tar.members = []
      _check_end_of_archive(path, tar)
  return {n: found[_find_member(list(found), n, path)] for n in names}


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
  for name, data in iter_tar_files(path):
    parts = _member_parts(name)
    if not parts or not _is_image_name(parts[-1]):
      continue
    split = next(
        (_PATCH_DIRS[p.lower()] for p in reversed(parts[:-1])
         if p.lower() in _PATCH_DIRS),
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
        "%s", path, len(unplaced), ", ".join(unplaced[:10]),
    )
  return patches


def read_num_classes(manual_dir: os.PathLike | str) -> int:
  """The class count of the release in `manual_dir` (leaves of meta.mat)."""
  manual_dir = os.fspath(manual_dir)
  check_manual_dir(manual_dir)
  devkit_path = os.path.join(manual_dir, DEVKIT_TAR)
  devkit = _read_members(devkit_path, [META_MEMBER])
  synsets = parse_meta_mat(
      devkit[META_MEMBER], source=f"{devkit_path}:{META_MEMBER}"
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
  check_manual_dir(manual_dir)
  devkit_path = os.path.join(manual_dir, DEVKIT_TAR)
  devkit = _read_members(devkit_path, [META_MEMBER, VAL_GROUND_TRUTH_MEMBER])
  meta_source = f"{devkit_path}:{META_MEMBER}"
  classes = class_synsets(
      parse_meta_mat(devkit[META_MEMBER], source=meta_source),
      num_classes,
      source=meta_source,
  )
  val_source = f"{devkit_path}:{VAL_GROUND_TRUTH_MEMBER}"
  val_labels = parse_ground_truth(
      _decode_text(devkit[VAL_GROUND_TRUTH_MEMBER], val_source),
      num_classes,
      source=val_source,
  )
  test_gt_path = os.path.join(manual_dir, TEST_GROUND_TRUTH)
  with open(test_gt_path, "rb") as f:
    test_labels = parse_ground_truth(
        _decode_text(f.read(), test_gt_path), num_classes, test_gt_path
    )
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
  A file on disk is checked to be complete (`ArchiveError` otherwise); a
  file object's read errors are left to the caller, who knows what it is.
  """
  if isinstance(path_or_fileobj, (str, os.PathLike)):
    path = os.fspath(path_or_fileobj)
    with _archive_errors(path):
      with tarfile.open(path, mode="r|*") as tar:
        yield from _iter_files(tar)
        _check_end_of_archive(path, tar)
  else:
    with tarfile.open(fileobj=path_or_fileobj, mode="r|*") as tar:
      yield from _iter_files(tar)


def _iter_files(tar: tarfile.TarFile) -> Iterator[tuple[str, bytes]]:
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
  with _archive_errors(path):
    with tarfile.open(path, mode="r:") as tar:
      for member in tar:
        if member.isfile():
          names.append(_base_name(member.name))
        tar.members = []
      _check_end_of_archive(path, tar)
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
  # patch_images.tar (they must be applied).
  key = image_key(file_name)
  if key in patches:
    used.add(key)
    return patches[key], True
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
  in sorted order -- not the tar order. Members are known by
  their base names, whatever directories they are under.

  Raises:
    ArchiveError: an archive is truncated or corrupt.
    ReleaseFormatError: the archives do not match meta.mat, the ground
      truth or the patches.
  """
  archive_name, patch_dir = SPLIT_ARCHIVES[split]
  path = os.path.join(os.fspath(manual_dir), archive_name)
  patches = meta.patches[patch_dir]
  used: set[str] = set()
  if split == "train":
    yield from _iter_train_images(path, meta, patches, used)
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
      file_name = _base_name(member)
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


def _iter_train_images(
    path: str,
    meta: ReleaseMetadata,
    patches: dict[str, bytes],
    used: set[str],
) -> Iterator[RawImage]:
  """The train images, from the tar of per-class tars `<WNID>.tar`."""
  archive_name = os.path.basename(path)
  label_of_wnid = {s.wnid: i for i, s in enumerate(meta.classes)}
  seen = set()
  current = None  # The class tar being read, for error messages.
  with _archive_errors(path, lambda: current):
    for class_tar, class_files in _iter_class_tars(path):
      current = class_tar
      wnid = os.path.splitext(_base_name(class_tar))[0]
      if wnid not in label_of_wnid:
        raise ReleaseFormatError(
            f"{archive_name}: class tar {class_tar!r} names no class of "
            "meta.mat."
        )
      seen.add(wnid)
      for member, data in class_files:
        file_name = _base_name(member)
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
      current = None
  missing = sorted(set(label_of_wnid) - seen)
  if missing:
    raise ReleaseFormatError(
        f"{archive_name} has no per-class tar for {len(missing)} "
        f"class(es) of meta.mat: {missing[:10]}."
    )


def _iter_class_tars(
    path: str,
) -> Iterator[tuple[str, Iterator[tuple[str, bytes]]]]:
  """Yields (class tar name, its files) for the tar of per-class tars.

  Each inner tar is streamed straight out of the outer one (no copy in
  memory, unlike TFDS's imagenet2012, which reads each ~150 MB class tar
  whole). The caller must consume the inner iterator before advancing.
  Read errors are the caller's to report.
  """
  with tarfile.open(path, mode="r|") as outer:
    for member in outer:
      if member.isfile():
        if not member.name.lower().endswith(".tar"):
          raise ReleaseFormatError(
              f"{path}: member {member.name!r} is not a per-class .tar."
          )
        yield member.name, iter_tar_files(outer.extractfile(member))
      outer.members = []
    _check_end_of_archive(path, outer)


# --- Image processing. ---
def decode_image(data: bytes) -> Image.Image:
  """Decodes release image bytes into an RGB PIL image.

  Handles the release's quirks: gzip-compressed JPEGs without
  a .gz suffix, and CMYK or grayscale JPEGs (stored as RGB, the network's
  three input channels).

  Raises:
    OSError, ValueError, EOFError, zlib.error, SyntaxError,
    Image.DecompressionBombError: the bytes are not a complete image (PIL
      refuses truncated images unless told otherwise).
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


# What decoding bad bytes can raise: PIL's UnidentifiedImageError and
# "image file is truncated" (OSError), SyntaxError from some plugins,
# DecompressionBombError (a corrupt header claiming a huge size), gzip's
# BadGzipFile (OSError), EOFError and zlib.error.
_DECODE_ERRORS = (OSError, ValueError, EOFError, zlib.error, SyntaxError,
                  Image.DecompressionBombError)


def process_image(raw: RawImage, image_size: int) -> bytes:
  """Decodes, rescales + crops and re-encodes one image as JPEG.

  Raises:
    CorruptImageError: naming the archive member, if it cannot be decoded.
  """
  try:
    image = decode_image(raw.data)
  except _DECODE_ERRORS as e:
    raise CorruptImageError(raw.archive, raw.member, e) from None
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
