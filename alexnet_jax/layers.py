"""The layers the network is built of, and their output sizes.

The towers' convolutions (`TowerConv`), a fully connected layer's
parameters (`DenseParams`, applied by model.py where the towers exchange
activations), local response normalization (§3.3) and the size arithmetic
of the authors' convolutions and overlapping pooling (§3.4). model.py
assembles them into the two-tower network.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax import parallel

Array = jax.Array
Initializer = Callable[..., Array]


def conv_out_size(size: int, kernel: int, stride: int, pad: int = 0) -> int:
  """Output size of a convolution that rounds up like cuda-convnet.

  1 + ceil((size + 2 * pad - kernel) / stride). For conv1 at 224 this gives
  55, which equals padding the bottom/right edge by 3.
  """
  return 1 + math.ceil((size + 2 * pad - kernel) / stride)


def conv1_padding(image_size: int) -> int:
  """Rows (and columns) of zeros conv1 adds at the bottom (right) edge.

  The authors' output-size rounding (`conv_out_size`) as explicit padding of
  the far edges only: 3 at 224 (-> 55x55), 0 at 227 (docs/paper.md "224 or
  227").
  """
  return (conv_out_size(image_size, 11, 4) - 1) * 4 + 11 - image_size


def pool_out_size(size: int, window: int, stride: int) -> int:
  return (size - window) // stride + 1


def spatial_sizes(
    image_size: int, pool_window: int = 3, pool_stride: int = 2
) -> dict[str, int]:
  """Spatial size after each stage: 224 -> 55, 27, 13, 13, 13, 6."""
  conv1 = conv_out_size(image_size, 11, 4)
  pool1 = pool_out_size(conv1, pool_window, pool_stride)
  pool2 = pool_out_size(pool1, pool_window, pool_stride)
  pool5 = pool_out_size(pool2, pool_window, pool_stride)
  return dict(
      conv1=conv1,
      pool1=pool1,
      conv2=pool1,
      pool2=pool2,
      conv3=pool2,
      conv4=pool2,
      conv5=pool2,
      pool5=pool5,
  )


def local_response_norm(
    x: Array,
    towers: int,
    *,
    convention: str,
    k: float,
    n: int,
    alpha: float,
    beta: float,
    across_towers: bool = False,
    axis_name: str | None = None,
) -> Array:
  """LRN across channels, within each tower (§3.3), computed in float32.

  b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2)^beta
  where N is a tower's channel count. convention="caffe" uses alpha / n
  (docs/paper.md "LRN").

  `across_towers=True` (Caffe's bvlc_alexnet): N is the layer's channel
  count, all towers together; `x` holds this device's `towers` towers, and
  the channels next to them come from the devices along `axis_name`
  (parallel.neighbour_channels; none when one device holds every tower).
  """
  if convention not in ("paper", "caffe"):
    raise ValueError(f"lrn.convention={convention!r}: 'paper' or 'caffe'.")
  scale = alpha / n if convention == "caffe" else alpha
  dtype = x.dtype
  half = n // 2
  if across_towers:
    # The neighbours' maps travel in the compute dtype, before the cast.
    before, after = parallel.neighbour_channels(
        x, axis_name, half, n - 1 - half
    )
    x = x.astype(jnp.float32)
    padded = jnp.concatenate(
        [before.astype(jnp.float32), x, after.astype(jnp.float32)], axis=-1
    )
    sq_sum = jax.lax.reduce_window(
        jnp.square(padded),
        0.0,
        jax.lax.add,
        window_dimensions=(1,) * (x.ndim - 1) + (n,),
        window_strides=(1,) * x.ndim,
        padding="VALID",
    )
    return (x * jnp.power(k + scale * sq_sum, -beta)).astype(dtype)
  x = x.astype(jnp.float32)
  *lead, channels = x.shape
  x_T = x.reshape(*lead, towers, channels // towers)
  # Zero padding at each tower's channel edges makes the window sum run over
  # max(0, i - n/2) .. min(N - 1, i + n/2), as in the paper's formula (§3.3).
  sq_sum = jax.lax.reduce_window(
      jnp.square(x_T),
      0.0,
      jax.lax.add,
      window_dimensions=(1,) * (x_T.ndim - 1) + (n,),
      window_strides=(1,) * x_T.ndim,
      padding=((0, 0),) * (x_T.ndim - 1) + ((half, n - 1 - half),),
  )
  y = x_T * jnp.power(k + scale * sq_sum, -beta)
  return y.reshape(x.shape).astype(dtype)


ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh}


def _tower_normal(std: float) -> Initializer:
  return nn.initializers.normal(stddev=std)


_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x: Array, kernel: Array, stride: int, padding: Any) -> Array:
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=_NHWC
  )


def kernel_grad_by_rows(
    x: Array, dy: Array, kernel_size: int, stride: int, padding: Any
) -> Array:
  """The kernel gradient of `_conv(x, kernel, stride, padding)`, row by row.

  The same sum as XLA's weight-gradient convolution, in another form: kernel
  row i reads padded input rows i, i + stride, ..., one per output row, so
  those rows and the output gradient's become (image, row) pairs of 1-pixel
  high images, and row i's gradient is a convolution along the width whose
  batch is the input channels and whose contraction runs over the pairs
  and the output columns. XLA:CPU runs conv2's kernel gradient 2x faster in
  this form (benchmarks/README.md). Returns [k, k, in, out] like the kernel.
  """
  batch, _, _, channels = x.shape
  _, out_h, out_w, features = dy.shape
  k = kernel_size
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(
        x.shape[1:3], (k, k), (stride, stride), padding
    )
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  width = x.shape[2]
  # [out_h * batch pairs, 1, out_w, features] as the kernel [1, out_w, pairs,
  # features]: the same for every kernel row.
  dy_rows = jnp.transpose(
      dy.reshape(batch * out_h, 1, out_w, features), (1, 2, 0, 3)
  )
  rows = []
  for i in range(k):
    x_i = jax.lax.slice(
        x,
        (0, i, 0, 0),
        (batch, i + stride * (out_h - 1) + 1, width, channels),
        (1, stride, 1, 1),
    )
    # [channels, 1, width, pairs]: the input channels as the batch.
    x_i = jnp.transpose(
        x_i.reshape(batch * out_h, 1, width, channels), (3, 1, 2, 0)
    )
    g = jax.lax.conv_general_dilated(
        x_i,
        dy_rows,
        (1, 1),
        "VALID",
        rhs_dilation=(1, stride),
        dimension_numbers=_NHWC,
    )  # [channels, 1, width - stride * (out_w - 1), features]
    rows.append(jnp.transpose(g[:, 0, :k, :], (1, 0, 2)))
  return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_rows_grad(x: Array, kernel: Array, stride: int, padding: Any) -> Array:
  """`_conv` whose kernel gradient is `kernel_grad_by_rows` (the input
  gradient is XLA's). Inside shard_map, `kernel` must vary along the same
  mesh axes as `x` (see `parallel.vary`)."""
  return _conv(x, kernel, stride, padding)


def _conv_rows_grad_fwd(x, kernel, stride, padding):
  return _conv(x, kernel, stride, padding), (x, kernel)


def _conv_rows_grad_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  _, input_grad = jax.vjp(lambda x: _conv(x, kernel, stride, padding), x)
  (dx,) = input_grad(dy)
  dk = kernel_grad_by_rows(x, dy, kernel.shape[0], stride, padding)
  return dx, dk.astype(kernel.dtype)


conv_rows_grad.defvjp(_conv_rows_grad_fwd, _conv_rows_grad_bwd)


class TowerConv(nn.Module):
  """`towers` convolutions side by side, one per local tower.

  `shared_input=True`: every tower reads the whole input (conv1 reads the
  image; conv3 reads both towers' conv2 maps after the gather).
  `shared_input=False`: tower t reads only channel block t of the input.

  `kernel_grad="rows"` (per-tower convolutions only) computes the kernel
  gradient with `kernel_grad_by_rows` instead of XLA's weight-gradient
  convolution: the same gradient up to float rounding. Inside shard_map the
  module then needs `data_axis`, the mesh axis the batch is split over.
  """

  features: int
  kernel_size: int
  towers: int
  shared_input: bool
  stride: int = 1
  padding: Any = "SAME"
  weight_std: float = 0.01
  bias_value: float = 0.0
  dtype: Any = jnp.float32
  kernel_grad: str = "xla"
  data_axis: str | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.kernel_grad not in ("xla", "rows"):
      raise ValueError(f"kernel_grad={self.kernel_grad!r}: 'xla' or 'rows'.")
    if self.kernel_grad == "rows" and self.shared_input:
      raise ValueError("kernel_grad='rows' is for per-tower convolutions.")
    in_features = (
        x.shape[-1] if self.shared_input else (x.shape[-1] // self.towers)
    )
    kernel = self.param(
        "kernel",
        _tower_normal(self.weight_std),
        (
            self.towers,
            self.kernel_size,
            self.kernel_size,
            in_features,
            self.features,
        ),
    )
    bias = self.param(
        "bias",
        nn.initializers.constant(self.bias_value),
        (self.towers, self.features),
    )
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)

    if self.shared_input:
      # [T, kh, kw, I, O] -> [kh, kw, I, T*O]: one convolution for the local
      # towers, output channels tower-major.
      kh, kw = self.kernel_size, self.kernel_size
      y = _conv(
          x,
          jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(
              kh, kw, in_features, self.towers * self.features
          ),
          self.stride,
          self.padding,
      )
    else:
      # One convolution per tower on its own channel block. The same function
      # as a grouped convolution (feature_group_count=towers), which XLA:CPU
      # runs 2-4x slower (measured with `benchmarks.train_step --profile`).
      if self.kernel_grad == "rows":
        # The custom gradient's kernel must vary along the batch's axis like
        # x does; the gradient's sum over that axis is then autodiff's.
        kernel = parallel.vary(kernel, self.data_axis)
        conv = conv_rows_grad
      else:
        conv = _conv
      x_T = jnp.split(x, self.towers, axis=-1)
      y = jnp.concatenate(
          [
              conv(x_T[t], kernel[t], self.stride, self.padding)
              for t in range(self.towers)
          ],
          axis=-1,
      )
    return y + bias.reshape(-1).astype(self.dtype)


class DenseParams(nn.Module):
  """Declares a fully connected layer's kernel and bias under one name."""

  kernel_shape: tuple[int, ...]
  bias_shape: tuple[int, ...]
  weight_std: float
  bias_value: float

  @nn.compact
  def __call__(self) -> tuple[Array, Array]:
    kernel = self.param(
        "kernel", _tower_normal(self.weight_std), self.kernel_shape
    )
    bias = self.param(
        "bias", nn.initializers.constant(self.bias_value), self.bias_shape
    )
    return kernel, bias
