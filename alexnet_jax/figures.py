"""Summaries and pictures: TensorBoard scalars and the paper's Figure 3.

Only process 0 writes; on the others every call is a no-op.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image
import tensorboardX


class SummaryWriter:
  """TensorBoard event files in `workdir` (process 0 only).

  Written with tensorboardX, which needs neither TensorFlow nor the
  `tensorboard` package (that is only needed to view the files).
  """

  def __init__(self, workdir: str):
    self._writer = None
    if jax.process_index() == 0:
      self._writer = tensorboardX.SummaryWriter(workdir)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._writer is not None:
      for name, value in values.items():
        self._writer.add_scalar(name, value, step)
      self._writer.flush()

  def image(self, step: int, name: str, image: np.ndarray) -> None:
    """Writes a uint8 [H, W, 3] image."""
    if self._writer is not None:
      self._writer.add_image(name, image, step, dataformats="HWC")
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def conv1_grid(kernel: np.ndarray, scale: int = 4, columns: int | None = None,
               pad: int = 1) -> np.ndarray:
  """The conv1 kernels as one RGB picture laid out like the paper's Figure 3.

  Each tower's kernels fill their own block of rows, tower 0 above tower 1
  (§6.1: tower 0's kernels are largely color-agnostic, tower 1's
  color-specific). Every kernel is scaled to [0, 255] on its own.

  Args:
    kernel: conv1's kernel [towers, 11, 11, 3, per-tower features] (host).
    scale: pixels per kernel weight.
    columns: kernels per row (default: up to 16).
    pad: white pixels between kernels.

  Returns:
    uint8 [H, W, 3].
  """
  kernel = np.asarray(kernel, np.float32)
  towers, kh, kw, _, per_tower = kernel.shape
  columns = columns or min(per_tower, 16)
  rows = -(-per_tower // columns)
  cell_h, cell_w = kh * scale + pad, kw * scale + pad
  gap = 2 * scale  # Space between the towers' blocks.
  height = towers * rows * cell_h + (towers - 1) * gap
  grid = np.full((height, columns * cell_w, 3), 255, np.uint8)
  for t in range(towers):
    for i in range(per_tower):
      k = kernel[t, :, :, :, i]
      k = (k - k.min()) / max(float(k.max() - k.min()), 1e-12)
      k = np.kron(k, np.ones((scale, scale, 1)))
      r, c = divmod(i, columns)
      top = t * (rows * cell_h + gap) + r * cell_h
      left = c * cell_w
      grid[top:top + kh * scale, left:left + kw * scale] = np.round(k * 255)
  return grid


def write_conv1(writer: SummaryWriter, workdir: str, params: Any,
                step: int) -> str:
  """Writes `workdir/conv1.png` and the TensorBoard image; returns the path.

  Call it on every process: the kernel's towers may live on several hosts.
  """
  kernel = multihost_utils.process_allgather(params["conv1"]["kernel"],
                                             tiled=True)
  grid = conv1_grid(kernel)
  path = os.path.join(workdir, "conv1.png")
  if jax.process_index() == 0:
    Image.fromarray(grid).save(path)
  writer.image(step, "conv1_kernels", grid)
  return path
