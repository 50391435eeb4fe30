"""TensorBoard summaries of a run: scalars and images (process 0 only).

Only process 0 writes; on the others every call is a no-op.
"""

from __future__ import annotations

import jax
import numpy as np
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
