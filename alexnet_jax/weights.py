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
model (227 crops, the Caffe LRN convention, inverted dropout) is config:
configs/ilsvrc2012.py:caffe_reference.

Command line:

  python -m alexnet_jax.weights convert --caffemodel=bvlc_alexnet.caffemodel \
      --out=bvlc_alexnet.npz [--mean=imagenet_mean.binaryproto \
      --mean_out=imagenet_mean.npz]
  python -m alexnet_jax.weights export --npz=W.npz --config=CONFIG \
      [--input_channels=bgr] --out=W.safetensors
  python -m alexnet_jax.weights export --workdir=WORKDIR \
      --out=W.safetensors|W.npz

`convert` reads Caffe's files (caffe.py) and writes the .npz (conv1 stays
BGR, as Caffe stores it) and the mean image as an .npz holding `mean_image`
[256, 256, 3] (RGB, 0-255), the array the input pipeline subtracts.
`export` writes safetensors for a PyTorch two-tower AlexNet (`SAFETENSORS`
below describes the layout) from an .npz and its config, or from a
training workdir's latest checkpoint (with the config saved in it); with
`--workdir`, an --out ending in .npz writes the Caffe-layout .npz instead.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from alexnet_jax import layers
from alexnet_jax import model as model_lib


class WeightsError(ValueError):
  """An .npz file that does not fit the model, naming the offending entry."""


def _check_channels(input_channels: str) -> None:
  if input_channels not in ("rgb", "bgr"):
    raise ValueError(f"input_channels={input_channels!r}: 'rgb' or 'bgr'.")


def to_caffe_layout(
    params: Any, input_channels: str = "rgb"
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


def from_caffe_layout(
    arrays: dict[str, np.ndarray], like: Any, input_channels: str = "rgb"
) -> Any:
  """{name: array} in the Caffe layout -> a parameter tree shaped `like`.

  `like` is a parameter tree (or its `jax.eval_shape`) of the target model;
  it gives the number of towers and every shape. Raises WeightsError naming
  a missing, unexpected or wrongly shaped entry.
  """
  _check_channels(input_channels)
  shapes = jax.tree.map(lambda x: tuple(x.shape), like)
  expected = {
      k: v.shape
      for k, v in to_caffe_layout(
          jax.tree.map(
              lambda s: np.zeros(s, np.float32),
              shapes,
              is_leaf=lambda x: isinstance(x, tuple),
          )
      ).items()
  }
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  if missing or unexpected:
    raise WeightsError(
        f"weights do not fit the model: missing {missing}, unexpected "
        f"{unexpected}. Expected names: {sorted(expected)}."
    )
  for name, shape in expected.items():
    if tuple(arrays[name].shape) != shape:
      raise WeightsError(
          f"weights entry {name!r} has shape {tuple(arrays[name].shape)}, "
          f"the model needs {shape} (Caffe layout; check model widths, "
          "num_classes and image_size in the config)."
      )
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
        bias=a[f"{name}.bias"].reshape(towers, cout),
    )
  towers, rows, units = shapes["fc6"]["kernel"]
  c5 = shapes["conv5"]["kernel"][-1]
  side = int(round((rows // c5) ** 0.5))
  w6 = a["fc6.weight"].T.reshape(towers, c5, side, side, units)
  params["fc6"] = dict(
      kernel=w6.transpose(0, 2, 3, 1, 4).reshape(towers, rows, units),
      bias=a["fc6.bias"].reshape(shapes["fc6"]["bias"]),
  )
  towers, fc6_units, f7 = shapes["fc7"]["kernel"]
  w7 = a["fc7.weight"].T  # [in, T*O]
  params["fc7"] = dict(
      kernel=w7.reshape(fc6_units, towers, f7).transpose(1, 0, 2),
      bias=a["fc7.bias"].reshape(towers, f7),
  )
  params["fc8"] = dict(
      kernel=a["fc8.weight"].T.reshape(shapes["fc8"]["kernel"]),
      bias=a["fc8.bias"],
  )
  return jax.tree.map(np.ascontiguousarray, params)


def export_npz(
    path: str | os.PathLike[str], params: Any, input_channels: str = "rgb"
) -> None:
  """Writes `params` to `path` in the Caffe layout."""
  np.savez(path, **to_caffe_layout(params, input_channels))


def import_npz(
    path: str | os.PathLike[str], like: Any, input_channels: str = "rgb"
) -> Any:
  """Reads an .npz in the Caffe layout into a tree shaped like `like`.

  The result is host numpy arrays; place them with
  `jax.device_put(params, shardings)`.
  """
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  return from_caffe_layout(arrays, like, input_channels)


# --- safetensors for PyTorch. ---

SAFETENSORS = """\
Keys and shapes (T = towers, 2 in the paper; widths are totals):
  conv1.weight [96, 3, 11, 11]   conv1.bias [96]   input channels R, G, B
  conv2.weight [256, 48, 5, 5]   groups=T          tower 0's kernels first
  conv3.weight [384, 256, 3, 3]  groups=1 (reads both towers)
  conv4.weight [384, 192, 3, 3]  groups=T (absent with model.remove_conv4)
  conv5.weight [256, 192, 3, 3]  groups=T
  fc6.weight [4096, 9216]        inputs: pool5 flattened as (c, h, w)
  fc7.weight [4096, 4096]        fc8.weight [1000, 4096]
  <layer>.bias [out]
The names and shapes are a PyTorch state_dict of Conv2d(groups=...) and
Linear modules; torch.nn.Conv2d's `groups` splits channels into contiguous
blocks, tower 0 first, as here. The metadata ("alexnet_jax.*" keys) holds
the rest of the network: input (RGB, 0-255 scale, minus the mean image),
image size and conv1's bottom/right zero padding, strides and pads, LRN in
torch.nn.LocalResponseNorm's convention (alpha divided by size) applied
within each tower or over all channels (`model.lrn.across_towers`),
pooling, activation. Test-time dropout is folded in:
with the paper's rule (multiply by 1 - rate at test time, §4.2)
fc7.weight and fc8.weight are multiplied by 1 - rate, so nn.Dropout
(identity in eval mode) computes the same function.
"""


def to_torch_layout(
    arrays: dict[str, np.ndarray],
    model_config: Any,
    input_channels: str = "rgb",
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """Caffe-layout arrays -> (tensors, metadata) as in `SAFETENSORS`.

  Args:
    arrays: `to_caffe_layout` output (or a Caffe-layout .npz's contents).
    model_config: the model config the weights belong to (model.py).
    input_channels: conv1's input order in `arrays`; the result is RGB.
  """
  _check_channels(input_channels)
  out = {k: np.ascontiguousarray(v, np.float32) for k, v in arrays.items()}
  if input_channels == "bgr":
    out["conv1.weight"] = np.ascontiguousarray(out["conv1.weight"][:, ::-1])
  rate = float(model_config.dropout_rate)
  scaling = model_config.get("dropout_scaling", "inverted")
  if rate and scaling == "paper":
    # §4.2's test-time rule, x * (1 - rate) after fc6 and fc7, moved into
    # the next layer's weights (fc7 and fc8 are linear in their inputs).
    out["fc7.weight"] = out["fc7.weight"] * np.float32(1.0 - rate)
    out["fc8.weight"] = out["fc8.weight"] * np.float32(1.0 - rate)
  lrn = model_config.lrn
  size = int(lrn.n)
  # torch.nn.LocalResponseNorm divides alpha by size, like Caffe.
  alpha = lrn.alpha if lrn.convention == "caffe" else lrn.alpha * size
  towers = model_config.num_towers
  lrn_span = (
      "over all channels of the layer (all towers)"
      if lrn.get("across_towers", False)
      else f"within each of the {towers} towers"
  )
  metadata = {
      "format": "pt",
      "alexnet_jax.layout": "two-tower AlexNet (Krizhevsky et al. 2012)",
      "alexnet_jax.input": "RGB, 0-255 scale, minus the mean image, NCHW",
      "alexnet_jax.image_size": str(model_config.image_size),
      "alexnet_jax.conv1": (
          "stride 4, zero padding bottom/right "
          f"{layers.conv1_padding(model_config.image_size)}"
      ),
      "alexnet_jax.conv2_to_conv5": "stride 1; pad 2 (conv2), 1 (others)",
      "alexnet_jax.groups": f"conv2, conv4, conv5: {towers}",
      "alexnet_jax.activation": model_config.get("activation", "relu"),
      "alexnet_jax.lrn": (
          "none"
          if not lrn.get("enabled", True)
          else f"after the activation of conv1 and conv2, {lrn_span}: "
          f"torch.nn.LocalResponseNorm(size={size}, "
          f"alpha={alpha!r}, beta={lrn.beta!r}, k={lrn.k!r})"
      ),
      "alexnet_jax.pool": (
          f"max, window {model_config.pool_window}, stride "
          f"{model_config.pool_stride}, after norm1, "
          "norm2 and conv5"
      ),
      "alexnet_jax.dropout": (
          f"rate {rate} after fc6 and fc7; "
          + (
              "test-time scaling folded into fc7, fc8"
              if rate and scaling == "paper"
              else "inverted"
          )
      ),
  }
  return out, metadata


def export_safetensors(
    path: str | os.PathLike[str],
    arrays: dict[str, np.ndarray],
    model_config: Any,
    input_channels: str = "rgb",
) -> None:
  """Writes Caffe-layout `arrays` as safetensors (`SAFETENSORS`)."""
  # pylint: disable-next=g-import-not-at-top
  from safetensors import numpy as st_numpy

  tensors, metadata = to_torch_layout(arrays, model_config, input_channels)
  st_numpy.save_file(tensors, os.fspath(path), metadata=metadata)


# --- Command line (module docstring). ---


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("caffemodel", None, "convert: Caffe's .caffemodel.")
  flags.DEFINE_string(
      "mean", None, "convert: Caffe's mean image (.binaryproto)."
  )
  flags.DEFINE_string(
      "mean_out", None, "convert: where the mean image .npz goes."
  )
  flags.DEFINE_string("npz", None, "export: weights in the Caffe layout.")
  flags.DEFINE_string(
      "workdir", None, "export: a training workdir (its latest checkpoint)."
  )
  flags.DEFINE_enum(
      "input_channels",
      "rgb",
      ["rgb", "bgr"],
      "export: conv1's input order in --npz (bgr: Caffe's).",
  )
  config_flags.DEFINE_config_file(
      "config", None, "export: the config of the --npz model.", lock_config=True
  )
  flags.DEFINE_string("out", None, "Output file (.npz or .safetensors).")


def _convert(values: dict[str, Any]) -> None:
  from alexnet_jax import caffe  # pylint: disable=g-import-not-at-top
  from alexnet_jax import cli  # pylint: disable=g-import-not-at-top

  if not values["caffemodel"] or not values["out"]:
    raise cli.UserError("convert needs --caffemodel and --out.")
  if bool(values["mean"]) != bool(values["mean_out"]):
    raise cli.UserError("--mean and --mean_out go together.")
  conversion = caffe.read_alexnet(values["caffemodel"])
  mean = caffe.read_mean(values["mean"]) if values["mean"] else None
  print(f"{values['caffemodel']}: {conversion.report()}")
  np.savez(values["out"], **conversion.arrays)
  print(
      f"wrote {values['out']} (Caffe layout, conv1 input channels BGR: "
      "use --input_channels=bgr)"
  )
  if mean is not None:
    np.savez(values["mean_out"], mean_image=mean)
    print(
        f"{values['mean']}: mean image {list(caffe.MEAN_SHAPE)} BGR; wrote "
        f"{values['mean_out']} (mean_image [256, 256, 3] RGB, per-channel "
        f"means {[round(float(v), 2) for v in mean.mean(axis=(0, 1))]})"
    )


def _restore_workdir(workdir: str) -> tuple[Any, Any]:
  """(config, host parameters) of a workdir's latest checkpoint."""
  # pylint: disable=g-import-not-at-top
  from alexnet_jax import eval_lib
  from alexnet_jax import parallel
  # pylint: enable=g-import-not-at-top

  config = eval_lib.load_workdir_config(workdir)
  # One device holds both towers: any mesh restores any checkpoint.
  mesh = parallel.make_mesh(1, 1, num_towers=config.model.num_towers)
  params, step = eval_lib.restore_params(workdir, config, mesh)
  print(f"{workdir}: restored step {step}")
  return config, jax.device_get(params)


def _export(values: dict[str, Any], config: Any) -> None:
  from alexnet_jax import cli  # pylint: disable=g-import-not-at-top

  out, workdir = values["out"], values["workdir"]
  if (
      not out
      or bool(values["npz"]) == bool(workdir)
      or (values["npz"] and config is None)
  ):
    raise cli.UserError(
        "export needs --out and either --npz with --config, or --workdir."
    )
  if workdir:
    config, params = _restore_workdir(workdir)
    if out.endswith(".npz"):
      export_npz(out, params)
      print(f"wrote {out} (Caffe layout, conv1 input channels RGB)")
      return
  else:
    shapes = model_lib.param_shapes(config.model)
    try:
      params = import_npz(values["npz"], shapes, values["input_channels"])
    except WeightsError as e:
      raise cli.UserError(f"--npz={values['npz']}: {e}") from None
    except (OSError, ValueError) as e:
      raise cli.UserError(
          f"--npz={values['npz']} is not a readable .npz file ({e})."
      ) from None
  export_safetensors(out, to_caffe_layout(params), config.model)
  print(f"wrote {out} (safetensors, conv1 input channels RGB)")


def main(argv: list[str]) -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from alexnet_jax import cli  # pylint: disable=g-import-not-at-top

  commands = ("convert", "export")
  if len(argv) != 2 or argv[1] not in commands:
    raise cli.UserError(
        f"give one command, {' or '.join(commands)}; got {argv[1:]}. See "
        "`python -m alexnet_jax.weights --help`."
    )
  values = {
      name: flags.FLAGS[name].value
      for name in (
          "caffemodel",
          "mean",
          "mean_out",
          "npz",
          "workdir",
          "input_channels",
          "out",
      )
  }
  if argv[1] == "convert":
    _convert(values)
  else:
    _export(values, cli.config_value(flags.FLAGS["config"]))


if __name__ == "__main__":
  from alexnet_jax import cli  # pylint: disable=g-import-not-at-top

  _define_flags()
  cli.run(main)
