"""Caffe's trained AlexNet files, read without Caffe: `.caffemodel` weights
and the `.binaryproto` mean image.

A `.caffemodel` is a binary protocol buffer `NetParameter`; the mean file a
`BlobProto`, parsed with the part of Caffe's schema that caffe_proto.py
builds in Python (no Caffe install and no protoc). Both layer layouts are
read: the current `layer` field (LayerParameter, `type` a string such as
"Convolution") and the legacy `layers` field (V1LayerParameter, `type` an
enum); blob shapes come from `shape` or from the legacy
num/channels/height/width.

`read_alexnet(path, model_config)` checks the file against bvlc_alexnet's
structure (layers conv1..fc8 in order, their types, kernel sizes, strides,
pads and groups: 2 in conv2, conv4 and conv5, the paper's towers, §3.5; and
between them the ReLU, LRN, pooling and dropout layers) and returns the
weights as `{"conv1.weight": ..., ..., "fc8.bias": ...}`, which is exactly
the Caffe layout of weights.py, with a report of what it found. Anything
that does not fit (a missing layer, a wrong shape, another network, a
truncated file) is a `CaffeFormatError` naming it.

Caffe's images are BGR (OpenCV's order) on the 0-255 scale; so are conv1's
input channels and the mean file. The weights are kept as Caffe stores them
(import them with `input_channels="bgr"`); the mean image is returned as
the [256, 256, 3] RGB array our input pipeline subtracts.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
import os
from typing import Any

from google.protobuf import message
import numpy as np

from alexnet_jax import caffe_proto
from alexnet_jax import cli

BVLC_ALEXNET = (
    ("conv1", "Convolution", (11, 4, 0, 1)),
    ("relu1", "ReLU", None),
    ("norm1", "LRN", (5, 1e-4, 0.75, 1.0)),
    ("pool1", "Pooling", (3, 2)),
    ("conv2", "Convolution", (5, 1, 2, 2)),
    ("relu2", "ReLU", None),
    ("norm2", "LRN", (5, 1e-4, 0.75, 1.0)),
    ("pool2", "Pooling", (3, 2)),
    ("conv3", "Convolution", (3, 1, 1, 1)),
    ("relu3", "ReLU", None),
    ("conv4", "Convolution", (3, 1, 1, 2)),
    ("relu4", "ReLU", None),
    ("conv5", "Convolution", (3, 1, 1, 2)),
    ("relu5", "ReLU", None),
    ("pool5", "Pooling", (3, 2)),
    ("fc6", "InnerProduct", None),
    ("relu6", "ReLU", None),
    ("drop6", "Dropout", (0.5,)),
    ("fc7", "InnerProduct", None),
    ("relu7", "ReLU", None),
    ("drop7", "Dropout", (0.5,)),
    ("fc8", "InnerProduct", None),
)
PARAM_LAYERS = tuple(
    name
    for name, kind, _ in BVLC_ALEXNET
    if kind in ("Convolution", "InnerProduct")
)
# Layers that do not change what the network computes at test time.
PASSIVE_TYPES = (
    "Data",
    "Input",
    "ImageData",
    "MemoryData",
    "DummyData",
    "HDF5Data",
    "WindowData",
    "Split",
    "Silence",
    "Softmax",
    "SoftmaxWithLoss",
    "Accuracy",
    "ArgMax",
)

MEAN_SHAPE = (3, 256, 256)  # imagenet_mean.binaryproto: BGR, CHW.


class CaffeFormatError(cli.UserError, ValueError):
  """A Caffe file that cannot be read as bvlc_alexnet; names the problem."""


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer of a net, the same for both layouts."""

  name: str
  type: str
  blobs: tuple[np.ndarray, ...]
  settings: tuple[Any, ...] | None  # As in BVLC_ALEXNET, from its params.
  num_output: int | None


def _first(values: Sequence[int], default: int) -> int:
  return int(values[0]) if len(values) else default


def _get(msg: Any, field: str) -> Any:
  return (
      getattr(msg, field)
      if msg.HasField(field)
      else caffe_proto.DEFAULTS[field]
  )


def blob_array(blob: Any, where: str) -> np.ndarray:
  """A BlobProto's values as a float32 array of its shape.

  The shape is `shape.dim` or, in older files, num/channels/height/width
  (leading 1s dropped: Caffe's legacy shape of a [4096, 9216] matrix is
  1 x 1 x 4096 x 9216).
  """
  if blob.HasField("shape"):
    shape = tuple(int(d) for d in blob.shape.dim)
  else:
    shape = (blob.num, blob.channels, blob.height, blob.width)
    while len(shape) > 1 and shape[0] == 1:
      shape = shape[1:]
  if len(blob.double_data):
    values = np.asarray(blob.double_data, np.float64).astype(np.float32)
  else:
    values = np.asarray(blob.data, np.float32)
  if values.size != math.prod(shape) or not shape or min(shape) < 1:
    raise CaffeFormatError(
        f"{where}: the blob of shape {shape} holds {values.size} values, "
        f"not {math.prod(shape)}: the file is truncated or damaged. "
        "Download it again."
    )
  return values.reshape(shape)


def _settings(kind: str, msg: Any) -> tuple[Any, ...] | None:
  """The BVLC_ALEXNET settings tuple of a layer message."""
  if kind == "Convolution":
    p = msg.convolution_param
    kernel = _first(p.kernel_size, p.kernel_h)
    stride = _first(p.stride, p.stride_h if p.HasField("stride_h") else 1)
    pad = _first(p.pad, p.pad_h)
    if (
        (p.HasField("kernel_w") and p.kernel_w != kernel)
        or (p.HasField("stride_w") and p.stride_w != stride)
        or (p.HasField("pad_w") and p.pad_w != pad)
    ):
      return ("non-square", kernel, stride, pad)
    return (kernel, stride, pad, _get(p, "group"))
  if kind == "LRN":
    p = msg.lrn_param
    if p.norm_region != 0:
      return ("WITHIN_CHANNEL",)
    return (
        _get(p, "local_size"),
        round(float(_get(p, "alpha")), 9),
        round(float(_get(p, "beta")), 6),
        round(float(_get(p, "k")), 6),
    )
  if kind == "Pooling":
    p = msg.pooling_param
    if p.pool != 0 or p.pad:
      return (
          "AVE" if p.pool == 1 else "MAX" if p.pool == 0 else p.pool,
          p.kernel_size,
          p.stride,
          p.pad,
      )
    return (p.kernel_size, _get(p, "stride"))
  if kind == "Dropout":
    return (round(float(_get(msg.dropout_param, "dropout_ratio")), 6),)
  return None


def _layer(msg: Any, legacy: bool) -> Layer:
  kind = (
      caffe_proto.V1_LAYER_TYPES.get(msg.type, f"type {msg.type}")
      if legacy
      else (msg.type)
  )
  where = f"layer {msg.name!r}"
  blobs = tuple(
      blob_array(b, f"{where}, blob {i}") for i, b in enumerate(msg.blobs)
  )
  num_output = None
  if kind == "Convolution":
    num_output = msg.convolution_param.num_output
  elif kind == "InnerProduct":
    num_output = msg.inner_product_param.num_output
    if msg.inner_product_param.transpose:
      kind = "InnerProduct (transpose: true)"
  return Layer(msg.name, kind, blobs, _settings(kind, msg), num_output)


def parse_net(data: bytes, source: str) -> tuple[str, list[Layer], str]:
  """(net name, layers in file order, "layer" or "layers (legacy V1)")."""
  net = caffe_proto.net_parameter()
  try:
    net.ParseFromString(data)
  except message.DecodeError as e:
    raise CaffeFormatError(
        f"{source} is not a readable Caffe NetParameter ({e}): the file is "
        "truncated or damaged, or not a .caffemodel. Download it again."
    ) from None
  if net.layer and net.layers:
    raise CaffeFormatError(
        f"{source} holds layers in both the current 'layer' and the legacy "
        "'layers' field; Caffe itself refuses such a file."
    )
  if net.layers:
    if any(m.HasField("layer") for m in net.layers):
      raise CaffeFormatError(
          f"{source} holds layers in Caffe's V0 format (before 2014), which "
          "this reader does not take; upgrade the file with Caffe's "
          "upgrade_net_proto_binary tool."
      )
    return (
        net.name,
        [_layer(m, True) for m in net.layers],
        ("layers (legacy V1)"),
    )
  return net.name, [_layer(m, False) for m in net.layer], "layer"


def _read(path: str | os.PathLike[str], what: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise CaffeFormatError(f"{what}={os.fspath(path)}: {e.strerror}.") from None


def expected_shapes(
    num_classes: int = 1000,
    conv_features: Sequence[int] = (96, 256, 384, 384, 256),
    fc_features: Sequence[int] = (4096, 4096),
    pool5_side: int = 6,
) -> dict[str, tuple[int, ...]]:
  """The Caffe-layout shapes of bvlc_alexnet (total widths, not per tower).

  The arguments describe a narrower net of the same structure (tests).
  """
  groups = {
      name: s[3] for name, kind, s in BVLC_ALEXNET if kind == "Convolution"
  }
  kernels = {
      name: s[0] for name, kind, s in BVLC_ALEXNET if kind == "Convolution"
  }
  shapes, cin = {}, 3
  for name, cout in zip(
      ("conv1", "conv2", "conv3", "conv4", "conv5"), conv_features
  ):
    k = kernels[name]
    shapes[f"{name}.weight"] = (cout, cin // groups[name], k, k)
    shapes[f"{name}.bias"] = (cout,)
    cin = cout
  fin = cin * pool5_side * pool5_side
  for name, fout in zip(("fc6", "fc7", "fc8"), (*fc_features, num_classes)):
    shapes[f"{name}.weight"] = (fout, fin)
    shapes[f"{name}.bias"] = (fout,)
    fin = fout
  return shapes


def check_alexnet(
    layers: Sequence[Layer],
    source: str,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Checks a parsed net against BVLC_ALEXNET; returns (arrays, notes).

  `arrays` are the Caffe-layout weights (weights.py); `notes` name every
  layer that was passed over and why.

  Raises:
    CaffeFormatError: a missing or repeated layer, a layer of another type
      or with other settings, a wrong blob shape, or computing layers that
      bvlc_alexnet does not have, each named.
  """
  shapes = shapes or expected_shapes()
  by_name = {}
  for layer in layers:
    if layer.type in PASSIVE_TYPES:
      continue  # (A train/test net may hold two "data" layers.)
    if layer.name in by_name:
      raise CaffeFormatError(
          f"{source}: the layer name {layer.name!r} appears twice."
      )
    by_name[layer.name] = layer
  missing = [n for n in PARAM_LAYERS if n not in by_name]
  if missing:
    found = [f"{l.name} ({l.type})" for l in layers if l.blobs]
    raise CaffeFormatError(
        f"{source}: no layer {', '.join(repr(m) for m in missing)}: this is "
        "not bvlc_alexnet (layers with weights in the file: "
        f"{', '.join(found) or 'none'})."
    )
  notes = []
  computing = []
  for layer in layers:
    if layer.type in PASSIVE_TYPES:
      if layer.blobs:
        raise CaffeFormatError(
            f"{source}: layer {layer.name!r} ({layer.type}) holds "
            f"{len(layer.blobs)} blob(s); bvlc_alexnet's has none."
        )
      notes.append(
          f"{layer.name} ({layer.type}): no weights, not needed "
          "for inference"
      )
    else:
      computing.append(layer)
  expected = [(n, t, s) for n, t, s in BVLC_ALEXNET]
  got = [(l.name, l.type, l.settings) for l in computing]
  for i, (e, g) in enumerate(zip(expected, got)):
    # Names of parameterless layers may differ; types and settings may not.
    same_name = e[0] == g[0] or e[1] not in ("Convolution", "InnerProduct")
    if not same_name or e[1:] != g[1:]:
      before = f"after {got[i - 1][0]!r}" if i else "first"
      raise CaffeFormatError(
          f"{source}: layer {g[0]!r} ({g[1]}, settings {g[2]}) comes "
          f"{before}, where bvlc_alexnet has {e[0]!r} ({e[1]}, settings "
          f"{e[2]}): another network. (Settings: convolution (kernel, "
          "stride, pad, group); LRN (local_size, alpha, beta, k); pooling "
          "(kernel, stride); dropout (ratio).)"
      )
  if len(got) != len(expected):
    extra = [f"{n} ({t})" for n, t, _ in got[len(expected) :]]
    lacking = [f"{n} ({t})" for n, t, _ in expected[len(got) :]]
    raise CaffeFormatError(
        f"{source}: another network: "
        + (
            f"layers after fc8 that bvlc_alexnet does not have: {extra}"
            if extra
            else f"missing {lacking}"
        )
        + "."
    )
  arrays = {}
  for name in PARAM_LAYERS:
    layer = by_name[name]
    if len(layer.blobs) != 2:
      raise CaffeFormatError(
          f"{source}: layer {name!r} holds {len(layer.blobs)} blob(s); "
          "bvlc_alexnet's has 2 (weights, bias)."
      )
    for blob, part in zip(layer.blobs, ("weight", "bias")):
      key = f"{name}.{part}"
      if blob.shape != shapes[key]:
        raise CaffeFormatError(
            f"{source}: layer {name!r} {part} has shape {blob.shape}; "
            f"bvlc_alexnet's is {shapes[key]}."
        )
      arrays[key] = np.ascontiguousarray(blob, np.float32)
    if layer.num_output != shapes[f"{name}.bias"][0]:
      raise CaffeFormatError(
          f"{source}: layer {name!r} says num_output {layer.num_output} "
          f"but holds {shapes[f'{name}.bias'][0]} outputs."
      )
  return arrays, notes


@dataclasses.dataclass
class Conversion:
  """What `read_alexnet` found."""

  arrays: dict[str, np.ndarray]
  net_name: str
  layout: str
  notes: list[str]

  def report(self) -> str:
    lines = [f"network {self.net_name!r}, layers in the {self.layout} field"]
    groups = {n: s[3] for n, t, s in BVLC_ALEXNET if t == "Convolution"}
    for name in PARAM_LAYERS:
      w, b = self.arrays[f"{name}.weight"], self.arrays[f"{name}.bias"]
      group = f", group {groups[name]}" if name in groups else ""
      lines.append(
          f"  {name}: weight {list(w.shape)}, bias " f"{list(b.shape)}{group}"
      )
    lines += [f"  passed over: {n}" for n in self.notes]
    return "\n".join(lines)


def read_alexnet(
    path: str | os.PathLike[str],
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> Conversion:
  """Reads a bvlc_alexnet `.caffemodel` (see the module docstring)."""
  source = os.fspath(path)
  name, layers, layout = parse_net(_read(path, "--caffemodel"), source)
  arrays, notes = check_alexnet(layers, source, shapes)
  return Conversion(arrays, name, layout, notes)


def read_mean(
    path: str | os.PathLike[str], shape: tuple[int, int, int] = MEAN_SHAPE
) -> np.ndarray:
  """imagenet_mean.binaryproto -> float32 [256, 256, 3], RGB, 0-255 scale.

  Caffe's mean image is a BlobProto of 1 x 3 x 256 x 256 in BGR order; the
  pipeline subtracts an [s, s, 3] RGB image (input_pipeline.InputStats).
  """
  source = os.fspath(path)
  blob = caffe_proto.blob_proto()
  try:
    blob.ParseFromString(_read(path, "--mean"))
  except message.DecodeError as e:
    raise CaffeFormatError(
        f"{source} is not a readable Caffe BlobProto ({e}): the file is "
        "truncated or damaged, or not a .binaryproto mean. Download it "
        "again."
    ) from None
  values = blob_array(blob, source)
  if values.ndim == 4 and values.shape[0] == 1:  # 1 x 3 x 256 x 256.
    values = values[0]
  if values.shape != shape:
    raise CaffeFormatError(
        f"{source}: the mean blob has shape {values.shape}; Caffe's "
        f"ImageNet mean is {shape} (BGR x height x width)."
    )
  return np.ascontiguousarray(values[::-1].transpose(1, 2, 0), np.float32)
