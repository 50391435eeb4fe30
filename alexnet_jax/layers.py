"""The layers the network is built of, and their output sizes.

The towers' convolutions (`TowerConv`), a fully connected layer's
parameters (`DenseParams`, applied by model.py where the towers exchange
activations), local response normalization (§3.3) and the size arithmetic
of the authors' convolutions and overlapping pooling (§3.4). model.py
assembles them into the two-tower network.
"""

from __future__ import annotations

from collections.abc import Callable
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


class TowerConv(nn.Module):
  """`towers` convolutions side by side, one per local tower.

  `shared_input=True`: every tower reads the whole input (conv1 reads the
  image; conv3 reads both towers' conv2 maps after the gather).
  `shared_input=False`: tower t reads only channel block t of the input.
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

  @nn.compact
  def __call__(self, x: Array) -> Array:
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

    def conv(x, kernel_HWIO):
      return jax.lax.conv_general_dilated(
          x.astype(self.dtype),
          kernel_HWIO.astype(self.dtype),
          window_strides=(self.stride, self.stride),
          padding=self.padding,
          dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )

    if self.shared_input:
      # [T, kh, kw, I, O] -> [kh, kw, I, T*O]: one convolution for the local
      # towers, output channels tower-major.
      kh, kw = self.kernel_size, self.kernel_size
      y = conv(
          x,
          jnp.transpose(kernel, (1, 2, 3, 0, 4)).reshape(
              kh, kw, in_features, self.towers * self.features
          ),
      )
    else:
      # One convolution per tower on its own channel block. The same function
      # as a grouped convolution (feature_group_count=towers), which XLA:CPU
      # runs 2-4x slower (measured with `benchmarks.train_step --profile`).
      x_T = jnp.split(x, self.towers, axis=-1)
      y = jnp.concatenate(
          [conv(x_T[t], kernel[t]) for t in range(self.towers)], axis=-1
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
