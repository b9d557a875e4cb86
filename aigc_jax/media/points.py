"""The "points" medium: float [N, D] coordinates (2-D mixtures of Gaussians, data/sources/gaussian_mixtures.py).

Files: `<step>_points.png`, a scatter plot of the first two coordinates (a 1-D set is drawn along the x axis),
and the float32 array under 'points' in the npz. TensorBoard gets the same scatter as an image. Points are
stored as computed (float32), so `quantize` is the identity: nothing is lost "as if saved".

The scatter is drawn with PIL alone (no plotting library): a square view centred on the origin whose half-width
covers the 99th percentile of |coordinate|, so a few wild samples do not shrink the modes to a dot; points
outside the view are counted in the corner instead of being drawn. Grey lines mark the axes through 0.
"""
import os

import numpy as np
from PIL import Image, ImageDraw

from aigc_jax.media.base import Medium, tmp_path

SIZE = 512          # pixels per side
MARGIN = 16
DOT = 1             # radius in pixels of a dot


def as_NxD(points) -> np.ndarray:
  x = np.asarray(points, np.float32)
  if x.ndim == 1:
    x = x[:, None]
  if x.ndim != 2 or x.shape[1] < 1:
    raise ValueError(f"points must be [N, D] with D >= 1, got shape {x.shape}")
  return x


def view_half_width(xy_Nx2: np.ndarray) -> float:
  """Half-width of the square view: 1.15 x the 99th percentile of |coordinate| (at least 1e-6)."""
  finite = np.abs(xy_Nx2[np.isfinite(xy_Nx2).all(axis=1)])
  if finite.size == 0:
    return 1.0
  return max(float(np.percentile(finite, 99)) * 1.15, 1e-6)


def scatter(points) -> np.ndarray:
  """uint8 [SIZE, SIZE, 3]: the points (first two coordinates) as black dots on white, axes in grey."""
  x = as_NxD(points)
  xy = x[:, :2] if x.shape[1] >= 2 else np.concatenate([x, np.zeros_like(x)], axis=1)
  half = view_half_width(xy)
  scale = (SIZE - 2 * MARGIN) / (2 * half)
  px = (xy[:, 0] + half) * scale + MARGIN
  py = (half - xy[:, 1]) * scale + MARGIN  # y up
  image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  origin = half * scale + MARGIN
  draw.line([(MARGIN, origin), (SIZE - MARGIN, origin)], fill=(190, 190, 190))
  draw.line([(origin, MARGIN), (origin, SIZE - MARGIN)], fill=(190, 190, 190))
  inside = np.isfinite(px) & np.isfinite(py) & (np.abs(xy) <= half).all(axis=1)
  for u, v in zip(px[inside], py[inside]):
    draw.ellipse([u - DOT, v - DOT, u + DOT, v + DOT], fill=(0, 0, 0))
  draw.text((4, 2), f"+-{half:.3g}", fill=(120, 120, 120))
  if (~inside).any():
    draw.text((4, SIZE - 14), f"{int((~inside).sum())} outside", fill=(200, 0, 0))
  return np.asarray(image, np.uint8)


def write_files(outputs: dict, directory: str, step: int) -> list:
  path = os.path.join(directory, f"{step}_points.png")
  Image.fromarray(scatter(outputs["points"])).save(tmp_path(path))
  os.replace(tmp_path(path), path)
  return [path]


def write_summaries(writer, step: int, outputs: dict):
  writer.write_images(step, {"points": scatter(outputs["points"])[None]})


def npz_arrays(outputs: dict) -> dict:
  return {"points": as_NxD(outputs["points"])}


def quantize(points) -> np.ndarray:
  """Points are saved as float32: the identity (in float32)."""
  return np.asarray(points, np.float32)


MEDIUM = Medium(name="points", write_files=write_files, write_summaries=write_summaries, quantize=quantize,
                npz_arrays=npz_arrays)
