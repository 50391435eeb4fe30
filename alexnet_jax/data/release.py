"""The ILSVRC-2010 release: its files, its errors, the manual directory.

The paper's data set (§2) as ImageNet distributes it (README "Data:
ILSVRC-2010" lists the files). Put the six files, unextracted, in one
directory, the manual directory:

  ILSVRC2010_images_train.tar     tar of per-class tars `<WNID>.tar`
  ILSVRC2010_images_val.tar       JPEGs; labels by sorted file name order
  ILSVRC2010_images_test.tar      JPEGs; labels by sorted file name order
  ILSVRC2010_devkit-1.0.tar.gz    devkit-1.0/data/meta.mat and, in the
                                  same folder,
                                  ILSVRC2010_validation_ground_truth.txt
  ILSVRC2010_test_ground_truth.txt
  patch_images.tar                replacements for blank images, under
                                  train/, val/, test/

Bad input ends the build with one `Ilsvrc2010Error` that names the file
(and member) and says what to do: missing files (`MissingManualFilesError`,
with a diagnosis of what the directory holds instead, e.g. an ILSVRC-2012
release), truncated or corrupt archives (`ArchiveError`), an unreadable
meta.mat or ground truth (`ReleaseFormatError`) and undecodable images
(`CorruptImageError`, unless they are skipped).

The reader of the release is TensorFlow-free: archives.py streams the tars,
release_metadata.py reads the small files, release_reader.py yields the
images of a split with their labels; ilsvrc2010.py is the TFDS builder that
stores them. This module imports only the standard library, so that the
generator of the mini release (mini.py) needs no TensorFlow either.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Sequence

TRAIN_TAR = "ILSVRC2010_images_train.tar"
VAL_TAR = "ILSVRC2010_images_val.tar"
TEST_TAR = "ILSVRC2010_images_test.tar"
DEVKIT_TAR = "ILSVRC2010_devkit-1.0.tar.gz"
TEST_GROUND_TRUTH = "ILSVRC2010_test_ground_truth.txt"
PATCH_TAR = "patch_images.tar"
REQUIRED_FILES = (
    TRAIN_TAR,
    VAL_TAR,
    TEST_TAR,
    DEVKIT_TAR,
    TEST_GROUND_TRUTH,
    PATCH_TAR,
)
META_MEMBER = "devkit-1.0/data/meta.mat"
VAL_GROUND_TRUTH_MEMBER = (
    "devkit-1.0/data/ILSVRC2010_validation_ground_truth.txt"
)

# Split name -> (image archive, directory of its patches in
# patch_images.tar).
SPLIT_ARCHIVES = {
    "train": (TRAIN_TAR, "train"),
    "validation": (VAL_TAR, "val"),
    "test": (TEST_TAR, "test"),
}

PAPER_IMAGE_SIZE = 256  # §2: shorter side 256, then the central 256x256.

DOWNLOAD_HELP = (
    "The ILSVRC-2010 files are distributed by ImageNet: register (free for "
    "non-commercial research) at https://image-net.org/download-images , "
    "then download them from the ILSVRC-2010 download page linked from "
    "https://image-net.org/challenges/LSVRC/2010/ . Put the files, "
    "unextracted, in the manual directory."
)


# --- Errors. ---
class Ilsvrc2010Error(Exception):
  """Base class of the errors about the release files."""


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
        *(
            f"  - {f}  (looked for {os.path.join(self.manual_dir, f)})"
            for f in self.missing
        ),
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


# --- Manual directory. ---
def missing_manual_files(manual_dir: os.PathLike | str) -> list[str]:
  """Returns the release files that are not in `manual_dir`, in order."""
  return [
      f
      for f in REQUIRED_FILES
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
