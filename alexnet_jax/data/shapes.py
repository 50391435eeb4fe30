"""The images of the mini data set: one drawn shape per class.

Each image is one shape (circle, square, triangle, star, ...) at a random
position, scale and rotation, in a random color, over a random background
(gradients, noise, clutter). Color and position carry no class information,
so nearest class-mean on raw pixels stays near chance while the shapes stay
plainly visible to a CNN. How hard the problem is is set by the difficulty
knobs below (background noise, clutter, object size, blur). mini.py writes
the images as an ILSVRC-2010 release.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter
from PIL import ImageStat

# One shape per class; the first ten are the most distinct from each other.
SHAPES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "crescent",
    "arrow",
    "tee",
    "bar",
    "hexagon",
    "ell",
    "half_disk",
    "frame",
)
# Shapes that are one inner node of the mini hierarchy (meta.mat); the
# others are the other.
ROUND_SHAPES = {"circle", "ring", "crescent", "half_disk"}

# --- Difficulty knobs. ---
# Set so that the demo's reduced AlexNet (64x64 crops, ~3 minutes of CPU
# training) gets well below chance while nearest class-mean on raw pixels
# stays near it. Version 1 (noise backgrounds half the time with blobs down
# to 1/8 of the image, clutter on half the images, radius from 0.2 side) was
# too hard for that budget: ~40% validation error after 30 epochs, against
# ~12% with these values (same network and recipe).
# Chance of a noise background (smooth color blobs plus grain) instead of a
# linear gradient between two colors.
NOISE_BACKGROUND_PROB = 0.25
# A noise background's blob grid has between these cells per side (high end
# excluded): more cells = smaller blobs, closer to the objects in size.
NOISE_CELLS = (2, 5)
# Range of the per-pixel grain std of a noise background (0-255 levels).
NOISE_GRAIN = (2.0, 12.0)
# Chance of clutter (small strokes and blobs) and its count range (high end
# excluded).
CLUTTER_PROB = 0.3
CLUTTER_COUNT = (3, 10)
# Object radius as a fraction of the central square's side.
OBJECT_RADIUS = (0.25, 0.45)
# Chance of a mild Gaussian blur of the whole image.
BLUR_PROB = 0.2


# --- Shapes, as polygons in the unit disk: (points Kx2, is_hole). ---
def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
  angles = phase + 2 * np.pi * np.arange(n) / n
  return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _shape_polygons(shape: str) -> list[tuple[np.ndarray, bool]]:
  """Outline(s) of a shape; later polygons with is_hole=True are cut out."""
  if shape == "circle":
    return [(_regular(64), False)]
  if shape == "square":
    return [(_regular(4, phase=np.pi / 4), False)]
  if shape == "triangle":
    return [(_regular(3, phase=-np.pi / 2), False)]
  if shape == "hexagon":
    return [(_regular(6), False)]
  if shape == "star":
    outer, inner = _regular(5, 1.0, -np.pi / 2), _regular(
        5, 0.42, -np.pi / 2 + np.pi / 5
    )
    points = np.empty((10, 2))
    points[0::2], points[1::2] = outer, inner
    return [(points, False)]
  if shape == "ring":
    return [(_regular(64), False), (_regular(64, 0.58), True)]
  if shape == "crescent":
    hole = _regular(64, 0.88) + np.array([0.42, -0.1])
    return [(_regular(64), False), (hole, True)]
  if shape == "half_disk":
    angles = np.linspace(0, np.pi, 33)
    points = np.stack([np.cos(angles), np.sin(angles) - 0.4], axis=1)
    return [(points, False)]
  if shape == "frame":
    return [
        (_regular(4, phase=np.pi / 4), False),
        (_regular(4, 0.62, phase=np.pi / 4), True),
    ]
  # Shapes given by corner lists (x, y), y down.
  corners = {
      "cross": [
          (-0.3, -0.9),
          (0.3, -0.9),
          (0.3, -0.3),
          (0.9, -0.3),
          (0.9, 0.3),
          (0.3, 0.3),
          (0.3, 0.9),
          (-0.3, 0.9),
          (-0.3, 0.3),
          (-0.9, 0.3),
          (-0.9, -0.3),
          (-0.3, -0.3),
      ],
      "arrow": [
          (-0.95, -0.2),
          (0.15, -0.2),
          (0.15, -0.6),
          (0.95, 0.0),
          (0.15, 0.6),
          (0.15, 0.2),
          (-0.95, 0.2),
      ],
      "tee": [
          (-0.85, -0.75),
          (0.85, -0.75),
          (0.85, -0.35),
          (0.2, -0.35),
          (0.2, 0.85),
          (-0.2, 0.85),
          (-0.2, -0.35),
          (-0.85, -0.35),
      ],
      "bar": [(-0.95, -0.2), (0.95, -0.2), (0.95, 0.2), (-0.95, 0.2)],
      "ell": [
          (-0.55, -0.85),
          (-0.15, -0.85),
          (-0.15, 0.45),
          (0.6, 0.45),
          (0.6, 0.85),
          (-0.55, 0.85),
      ],
  }
  if shape not in corners:
    raise ValueError(f"Unknown shape {shape!r}.")
  return [(np.array(corners[shape], dtype=np.float64), False)]


# --- Rendering. ---
def _random_color(rng: np.random.Generator) -> np.ndarray:
  return rng.uniform(0, 255, size=3)


def _gradient(rng: np.random.Generator, w: int, h: int) -> Image.Image:
  """A linear gradient between two random colors, in a random direction."""
  c0, c1 = _random_color(rng), _random_color(rng)
  angle = rng.uniform(0, 2 * np.pi)
  # Computed on a coarse grid and resized: a linear ramp survives bilinear
  # interpolation exactly, and this is ~20x faster than full resolution.
  grid = 16
  ys, xs = np.meshgrid(
      np.linspace(0, h, grid), np.linspace(0, w, grid), indexing="ij"
  )
  t = xs * np.cos(angle) + ys * np.sin(angle)
  t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
  coarse = np.clip(c0 + t[..., None] * (c1 - c0), 0, 255).astype(np.uint8)
  return Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR)


def _noise(rng: np.random.Generator, w: int, h: int) -> Image.Image:
  """Smooth random color blobs plus per-pixel grain."""
  cells = int(rng.integers(*NOISE_CELLS))
  coarse = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
  smooth = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
  sigma = rng.uniform(*NOISE_GRAIN)
  grain = rng.standard_normal(size=(h, w, 1), dtype=np.float32) * sigma
  noisy = np.asarray(smooth, dtype=np.float32) + grain
  return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _clutter(rng: np.random.Generator, image: Image.Image) -> None:
  """Draws small random strokes and blobs: distractors, not shapes."""
  w, h = image.size
  side = min(w, h)
  draw = ImageDraw.Draw(image)
  for _ in range(int(rng.integers(*CLUTTER_COUNT))):
    color = tuple(int(c) for c in _random_color(rng))
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    extent = rng.uniform(0.03, 0.12) * side
    if rng.random() < 0.6:
      angle = rng.uniform(0, 2 * np.pi)
      draw.line(
          [(x, y), (x + extent * np.cos(angle), y + extent * np.sin(angle))],
          fill=color,
          width=int(rng.integers(1, 4)),
      )
    else:
      draw.ellipse(
          [x, y, x + extent, y + extent * rng.uniform(0.3, 1.0)], fill=color
      )


def render_image(
    rng: np.random.Generator, shape: str, width: int, height: int
) -> Image.Image:
  """Draws one `shape` over a random background, as an RGB image."""
  if rng.random() < 1.0 - NOISE_BACKGROUND_PROB:
    image = _gradient(rng, width, height)
  else:
    image = _noise(rng, width, height)
  if rng.random() < CLUTTER_PROB:
    _clutter(rng, image)

  # The builder keeps only the central square of side min(w, h) (paper §2),
  # so the object is placed inside it: a cropped-away object would be a
  # wrong label.
  side = min(width, height)
  x0, y0 = (width - side) / 2, (height - side) / 2
  radius = rng.uniform(*OBJECT_RADIUS) * side
  cx = x0 + rng.uniform(radius, side - radius)
  cy = y0 + rng.uniform(radius, side - radius)
  angle = rng.uniform(0, 2 * np.pi)
  rotation = np.array(
      [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
  )
  # Drawn at 2x and downsampled, for anti-aliased edges.
  mask = Image.new("L", (2 * width, 2 * height), 0)
  draw = ImageDraw.Draw(mask)
  for points, is_hole in _shape_polygons(shape):
    xy = (points @ rotation.T * radius + (cx, cy)) * 2
    draw.polygon([tuple(p) for p in xy], fill=0 if is_hole else 255)
  mask = mask.resize((width, height), Image.Resampling.BILINEAR)

  # An object color that stands out from the background under it, with a
  # mild shading gradient so the object is not one flat color.
  under = np.array(ImageStat.Stat(image, mask).mean)
  color = _random_color(rng)
  for _ in range(20):
    if np.linalg.norm(color - under) > 110:
      break
    color = _random_color(rng)
  shading = np.asarray(_gradient(rng, 16, 16), dtype=np.float32) - 127.5
  fill = np.clip(color + 0.25 * shading, 0, 255).astype(np.uint8)
  fill_image = Image.fromarray(fill).resize(
      (width, height), Image.Resampling.BILINEAR
  )
  result = Image.composite(fill_image, image, mask)
  if rng.random() < BLUR_PROB:
    result = result.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
  return result
