"""Weight interchange: `.npz` files in the Caffe `bvlc_alexnet` layout.

The file holds one array per parameter, named `<layer>.weight` and
`<layer>.bias` for conv1..conv5 and fc6..fc8, in the layout Caffe (and most
converters from it) use, so weights converted from Caffe or other frameworks
can be brought in and ours taken elsewhere:

  conv kernels [out, in / groups, kh, kw], tower 0's kernels first
               (groups = towers, 2 in the paper, for conv2, conv4, conv5:
               the tower-local layers; a model without conv4 has no
               conv4 entries);
  fc matrices  [out, in]; fc6's input order is pool5 flattened as
               channels-height-width with tower 0's channels first;
  biases       [out], tower 0 first.

Caffe's own bvlc_alexnet reads BGR images; pass `input_channels="bgr"` to
reverse conv1's input channels on import/export. Everything else about that
model (227 crops, the Caffe LRN convention, inverted dropout) is config: see
model.py.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from alexnet_jax import model as model_lib


class WeightsError(ValueError):
  """An .npz file that does not fit the model, naming the offending entry."""


def _check_channels(input_channels: str) -> None:
  if input_channels not in ("rgb", "bgr"):
    raise ValueError(f"input_channels={input_channels!r}: 'rgb' or 'bgr'.")


def to_caffe_layout(params: Any, input_channels: str = "rgb"
                    ) -> dict[str, np.ndarray]:
  """Our parameter tree -> {name: array} in the Caffe layout (module doc)."""
  _check_channels(input_channels)
  p = jax.tree.map(np.asarray, jax.device_get(params))
  out = {}
  for name in model_lib.CONV_LAYERS:
    if name not in p:  # conv4 with model.remove_conv4.
      continue
    kernel = p[name]["kernel"]  # [T, kh, kw, I, O]
    towers, kh, kw, cin, cout = kernel.shape
    # -> [T, O, I, kh, kw] -> [T*O, I, kh, kw]
    w = kernel.transpose(0, 4, 3, 1, 2).reshape(towers * cout, cin, kh, kw)
    if name == "conv1" and input_channels == "bgr":
      w = w[:, ::-1]
    out[f"{name}.weight"] = w
    out[f"{name}.bias"] = p[name]["bias"].reshape(-1)
  # fc6 [T, h*w*c, F]: rows are (h, w, c) of tower t's pool5. Caffe wants
  # columns (c_global, h, w) with c_global = t * c + c.
  k6 = p["fc6"]["kernel"]
  towers, rows, units = k6.shape
  c5 = p["conv5"]["kernel"].shape[-1]
  side = int(round((rows // c5) ** 0.5))
  w6 = k6.reshape(towers, side, side, c5, units).transpose(0, 3, 1, 2, 4)
  out["fc6.weight"] = w6.reshape(towers * c5 * side * side, units).T
  out["fc6.bias"] = p["fc6"]["bias"].reshape(-1)
  # fc7 [T, in, O]: tower t owns output units t*O..(t+1)*O.
  k7 = p["fc7"]["kernel"]
  out["fc7.weight"] = np.concatenate(list(k7), axis=1).T
  out["fc7.bias"] = p["fc7"]["bias"].reshape(-1)
  # fc8 [T, I, K]: tower t owns input rows t*I..(t+1)*I.
  k8 = p["fc8"]["kernel"]
  out["fc8.weight"] = k8.reshape(-1, k8.shape[-1]).T
  out["fc8.bias"] = p["fc8"]["bias"]
  return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def from_caffe_layout(arrays: dict[str, np.ndarray], like: Any,
                      input_channels: str = "rgb") -> Any:
  """{name: array} in the Caffe layout -> a parameter tree shaped `like`.

  `like` is a parameter tree (or its `jax.eval_shape`) of the target model;
  it gives the number of towers and every shape. Raises WeightsError naming
  a missing, unexpected or wrongly shaped entry.
  """
  _check_channels(input_channels)
  shapes = jax.tree.map(lambda x: tuple(x.shape), like)
  expected = {k: v.shape for k, v in to_caffe_layout(
      jax.tree.map(lambda s: np.zeros(s, np.float32), shapes,
                   is_leaf=lambda x: isinstance(x, tuple))).items()}
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  if missing or unexpected:
    raise WeightsError(
        f"weights do not fit the model: missing {missing}, unexpected "
        f"{unexpected}. Expected names: {sorted(expected)}.")
  for name, shape in expected.items():
    if tuple(arrays[name].shape) != shape:
      raise WeightsError(
          f"weights entry {name!r} has shape {tuple(arrays[name].shape)}, "
          f"the model needs {shape} (Caffe layout; check model widths, "
          "num_classes and image_size in the config).")
  a = {k: np.asarray(v, np.float32) for k, v in arrays.items()}
  params = {}
  for name in model_lib.CONV_LAYERS:
    if name not in shapes:
      continue
    towers, kh, kw, cin, cout = shapes[name]["kernel"]
    w = a[f"{name}.weight"]
    if name == "conv1" and input_channels == "bgr":
      w = w[:, ::-1]
    params[name] = dict(
        kernel=w.reshape(towers, cout, cin, kh, kw).transpose(0, 3, 4, 2, 1),
        bias=a[f"{name}.bias"].reshape(towers, cout))
  towers, rows, units = shapes["fc6"]["kernel"]
  c5 = shapes["conv5"]["kernel"][-1]
  side = int(round((rows // c5) ** 0.5))
  w6 = a["fc6.weight"].T.reshape(towers, c5, side, side, units)
  params["fc6"] = dict(
      kernel=w6.transpose(0, 2, 3, 1, 4).reshape(towers, rows, units),
      bias=a["fc6.bias"].reshape(shapes["fc6"]["bias"]))
  towers, fc6_units, f7 = shapes["fc7"]["kernel"]
  w7 = a["fc7.weight"].T  # [in, T*O]
  params["fc7"] = dict(
      kernel=w7.reshape(fc6_units, towers, f7).transpose(1, 0, 2),
      bias=a["fc7.bias"].reshape(towers, f7))
  params["fc8"] = dict(
      kernel=a["fc8.weight"].T.reshape(shapes["fc8"]["kernel"]),
      bias=a["fc8.bias"])
  return jax.tree.map(np.ascontiguousarray, params)


def export_npz(path: str | os.PathLike[str], params: Any,
               input_channels: str = "rgb") -> None:
  """Writes `params` to `path` in the Caffe layout."""
  np.savez(path, **to_caffe_layout(params, input_channels))


def import_npz(path: str | os.PathLike[str], like: Any,
               input_channels: str = "rgb") -> Any:
  """Reads an .npz in the Caffe layout into a tree shaped like `like`.

  The result is host numpy arrays; place them with
  `jax.device_put(params, shardings)`.
  """
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  return from_caffe_layout(arrays, like, input_channels)
