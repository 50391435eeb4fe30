"""Tests of the ILSVRC-2010 TFDS builder on the generated mini release.

Expected values are derived independently of the builder: straight from the
archives with `tarfile`, `scipy.io` and PIL, following the release layout in README "Data: ILSVRC-2010".
"""

import gzip
import io
import os
import tarfile

import numpy as np
from PIL import Image
import pytest
import scipy.io
import tensorflow_datasets as tfds

from alexnet_jax import data
from alexnet_jax.data import archives
from alexnet_jax.data import ilsvrc2010
from alexnet_jax.data import release
from alexnet_jax.data import release_metadata
from alexnet_jax.data import release_reader

SPLITS = ("train", "validation", "test")
PATCH_DIR = {"train": "train", "validation": "val", "test": "test"}


# --- Independent readers of the release files. ---
def _tar_files(path_or_bytes):
  """{base name: bytes} of a tar given by path or bytes."""
  return {
      os.path.basename(name): data for name, data in _tar_members(path_or_bytes)
  }


def _original_files(manual_dir, split):
  """{file name: bytes} of a split's main archive (before patching)."""
  if split == "train":
    outer = _tar_files(os.path.join(manual_dir, release.TRAIN_TAR))
    files = {}
    for inner in outer.values():
      files.update(_tar_files(inner))
    return files
  archive = release.SPLIT_ARCHIVES[split][0]
  return _tar_files(os.path.join(manual_dir, archive))


def _meta_classes(manual_dir):
  """[(WNID, words)] of the class synsets, in meta.mat order."""
  with tarfile.open(os.path.join(manual_dir, release.DEVKIT_TAR)) as tar:
    mat = scipy.io.loadmat(
        io.BytesIO(tar.extractfile(release.META_MEMBER).read())
    )
  synsets = mat["synsets"].reshape(-1)
  ids = [int(s["ILSVRC2010_ID"].item()) for s in synsets]
  leaves = [s for s in synsets if int(s["num_children"].item()) == 0]
  assert ids[: len(leaves)] == list(range(1, len(leaves) + 1))
  return [(str(s["WNID"].item()), str(s["words"].item())) for s in leaves]


def _ground_truth_ids(manual_dir, split):
  if split == "validation":
    with tarfile.open(os.path.join(manual_dir, release.DEVKIT_TAR)) as tar:
      text = tar.extractfile(release.VAL_GROUND_TRUTH_MEMBER).read()
  else:
    path = os.path.join(manual_dir, release.TEST_GROUND_TRUTH)
    with open(path, "rb") as f:
      text = f.read()
  return [int(line) for line in text.split()]


def _decode_rgb(jpeg_or_gzip):
  if jpeg_or_gzip[:2] == b"\x1f\x8b":
    jpeg_or_gzip = gzip.decompress(jpeg_or_gzip)
  return Image.open(io.BytesIO(jpeg_or_gzip)).convert("RGB")


@pytest.fixture(scope="module")
def split_sizes(mini_dataset):
  params = mini_dataset.params
  return {
      "train": params.num_classes * params.train_per_class,
      "validation": params.num_classes * params.val_per_class,
      "test": params.num_classes * params.test_per_class,
  }


@pytest.fixture(scope="module")
def stored(mini_builder):
  """{split: {file name: example}} of the built data set, as numpy."""
  out = {}
  for split in SPLITS:
    ds = mini_builder.as_dataset(split=split)
    out[split] = {ex["file_name"].decode(): ex for ex in tfds.as_numpy(ds)}
  return out


# --- The built data set. ---
def test_split_sizes(mini_builder, stored, split_sizes):
  assert split_sizes == {"train": 80, "validation": 30, "test": 30}
  for split, size in split_sizes.items():
    assert mini_builder.info.splits[split].num_examples == size
    assert len(stored[split]) == size


def test_features_contract(mini_builder, mini_dataset):
  features = mini_builder.info.features
  assert set(features.keys()) == {
      "image",
      "label",
      "class_name",
      "wnid",
      "file_name",
  }
  assert features["image"].shape == (256, 256, 3)
  assert features["image"].encoding_format == "jpeg"
  assert features["label"].num_classes == mini_dataset.params.num_classes
  assert mini_builder.builder_config.name == "mini10"


def test_every_image_is_256_rgb(stored):
  for split in SPLITS:
    for ex in stored[split].values():
      assert ex["image"].shape == (256, 256, 3)
      assert ex["image"].dtype == np.uint8


def test_train_labels_follow_meta_mat_order(mini_manual_dir, stored):
  classes = _meta_classes(mini_manual_dir)
  wnids = [w for w, _ in classes]
  # The generator puts IDs out of sorted-WNID order; otherwise this test
  # could not tell meta.mat order from sorted order.
  assert wnids != sorted(wnids)
  originals = _original_files(mini_manual_dir, "train")
  assert set(stored["train"]) == set(originals)
  for name, ex in stored["train"].items():
    wnid = name.split("_")[0]
    assert ex["label"] == wnids.index(wnid), name
    assert ex["wnid"].decode() == wnid
    assert ex["class_name"].decode() == classes[ex["label"]][1]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_eval_labels_follow_ground_truth_by_sorted_name(
    mini_manual_dir, stored, split
):
  classes = _meta_classes(mini_manual_dir)
  ids = _ground_truth_ids(mini_manual_dir, split)
  archive = release.SPLIT_ARCHIVES[split][0]
  with tarfile.open(os.path.join(mini_manual_dir, archive)) as tar:
    tar_order = [os.path.basename(n) for n in tar.getnames()]
  # Tar order differs from name order in the mini release, so a builder
  # that labels by tar order fails here.
  assert tar_order != sorted(tar_order)
  assert len(ids) == len(tar_order) == len(stored[split])
  for i, name in enumerate(sorted(tar_order)):
    ex = stored[split][name]
    assert ex["label"] == ids[i] - 1, name
    assert ex["wnid"].decode() == classes[ids[i] - 1][0]
    assert ex["class_name"].decode() == classes[ids[i] - 1][1]


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_patched_images_replace_blank_ones(
    mini_dataset, mini_manual_dir, stored, split
):
  blank_names = mini_dataset.quirks[PATCH_DIR[split]]["blank"]
  assert blank_names
  originals = _original_files(mini_manual_dir, split)
  patches = _tar_files(os.path.join(mini_manual_dir, release.PATCH_TAR))
  for name in blank_names:
    # In the main archive the image is flat...
    original = np.asarray(_decode_rgb(originals[name]), np.float32)
    assert original.std() < 2.0
    # ...the stored one is the patch's image, which is not.
    image = stored[split][name]["image"].astype(np.float32)
    assert image.std() > 10.0, name
    expected = release_reader.resize_and_center_crop(
        _decode_rgb(patches[name]), 256
    )
    assert np.abs(image - np.asarray(expected, np.float32)).mean() < 6.0


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_gzip_cmyk_and_grayscale_are_decoded_to_rgb(
    mini_dataset, mini_manual_dir, stored, split
):
  quirks = mini_dataset.quirks[PATCH_DIR[split]]
  originals = _original_files(mini_manual_dir, split)
  for quirk in ("gzip", "cmyk", "gray"):
    assert quirks[quirk], quirk
    for name in quirks[quirk]:
      raw = originals[name]
      # The archive really holds the quirk (so the test means something).
      if quirk == "gzip":
        assert raw[:2] == b"\x1f\x8b" and not name.endswith(".gz")
      else:
        mode = Image.open(io.BytesIO(raw)).mode
        assert mode == {"cmyk": "CMYK", "gray": "L"}[quirk]
      image = stored[split][name]["image"].astype(np.float32)
      expected = np.asarray(
          release_reader.resize_and_center_crop(_decode_rgb(raw), 256),
          np.float32,
      )
      assert np.abs(image - expected).mean() < 6.0, (quirk, name)
      # Not flat (a grayscale copy can have little contrast, hence a low
      # bar): the comparison above would also pass for two blank images.
      assert image.std() > 2.0
      if quirk == "gray":
        assert np.abs(image[..., 0] - image[..., 2]).mean() < 3.0


def test_resize_and_center_crop_geometry():
  # A 300x600 (w x h) image: left half black, right half white, with a red
  # band in the middle third of the height.
  array = np.zeros((600, 300, 3), np.uint8)
  array[:, 150:] = 255
  array[200:400] = (255, 0, 0)
  out = np.asarray(
      release_reader.resize_and_center_crop(Image.fromarray(array), 256)
  )
  assert out.shape == (256, 256, 3)
  # Shorter side 300 -> 256, height 600 -> 512, central 256 rows kept: the
  # red band (rows 170..341 of 512) covers rows 42..213 of the crop.
  assert (out[128, 128] == (255, 0, 0)).all()
  assert out[10, 10].max() < 20  # black, above the band
  assert out[10, 245].min() > 235  # white
  assert out[250, 10].max() < 20
  # The same, transposed: a wide image is cropped around its center column.
  wide = np.asarray(
      release_reader.resize_and_center_crop(
          Image.fromarray(array.transpose(1, 0, 2).copy()), 256
      )
  )
  assert wide.shape == (256, 256, 3)
  assert (wide[128, 128] == (255, 0, 0)).all()
  assert wide[10, 10].max() < 20 and wide[245, 10].min() > 235
  assert (wide[128, 30] != (255, 0, 0)).any()  # band ends at column 213
  # Exact size on awkward ratios (rounding must not lose a pixel).
  for size in [(257, 1000), (1000, 257), (255, 256), (101, 103)]:
    out = release_reader.resize_and_center_crop(Image.new("RGB", size), 256)
    assert out.size == (256, 256), size


def test_decode_handles_release_quirks():
  rgb = Image.new("RGB", (40, 30), (200, 50, 120))
  for mode in ("RGB", "CMYK", "L"):
    buffer = io.BytesIO()
    rgb.convert(mode).save(buffer, format="JPEG", quality=95)
    for data_bytes in (buffer.getvalue(), gzip.compress(buffer.getvalue())):
      image = release_reader.decode_image(data_bytes)
      assert image.mode == "RGB" and image.size == (40, 30)
      expected = (200, 50, 120) if mode != "L" else (102,) * 3
      np.testing.assert_allclose(
          np.asarray(image, np.float32).mean((0, 1)), expected, atol=4
      )


# --- Errors. ---
def test_missing_files_error_names_each_file_and_the_directory(
    mini_manual_dir, tmp_path
):
  manual = tmp_path / "manual"
  manual.mkdir()
  present = (release.VAL_TAR, release.DEVKIT_TAR)
  for name in present:
    os.symlink(os.path.join(mini_manual_dir, name), manual / name)
  builder = data.get_builder(
      "ilsvrc2010_mini",
      data_dir=str(tmp_path / "tfds"),
  )
  with pytest.raises(release.MissingManualFilesError) as info:
    data.prepare(builder, manual_dir=str(manual))
  message = str(info.value)
  missing = [f for f in release.REQUIRED_FILES if f not in present]
  assert sorted(info.value.missing) == sorted(missing)
  for name in missing:
    assert name in message
  for name in present:
    assert name not in message
  assert str(manual) in message
  assert "image-net.org" in message
  assert not builder.is_prepared()


def test_missing_directory_error_from_tfds_entry_point(tmp_path):
  # Called through TFDS directly (not `prepare`), on a directory that does
  # not exist: still our error, not TFDS's AssertionError.
  builder = ilsvrc2010.Ilsvrc2010(
      data_dir=str(tmp_path / "tfds"), config=ilsvrc2010.make_config(10)
  )
  manual = tmp_path / "does_not_exist"
  with pytest.raises(release.MissingManualFilesError) as info:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
  message = str(info.value)
  assert "does not exist" in message and str(manual) in message
  for name in release.REQUIRED_FILES:
    assert name in message


def test_class_count_mismatch_is_a_clear_error(mini_manual_dir, tmp_path):
  builder = data.get_builder("ilsvrc2010", data_dir=str(tmp_path))
  with pytest.raises(release.ReleaseFormatError, match=r"10 classes.*1000"):
    data.prepare(builder, manual_dir=mini_manual_dir)


def _with_truncated_val_image(mini_manual_dir, tmp_path):
  """A copy of the release whose val tar has one truncated JPEG."""
  manual = tmp_path / "manual"
  manual.mkdir()
  for name in release.REQUIRED_FILES:
    if name != release.VAL_TAR:
      os.symlink(os.path.join(mini_manual_dir, name), manual / name)
  source = os.path.join(mini_manual_dir, release.VAL_TAR)
  with (
      tarfile.open(source) as src,
      tarfile.open(manual / release.VAL_TAR, "w") as dst,
  ):
    members = src.getmembers()
    victim = sorted(m.name for m in members)[4]
    for member in members:
      payload = src.extractfile(member).read()
      if member.name == victim:
        assert payload[:2] == b"\xff\xd8"  # A plain JPEG.
        payload = payload[: len(payload) // 2]
        member.size = len(payload)
      dst.addfile(member, io.BytesIO(payload))
  return str(manual), victim


def test_corrupt_image_fails_the_build_by_default(mini_manual_dir, tmp_path):
  manual, victim = _with_truncated_val_image(mini_manual_dir, tmp_path)
  builder = data.get_builder("ilsvrc2010_mini", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(release.CorruptImageError) as info:
    data.prepare(builder, manual_dir=manual)
  _assert_clean(info.value, victim, release.VAL_TAR, "skip_corrupt_images=True")
  assert info.value.member == victim
  assert not builder.is_prepared()


def test_corrupt_image_is_skipped_when_asked(
    mini_manual_dir, stored, split_sizes, tmp_path
):
  manual, victim = _with_truncated_val_image(mini_manual_dir, tmp_path)
  builder = data.get_builder(
      "ilsvrc2010_mini",
      data_dir=str(tmp_path / "tfds"),
      skip_corrupt_images=True,
  )
  data.prepare(builder, manual_dir=manual)
  assert builder.skipped_images == [f"{release.VAL_TAR}:{victim}"]
  assert builder.info.splits["validation"].num_examples == (
      split_sizes["validation"] - 1
  )
  assert builder.info.splits["train"].num_examples == split_sizes["train"]
  # The remaining labels are still those of the ground truth: compare with
  # the full build, which was checked against the ground truth above.
  got = {
      ex["file_name"].decode(): int(ex["label"])
      for ex in tfds.as_numpy(builder.as_dataset(split="validation"))
  }
  expected = {
      name: int(ex["label"])
      for name, ex in stored["validation"].items()
      if name != victim
  }
  assert got == expected


# --- The module API. ---
def test_get_builder_rejects_unknown_names_and_options(tmp_path):
  with pytest.raises(ValueError, match="Unknown data set"):
    data.get_builder("ilsvrc2011", data_dir=str(tmp_path))
  with pytest.raises(TypeError, match="num_classes"):
    data.get_builder("ilsvrc2010", data_dir=str(tmp_path), num_classes=10)


def test_dataset_constants():
  assert {n: s.num_classes for n, s in data.DATASETS.items()} == {
      "ilsvrc2010": 1000,
      "ilsvrc2010_mini": 10,
      "imagenet2012": 1000,
      "imagenette": 10,
  }
  assert data.DATASETS["ilsvrc2010"].test_split == "test"
  assert data.DATASETS["ilsvrc2010"].stored_image_size == 256
  assert data.DATASETS["imagenet2012"].stored_image_size is None


def test_imagenet2012_missing_files_error(tmp_path):
  builder = data.get_builder("imagenet2012", data_dir=str(tmp_path))
  with pytest.raises(release.MissingManualFilesError) as info:
    data.prepare(builder, manual_dir=str(tmp_path / "m"))
  for name in data.IMAGENET2012_FILES:
    assert name in str(info.value)


def test_configs_are_shared_objects():
  # TFDS rejects two different config objects with the same name.
  assert ilsvrc2010.make_config(10) is ilsvrc2010.MINI_CONFIG
  assert ilsvrc2010.make_config() is ilsvrc2010.PAPER_CONFIG
  config = ilsvrc2010.make_config(7, image_size=64)
  assert (config.name, config.num_classes, config.image_size) == (
      "mini7_64px",
      7,
      64,
  )
  assert ilsvrc2010.make_config(7, image_size=64) is config


def test_generated_release_has_the_files_the_builder_reads(mini_manual_dir):
  # The files on disk, not the names' constants (both modules import those
  # from release.py): a generator that wrote other names fails here.
  assert release.missing_manual_files(mini_manual_dir) == []
  on_disk = set(os.listdir(mini_manual_dir))
  assert set(release.REQUIRED_FILES) <= on_disk


# --- Releases laid out like the real one. ---
# The builder must read every layout that a reader of the real release
# accepts (mila-iqia/fuel's converter is the reference): member paths with
# prefixes or "./", patches found by the directory just above them, any
# case of the .JPEG extension, and meta.mat as MATLAB writes it. These tests
# rewrite the generated release into such layouts.
_SYNSET_FIELDS = release_metadata.SYNSET_FIELDS


def _tar_members(path_or_bytes):
  """[(name, bytes)] of the regular files of a tar, in tar order."""
  if isinstance(path_or_bytes, bytes):
    tar = tarfile.open(fileobj=io.BytesIO(path_or_bytes))
  else:
    tar = tarfile.open(path_or_bytes)
  with tar:
    return [
        (m.name, tar.extractfile(m).read())
        for m in tar.getmembers()
        if m.isfile()
    ]


def _tar_bytes(members, gz=False):
  """A tar of [(name, bytes or None for a directory)], as `tar` writes it."""
  buffer = io.BytesIO()
  with tarfile.open(
      fileobj=buffer, mode="w:gz" if gz else "w", format=tarfile.GNU_FORMAT
  ) as tar:
    for name, payload in members:
      info = tarfile.TarInfo(name)
      if payload is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
      else:
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
  return buffer.getvalue()


def _with_dirs(members, dirs):
  """Directory entries first, as a real `tar cf` of a tree has them."""
  return [(d, None) for d in dirs] + list(members)


def _meta_entries(manual_dir):
  """The synsets of meta.mat as dicts of Python values, in file order."""
  with tarfile.open(os.path.join(manual_dir, release.DEVKIT_TAR)) as tar:
    mat = scipy.io.loadmat(
        io.BytesIO(tar.extractfile(release.META_MEMBER).read()),
        squeeze_me=True,
    )
  entries = []
  for s in np.atleast_1d(mat["synsets"]):
    entries.append(
        {
            f: (
                [int(c) for c in np.atleast_1d(s[f])]
                if f == "children"
                else str(s[f])
                if f in ("WNID", "words", "gloss")
                else int(s[f])
            )
            for f in _SYNSET_FIELDS
        }
    )
  return entries


def _real_style_entries(entries):
  """Like the real meta.mat: inner nodes have no training images, and one
  inner node has a single child (which squeeze_me=True makes a scalar)."""
  entries = [dict(e) for e in entries]
  for e in entries:
    if e["num_children"]:
      e["num_train_images"] = 0
  entries.append(
      {
          "ILSVRC2010_ID": max(e["ILSVRC2010_ID"] for e in entries) + 1,
          "WNID": "n99999999",
          "words": "lone parent",
          "gloss": "",
          "num_children": 1,
          "children": [1],
          "wordnet_height": 1,
          "num_train_images": 0,
      }
  )
  return entries


def _matlab_meta_mat(entries, layout, fields=_SYNSET_FIELDS):
  """meta.mat bytes with `synsets` as MATLAB would store it.

  Layouts: "row" (a 1xN struct array of doubles, leaves' children `[]`,
  i.e. 0x0), "column" (Nx1, integer classes, leaves' children 1x0),
  "cell" (a cell array of 1x1 structs) and "shuffled" (row, with the inner
  nodes first and the classes in reverse ID order).
  """
  if layout == "shuffled":
    entries = [e for e in entries if e["num_children"]] + [
        e for e in reversed(entries) if not e["num_children"]
    ]
  number_type = np.uint16 if layout == "column" else np.float64

  def value(entry, field):
    v = entry[field]
    if field == "children":
      if not v:
        return np.zeros((1, 0) if layout == "column" else (0, 0))
      return np.asarray(v, number_type).reshape(1, -1)
    if field in ("WNID", "words", "gloss") or isinstance(v, str):
      return v
    return np.array([[v]], number_type)

  dtype = [(f, object) for f in fields]
  n = len(entries)
  if layout == "cell":
    synsets = np.empty((1, n), dtype=object)
    for i, e in enumerate(entries):
      one = np.empty((1, 1), dtype=dtype)
      for f in fields:
        one[f][0, 0] = value(e, f)
      synsets[0, i] = one
  else:
    shape = (n, 1) if layout == "column" else (1, n)
    synsets = np.empty(shape, dtype=dtype)
    for i, e in enumerate(entries):
      index = (i, 0) if layout == "column" else (0, i)
      for f in fields:
        synsets[f][index] = value(e, f)
  buffer = io.BytesIO()
  scipy.io.savemat(
      buffer,
      {"synsets": synsets, "cost_matrix": np.zeros((n, n), np.uint8)},
      format="5",
  )
  return buffer.getvalue()


def _expected_classes(entries):
  """[(WNID, words)] by label: the leaves, sorted by ILSVRC2010_ID."""
  leaves = sorted(
      (e for e in entries if not e["num_children"]),
      key=lambda e: e["ILSVRC2010_ID"],
  )
  assert [e["ILSVRC2010_ID"] for e in leaves] == list(range(1, len(leaves) + 1))
  return [(e["WNID"], e["words"]) for e in leaves]


@pytest.mark.parametrize("layout", ["row", "column", "cell", "shuffled"])
def test_meta_mat_in_matlab_layouts(mini_manual_dir, layout):
  entries = _real_style_entries(_meta_entries(mini_manual_dir))
  mat_bytes = _matlab_meta_mat(entries, layout)
  # The file really has the layout (so the test means something): read as
  # fuel does (squeeze_me=True), leaves have empty children and the lone
  # parent's single child is a scalar.
  squeezed = scipy.io.loadmat(io.BytesIO(mat_bytes), squeeze_me=True)
  if layout != "cell":
    synsets = squeezed["synsets"]
    assert synsets.shape == (len(entries),)
    for s in synsets:
      if int(s["num_children"]) == 0:
        assert np.asarray(s["children"]).size == 0
      if s["WNID"] == "n99999999":
        assert np.ndim(s["children"]) == 0
  num_classes = sum(1 for e in entries if not e["num_children"])
  classes = release_metadata.class_synsets(
      release_metadata.parse_meta_mat(mat_bytes), num_classes
  )
  assert [(c.wnid, c.words) for c in classes] == _expected_classes(entries)
  assert [c.ilsvrc2010_id for c in classes] == list(range(1, num_classes + 1))
  assert all(c.children == () for c in classes)


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("garbage", r"meta\.mat is not a readable MAT-file"),
        ("no_synsets", r"has no variable 'synsets'"),
        ("no_wnid", r"lacks the field\(s\) \['WNID'\]"),
        ("bad_id", r"synsets\(3\)\.ILSVRC2010_ID cannot be read"),
        ("leaf_ids", r"ILSVRC2010_IDs 1\.\.10"),
    ],
)
def test_bad_meta_mat_is_one_clean_error(mini_manual_dir, breakage, expected):
  entries = _meta_entries(mini_manual_dir)
  if breakage == "garbage":
    mat_bytes = b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 4
  elif breakage == "no_synsets":
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"classes": np.arange(3)})
    mat_bytes = buffer.getvalue()
  elif breakage == "no_wnid":
    fields = [f for f in _SYNSET_FIELDS if f != "WNID"]
    mat_bytes = _matlab_meta_mat(entries, "row", fields)
  elif breakage == "bad_id":
    entries[2]["ILSVRC2010_ID"] = "three"
    mat_bytes = _matlab_meta_mat(entries, "cell")
  else:
    entries[0]["ILSVRC2010_ID"] = 99
    mat_bytes = _matlab_meta_mat(entries, "row")
  with pytest.raises(release.ReleaseFormatError, match=expected) as info:
    release_metadata.class_synsets(
        release_metadata.parse_meta_mat(mat_bytes), 10
    )
  _assert_clean(info.value, "Download the devkit")


def _real_style_release(mini_manual_dir, out_dir):
  """The mini release rewritten in layouts the real release may have.

  * train: per-class tars as "./<WNID>.tar", their images under
    "<WNID>/", the patched images with a lower-case ".jpeg";
  * val: images under "./ILSVRC2010_images_val/val/", all ".jpeg";
  * test: images under "test/", ".JPEG", their patch ".jpeg";
  * patch_images.tar: under "patch_images/<split>/" (and "./"), with a
    README and directory entries;
  * devkit: "./devkit-1.0/..." with a MATLAB-style meta.mat (1xN struct
    array, inner nodes with no images, a cost matrix).

  Returns {split: {lower-cased file name: file name in the variant}}.
  """
  os.makedirs(out_dir)
  renamed = {"train": {}, "validation": {}, "test": {}}
  patches = _tar_members(os.path.join(mini_manual_dir, release.PATCH_TAR))
  patched = {os.path.basename(n) for n, _ in patches}

  def lower_ext(name):
    stem, ext = os.path.splitext(name)
    return stem + ext.lower()

  outer = []
  for class_tar, inner in _tar_members(
      os.path.join(mini_manual_dir, release.TRAIN_TAR)
  ):
    wnid = class_tar[: -len(".tar")]
    members = []
    for name, payload in _tar_members(inner):
      new = lower_ext(name) if name in patched else name
      renamed["train"][name.lower()] = new
      members.append((f"{wnid}/{new}", payload))
    outer.append(
        (f"./{class_tar}", _tar_bytes(_with_dirs(members, [f"{wnid}/"])))
    )
  files = {release.TRAIN_TAR: _tar_bytes(_with_dirs(outer, ["./"]))}

  val = []
  for name, payload in _tar_members(
      os.path.join(mini_manual_dir, release.VAL_TAR)
  ):
    renamed["validation"][name.lower()] = lower_ext(name)
    val.append((f"./ILSVRC2010_images_val/val/{lower_ext(name)}", payload))
  files[release.VAL_TAR] = _tar_bytes(
      _with_dirs(
          val,
          ["./", "./ILSVRC2010_images_val/", "./ILSVRC2010_images_val/val/"],
      )
  )
  test = []
  for name, payload in _tar_members(
      os.path.join(mini_manual_dir, release.TEST_TAR)
  ):
    renamed["test"][name.lower()] = name
    test.append((f"test/{name}", payload))
  files[release.TEST_TAR] = _tar_bytes(_with_dirs(test, ["test/"]))

  patch_members = [("patch_images/README.txt", b"Replacement images.\n")]
  for name, payload in patches:
    split, base = name.split("/")
    prefix = "./patch_images" if split == "val" else "patch_images"
    if split == "test":
      base = lower_ext(base)
    patch_members.append((f"{prefix}/{split}/{base}", payload))
  files[release.PATCH_TAR] = _tar_bytes(
      _with_dirs(
          patch_members,
          [
              "patch_images/",
              "patch_images/train/",
              "./patch_images/val/",
              "patch_images/test/",
          ],
      )
  )

  devkit = []
  for name, payload in _tar_members(
      os.path.join(mini_manual_dir, release.DEVKIT_TAR)
  ):
    if name == release.META_MEMBER:
      payload = _matlab_meta_mat(
          _real_style_entries(_meta_entries(mini_manual_dir)), "row"
      )
    devkit.append((f"./{name}", payload))
  files[release.DEVKIT_TAR] = _tar_bytes(
      _with_dirs(devkit, ["./devkit-1.0/", "./devkit-1.0/data/"]), gz=True
  )
  for name, payload in files.items():
    with open(os.path.join(out_dir, name), "wb") as f:
      f.write(payload)
  os.symlink(
      os.path.join(mini_manual_dir, release.TEST_GROUND_TRUTH),
      os.path.join(out_dir, release.TEST_GROUND_TRUTH),
  )
  return renamed


@pytest.fixture(scope="module")
def mini_meta(mini_manual_dir):
  return release_metadata.load_release_metadata(mini_manual_dir, 10)


def test_real_style_release_reads_like_ours(
    mini_manual_dir, mini_meta, tmp_path
):
  manual = str(tmp_path / "real_style")
  renamed = _real_style_release(mini_manual_dir, manual)
  # The variant really differs where it should.
  assert renamed["validation"] and all(
      n.endswith(".jpeg") for n in renamed["validation"].values()
  )
  assert any(n.endswith(".jpeg") for n in renamed["train"].values())
  meta = release_metadata.load_release_metadata(manual, 10)
  assert meta.classes == mini_meta.classes
  assert (meta.validation_labels, meta.test_labels) == (
      mini_meta.validation_labels,
      mini_meta.test_labels,
  )
  for split in SPLITS:
    ours = {
        r.file_name.lower(): r
        for r in release_reader.iter_raw_images(
            mini_manual_dir, split, mini_meta
        )
    }
    theirs = list(release_reader.iter_raw_images(manual, split, meta))
    assert len(theirs) == len(ours) == len(renamed[split])
    assert (
        sum(r.patched for r in theirs)
        == sum(r.patched for r in ours.values())
        > 0
    ), split
    for raw in theirs:
      assert raw.file_name == renamed[split][raw.file_name.lower()]
      expected = ours[raw.file_name.lower()]
      assert (raw.label, raw.patched) == (expected.label, expected.patched)
      assert raw.data == expected.data, raw.member


def test_real_style_release_builds_like_ours(
    mini_manual_dir, stored, split_sizes, tmp_path
):
  manual = str(tmp_path / "real_style")
  _real_style_release(mini_manual_dir, manual)
  builder = data.get_builder(
      "ilsvrc2010_mini",
      data_dir=str(tmp_path / "tfds"),
      num_workers=2,
  )
  data.prepare(builder, manual_dir=manual)
  for split, size in split_sizes.items():
    got = {
        ex["file_name"].decode().lower(): ex
        for ex in tfds.as_numpy(builder.as_dataset(split=split))
    }
    assert len(got) == size
    for name, ex in stored[split].items():
      assert got[name.lower()]["label"] == ex["label"], name
      np.testing.assert_array_equal(got[name.lower()]["image"], ex["image"])


@pytest.mark.parametrize("prefix", ["", "./", "ILSVRC2010_devkit-1.0/"])
def test_devkit_members_are_found_under_any_prefix(tmp_path, prefix):
  meta = prefix + release.META_MEMBER
  path = str(tmp_path / "devkit.tar.gz")
  with open(path, "wb") as f:
    f.write(
        _tar_bytes(
            [
                (prefix + "devkit-1.0/evaluation/meta.mat", b"decoy"),
                (meta, b"meta"),
                (prefix + "devkit-1.0/data/other.txt", b"other"),
            ],
            gz=True,
        )
    )
  assert archives.read_members(path, [release.META_MEMBER]) == {
      release.META_MEMBER: b"meta"
  }
  # Two equally good candidates: an error naming both, not a guess.
  with open(path, "wb") as f:
    f.write(_tar_bytes([("a/meta.mat", b"1"), ("b/meta.mat", b"2")], gz=True))
  with pytest.raises(release.ReleaseFormatError, match="a/meta.mat.*b/m"):
    archives.read_members(path, [release.META_MEMBER])


def test_patches_outside_split_directories_are_ignored(tmp_path):
  jpeg = io.BytesIO()
  Image.new("RGB", (8, 8), (1, 2, 3)).save(jpeg, format="JPEG")
  path = str(tmp_path / "patches.tar")
  with open(path, "wb") as f:
    f.write(
        _tar_bytes(
            [
                ("a/b/train/x_1.JPEG", jpeg.getvalue()),
                ("./validation/ILSVRC2010_val_00000001.jpg", jpeg.getvalue()),
                (
                    "misc/test_images/y.JPEG",
                    jpeg.getvalue(),
                ),  # No split directory.
                ("test/notes.txt", b"not an image"),
            ]
        )
    )
  assert release_metadata.read_patches(path) == {
      "train": {"x_1.jpeg": jpeg.getvalue()},
      "val": {"ILSVRC2010_val_00000001.jpg": jpeg.getvalue()},
      "test": {},
  }


# --- Bad input: one clean `Ilsvrc2010Error` naming the file. ---
def _assert_clean(error, *needles):
  """One error of ours, whose message names the file and what to do."""
  assert isinstance(error, release.Ilsvrc2010Error)
  # No tarfile/PIL/scipy traceback chained to it.
  assert error.__cause__ is None
  assert error.__context__ is None or error.__suppress_context__
  for needle in needles:
    assert needle in str(error), (needle, str(error))


def _copy_release(mini_manual_dir, manual, replace):
  """A copy (symlinks) of the release with some files' bytes replaced."""
  os.makedirs(manual, exist_ok=True)
  for name in release.REQUIRED_FILES:
    target = os.path.join(manual, name)
    if name in replace:
      with open(target, "wb") as f:
        f.write(replace[name])
    else:
      os.symlink(os.path.join(mini_manual_dir, name), target)
  return manual


def _cut_points(path):
  """Where to cut a tar: mid-data, on a member boundary, inside a header."""
  with tarfile.open(path) as tar:
    members = tar.getmembers()
  second = members[1].offset  # The header of the second member.
  return {
      "half": os.path.getsize(path) // 2,
      "member_boundary": second,
      "inside_header": second + 100,
      "inside_first_member": members[0].offset_data + 10,
  }


@pytest.mark.parametrize(
    "cut", ["half", "member_boundary", "inside_header", "inside_first_member"]
)
@pytest.mark.parametrize("split", ["train", "validation"])
def test_truncated_archive_is_one_clean_error(
    mini_manual_dir, mini_meta, tmp_path, split, cut
):
  archive = release.SPLIT_ARCHIVES[split][0]
  source = os.path.join(mini_manual_dir, archive)
  with open(source, "rb") as f:
    payload = f.read()[: _cut_points(source)[cut]]
  manual = _copy_release(
      mini_manual_dir, str(tmp_path / "m"), {archive: payload}
  )
  with pytest.raises(release.ArchiveError) as info:
    for _ in release_reader.iter_raw_images(manual, split, mini_meta):
      pass
  _assert_clean(
      info.value,
      os.path.join(manual, archive),
      "truncated",
      "Download it again",
  )


def test_train_tar_cut_in_half_fails_the_build_cleanly(
    mini_manual_dir, tmp_path
):
  source = os.path.join(mini_manual_dir, release.TRAIN_TAR)
  with open(source, "rb") as f:
    payload = f.read()
  manual = _copy_release(
      mini_manual_dir,
      str(tmp_path / "m"),
      {release.TRAIN_TAR: payload[: len(payload) // 2]},
  )
  builder = data.get_builder(
      "ilsvrc2010_mini",
      data_dir=str(tmp_path / "tfds"),
      num_workers=2,
  )
  with pytest.raises(release.ArchiveError) as info:
    data.prepare(builder, manual_dir=manual)
  # Cut inside a per-class tar: the error names it too.
  _assert_clean(
      info.value, release.TRAIN_TAR, "inside its member", ".tar", "truncated"
  )
  assert not builder.is_prepared()


@pytest.mark.parametrize("name", [release.DEVKIT_TAR, release.PATCH_TAR])
@pytest.mark.parametrize("damage", ["half", "not_a_tar"])
def test_bad_small_archive_is_one_clean_error(
    mini_manual_dir, tmp_path, name, damage
):
  with open(os.path.join(mini_manual_dir, name), "rb") as f:
    payload = f.read()
  if damage == "half":
    payload = payload[: len(payload) // 2]
  else:
    payload = b"<html>Login required</html>\n" * 40
  manual = _copy_release(mini_manual_dir, str(tmp_path / "m"), {name: payload})
  with pytest.raises(release.ArchiveError) as info:
    release_metadata.load_release_metadata(manual, 10)
  _assert_clean(info.value, os.path.join(manual, name), "Download it again")


def _jpeg_bytes():
  buffer = io.BytesIO()
  Image.new("RGB", (40, 30), (200, 50, 120)).save(buffer, format="JPEG")
  return buffer.getvalue()


def _huge_claimed_size(jpeg):
  """The JPEG with its frame header claiming 65000 x 65000 pixels."""
  sof = jpeg.index(b"\xff\xc0")
  return jpeg[: sof + 5] + b"\xfd\xe8\xfd\xe8" + jpeg[sof + 9 :]


@pytest.mark.parametrize(
    "damage",
    ["truncated", "garbage", "truncated_gzip", "bad_gzip", "huge_claimed_size"],
)
def test_corrupt_image_is_one_clean_error(damage):
  jpeg = _jpeg_bytes()
  payload = {
      "truncated": jpeg[: len(jpeg) // 2],
      "garbage": bytes(range(256)),
      "truncated_gzip": gzip.compress(jpeg)[:40],
      "bad_gzip": b"\x1f\x8b" + b"\x00" * 40,
      "huge_claimed_size": _huge_claimed_size(jpeg),
  }[damage]
  raw = release_reader.RawImage(
      archive="ILSVRC2010_images_val.tar",
      member="val/x.JPEG",
      file_name="x.JPEG",
      label=0,
      data=payload,
      patched=False,
  )
  with pytest.raises(release.CorruptImageError) as info:
    release_reader.process_image(raw, 32)
  _assert_clean(
      info.value,
      "'val/x.JPEG'",
      "ILSVRC2010_images_val.tar",
      "skip_corrupt_images=True",
  )


def _fill(directory, names):
  """Creates small files (and directories, for names ending in "/")."""
  os.makedirs(directory, exist_ok=True)
  for name in names:
    path = os.path.join(directory, name)
    if name.endswith("/"):
      os.makedirs(path)
    else:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(b"x")


@pytest.mark.parametrize(
    "contents, needles",
    [
        # An ILSVRC-2012 manual directory.
        (
            [
                "ILSVRC2012_img_train.tar",
                "ILSVRC2012_img_val.tar",
                "ILSVRC2012_devkit_t12.tar.gz",
            ],
            ["ILSVRC-2012", "ILSVRC2012_img_train.tar", "imagenet2012"],
        ),
        # Another year, mixed with a stray 2010 file.
        (
            ["ILSVRC2011_images_train.tar", "ILSVRC2010_test_ground_truth.txt"],
            ["ILSVRC-2011", "ILSVRC2011_images_train.tar"],
        ),
        # The release one level down.
        (
            [
                "ilsvrc2010/" + release.TRAIN_TAR,
                "ilsvrc2010/" + release.DEVKIT_TAR,
            ],
            ["one directory further down", "ilsvrc2010"],
        ),
        # An extracted release.
        (
            ["ILSVRC2010_images_train/", "n01440764.tar", "devkit-1.0/"],
            ["extracted", "unextracted", "n01440764.tar"],
        ),
        # Some other directory.
        (
            ["holiday.png", "notes.txt", "photos/"],
            [
                "None of the release files is here",
                "notes.txt",
                "right directory",
            ],
        ),
        ([], ["The directory is empty"]),
    ],
)
def test_wrong_manual_dir_is_recognized(tmp_path, contents, needles):
  manual = str(tmp_path / "manual")
  _fill(manual, contents)
  with pytest.raises(release.MissingManualFilesError) as info:
    release.check_manual_dir(manual)
  assert isinstance(info.value, release.Ilsvrc2010Error)
  for needle in needles + [release.TRAIN_TAR, "image-net.org"]:
    assert needle in str(info.value), (needle, str(info.value))


def test_ilsvrc2012_manual_dir_fails_the_build_cleanly(tmp_path):
  manual = str(tmp_path / "manual")
  _fill(
      manual,
      [
          "ILSVRC2012_img_train.tar",
          "ILSVRC2012_img_val.tar",
          "ILSVRC2012_devkit_t12.tar.gz",
      ],
  )
  builder = data.get_builder("ilsvrc2010", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(release.MissingManualFilesError) as info:
    data.prepare(builder, manual_dir=manual)
  assert "ILSVRC-2012" in str(info.value)
  assert "imagenet2012" in str(info.value)
  # A partial ILSVRC-2010 release gets no diagnosis, just the list.
  assert release.diagnose_manual_dir(str(tmp_path)) is not None
  _fill(str(tmp_path / "partial"), [release.TRAIN_TAR])
  assert release.diagnose_manual_dir(str(tmp_path / "partial")) is None
