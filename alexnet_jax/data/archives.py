"""Streaming the release's tar archives, never extracting them.

The archives are streamed (the train tar is ~130 GB): nothing is extracted
to disk and no archive is read into memory whole. Members are found by
their base names, whatever directory prefix (or "./") they carry. A tar cut
at a member boundary, which `tarfile` takes for its end, is caught by
checking the end-of-archive marker; every read error of an archive becomes
one `release.ArchiveError` naming the file (and member).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import io
import os
import tarfile
import zlib
from typing import Callable, Iterator, Sequence

from alexnet_jax.data.release import ArchiveError
from alexnet_jax.data.release import Ilsvrc2010Error
from alexnet_jax.data.release import ReleaseFormatError

# What reading a damaged archive can raise: tarfile.ReadError (a short
# member, a bad first header), EOFError and zlib.error (a cut or damaged
# gzip stream), gzip.BadGzipFile and other OSErrors.
_ARCHIVE_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


@contextlib.contextmanager
def archive_errors(path: str, member: Callable[[], str | None] = lambda: None):
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


def check_end_of_archive(path: str, tar: tarfile.TarFile) -> None:
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


def member_parts(name: str) -> list[str]:
  """The path components of a tar member name, without "." and "" parts."""
  return [p for p in name.split("/") if p not in ("", ".")]


def base_name(name: str) -> str:
  parts = member_parts(name)
  return parts[-1] if parts else ""


def find_member(names: Sequence[str], wanted: str, path: str) -> str:
  """The member of `names` that is `wanted`, whatever its path prefix.

  The exact path (after dropping "./") wins, then a path ending in it (a
  prefixed copy), then a unique member with the same base name.
  """
  wanted_parts = member_parts(wanted)
  by_rank = collections.defaultdict(list)
  for name in names:
    parts = member_parts(name)
    if parts == wanted_parts:
      by_rank[0].append(name)
    elif parts[-len(wanted_parts) :] == wanted_parts:
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


def read_members(path: str, names: Sequence[str]) -> dict[str, bytes]:
  """Reads the named members of a (possibly compressed) tar, streaming it.

  A member is found whatever directory prefix it carries (`find_member`);
  the result is keyed by the names asked for.
  """
  base_names = {member_parts(n)[-1] for n in names}
  found: dict[str, bytes] = {}
  with archive_errors(path):
    with tarfile.open(path, mode="r|*") as tar:
      for member in tar:
        if member.isfile() and base_name(member.name) in base_names:
          found[member.name] = tar.extractfile(member).read()
        tar.members = []
      check_end_of_archive(path, tar)
  return {n: found[find_member(list(found), n, path)] for n in names}


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
    with archive_errors(path):
      with tarfile.open(path, mode="r|*") as tar:
        yield from _iter_files(tar)
        check_end_of_archive(path, tar)
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
  with archive_errors(path):
    with tarfile.open(path, mode="r:") as tar:
      for member in tar:
        if member.isfile():
          names.append(base_name(member.name))
        tar.members = []
      check_end_of_archive(path, tar)
  return names
