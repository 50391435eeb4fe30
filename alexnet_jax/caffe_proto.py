"""The part of Caffe's schema (caffe.proto) that its AlexNet files use.

The same message names, field numbers and wire types as caffe.proto, built
in Python (`descriptor_pb2`) in a private descriptor pool, so that the
`protobuf` library reads and writes `.caffemodel` (NetParameter) and
`.binaryproto` (BlobProto) files without Caffe or protoc. caffe.py reads
bvlc_alexnet with it; the tests write synthetic files with it.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

_T = descriptor_pb2.FieldDescriptorProto
_OPTIONAL, _REPEATED = _T.LABEL_OPTIONAL, _T.LABEL_REPEATED

# The subset of caffe.proto: (message, [(field, number, type, label,
# message type or None, packed)]). Enums are declared as int32 (the same
# varint on the wire), so that a value this subset does not name is kept,
# not dropped, and can be reported.
_SCHEMA = {
    "BlobShape": [("dim", 1, _T.TYPE_INT64, _REPEATED, None, True)],
    "BlobProto": [
        ("num", 1, _T.TYPE_INT32, _OPTIONAL, None, False),
        ("channels", 2, _T.TYPE_INT32, _OPTIONAL, None, False),
        ("height", 3, _T.TYPE_INT32, _OPTIONAL, None, False),
        ("width", 4, _T.TYPE_INT32, _OPTIONAL, None, False),
        ("data", 5, _T.TYPE_FLOAT, _REPEATED, None, True),
        ("diff", 6, _T.TYPE_FLOAT, _REPEATED, None, True),
        ("shape", 7, _T.TYPE_MESSAGE, _OPTIONAL, "BlobShape", False),
        ("double_data", 8, _T.TYPE_DOUBLE, _REPEATED, None, True),
        ("double_diff", 9, _T.TYPE_DOUBLE, _REPEATED, None, True),
    ],
    "ConvolutionParameter": [
        ("num_output", 1, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("bias_term", 2, _T.TYPE_BOOL, _OPTIONAL, None, False),
        ("pad", 3, _T.TYPE_UINT32, _REPEATED, None, False),
        ("kernel_size", 4, _T.TYPE_UINT32, _REPEATED, None, False),
        ("group", 5, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("stride", 6, _T.TYPE_UINT32, _REPEATED, None, False),
        ("pad_h", 9, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("pad_w", 10, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("kernel_h", 11, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("kernel_w", 12, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("stride_h", 13, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("stride_w", 14, _T.TYPE_UINT32, _OPTIONAL, None, False),
    ],
    "InnerProductParameter": [
        ("num_output", 1, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("bias_term", 2, _T.TYPE_BOOL, _OPTIONAL, None, False),
        ("axis", 5, _T.TYPE_INT32, _OPTIONAL, None, False),
        ("transpose", 6, _T.TYPE_BOOL, _OPTIONAL, None, False),
    ],
    "LRNParameter": [
        ("local_size", 1, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("alpha", 2, _T.TYPE_FLOAT, _OPTIONAL, None, False),
        ("beta", 3, _T.TYPE_FLOAT, _OPTIONAL, None, False),
        ("norm_region", 4, _T.TYPE_INT32, _OPTIONAL, None, False),
        ("k", 5, _T.TYPE_FLOAT, _OPTIONAL, None, False),
    ],
    "PoolingParameter": [
        ("pool", 1, _T.TYPE_INT32, _OPTIONAL, None, False),
        ("kernel_size", 2, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("stride", 3, _T.TYPE_UINT32, _OPTIONAL, None, False),
        ("pad", 4, _T.TYPE_UINT32, _OPTIONAL, None, False),
    ],
    "DropoutParameter": [
        ("dropout_ratio", 1, _T.TYPE_FLOAT, _OPTIONAL, None, False),
    ],
    "LayerParameter": [
        ("name", 1, _T.TYPE_STRING, _OPTIONAL, None, False),
        ("type", 2, _T.TYPE_STRING, _OPTIONAL, None, False),
        ("bottom", 3, _T.TYPE_STRING, _REPEATED, None, False),
        ("top", 4, _T.TYPE_STRING, _REPEATED, None, False),
        ("blobs", 7, _T.TYPE_MESSAGE, _REPEATED, "BlobProto", False),
        (
            "convolution_param",
            106,
            _T.TYPE_MESSAGE,
            _OPTIONAL,
            "ConvolutionParameter",
            False,
        ),
        (
            "dropout_param",
            108,
            _T.TYPE_MESSAGE,
            _OPTIONAL,
            "DropoutParameter",
            False,
        ),
        (
            "inner_product_param",
            117,
            _T.TYPE_MESSAGE,
            _OPTIONAL,
            "InnerProductParameter",
            False,
        ),
        ("lrn_param", 118, _T.TYPE_MESSAGE, _OPTIONAL, "LRNParameter", False),
        (
            "pooling_param",
            121,
            _T.TYPE_MESSAGE,
            _OPTIONAL,
            "PoolingParameter",
            False,
        ),
    ],
    "V1LayerParameter": [
        # V0LayerParameter (Caffe before 2014), kept as bytes: only noticed.
        ("layer", 1, _T.TYPE_BYTES, _OPTIONAL, None, False),
        ("bottom", 2, _T.TYPE_STRING, _REPEATED, None, False),
        ("top", 3, _T.TYPE_STRING, _REPEATED, None, False),
        ("name", 4, _T.TYPE_STRING, _OPTIONAL, None, False),
        ("type", 5, _T.TYPE_INT32, _OPTIONAL, None, False),
        ("blobs", 6, _T.TYPE_MESSAGE, _REPEATED, "BlobProto", False),
        (
            "convolution_param",
            10,
            _T.TYPE_MESSAGE,
            _OPTIONAL,
            "ConvolutionParameter",
            False,
        ),
        (
            "dropout_param",
            12,
            _T.TYPE_MESSAGE,
            _OPTIONAL,
            "DropoutParameter",
            False,
        ),
        (
            "inner_product_param",
            17,
            _T.TYPE_MESSAGE,
            _OPTIONAL,
            "InnerProductParameter",
            False,
        ),
        ("lrn_param", 18, _T.TYPE_MESSAGE, _OPTIONAL, "LRNParameter", False),
        (
            "pooling_param",
            19,
            _T.TYPE_MESSAGE,
            _OPTIONAL,
            "PoolingParameter",
            False,
        ),
    ],
    "NetParameter": [
        ("name", 1, _T.TYPE_STRING, _OPTIONAL, None, False),
        ("layers", 2, _T.TYPE_MESSAGE, _REPEATED, "V1LayerParameter", False),
        ("layer", 100, _T.TYPE_MESSAGE, _REPEATED, "LayerParameter", False),
    ],
}

# caffe.proto's defaults for the fields read below (proto2 defaults).
DEFAULTS = {
    "bias_term": True,
    "group": 1,
    "stride": 1,
    "pad": 0,
    "alpha": 1.0,
    "beta": 0.75,
    "k": 1.0,
    "local_size": 5,
    "dropout_ratio": 0.5,
}

# V1LayerParameter.LayerType: the numbers of caffe.proto, current names.
V1_LAYER_TYPES = {
    0: "None",
    35: "AbsVal",
    1: "Accuracy",
    30: "ArgMax",
    2: "BNLL",
    3: "Concat",
    37: "ContrastiveLoss",
    4: "Convolution",
    5: "Data",
    39: "Deconvolution",
    6: "Dropout",
    32: "DummyData",
    7: "EuclideanLoss",
    25: "Eltwise",
    38: "Exp",
    8: "Flatten",
    9: "HDF5Data",
    10: "HDF5Output",
    28: "HingeLoss",
    11: "Im2col",
    12: "ImageData",
    13: "InfogainLoss",
    14: "InnerProduct",
    15: "LRN",
    29: "MemoryData",
    16: "MultinomialLogisticLoss",
    34: "MVN",
    17: "Pooling",
    26: "Power",
    18: "ReLU",
    19: "Sigmoid",
    27: "SigmoidCrossEntropyLoss",
    36: "Silence",
    20: "Softmax",
    21: "SoftmaxWithLoss",
    22: "Split",
    33: "Slice",
    23: "TanH",
    24: "WindowData",
    31: "Threshold",
}

# bvlc_alexnet's deploy network (as Caffe's model zoo describes it) as the
# sequence of its computing layers: (name, type, settings). Layers that
# compute nothing at inference (data, input, split, loss, accuracy,
# softmax) may sit around them. Convolutions: (kernel, stride, pad, group);
# group 2 is the paper's two towers (§3.5: conv2, conv4, conv5 read their
# own tower). LRN: (local_size, alpha, beta, k); Caffe divides alpha by
# local_size, §3.3's convention multiplies. Pooling: (kernel, stride), max.


@functools.cache
def _messages() -> dict[str, Any]:
  """The message classes of the schema subset, in a private pool."""
  proto = descriptor_pb2.FileDescriptorProto(
      name="alexnet_jax/caffe_subset.proto", package="caffe", syntax="proto2"
  )
  for name, fields in _SCHEMA.items():
    m = proto.message_type.add(name=name)
    for field, number, kind, label, type_name, packed in fields:
      f = m.field.add(name=field, number=number, type=kind, label=label)
      if type_name:
        f.type_name = f".caffe.{type_name}"
      if packed:
        f.options.packed = True
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return {
      name: message_factory.GetMessageClass(
          pool.FindMessageTypeByName(f"caffe.{name}")
      )
      for name in _SCHEMA
  }


def net_parameter() -> Any:
  """A new, empty `caffe.NetParameter` message (to read or write)."""
  return _messages()["NetParameter"]()


def blob_proto() -> Any:
  """A new, empty `caffe.BlobProto` message (to read or write)."""
  return _messages()["BlobProto"]()
