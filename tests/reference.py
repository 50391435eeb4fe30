"""An independent single-device AlexNet, written from the paper's §3-§4.

It shares no code with alexnet_jax.model: it takes the weights in the Caffe
layout (`<layer>.weight` [out, in/groups, kh, kw] / [out, in], NCHW
activations), expresses the towers as grouped convolutions (groups=towers
for conv2, conv4, conv5) and plain dense layers, and computes LRN with an
explicit loop over channels (within each tower) or with a band matrix (over
all channels, Caffe's). The model must equal it. Without
`conv4.weight` in the weights, conv5 reads conv3 (the §7 ablation).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def lrn_loop(x_NCHW, towers, k, n, alpha, beta, convention):
  """LRN by the paper's formula (§3.3), one channel at a time, per tower."""
  channels = x_NCHW.shape[1]
  per_tower = channels // towers
  scale = alpha / n if convention == "caffe" else alpha
  outs = []
  for i in range(channels):
    t, local = divmod(i, per_tower)
    lo = t * per_tower + max(0, local - n // 2)
    hi = t * per_tower + min(per_tower - 1, local + n // 2)
    s = jnp.sum(x_NCHW[:, lo : hi + 1] ** 2, axis=1)
    outs.append(x_NCHW[:, i] / (k + scale * s) ** beta)
  return jnp.stack(outs, axis=1)


def lrn_across_channels(x_NCHW, k, n, alpha, beta, convention):
  """LRN over all channels of the layer, both towers (Caffe's LRN layer).

  The window sums are a product with a 0/1 band matrix built in numpy:
  band[j, i] = 1 where map j is in map i's window i - n//2 .. i + n//2 (cut
  at the layer's first and last map).
  """
  channels = x_NCHW.shape[1]
  half = n // 2
  j, i = np.meshgrid(np.arange(channels), np.arange(channels), indexing="ij")
  band = ((j >= i - half) & (j <= i + n - 1 - half)).astype(np.float32)
  s = jnp.einsum(
      "njhw,ji->nihw", x_NCHW**2, band, precision=jax.lax.Precision.HIGHEST
  )
  scale = alpha / n if convention == "caffe" else alpha
  return x_NCHW / (k + scale * s) ** beta


def _conv(x, w, b, stride, padding, groups):
  y = jax.lax.conv_general_dilated(
      x,
      w,
      (stride, stride),
      padding,
      dimension_numbers=("NCHW", "OIHW", "NCHW"),
      feature_group_count=groups,
      precision=jax.lax.Precision.HIGHEST,
  )
  return y + b[None, :, None, None]


def _maxpool(x, window, stride):
  return jax.lax.reduce_window(
      x,
      -jnp.inf,
      jax.lax.max,
      (1, 1, window, window),
      (1, 1, stride, stride),
      "VALID",
  )


def _dropout(x, mask, rate, scaling):
  """§4.2 "paper": training x * mask, test x * (1 - rate); or inverted."""
  keep = 1.0 - rate
  if mask is None:
    return x * keep if scaling == "paper" else x
  return x * mask if scaling == "paper" else x * mask / keep


def logits(
    w,
    images_NHWC,
    *,
    towers=2,
    lrn=("paper", 2.0, 5, 1e-4, 0.75),
    pool=(3, 2),
    activation="relu",
    dropout_rate=0.5,
    dropout_scaling="paper",
    dropout_masks=None,
    lrn_across_towers=False,
):
  """Reference forward pass.

  lrn: (convention, k, n, alpha, beta), or None for no LRN.
  lrn_across_towers: normalize over all channels of the layer (Caffe's
    bvlc_alexnet) instead of within each tower.
  dropout_masks: (mask6, mask7) of 0/1 for a training pass; None for test.
  """
  act = {"relu": jax.nn.relu, "tanh": jnp.tanh}[activation]

  def norm(x):
    if lrn is None:
      return x
    convention, k, n, alpha, beta = lrn
    if lrn_across_towers:
      return lrn_across_channels(x, k, n, alpha, beta, convention)
    return lrn_loop(x, towers, k, n, alpha, beta, convention)

  def dropout(x, i):
    if dropout_rate == 0:
      return x
    mask = None if dropout_masks is None else dropout_masks[i]
    return _dropout(x, mask, dropout_rate, dropout_scaling)

  x = jnp.transpose(images_NHWC, (0, 3, 1, 2))
  size = x.shape[-1]
  # The authors' round-up: 1 + ceil((size - 11) / 4) outputs
  # (docs/paper.md "224 or 227").
  out = 1 + math.ceil((size - 11) / 4)
  pad = (out - 1) * 4 + 11 - size
  x = _conv(x, w["conv1.weight"], w["conv1.bias"], 4, ((0, pad), (0, pad)), 1)
  x = _maxpool(norm(act(x)), *pool)
  x = _conv(x, w["conv2.weight"], w["conv2.bias"], 1, ((2, 2), (2, 2)), towers)
  x = _maxpool(norm(act(x)), *pool)
  x = act(_conv(x, w["conv3.weight"], w["conv3.bias"], 1, ((1, 1), (1, 1)), 1))
  if "conv4.weight" in w:
    x = act(
        _conv(
            x, w["conv4.weight"], w["conv4.bias"], 1, ((1, 1), (1, 1)), towers
        )
    )
  x = act(
      _conv(x, w["conv5.weight"], w["conv5.bias"], 1, ((1, 1), (1, 1)), towers)
  )
  x = _maxpool(x, *pool)
  x = x.reshape(x.shape[0], -1)  # channels-height-width, tower 0 first.
  hi = jax.lax.Precision.HIGHEST
  x = act(jnp.dot(x, w["fc6.weight"].T, precision=hi) + w["fc6.bias"])
  x = dropout(x, 0)
  x = act(jnp.dot(x, w["fc7.weight"].T, precision=hi) + w["fc7.bias"])
  x = dropout(x, 1)
  return jnp.dot(x, w["fc8.weight"].T, precision=hi) + w["fc8.bias"]
