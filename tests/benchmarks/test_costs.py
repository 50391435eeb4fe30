"""The model's costs worked out by hand (benchmarks/costs.py)."""

import pytest

from alexnet_jax import model as model_lib
from benchmarks import costs
from tests import helpers


def test_paper_forward_multiply_adds():
  """The ~724M multiply-adds per image quoted for the paper's network (§3.5
  sizes; docs/paper.md "Network"), exactly."""
  flops = costs.analytic_flops(model_lib.default_config())
  assert flops["forward_macs_per_layer"] == {
      "conv1": 55 * 55 * 96 * (11 * 11 * 3),
      "conv2": 27 * 27 * 256 * (5 * 5 * 48),  # Own tower's 48 channels.
      "conv3": 13 * 13 * 384 * (3 * 3 * 256),  # Both towers' 256.
      "conv4": 13 * 13 * 384 * (3 * 3 * 192),
      "conv5": 13 * 13 * 256 * (3 * 3 * 192),
      "fc6": 6 * 6 * 256 * 4096,
      "fc7": 4096 * 4096,
      "fc8": 4096 * 1000,
  }
  # A change here means the model's shapes changed.
  assert flops["forward_macs_per_image"] == 724_406_816
  assert flops["forward_macs_per_image"] == pytest.approx(724e6, rel=0.02)
  assert flops["forward_flops_per_image"] == 2 * 724_406_816
  assert flops["train_flops_per_image"] == 6 * 724_406_816
  assert flops["train_flops_per_image_exact"] == 2 * (
      3 * 724_406_816 - 55 * 55 * 96 * 363
  )
  # Without the kernel taps on zero padding (what XLA's cost analysis
  # counts): per dimension conv1 55*11 - 3 taps of 55*11, conv2 27*5 - 6 of
  # 27*5, conv3-5 13*3 - 2 of 13*3.
  assert (
      flops["forward_macs_per_image_without_padding"]
      == (
          602**2 * 96 * 3
          + 129**2 * 256 * 48
          + 37**2 * 384 * 256
          + 37**2 * 384 * 192
          + 37**2 * 256 * 192
          + 6 * 6 * 256 * 4096
          + 4096 * 4096
          + 4096 * 1000
      )
      == 670_279_808
  )


def test_tiny_forward_multiply_adds():
  # 99x99 input: conv1 23x23, pool1 11, pool2 5, pool5 2 (helpers.py).
  # Per tower (6, 8, 12, 12, 8) conv and (16, 16) fc units, 2 towers.
  flops = costs.analytic_flops(helpers.tiny_model_config())
  hand = (
      23 * 23 * 12 * (11 * 11 * 3)  # conv1
      + 11 * 11 * 16 * (5 * 5 * 6)  # conv2, own tower
      + 5 * 5 * 24 * (3 * 3 * 16)  # conv3, both towers
      + 5 * 5 * 24 * (3 * 3 * 12)  # conv4
      + 5 * 5 * 16 * (3 * 3 * 12)  # conv5
      + 2 * 2 * 16 * 32  # fc6
      + 32 * 32  # fc7
      + 32 * 10
  )  # fc8
  assert hand == 2_792_516
  assert flops["forward_macs_per_image"] == hand
  assert flops["train_flops_per_image"] == 6 * hand
  # 99 needs no padding in conv1; SAME padding: conv2 11*5 - 6 taps of 11*5
  # per dimension, conv3-5 5*3 - 2 of 5*3.
  assert flops["forward_macs_per_image_without_padding"] == (
      23**2 * 121 * 12 * 3
      + 49**2 * 16 * 6
      + 13**2 * 24 * 16
      + 13**2 * 24 * 12
      + 13**2 * 16 * 12
      + 2 * 2 * 16 * 32
      + 32 * 32
      + 32 * 10
  )
