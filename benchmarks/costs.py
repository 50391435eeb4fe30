"""The model's costs worked out by hand: multiply-adds, FLOPs, collectives.

What the train-step benchmark (train_step.py) holds the compiled program
against: the multiply-adds of every conv and fc layer (the "about 724M"
per image commonly quoted for the paper's network, which the paper itself
does not give; docs/paper.md "Network"), the FLOPs of a train step, and the
fewest bytes each device must send per step in the two-tower scheme of
alexnet_jax/parallel.py. Nothing here runs the model.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import ml_collections

from alexnet_jax import layers
from alexnet_jax import model as model_lib
from alexnet_jax import parallel

# The forward cost commonly quoted for the paper's network, about 724 M
# multiply-adds per image (the paper gives none; docs/paper.md "Network").
PAPER_FORWARD_MACS = 724e6

# ---------------------------------------------------------------------------
# Analytic FLOPs.
# ---------------------------------------------------------------------------


def forward_macs_per_image(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Multiply-adds of each conv and fc layer for one image, forward.

  conv: H_out * W_out * C_out * (k * k * C_in_per_output), where
        C_in_per_output is what one output channel reads: all input channels
        for conv1 (the image) and conv3 (both towers), its own tower's for
        conv2, conv4 and conv5 (C_out and C_in summed over the towers);
  fc:   inputs * outputs.
  Biases, ReLU, LRN, pooling, dropout and softmax are not counted (they are
  about 1% more and not multiply-adds of the layer's weights).
  """
  towers = config.num_towers
  c1, c2, c3, c4, c5 = (towers * c for c in config.conv_features)
  f6, f7 = (towers * f for f in config.fc_features)
  sizes = layers.spatial_sizes(
      config.image_size, config.pool_window, config.pool_stride
  )

  def conv(size, out, kernel, inputs):
    return size * size * out * kernel * kernel * inputs

  macs = {
      "conv1": conv(sizes["conv1"], c1, 11, 3),
      "conv2": conv(sizes["conv2"], c2, 5, c1 // towers),
      "conv3": conv(sizes["conv3"], c3, 3, c2),
      "conv4": conv(sizes["conv4"], c4, 3, c3 // towers),
      "conv5": conv(sizes["conv5"], c5, 3, c4 // towers),
      "fc6": sizes["pool5"] ** 2 * c5 * f6,
      "fc7": f6 * f7,
      "fc8": f7 * config.num_classes,
  }
  if config.get("remove_conv4", False):  # conv5 reads conv3 (§7 ablation).
    del macs["conv4"]
    macs["conv5"] = conv(sizes["conv5"], c5, 3, c3 // towers)
  return macs


def _valid_taps(
    size: int, out: int, kernel: int, stride: int, pad_low: int
) -> int:
  """Kernel taps, summed over output positions, that land inside the input.

  Along one spatial dimension; the rest fall on zero padding.
  """
  return sum(
      1
      for o in range(out)
      for j in range(kernel)
      if 0 <= o * stride - pad_low + j < size
  )


def forward_macs_without_padding(
    config: ml_collections.ConfigDict,
) -> dict[str, int]:
  """`forward_macs_per_image` without the taps that multiply zero padding.

  This is what XLA's cost analysis counts for a padded convolution (conv1's
  bottom/right pad of 3 at 224, the SAME padding of conv2-conv5), so it is
  the analytic figure to hold XLA's `cost_analysis()` against.
  """
  macs = forward_macs_per_image(config)
  sizes = layers.spatial_sizes(
      config.image_size, config.pool_window, config.pool_stride
  )
  inputs = dict(
      conv1=config.image_size,
      conv2=sizes["pool1"],
      conv3=sizes["pool2"],
      conv4=sizes["conv3"],
      conv5=sizes["conv4"],
  )
  for name, kernel, stride in (
      ("conv1", 11, 4),
      ("conv2", 5, 1),
      ("conv3", 3, 1),
      ("conv4", 3, 1),
      ("conv5", 3, 1),
  ):
    if name not in macs:
      continue
    pad_low = 0 if name == "conv1" else (kernel - 1) // 2
    valid = _valid_taps(inputs[name], sizes[name], kernel, stride, pad_low)
    # Every tap is an equal share of the layer's multiply-adds.
    macs[name] = macs[name] * valid**2 // (sizes[name] * kernel) ** 2
  return macs


def analytic_flops(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """FLOPs per image: forward = 2 x multiply-adds; train step = 3x forward.

  The backward pass costs two matmuls per forward one (gradient of the input
  and of the weights), hence the usual 3x. The step computes slightly less:
  conv1's input gradient is never needed (the image takes no gradient), so
  `train_flops_per_image_exact` = 2 x (3 x forward MACs - conv1 MACs).
  MFU is computed with the 3x convention. `..._without_padding`: see
  `forward_macs_without_padding`.
  """
  layers = forward_macs_per_image(config)
  macs = sum(layers.values())
  unpadded = forward_macs_without_padding(config)
  return {
      "forward_macs_per_layer": layers,
      "forward_macs_per_image": macs,
      "forward_macs_per_image_without_padding": sum(unpadded.values()),
      "forward_flops_per_image_without_padding": 2 * sum(unpadded.values()),
      "forward_flops_per_image": 2 * macs,
      "train_flops_per_image": 3 * 2 * macs,
      "train_flops_per_image_exact": 2 * (3 * macs - layers["conv1"]),
  }


# ---------------------------------------------------------------------------
# Collectives: parsed from the compiled HLO, and the analytic minimum.
# ---------------------------------------------------------------------------


def analytic_collective_bytes(
    config: ml_collections.ConfigDict,
    mesh_shape: tuple[int, int],
    batch_size: int,
) -> dict[str, Any]:
  """Minimum bytes each device sends per train step for the chosen scheme.

  Values per image per device on a model axis of m devices, T towers (S2:
  pool2 size, C2 and F6 per-tower widths), bytes of the compute dtype
  except fc8's partial logits, which are summed in float32:

    forward   conv3 all-gather of pool2:  (m-1)/m x S2*S2*T*C2 (m = 2: the
                                          own tower's 13x13x128)
              fc6 reduce-scatter:         (m-1) x T/m*F6 (the own shard)
              fc7 all-gather:             (m-1)/m x T*F6
              fc8 all-reduce:             2 (m-1)/m x classes
    backward  the transposes of conv3, fc6 and fc7 (a reduce-scatter, an
              all-gather and a reduce-scatter of the same sizes). fc8's sum
              needs no backward collective: the logits, and so their
              gradient, are already whole on every device of a tower pair
              (the transpose of psum there is the identity), so the backward
              moves 2 x classes x (m-1)/m x 4 bytes less than the forward.
              parallel.py's table counts it twice (4,000 B/image more).
    data axis d > 1: the gradient all-reduce of the device's parameters
              (float32), 2 (d-1)/d x their bytes, and of the 3 scalars of
              the step's metrics (loss, top-1 and top-5 sums over the
              global batch).

  With the paper's sizes on 1 x 2, float32: 106,912 B/image forward (as in
  parallel.py) and 102,912 backward.
  """
  data, m = mesh_shape
  per_shard = batch_size // data
  result = {"model_forward": 0.0, "model_backward": 0.0, "data": 0.0}
  if m > 1:
    item = jnp.dtype(config.dtype).itemsize
    towers = config.num_towers
    c2 = config.conv_features[1]
    f6 = config.fc_features[0]
    sizes = layers.spatial_sizes(
        config.image_size, config.pool_window, config.pool_stride
    )
    frac = (m - 1) / m
    conv3 = frac * sizes["pool2"] ** 2 * towers * c2 * item
    fc6 = (m - 1) * (towers // m) * f6 * item
    fc7 = frac * towers * f6 * item
    fc8 = 2 * frac * config.num_classes * 4
    result["model_forward"] = per_shard * (conv3 + fc6 + fc7 + fc8)
    result["model_backward"] = per_shard * (conv3 + fc6 + fc7)
  if data > 1:
    shapes = model_lib.param_shapes(config)
    local = sum(
        math.prod(x.shape)
        // (1 if (name, leaf) in parallel.REPLICATED_PARAMS else m)
        for name, params in shapes.items()
        for leaf, x in params.items()
    )
    result["data"] = 2 * (data - 1) / data * (local + 3) * 4
  result["total"] = sum(result.values())
  return result
