"""The images of a release split with their labels, decoded and rescaled.

TensorFlow-free: `iter_examples` yields what the TFDS builder
(ilsvrc2010.py) stores, and can be reused without TFDS, e.g. for a
baseline. Train labels come from the per-class tars' WNIDs, validation and
test labels from the ground truth (release_metadata.py); the patches
replace the release's blank images. Every image is rescaled so its shorter
side is `image_size` (256 in the paper) and center-cropped to `image_size`
x `image_size` (§2); CMYK, grayscale and gzip-compressed JPEGs (quirks of
the release) are decoded to RGB.
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
from typing import Any, Callable, Iterable, Iterator

from absl import logging
from PIL import Image

from alexnet_jax.data import archives
from alexnet_jax.data import release
from alexnet_jax.data.release_metadata import ReleaseMetadata
from alexnet_jax.data.release_metadata import image_key
from alexnet_jax.data.release import CorruptImageError
from alexnet_jax.data.release import PAPER_IMAGE_SIZE
from alexnet_jax.data.release import ReleaseFormatError

# Quality of the re-encoded, cropped images. High enough that the stored
# copy adds little beyond the original JPEG artifacts.
JPEG_QUALITY = 90
# JPEGs in the release that are gzip-compressed without a .gz suffix
# (a quirk of the release) start with the gzip magic bytes.
_GZIP_MAGIC = b"\x1f\x8b"


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
  archive_name, patch_dir = release.SPLIT_ARCHIVES[split]
  path = os.path.join(os.fspath(manual_dir), archive_name)
  patches = meta.patches[patch_dir]
  used: set[str] = set()
  if split == "train":
    yield from _iter_train_images(path, meta, patches, used)
  else:
    labels = meta.labels_for(split)
    names = archives.list_tar_file_names(path)
    if len(names) != len(labels) or len(set(names)) != len(names):
      raise ReleaseFormatError(
          f"{archive_name} holds {len(names)} files ({len(set(names))} "
          f"distinct names) but the ground truth has {len(labels)} lines."
      )
    index_of = {name: i for i, name in enumerate(sorted(names))}
    for member, data in archives.iter_tar_files(path):
      file_name = archives.base_name(member)
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
  with archives.archive_errors(path, lambda: current):
    for class_tar, class_files in _iter_class_tars(path):
      current = class_tar
      wnid = os.path.splitext(archives.base_name(class_tar))[0]
      if wnid not in label_of_wnid:
        raise ReleaseFormatError(
            f"{archive_name}: class tar {class_tar!r} names no class of "
            "meta.mat."
        )
      seen.add(wnid)
      for member, data in class_files:
        file_name = archives.base_name(member)
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
        yield member.name, archives.iter_tar_files(outer.extractfile(member))
      outer.members = []
    archives.check_end_of_archive(path, outer)


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
_DECODE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    zlib.error,
    SyntaxError,
    Image.DecompressionBombError,
)


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
