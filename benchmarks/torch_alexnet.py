"""The paper's network and update rule in PyTorch, for timing only.

The comparison in `benchmarks/vs_torch.py` times this against alexnet_jax's
train step on the same cores. It is written from the paper, like the
project's independent reference (tests/reference.py), in PyTorch's own
idiom: NCHW activations, the two towers as grouped convolutions (groups=2 in
conv2, conv4 and conv5; conv1, conv3 and the fully connected layers see
both towers), the paper's LRN (k=2, n=5, alpha=1e-4, beta=0.75, alpha not
divided by n, within each tower), overlapping 3/2 max-pooling, the paper's
dropout (training zeroes each fc6/fc7 output with probability 0.5 and does
not rescale), and §5's update rule:

    v <- momentum * v - lr * weight_decay * w - lr * grad ;  w <- w + v

(no weight decay on biases, as alexnet_jax's default). The weights are
alexnet_jax's, in the Caffe layout (`alexnet_jax.weights.to_caffe_layout`,
which is PyTorch's too), so the two programs start from the same values and
`vs_torch.py` checks that both compute the same test-time logits before it
times them.

torch is a dependency of this benchmark only: nothing in `alexnet_jax` or
its tests imports this file.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# (stride, padding, one group per tower) of each convolution; conv1's padding
# depends on the image size (`_conv1_padding`).
CONV = {
    "conv1": (4, 0, False),
    "conv2": (1, 2, True),
    "conv3": (1, 1, False),
    "conv4": (1, 1, True),
    "conv5": (1, 1, True),
}


def _conv1_padding(size: int) -> int:
  """alexnet_jax's round-up: 1 + ceil((size - 11) / 4) outputs, the padding
  added at the bottom and right only (F.pad below)."""
  out = 1 + math.ceil((size - 11) / 4)
  return (out - 1) * 4 + 11 - size


def lrn(x: torch.Tensor, towers: int, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """The paper's LRN (§3.3) within each tower: a window sum of squares over
  neighbouring channels, as one average-pool over the channel axis."""
  b, c, h, w = x.shape
  per = c // towers
  sq = (x * x).reshape(b * towers, 1, per, h * w)
  # Sum over a window of n channels, cut at the tower's first and last map.
  s = (
      F.avg_pool2d(F.pad(sq, (0, 0, n // 2, n // 2)), (n, 1), stride=1) * n
  )  # avg_pool of the zero-padded squares x n = the cut window's sum.
  s = s.reshape(b, c, h, w)
  return x / (k + alpha * s) ** beta


class AlexNet(torch.nn.Module):
  """The two-tower network; parameters named `<layer>.weight/.bias`."""

  def __init__(
      self,
      arrays: dict[str, np.ndarray],
      towers: int = 2,
      dropout_rate: float = 0.5,
  ):
    super().__init__()
    self.towers, self.dropout_rate = towers, dropout_rate
    self.params = torch.nn.ParameterDict(
        {
            name.replace(".", "_"): torch.nn.Parameter(
                torch.tensor(a)
            )  # A copy.
            for name, a in arrays.items()
        }
    )

  def _p(self, layer: str):
    return self.params[f"{layer}_weight"], self.params[f"{layer}_bias"]

  def forward(self, x_nchw: torch.Tensor, train: bool) -> torch.Tensor:
    pad = _conv1_padding(x_nchw.shape[-1])
    x = F.pad(x_nchw, (0, pad, 0, pad))
    for layer, (stride, padding, per_tower) in CONV.items():
      w, b = self._p(layer)
      groups = self.towers if per_tower else 1
      x = F.relu(F.conv2d(x, w, b, stride, padding, groups=groups))
      if layer in ("conv1", "conv2"):
        x = F.max_pool2d(lrn(x, self.towers), 3, 2)
      elif layer == "conv5":
        x = F.max_pool2d(x, 3, 2)
    x = x.flatten(1)  # (channel, height, width), tower 0 first: Caffe's.
    for layer in ("fc6", "fc7"):
      x = F.relu(F.linear(x, *self._p(layer)))
      if not self.dropout_rate:
        continue
      if train:  # §4.2: zero with probability 0.5, no rescaling.
        x = x * (torch.rand_like(x) >= self.dropout_rate)
      else:
        x = x * (1.0 - self.dropout_rate)
    return F.linear(x, *self._p("fc8"))


class PaperSGD:
  """§5's update on the model's parameters (one velocity per parameter)."""

  def __init__(self, model: AlexNet, lr=0.01, momentum=0.9, weight_decay=5e-4):
    self.params = list(model.params.values())
    self.names = list(model.params.keys())
    self.decay = [
        weight_decay if n.endswith("weight") else 0.0 for n in self.names
    ]
    self.velocity = [torch.zeros_like(p) for p in self.params]
    self.lr, self.momentum = lr, momentum

  @torch.no_grad()
  def step(self):
    for p, v, wd in zip(self.params, self.velocity, self.decay):
      v.mul_(self.momentum).add_(p.grad, alpha=-self.lr)
      if wd:
        v.add_(p, alpha=-self.lr * wd)
      p.add_(v)
      p.grad = None


def train_step_fn(model: AlexNet, optimizer: PaperSGD):
  """One step: forward with dropout, mean cross-entropy, backward, update.
  Returns the loss (a tensor)."""

  def step(images_nchw: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(model(images_nchw, train=True), labels)
    loss.backward()
    optimizer.step()
    return loss.detach()

  return step
