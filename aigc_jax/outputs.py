"""Writing what a family's `sample` returns: grids + npz for images, for files and TensorBoard alike."""
import math
import os

import numpy as np
from PIL import Image


def to_uint8(images_NxHxWxC) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255] (round half to even, as the metrics' quantisation expects)."""
  x = (np.asarray(images_NxHxWxC, np.float32) + 1.0) * 127.5
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def image_grid(images_uint8_NxHxWxC: np.ndarray, ncols: int = None, pad: int = 2) -> np.ndarray:
  """Tiles N images into one uint8 image [rows*(H+pad)+pad, cols*(W+pad)+pad, C]."""
  n, h, w, c = images_uint8_NxHxWxC.shape
  ncols = ncols or int(math.ceil(math.sqrt(n)))
  nrows = int(math.ceil(n / ncols))
  grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
  for i, img in enumerate(images_uint8_NxHxWxC):
    r, col = divmod(i, ncols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = img
  return grid


def save_png(path: str, image_uint8_HxWxC: np.ndarray):
  img = image_uint8_HxWxC[..., 0] if image_uint8_HxWxC.shape[-1] == 1 else image_uint8_HxWxC
  tmp = path + ".tmp.png"
  Image.fromarray(img).save(tmp)
  os.replace(tmp, path)


def write_samples(outputs: dict, directory: str, step: int, ncols: int = None) -> list:
  """Writes `<step>.png` (grid) and `<step>.npz` (uint8 NHWC under 'images'); returns the paths."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  if "images" in outputs:
    images = to_uint8(outputs["images"])
    npz_path = os.path.join(directory, f"{step}.npz")
    tmp = npz_path + ".tmp.npz"
    np.savez_compressed(tmp, images=images)
    os.replace(tmp, npz_path)
    png_path = os.path.join(directory, f"{step}.png")
    save_png(png_path, image_grid(images, ncols))
    paths += [png_path, npz_path]
  return paths


def summaries(outputs: dict, ncols: int = None) -> dict:
  """TensorBoard images for a clu writer: {'samples': uint8 [1, H, W, C]}."""
  if "images" in outputs:
    return {"samples": image_grid(to_uint8(outputs["images"]), ncols)[None]}
  return {}
