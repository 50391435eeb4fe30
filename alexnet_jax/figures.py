"""Pictures: the paper's Figure 3 (conv1's kernels) and plain line plots.

`write_conv1` saves Figure 3 as `workdir/conv1.png` (process 0) and in
TensorBoard (summaries.py), with each tower's color share; `line_plot` and
`font` draw the figure commands' plots with PIL alone.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

from alexnet_jax import summaries


def color_share(kernel: np.ndarray) -> np.ndarray:
  """How color-specific each conv1 kernel is: its energy off the grey axis.

  For each kernel, the share of its energy (sum of squared weights) that is
  orthogonal to the grey direction (1, 1, 1) / sqrt(3) of the RGB axis:
  0 for a grey kernel (equal weights in R, G and B at every position; it
  sees luminance only), 1 for a kernel whose three channels sum to zero at
  every position (it sees only color differences). Weights drawn at random
  (i.i.d.) give 2/3 on average.

  Args:
    kernel: [..., kh, kw, 3, kernels].

  Returns:
    [..., kernels] shares in [0, 1].
  """
  kernel = np.asarray(kernel, np.float64)
  grey = kernel.mean(axis=-2, keepdims=True)  # Projection on (1,1,1)/sqrt3.
  total = np.square(kernel).sum(axis=(-4, -3, -2))
  off = np.square(kernel - grey).sum(axis=(-4, -3, -2))
  return off / np.maximum(total, 1e-30)


def color_summary(kernel: np.ndarray) -> dict[str, Any]:
  """Per-tower color specificity of conv1 (`color_share`), for results.json.

  The paper (§6.1, Figure 3) finds tower 0's kernels largely color-agnostic
  and tower 1's color-specific: a low mean share in one tower and a high one
  in the other. Random kernels give 2/3.
  """
  shares = color_share(kernel)  # [towers, kernels]
  return dict(
      metric="share of conv1 kernel energy off the grey axis (0 grey, 1 "
      "pure color; random 2/3)",
      tower_mean=[float(v) for v in shares.mean(-1)],
      tower_median=[float(v) for v in np.median(shares, -1)],
      per_kernel=[[round(float(v), 4) for v in t] for t in shares],
  )


LABEL_HEIGHT = 18  # Pixels of the label line above each tower's kernels.


def conv1_grid(
    kernel: np.ndarray,
    scale: int = 4,
    columns: int | None = None,
    pad: int = 1,
    labels: list[str] | None = None,
) -> np.ndarray:
  """The conv1 kernels as one RGB picture laid out like the paper's Figure 3.

  Each tower's kernels fill their own block of rows, tower 0 above tower 1
  (§6.1: tower 0's kernels are largely color-agnostic, tower 1's
  color-specific). Every kernel is scaled to [0, 255] on its own.

  Args:
    kernel: conv1's kernel [towers, 11, 11, 3, per-tower features] (host).
    scale: pixels per kernel weight.
    columns: kernels per row (default: up to 16).
    pad: white pixels between kernels.
    labels: a line of text above each tower's block (e.g. "tower 0");
      None: no label lines.

  Returns:
    uint8 [H, W, 3].
  """
  kernel = np.asarray(kernel, np.float32)
  towers, kh, kw, _, per_tower = kernel.shape
  columns = columns or min(per_tower, 16)
  rows = -(-per_tower // columns)
  cell_h, cell_w = kh * scale + pad, kw * scale + pad
  gap = 2 * scale  # Space between the towers' blocks.
  label_h = LABEL_HEIGHT if labels else 0
  block_h = label_h + rows * cell_h
  height = towers * block_h + (towers - 1) * gap
  grid = np.full((height, columns * cell_w, 3), 255, np.uint8)
  for t in range(towers):
    for i in range(per_tower):
      k = kernel[t, :, :, :, i]
      k = (k - k.min()) / max(float(k.max() - k.min()), 1e-12)
      k = np.kron(k, np.ones((scale, scale, 1)))
      r, c = divmod(i, columns)
      top = t * (block_h + gap) + label_h + r * cell_h
      left = c * cell_w
      grid[top : top + kh * scale, left : left + kw * scale] = np.round(k * 255)
  if labels:
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    for t, label in enumerate(labels):
      draw.text(
          (2, t * (block_h + gap) + label_h // 2),
          label,
          "black",
          font(12),
          anchor="lm",
      )
    grid = np.asarray(image)
  return grid


def write_conv1(
    writer: summaries.SummaryWriter, workdir: str, params: Any, step: int
) -> dict[str, Any]:
  """Writes `workdir/conv1.png` and the TensorBoard image.

  Call it on every process: the kernel's towers may live on several hosts.

  Returns:
    `color_summary` of the kernels (for results.json) with the PNG's path
    under "png".
  """
  kernel = multihost_utils.process_allgather(
      params["conv1"]["kernel"], tiled=True
  )
  summary = color_summary(kernel)
  labels = [
      f"tower {t}: color share {v:.2f}"
      for t, v in enumerate(summary["tower_mean"])
  ]
  grid = conv1_grid(kernel, labels=labels)
  path = os.path.join(workdir, "conv1.png")
  if jax.process_index() == 0:
    Image.fromarray(grid).save(path)
  writer.image(step, "conv1_kernels", grid)
  return dict(png=path, **summary)


# ---------------------------------------------------------------------------
# Plain PIL drawing for the figure commands (relu_vs_tanh, neighbors): no
# plotting library needed.
# ---------------------------------------------------------------------------


def font(size: int = 14) -> ImageFont.ImageFont:
  """Pillow's bundled font at `size` pixels (a bitmap font if no FreeType)."""
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, OSError):  # Old Pillow or no FreeType.
    return ImageFont.load_default()


def _dashed_line(
    draw: ImageDraw.ImageDraw, points, fill, width: int, dash: int, gap: int
) -> None:
  """A polyline drawn in dashes of `dash` pixels separated by `gap`."""
  on, left = True, dash
  for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
    length = float(np.hypot(x1 - x0, y1 - y0))
    pos = 0.0
    while pos < length:
      step = min(left, length - pos)
      if on:
        a, b = pos / length, (pos + step) / length
        draw.line(
            [
                (x0 + a * (x1 - x0), y0 + a * (y1 - y0)),
                (x0 + b * (x1 - x0), y0 + b * (y1 - y0)),
            ],
            fill=fill,
            width=width,
        )
      pos += step
      left -= step
      if left <= 0:
        on = not on
        left = dash if on else gap


LINE_STYLES = dict(solid=None, dashed=(10, 6), dotted=(2, 4))


def line_plot(
    series: list[dict[str, Any]],
    *,
    hlines: list[tuple[float, str]] = (),
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    y_range: tuple[float, float] | None = None,
    size: tuple[int, int] = (640, 440),
) -> np.ndarray:
  """A line chart as uint8 [H, W, 3].

  Args:
    series: dicts with `x`, `y` (sequences), `label` and `style` ("solid",
      "dashed" or "dotted"); drawn in black.
    hlines: (y, label) horizontal reference lines (dotted, grey).
    xlabel, ylabel, title: text.
    y_range: the y axis (default: the data's range).
    size: (width, height) in pixels.
  """
  width, height = size
  left, right, top, bottom = 70, 20, 40, 55
  image = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(image)
  small, large = font(13), font(15)
  xs = [v for s in series for v in s["x"]] or [0.0, 1.0]
  ys = [v for s in series for v in s["y"]] or [0.0, 1.0]
  x0, x1 = 0.0, max(max(xs), 1e-9)
  y0, y1 = y_range or (min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1.0)

  def px(x, y):
    return (
        left + (x - x0) / (x1 - x0) * (width - left - right),
        height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom),
    )

  # Axes, ticks and tick labels (5 intervals on each axis).
  draw.rectangle([left, top, width - right, height - bottom], outline="black")
  for i in range(6):
    xv, yv = x0 + i * (x1 - x0) / 5, y0 + i * (y1 - y0) / 5
    (tx, _), (_, ty) = px(xv, y0), px(x0, yv)
    draw.line([(tx, height - bottom), (tx, height - bottom + 5)], "black")
    draw.text(
        (tx, height - bottom + 8), f"{xv:.3g}", "black", small, anchor="mt"
    )
    draw.line([(left - 5, ty), (left, ty)], "black")
    draw.text((left - 8, ty), f"{yv:.3g}", "black", small, anchor="rm")
  draw.text(
      ((left + width - right) / 2, height - 18),
      xlabel,
      "black",
      large,
      anchor="mm",
  )
  draw.text((8, top - 22), ylabel, "black", large, anchor="lm")
  draw.text((width / 2, 14), title, "black", large, anchor="mm")
  for y, label in hlines:
    points = [px(x0, y), px(x1, y)]
    _dashed_line(draw, points, (128, 128, 128), 1, *LINE_STYLES["dotted"])
    draw.text(
        (points[1][0] - 4, points[1][1] - 3),
        label,
        (96, 96, 96),
        small,
        anchor="rb",
    )
  for s in series:
    points = [px(x, min(max(y, y0), y1)) for x, y in zip(s["x"], s["y"])]
    style = LINE_STYLES[s.get("style", "solid")]
    if len(points) == 1:
      points = points * 2
    if style is None:
      draw.line(points, fill="black", width=2, joint="curve")
    else:
      _dashed_line(draw, points, "black", 2, *style)
  # Legend, top right.
  for i, s in enumerate(series):
    y = top + 14 + 20 * i
    xr = width - right - 180
    style = LINE_STYLES[s.get("style", "solid")]
    if style is None:
      draw.line([(xr, y), (xr + 36, y)], fill="black", width=2)
    else:
      _dashed_line(draw, [(xr, y), (xr + 36, y)], "black", 2, *style)
    draw.text((xr + 44, y), s.get("label", ""), "black", small, anchor="lm")
  return np.asarray(image)
