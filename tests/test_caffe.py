"""Caffe's bvlc_alexnet files: .caffemodel and .binaryproto, read without
Caffe (alexnet_jax/caffe.py, `python -m alexnet_jax.weights convert`).

The files are written here with the same schema, in the structure of
bvlc_alexnet's deploy network (layer names, types, group 2 in
conv2, conv4 and conv5, blob shapes) and random values, in both the current
(`layer`) and the legacy (`layers`, V1, num/channels/height/width) layout.
Most cases use a narrower net of the same structure (fast); one runs the
full-size file through the command line.
"""

from __future__ import annotations

import subprocess

import jax
import numpy as np
import pytest

from alexnet_jax import caffe
from alexnet_jax import caffe_proto
from alexnet_jax import model as model_lib
from alexnet_jax import parallel
from alexnet_jax import weights
from configs import ilsvrc2012
from tests import helpers
from tests import reference

# A narrower bvlc_alexnet (totals; 2 towers of half these): fast to write.
NARROW = dict(
    num_classes=10, conv_features=(8, 8, 12, 12, 8), fc_features=(16, 16)
)
_V1 = {v: k for k, v in caffe_proto.V1_LAYER_TYPES.items()}


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def blob_bytes(array: np.ndarray, legacy: bool) -> bytes:
  """A serialized BlobProto; the values packed directly (fast, same bytes
  as protobuf writes for `repeated float data = 5 [packed = true]`)."""
  blob = caffe_proto.blob_proto()
  if legacy:
    shape = (1,) * (4 - array.ndim) + array.shape
    blob.num, blob.channels, blob.height, blob.width = shape
  else:
    blob.shape.dim.extend(array.shape)
  values = np.ascontiguousarray(array, "<f4").tobytes()
  return (
      blob.SerializeToString()
      + _varint(5 << 3 | 2)
      + _varint(len(values))
      + values
  )


def deploy_layers(structure=caffe.BVLC_ALEXNET):
  """bvlc_alexnet's deploy net: an input layer, the layers, a softmax."""
  return (
      [("data", "Input", None)] + list(structure) + [("prob", "Softmax", None)]
  )


def net_bytes(
    arrays: dict[str, np.ndarray],
    legacy: bool,
    layers=None,
    name: str = "AlexNet",
) -> bytes:
  """A .caffemodel holding `arrays` (Caffe layout) in `layers`."""
  net = caffe_proto.net_parameter()
  net.name = name
  for layer_name, kind, settings in layers or deploy_layers():
    if legacy:
      layer = net.layers.add(
          name=layer_name, type=_V1["Data" if kind == "Input" else kind]
      )
    else:
      layer = net.layer.add(name=layer_name, type=kind)
    if kind == "Convolution":
      p = layer.convolution_param
      kernel, stride, pad, group = settings
      p.num_output = arrays[f"{layer_name}.bias"].shape[0]
      p.kernel_size.append(kernel)
      if stride != 1:
        p.stride.append(stride)
      if pad:
        p.pad.append(pad)
      if group != 1:
        p.group = group
    elif kind == "InnerProduct":
      layer.inner_product_param.num_output = arrays[f"{layer_name}.bias"].shape[
          0
      ]
    elif kind == "LRN":
      size, alpha, beta, _ = settings
      layer.lrn_param.local_size = size
      layer.lrn_param.alpha = alpha
      layer.lrn_param.beta = beta
    elif kind == "Pooling":
      layer.pooling_param.kernel_size, layer.pooling_param.stride = settings
    if kind in ("Convolution", "InnerProduct"):
      for part in ("weight", "bias"):
        layer.blobs.add().MergeFromString(
            blob_bytes(arrays[f"{layer_name}.{part}"], legacy)
        )
  return net.SerializeToString()


def random_arrays(shapes, seed=0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  arrays = {k: rng.random(s, np.float32) for k, s in shapes.items()}
  for a in arrays.values():
    a -= 0.5  # In place: the full-size net is 244 MB.
  return arrays


@pytest.fixture(scope="module")
def narrow():
  """(shapes, arrays) of the narrow net."""
  shapes = caffe.expected_shapes(**NARROW)
  return shapes, random_arrays(shapes)


@pytest.mark.parametrize("legacy", [False, True], ids=["layer", "layers_v1"])
def test_conversion_is_exact(tmp_path, narrow, legacy):
  shapes, arrays = narrow
  path = tmp_path / "net.caffemodel"
  path.write_bytes(net_bytes(arrays, legacy))
  conversion = caffe.read_alexnet(path, shapes)
  assert sorted(conversion.arrays) == sorted(arrays)
  for key, value in arrays.items():
    np.testing.assert_array_equal(conversion.arrays[key], value, key)
    assert conversion.arrays[key].dtype == np.float32
  report = conversion.report()
  assert ("legacy V1" in report) == legacy
  assert "conv2: weight [8, 4, 5, 5], bias [8], group 2" in report
  assert "conv3: weight [12, 8, 3, 3], bias [12], group 1" in report
  assert "fc6: weight [16, 288]" in report
  assert "passed over: data (" in report and "passed over: prob (" in report


def test_a_training_snapshot_converts(tmp_path, narrow):
  """A file saved while training holds data and loss layers too (a
  train/test network definition even names two layers "data")."""
  shapes, arrays = narrow
  layers = (
      [("data", "Data", None), ("data", "Data", None)]
      + list(caffe.BVLC_ALEXNET)
      + [("loss", "SoftmaxWithLoss", None), ("accuracy", "Accuracy", None)]
  )
  path = tmp_path / "snapshot.caffemodel"
  path.write_bytes(net_bytes(arrays, True, layers))
  conversion = caffe.read_alexnet(path, shapes)
  np.testing.assert_array_equal(
      conversion.arrays["fc7.weight"], arrays["fc7.weight"]
  )
  assert "passed over: loss (SoftmaxWithLoss)" in conversion.report()


def test_mean_image_becomes_rgb_hwc(tmp_path):
  rng = np.random.default_rng(1)
  bgr_chw = rng.random((3, 256, 256), np.float32) * 255
  for legacy in (False, True):
    path = tmp_path / f"mean_{legacy}.binaryproto"
    path.write_bytes(blob_bytes(bgr_chw[None], legacy))
    mean = caffe.read_mean(path)
    assert mean.shape == (256, 256, 3) and mean.dtype == np.float32
    # Pixel (row 5, column 7): R is Caffe's channel 2, B its channel 0.
    np.testing.assert_array_equal(mean[5, 7], bgr_chw[::-1, 5, 7])
  path.write_bytes(blob_bytes(bgr_chw[:, :227, :227][None], False))
  with pytest.raises(caffe.CaffeFormatError, match=r"\(3, 227, 227\)"):
    caffe.read_mean(path)


def _without(layers, name):
  return [l for l in layers if l[0] != name]


def _replace(layers, name, new):
  return [new if l[0] == name else l for l in layers]


# (case, layers or a function of the arrays, message). Each is a file that
# is not bvlc_alexnet; the message must name what is wrong.
_CAFFENET = [l for l in caffe.BVLC_ALEXNET if l[0] not in ("norm1",)]
_CAFFENET.insert(3, ("norm1", "LRN", (5, 1e-4, 0.75, 1.0)))  # After pool1.
BAD_NETS = [
    ("missing layer", _without(deploy_layers(), "conv4"), r"no layer 'conv4'"),
    (
        "missing LRN",
        _without(deploy_layers(), "norm2"),
        r"'pool2' \(Pooling.*where bvlc_alexnet has 'norm2' \(LRN",
    ),
    (
        "conv4 not grouped",
        _replace(
            deploy_layers(), "conv4", ("conv4", "Convolution", (3, 1, 1, 1))
        ),
        r"'conv4' \(Convolution, settings \(3, 1, 1, 1\)\).*\(3, 1, 1, 2\)",
    ),
    # CaffeNet (bvlc_reference_caffenet): same weights' shapes, but it
    # pools before it normalizes.
    (
        "CaffeNet order",
        [("data", "Input", None)] + _CAFFENET,
        r"'pool1' \(Pooling.*'norm1' \(LRN",
    ),
    ("extra layer", deploy_layers() + [("fc9", "InnerProduct", None)], r"fc9"),
]


@pytest.mark.parametrize(
    "case,layers,needle", BAD_NETS, ids=[c[0] for c in BAD_NETS]
)
def test_another_network_is_rejected(tmp_path, narrow, case, layers, needle):
  del case
  shapes, arrays = narrow
  arrays = dict(
      arrays,
      **{
          "fc9.weight": np.zeros((10, 10), np.float32),
          "fc9.bias": np.zeros(10, np.float32),
      },
  )
  path = tmp_path / "net.caffemodel"
  path.write_bytes(net_bytes(arrays, False, layers))
  with pytest.raises(caffe.CaffeFormatError, match=needle):
    caffe.read_alexnet(path, shapes)


def test_wrong_shape_is_named(tmp_path, narrow):
  shapes, arrays = narrow
  bad = dict(
      arrays,
      **{
          "fc8.weight": arrays["fc8.weight"][:9],
          "fc8.bias": arrays["fc8.bias"][:9],
      },
  )
  path = tmp_path / "net.caffemodel"
  path.write_bytes(net_bytes(bad, True))
  with pytest.raises(
      caffe.CaffeFormatError,
      match=r"'fc8' weight has shape \(9, 16\); bvlc_alexnet's "
      r"is \(10, 16\)",
  ):
    caffe.read_alexnet(path, shapes)


def test_v0_layers_are_named(tmp_path, narrow):
  shapes, arrays = narrow
  net = caffe_proto.net_parameter()
  net.MergeFromString(net_bytes(arrays, True))
  net.layers[1].layer = b"\x0a\x05conv1"  # V0LayerParameter name: "conv1".
  path = tmp_path / "net.caffemodel"
  path.write_bytes(net.SerializeToString())
  with pytest.raises(caffe.CaffeFormatError, match="V0 format"):
    caffe.read_alexnet(path, shapes)


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_file_is_named(tmp_path, narrow, cut):
  shapes, arrays = narrow
  data = net_bytes(arrays, False)
  path = tmp_path / "net.caffemodel"
  path.write_bytes(data[: int(len(data) * cut)])
  with pytest.raises(caffe.CaffeFormatError, match="truncated or damaged"):
    caffe.read_alexnet(path, shapes)


def test_converted_weights_equal_the_reference(tmp_path, narrow):
  """The converted file through our model, configured as Caffe's
  bvlc_alexnet (configs/ilsvrc2012.py:caffe_reference, narrowed), equals
  the independent reference with grouped convolutions, Caffe's LRN (over
  all channels of the layer, both towers) and BGR input, on the same
  images, whether one device holds both towers or each device one."""
  shapes, arrays = narrow
  path = tmp_path / "net.caffemodel"
  path.write_bytes(net_bytes(arrays, True))
  converted = caffe.read_alexnet(path, shapes).arrays
  config = ilsvrc2012.get_config("caffe_reference").model
  config.conv_features = tuple(c // 2 for c in NARROW["conv_features"])
  config.fc_features = tuple(f // 2 for f in NARROW["fc_features"])
  config.num_classes = NARROW["num_classes"]
  assert config.image_size == 227 and config.lrn.across_towers
  params = weights.from_caffe_layout(
      converted, model_lib.param_shapes(config), input_channels="bgr"
  )
  rng = np.random.default_rng(2)
  images_rgb = rng.normal(0, 40, (2, 227, 227, 3)).astype(np.float32)
  # The reference reads the file's arrays as they are, and BGR images.
  # (Compiled as one program: op by op it takes longer.)
  reference_logits = jax.jit(
      lambda w, x, across: reference.logits(
          w,
          x,
          towers=2,
          lrn=("caffe", 1.0, 5, 1e-4, 0.75),
          dropout_scaling="inverted",
          lrn_across_towers=across,
      ),
      static_argnums=2,
  )
  theirs = reference_logits(arrays, images_rgb[..., ::-1], True)
  for mesh in (None, parallel.make_mesh(1, 2)):
    on_mesh = (
        params
        if mesh is None
        else jax.device_put(
            params, parallel.named_shardings(mesh, parallel.param_specs(params))
        )
    )
    ours = jax.jit(model_lib.make_apply(config, mesh))(on_mesh, images_rgb)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
  # Not a degenerate comparison: the two images' logits differ by far more
  # than the tolerance, and so do those of the per-tower LRN (the paper's).
  assert np.abs(theirs[0] - theirs[1]).max() > 1e-2
  within = reference_logits(arrays, images_rgb[..., ::-1], False)
  assert np.abs(within - theirs).max() > 1e-3


def run_convert(tmp_path, *args) -> subprocess.CompletedProcess[str]:
  return helpers.run_module("alexnet_jax.weights", "convert", *args)


def test_full_size_file_through_the_command_line(tmp_path):
  """The real file's size and layout (legacy V1 blobs), end to end."""
  shapes = caffe.expected_shapes()
  arrays = random_arrays(shapes, seed=3)
  model_path = tmp_path / "bvlc_alexnet.caffemodel"
  model_path.write_bytes(net_bytes(arrays, legacy=True))
  rng = np.random.default_rng(4)
  bgr_chw = rng.random((3, 256, 256), np.float32) * 255
  mean_path = tmp_path / "imagenet_mean.binaryproto"
  mean_path.write_bytes(blob_bytes(bgr_chw[None], legacy=True))
  out, mean_out = tmp_path / "w.npz", tmp_path / "mean.npz"
  proc = run_convert(
      tmp_path,
      f"--caffemodel={model_path}",
      f"--out={out}",
      f"--mean={mean_path}",
      f"--mean_out={mean_out}",
  )
  assert proc.returncode == 0, proc.stderr
  assert "fc6: weight [4096, 9216], bias [4096]" in proc.stdout
  assert "conv5: weight [256, 192, 3, 3], bias [256], group 2" in proc.stdout
  with np.load(out) as f:
    assert sorted(f.files) == sorted(arrays)
    for key, value in arrays.items():
      np.testing.assert_array_equal(f[key], value, key)
  with np.load(mean_out) as f:
    np.testing.assert_array_equal(
        f["mean_image"], bgr_chw[::-1].transpose(1, 2, 0)
    )


def test_bvlc_alexnet_shapes_are_the_caffe_reference_model():
  """The shapes the converter demands are those the model's weights take
  in the Caffe layout (full size; and the narrow net of these tests)."""
  for widths, overrides in (
      (None, {}),
      (
          NARROW,
          dict(
              num_classes=NARROW["num_classes"],
              conv_features=tuple(c // 2 for c in NARROW["conv_features"]),
              fc_features=tuple(f // 2 for f in NARROW["fc_features"]),
          ),
      ),
  ):
    config = ilsvrc2012.get_config("caffe_reference").model
    config.update(overrides)
    zeros = jax.tree.map(
        lambda s: np.zeros(s.shape, s.dtype), model_lib.param_shapes(config)
    )
    layout = weights.to_caffe_layout(zeros)
    assert caffe.expected_shapes(**(widths or {})) == {
        k: v.shape for k, v in layout.items()
    }


@pytest.mark.parametrize(
    "kind,needles",
    [
        ("missing_layer", ["no layer 'fc7'"]),
        (
            "wrong_shape",
            ["'conv1' weight has shape (8, 3, 11, 11)", "(96, 3, 11, 11)"],
        ),
        ("truncated", ["truncated or damaged"]),
        ("caffenet", ["'pool1' (Pooling", "'norm1' (LRN", "another network"]),
    ],
)
def test_user_errors_of_the_command_line(tmp_path, narrow, kind, needles):
  _, arrays = narrow
  path = tmp_path / "net.caffemodel"
  if kind == "missing_layer":
    path.write_bytes(net_bytes(arrays, False, _without(deploy_layers(), "fc7")))
  elif kind == "wrong_shape":  # The narrow net is not bvlc_alexnet's size.
    path.write_bytes(net_bytes(arrays, True))
  elif kind == "truncated":
    data = net_bytes(arrays, False)
    path.write_bytes(data[: len(data) // 3])
  else:
    path.write_bytes(
        net_bytes(arrays, False, [("data", "Input", None)] + _CAFFENET)
    )
  out = tmp_path / "w.npz"
  proc = run_convert(tmp_path, f"--caffemodel={path}", f"--out={out}")
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  message = proc.stderr[proc.stderr.rfind("error: ") :]
  for needle in needles:
    assert needle in message, (needle, proc.stderr)
  assert not out.exists()
