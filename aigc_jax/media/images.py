"""The "images" medium: float NHWC in [-1, 1] -> `<step>.png` grid, uint8 NHWC under 'images' in the npz."""
import io
import math
import os

import numpy as np
from PIL import Image

from aigc_jax.media.base import Medium, tmp_path


def to_uint8(images_NxHxWxC) -> np.ndarray:
  """[-1, 1] floats -> uint8 [0, 255] (round half to even, as the metrics' quantisation expects)."""
  x = (np.asarray(images_NxHxWxC, np.float32) + 1.0) * 127.5
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def quantize(images_NxHxWxC) -> np.ndarray:
  """The images as saved: uint8 levels back to float32 [-1, 1], exactly as the data pipeline maps uint8."""
  from aigc_jax.data.pipeline import to_model_range  # lazy: aigc_jax.data imports jax
  return to_model_range(to_uint8(images_NxHxWxC))


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


def _pil(image_uint8_HxWxC: np.ndarray) -> Image.Image:
  img = np.asarray(image_uint8_HxWxC, np.uint8)
  return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def save_png(path: str, image_uint8_HxWxC: np.ndarray):
  tmp = tmp_path(path)
  _pil(image_uint8_HxWxC).save(tmp)
  os.replace(tmp, path)


def encode_png(image_uint8_HxWxC: np.ndarray) -> bytes:
  buf = io.BytesIO()
  _pil(image_uint8_HxWxC).save(buf, format="PNG")
  return buf.getvalue()


def write_files(outputs: dict, directory: str, step: int) -> list:
  path = os.path.join(directory, f"{step}.png")
  save_png(path, image_grid(to_uint8(outputs["images"])))
  return [path]


def write_summaries(writer, step: int, outputs: dict):
  writer.write_images(step, {"samples": image_grid(to_uint8(outputs["images"]))[None]})


def npz_arrays(outputs: dict) -> dict:
  return {"images": to_uint8(outputs["images"])}


MEDIUM = Medium(name="images", write_files=write_files, write_summaries=write_summaries, quantize=quantize,
                npz_arrays=npz_arrays)
