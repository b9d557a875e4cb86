"""Writing what a family's `sample` returns: grids + npz for images, .txt for text, for files and TensorBoard."""
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


TEXT_SEPARATOR = "\n\n---------------\n\n"


def decode_texts(outputs: dict) -> list:
  """The "text" medium: token ids [N, L] under 'text', each row decoded with its 'text_vocab' table [N, V]
  (aigc_jax.data.text.Tokenizer.table), so the checkpoint's own vocabulary decodes its samples."""
  from aigc_jax.data.text import decode_with_table  # lazy: only text runs need it
  return [decode_with_table(ids, table) for ids, table in zip(outputs["text"], outputs["text_vocab"])]


def write_samples(outputs: dict, directory: str, step: int, ncols: int = None, echo: bool = False) -> list:
  """Writes `<step>.png` (grid) and `<step>.npz` (uint8 NHWC under 'images'), `<step>.txt` for text (printed
  too when `echo`); returns the paths."""
  os.makedirs(directory, exist_ok=True)
  paths = []
  if "text" in outputs:
    joined = TEXT_SEPARATOR.join(decode_texts(outputs))
    txt_path = os.path.join(directory, f"{step}.txt")
    with open(txt_path + ".tmp", "w", encoding="utf-8") as f:
      f.write(joined + "\n")
    os.replace(txt_path + ".tmp", txt_path)
    paths.append(txt_path)
    if echo:
      print(joined, flush=True)
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


def write_summaries(writer, step: int, outputs: dict):
  """TensorBoard: an image grid for images, the first sample for text (fenced, so Markdown keeps newlines)."""
  images = summaries(outputs)
  if images:
    writer.write_images(step, images)
  if "text" in outputs:
    writer.write_texts(step, {"samples": "```\n" + decode_texts(outputs)[0] + "\n```"})
