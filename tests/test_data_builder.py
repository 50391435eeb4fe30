"""Tests of the ILSVRC-2010 TFDS builder on the generated mini release.

Expected values are derived independently of the builder: straight from the
archives with `tarfile`, `scipy.io` and PIL, following PAPER.md §3.
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
from alexnet_jax.data import ilsvrc2010
from alexnet_jax.data import mini

SPLITS = ("train", "validation", "test")
PATCH_DIR = {"train": "train", "validation": "val", "test": "test"}


# --- Independent readers of the release files. ---
def _tar_files(path_or_bytes):
  """{base name: bytes} of a tar given by path or bytes."""
  if isinstance(path_or_bytes, bytes):
    tar = tarfile.open(fileobj=io.BytesIO(path_or_bytes))
  else:
    tar = tarfile.open(path_or_bytes)
  with tar:
    return {
        os.path.basename(m.name): tar.extractfile(m).read()
        for m in tar.getmembers()
        if m.isfile()
    }


def _original_files(manual_dir, split):
  """{file name: bytes} of a split's main archive (before patching)."""
  if split == "train":
    outer = _tar_files(os.path.join(manual_dir, ilsvrc2010.TRAIN_TAR))
    files = {}
    for inner in outer.values():
      files.update(_tar_files(inner))
    return files
  archive = ilsvrc2010.SPLIT_ARCHIVES[split][0]
  return _tar_files(os.path.join(manual_dir, archive))


def _meta_classes(manual_dir):
  """[(WNID, words)] of the class synsets, in meta.mat order."""
  with tarfile.open(os.path.join(manual_dir, ilsvrc2010.DEVKIT_TAR)) as tar:
    mat = scipy.io.loadmat(
        io.BytesIO(tar.extractfile(ilsvrc2010.META_MEMBER).read())
    )
  synsets = mat["synsets"].reshape(-1)
  ids = [int(s["ILSVRC2010_ID"].item()) for s in synsets]
  leaves = [s for s in synsets if int(s["num_children"].item()) == 0]
  assert ids[: len(leaves)] == list(range(1, len(leaves) + 1))
  return [(str(s["WNID"].item()), str(s["words"].item())) for s in leaves]


def _ground_truth_ids(manual_dir, split):
  if split == "validation":
    with tarfile.open(os.path.join(manual_dir, ilsvrc2010.DEVKIT_TAR)) as tar:
      text = tar.extractfile(ilsvrc2010.VAL_GROUND_TRUTH_MEMBER).read()
  else:
    path = os.path.join(manual_dir, ilsvrc2010.TEST_GROUND_TRUTH)
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
    out[split] = {
        ex["file_name"].decode(): ex for ex in tfds.as_numpy(ds)
    }
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
      "image", "label", "class_name", "wnid", "file_name"
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
  archive = ilsvrc2010.SPLIT_ARCHIVES[split][0]
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
  patches = _tar_files(os.path.join(mini_manual_dir, ilsvrc2010.PATCH_TAR))
  for name in blank_names:
    # In the main archive the image is flat...
    original = np.asarray(_decode_rgb(originals[name]), np.float32)
    assert original.std() < 2.0
    # ...the stored one is the patch's image, which is not.
    image = stored[split][name]["image"].astype(np.float32)
    assert image.std() > 10.0, name
    expected = ilsvrc2010.resize_and_center_crop(
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
          ilsvrc2010.resize_and_center_crop(_decode_rgb(raw), 256), np.float32
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
      ilsvrc2010.resize_and_center_crop(Image.fromarray(array), 256)
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
      ilsvrc2010.resize_and_center_crop(
          Image.fromarray(array.transpose(1, 0, 2).copy()), 256
      )
  )
  assert wide.shape == (256, 256, 3)
  assert (wide[128, 128] == (255, 0, 0)).all()
  assert wide[10, 10].max() < 20 and wide[245, 10].min() > 235
  assert (wide[128, 30] != (255, 0, 0)).any()  # band ends at column 213
  # Exact size on awkward ratios (rounding must not lose a pixel).
  for size in [(257, 1000), (1000, 257), (255, 256), (101, 103)]:
    out = ilsvrc2010.resize_and_center_crop(Image.new("RGB", size), 256)
    assert out.size == (256, 256), size


def test_decode_handles_release_quirks():
  rgb = Image.new("RGB", (40, 30), (200, 50, 120))
  for mode in ("RGB", "CMYK", "L"):
    buffer = io.BytesIO()
    rgb.convert(mode).save(buffer, format="JPEG", quality=95)
    for data_bytes in (buffer.getvalue(), gzip.compress(buffer.getvalue())):
      image = ilsvrc2010.decode_image(data_bytes)
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
  present = (ilsvrc2010.VAL_TAR, ilsvrc2010.DEVKIT_TAR)
  for name in present:
    os.symlink(os.path.join(mini_manual_dir, name), manual / name)
  builder = data.get_builder(
      "ilsvrc2010_mini", data_dir=str(tmp_path / "tfds"),
      manual_dir=str(manual),
  )
  with pytest.raises(ilsvrc2010.MissingManualFilesError) as info:
    data.prepare(builder)
  message = str(info.value)
  missing = [f for f in ilsvrc2010.REQUIRED_FILES if f not in present]
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
      data_dir=str(tmp_path / "tfds"), config=ilsvrc2010.mini_config(10)
  )
  manual = tmp_path / "does_not_exist"
  with pytest.raises(ilsvrc2010.MissingManualFilesError) as info:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
  message = str(info.value)
  assert "does not exist" in message and str(manual) in message
  for name in ilsvrc2010.REQUIRED_FILES:
    assert name in message


def test_class_count_mismatch_is_a_clear_error(mini_manual_dir, tmp_path):
  builder = data.get_builder(
      "ilsvrc2010", data_dir=str(tmp_path), manual_dir=mini_manual_dir
  )
  with pytest.raises(ilsvrc2010.ReleaseFormatError, match=r"10 classes.*1000"):
    data.prepare(builder)


def _with_truncated_val_image(mini_manual_dir, tmp_path):
  """A copy of the release whose val tar has one truncated JPEG."""
  manual = tmp_path / "manual"
  manual.mkdir()
  for name in ilsvrc2010.REQUIRED_FILES:
    if name != ilsvrc2010.VAL_TAR:
      os.symlink(os.path.join(mini_manual_dir, name), manual / name)
  source = os.path.join(mini_manual_dir, ilsvrc2010.VAL_TAR)
  with tarfile.open(source) as src, tarfile.open(
      manual / ilsvrc2010.VAL_TAR, "w"
  ) as dst:
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
  builder = data.get_builder(
      "ilsvrc2010_mini", data_dir=str(tmp_path / "tfds"), manual_dir=manual
  )
  with pytest.raises(ilsvrc2010.CorruptImageError) as info:
    data.prepare(builder)
  assert victim in str(info.value)
  assert info.value.member == victim
  assert not builder.is_prepared()


def test_corrupt_image_is_skipped_when_asked(
    mini_manual_dir, stored, split_sizes, tmp_path
):
  manual, victim = _with_truncated_val_image(mini_manual_dir, tmp_path)
  builder = data.get_builder(
      "ilsvrc2010_mini",
      data_dir=str(tmp_path / "tfds"),
      manual_dir=manual,
      skip_corrupt_images=True,
  )
  data.prepare(builder)
  assert builder.skipped_images == [f"{ilsvrc2010.VAL_TAR}:{victim}"]
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
      name: int(ex["label"]) for name, ex in stored["validation"].items()
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
  assert data.NUM_CLASSES == {
      "ilsvrc2010": 1000,
      "ilsvrc2010_mini": 10,
      "imagenet2012": 1000,
      "imagenette": 10,
  }
  assert data.DATASETS["ilsvrc2010"].test_split == "test"
  assert data.DATASETS["ilsvrc2010"].stored_image_size == 256
  assert data.DATASETS["imagenet2012"].stored_image_size is None


def test_imagenet2012_missing_files_error(tmp_path):
  builder = data.get_builder(
      "imagenet2012", data_dir=str(tmp_path), manual_dir=str(tmp_path / "m")
  )
  with pytest.raises(ilsvrc2010.MissingManualFilesError) as info:
    data.prepare(builder)
  for name in data.IMAGENET2012_FILES:
    assert name in str(info.value)


def test_configs_are_shared_objects():
  # TFDS rejects two different config objects with the same name.
  assert ilsvrc2010.mini_config(10) is ilsvrc2010.MINI_CONFIG
  assert ilsvrc2010.make_config() is ilsvrc2010.PAPER_CONFIG
  config = ilsvrc2010.mini_config(7, image_size=64)
  assert (config.name, config.num_classes, config.image_size) == (
      "mini7_64px", 7, 64
  )
  assert ilsvrc2010.mini_config(7, image_size=64) is config


def test_mini_and_builder_agree_on_file_names():
  for name in ("TRAIN_TAR", "VAL_TAR", "TEST_TAR", "DEVKIT_TAR",
               "TEST_GROUND_TRUTH", "PATCH_TAR", "META_MEMBER",
               "VAL_GROUND_TRUTH_MEMBER"):
    assert getattr(mini, name) == getattr(ilsvrc2010, name), name
