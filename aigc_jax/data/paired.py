"""Paired images for image-to-image translation (pix2pix): an input and a target of the same scene.

`PairedSet` holds both sides as uint8 NHWC (same N, H, W; channels may differ), plus an optional per-pixel
`fill` mask of input pixels to set to 0.0 (mid-grey in [-1, 1], which no uint8 level maps to exactly).
Batches are {'input': f32 [B,H,W,Ci], 'target': f32 [B,H,W,Ct], 'label': i32 [B]} in [-1, 1] (label -1
when the data has none), so `pipeline.ShuffledRows` orders them like every image source and `batch_at(i)`
stays a pure function of i (flips and jitter crops are seeded per stream position).

Offline tasks built from an image source (`data.base`, e.g. mnist_5k or digits), input -> target:
  inpaint   the image with one square of side data.mask_size set to 0 (mid-grey) -> the image. The square's
            corner is a hash of the image's index in its split, so every image keeps its hole across runs
            and epochs. No mask channel is appended: the hole is marked by its value only, so a folder of
            one's own masked images (holes painted mid-grey) is a valid `sample.input_dir` as it is.
  edges     a binary Sobel edge map (dark lines on white, as pix2pix's edges2* sets) -> the image. A pixel
            is an edge where the gradient magnitude exceeds a quarter of the image's largest one.
  colorize  the image's luma (ITU-R BT.601 weights) -> the colour image; needs a 3-channel base.

Folders in pix2pix's own layouts (`data.path`): `<path>/<split>/*` with every file an A|B pair side by side
(the layout of pix2pix's facades, maps, edges2shoes archives), or `<path>/A/<split>/` and
`<path>/B/<split>/` with matching file names (the layout pix2pix's combine_A_and_B.py reads).
"""
import dataclasses
import functools
import json
import os
from typing import Optional, Tuple

import numpy as np
from ml_collections import ConfigDict
from PIL import Image

from aigc_jax.data.images import IMAGE_EXTENSIONS, ImageSet
from aigc_jax.data.pipeline import ShuffledRows, to_model_range
from aigc_jax.data.registry import get_source
from aigc_jax.errors import UserError

TASKS = ("inpaint", "edges", "colorize")
DIRECTIONS = ("AtoB", "BtoA")
MODES = {1: "L", 3: "RGB"}


@dataclasses.dataclass(frozen=True)
class PairedSet:
  inputs: np.ndarray                  # uint8 [N, H, W, Ci]
  targets: np.ndarray                 # uint8 [N, H, W, Ct]
  fill: Optional[np.ndarray] = None   # bool [N, H, W, 1]: input pixels set to 0.0 (inpainting holes)
  labels: Optional[np.ndarray] = None  # int32 [N]
  num_classes: Optional[int] = None
  names: Tuple[str, ...] = ()         # file names (folder sources), for figures
  where: str = "paired source"        # for error messages

  def __post_init__(self):
    a, b = self.inputs.shape, self.targets.shape
    if len(a) != 4 or len(b) != 4 or a[:3] != b[:3]:
      raise UserError(f"{self.where}: inputs {a} and targets {b} differ in number or size; every input must "
                      "have the size of its target (fix the files, or the source's data.* settings)")

  def __len__(self):
    return len(self.inputs)


def to_arrays(paired: PairedSet, rows, flip=None, crops=None, load_size: int = 0) -> dict:
  """Rows of the set as a model batch. `flip` (bool [B]) mirrors both sides; with `load_size` > H, `crops`
  ([B, 2] corners) takes an HxW window of both sides resized to load_size (pix2pix's random jitter)."""
  x, y = paired.inputs[rows], paired.targets[rows]
  fill = paired.fill[rows] if paired.fill is not None else None
  if load_size:
    size = x.shape[1]
    x, y = (np.stack([_crop(_resize(img, load_size), c, size) for img, c in zip(arr, crops)]) for arr in (x, y))
    if fill is not None:  # nearest neighbour keeps the mask binary
      grid = np.arange(load_size) * size // load_size
      fill = np.stack([_crop(f[grid][:, grid], c, size) for f, c in zip(fill, crops)])
  if flip is not None:
    x, y = (np.where(flip[:, None, None, None], a[:, :, ::-1], a) for a in (x, y))
    if fill is not None:
      fill = np.where(flip[:, None, None, None], fill[:, :, ::-1], fill)
  x = to_model_range(x)
  if fill is not None:
    x = np.where(fill, 0.0, x).astype(np.float32)
  labels = paired.labels[rows] if paired.labels is not None else np.full(len(rows), -1)
  return {"input": x, "target": to_model_range(y), "label": labels.astype(np.int32)}


def _resize(img_HxWxC, size: int):
  pil = Image.fromarray(img_HxWxC[..., 0] if img_HxWxC.shape[-1] == 1 else img_HxWxC)
  out = np.asarray(pil.resize((size, size), Image.BICUBIC), np.uint8)
  return out[..., None] if out.ndim == 2 else out


def _crop(img, corner, size):
  return img[corner[0]:corner[0] + size, corner[1]:corner[1] + size]


class PairedBatches(ShuffledRows):
  """Host-local paired batches in pipeline.BatchIterator's order; flips and jitter crops seeded by
  (seed, position), so a resumed run sees the same augmented pairs."""

  def __init__(self, paired: PairedSet, global_batch_size: int, seed: int, *, random_flip=False,
               jitter_scale=1.0, **kwargs):
    super().__init__(len(paired), global_batch_size, seed, **kwargs)
    self._set, self._flip = paired, random_flip
    size = paired.inputs.shape[1]
    self._load_size = int(round(size * jitter_scale)) if jitter_scale > 1.0 else 0

  def batch_at(self, batch_index: int) -> dict:
    positions, idx = self.rows_at(batch_index)
    flip = crops = None
    if self._flip:
      flip = np.array([np.random.default_rng([self._seed, 1, p]).random() < 0.5 for p in positions])
    if self._load_size:
      span = self._load_size - self._set.inputs.shape[1] + 1
      crops = np.stack([np.random.default_rng([self._seed, 2, p]).integers(0, span, 2) for p in positions])
    return to_arrays(self._set, idx, flip, crops, self._load_size)


# --- offline tasks -------------------------------------------------------------------------------------------


def _mix64(x):
  """splitmix64's finaliser: a fixed, well-mixed hash of uint64 values (vectorised)."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def mask_corners(indices_N, image_size: int, mask_size: int):
  """[N, 2] (top, left) of each image's hole: a hash of its index, uniform over the positions that fit."""
  with np.errstate(over="ignore"):
    h = _mix64(np.asarray(indices_N, np.uint64) + np.uint64(0x9E3779B97F4A7C15))
    span = np.uint64(image_size - mask_size + 1)
    top = h % span
    left = _mix64(h) % span
  return np.stack([top, left], axis=1).astype(np.int64)


def inpaint_fill(num: int, image_size: int, mask_size: int):
  """bool [N, S, S, 1]: True inside image i's square hole."""
  corners = mask_corners(np.arange(num), image_size, mask_size)
  grid = np.arange(image_size)
  rows = (grid[None] >= corners[:, :1]) & (grid[None] < corners[:, :1] + mask_size)
  cols = (grid[None] >= corners[:, 1:]) & (grid[None] < corners[:, 1:] + mask_size)
  return (rows[:, :, None] & cols[:, None, :])[..., None]


def sobel_edges(images_uint8):
  """uint8 [N, H, W, 1]: 0 on edges, 255 elsewhere (edge: magnitude > 1/4 of the image's largest)."""
  grey = images_uint8.astype(np.float32).mean(axis=-1)
  p = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="edge")
  gx = (p[:, :-2, 2:] + 2 * p[:, 1:-1, 2:] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, 1:-1, :-2] + p[:, 2:, :-2])
  gy = (p[:, 2:, :-2] + 2 * p[:, 2:, 1:-1] + p[:, 2:, 2:]) - (p[:, :-2, :-2] + 2 * p[:, :-2, 1:-1] + p[:, :-2, 2:])
  mag = np.hypot(gx, gy)
  peak = mag.reshape(len(mag), -1).max(axis=1)[:, None, None]
  edges = (mag > 0.25 * peak) & (peak > 0)
  return np.where(edges, 0, 255).astype(np.uint8)[..., None]


def luma(images_uint8):
  """uint8 [N, H, W, 1]: Y' = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601)."""
  y = images_uint8.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.clip(np.rint(y), 0, 255).astype(np.uint8)[..., None]


def check_task_config(d):
  """One-line errors for the `paired` source's keys, before any data is read."""
  if d.task not in TASKS:
    raise UserError(f"unknown data.task {d.task!r}; use one of {TASKS}")
  if d.base in ("paired", "paired_folder"):
    raise UserError(f"data.base={d.base!r} is itself paired; set --config.data.base to an image source "
                    "(e.g. mnist_5k, digits, cifar10)")
  if d.task == "colorize" and d.channels != 3:
    raise UserError(f"data.task='colorize' turns grey into colour and needs a 3-channel data.base, but "
                    f"data.channels={d.channels} (data.base={d.base!r}); use a colour base (e.g. "
                    "--config.data.base=cifar10 --config.data.channels=3) or data.task=inpaint or edges")
  if d.task == "inpaint" and not 1 <= d.mask_size <= d.image_size:
    raise UserError(f"data.mask_size={d.mask_size} must be between 1 and data.image_size={d.image_size}; set "
                    "--config.data.mask_size")


def task_input_channels(d) -> int:
  return d.channels if d.task == "inpaint" else 1


@functools.lru_cache(maxsize=8)
def _task_set(data_json: str, split: str) -> PairedSet:
  d = ConfigDict(json.loads(data_json))
  base = get_source(d.base)
  if base.medium != "images" or base.image_set is not None:
    raise UserError(f"data.base={d.base!r} holds {base.medium} examples, not images; set --config.data.base to "
                    "an image source (e.g. mnist_5k, digits, cifar10)")
  for key in ("path", "data_dir"):
    if d.get(key) and key not in base.keys:
      raise UserError(f"data.{key}={d[key]!r} is not read by data.base={d.base!r}; remove --config.data.{key} "
                      "or choose a base that reads it (npz, image_folder, a TFDS dataset)")
  base_data = ConfigDict({**d.to_dict(), "name": d.base})
  images: ImageSet = base.load(base_data, split)
  x = images.images
  fill = None
  if d.task == "inpaint":
    fill = inpaint_fill(len(x), d.image_size, d.mask_size)
    inputs = x
  elif d.task == "edges":
    inputs = sobel_edges(x)
  else:
    inputs = luma(x)
  return PairedSet(inputs, x, fill, images.labels, images.num_classes, where=f"paired {d.task} of {d.base}")


def load_task(d, split: str) -> PairedSet:
  check_task_config(d)
  keys = ("base", "task", "mask_size", "image_size", "channels", "path", "data_dir")
  return _task_set(json.dumps({k: d.get(k) for k in keys}, sort_keys=True), split)


# --- folders -------------------------------------------------------------------------------------------------


def _image_files(folder: str):
  return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(folder, f)))


def _read(path: str, mode: str) -> Image.Image:
  try:
    with Image.open(path) as img:
      return img.convert(mode)
  except OSError as e:
    raise UserError(f"cannot decode image {path}: {e}; remove or replace the file") from None


def _to_array(img: Image.Image, size: int):
  arr = np.asarray(img.resize((size, size), Image.BICUBIC), np.uint8)
  return arr[..., None] if arr.ndim == 2 else arr


def read_pairs(folder_a: str, folder_b: str, names, where: str):
  """[(A image, B image, name)] of same-named files in two folders; their sizes must agree."""
  out = []
  for name in names:
    a, b = (os.path.join(f, name) for f in (folder_a, folder_b))
    with Image.open(a) as ia, Image.open(b) as ib:
      if ia.size != ib.size:
        raise UserError(f"{a} is {ia.size[0]}x{ia.size[1]} but {b} is {ib.size[0]}x{ib.size[1]}: the two sides "
                        f"of a pair must have the same size ({where}); resize or remove the pair")
    out.append((a, b, name))
  return out


def split_halves(path: str, where: str):
  """An A|B file as its two halves (PIL images), of one mode-agnostic read."""
  with Image.open(path) as img:
    img.load()
    w, h = img.size
    if w % 2:
      raise UserError(f"{path} is {w}x{h}: an odd width cannot be split into an input|target pair "
                      f"({where}); every file must hold A and B side by side, each {w // 2} wide")
    return img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w, h))


def read_folder_pairs(root: str, split: Optional[str], direction: str, size: int, input_channels: int,
                      channels: int, allow_unpaired: bool = False) -> PairedSet:
  """Pairs under `root` (`<root>/<split>/` or `<root>/A|B/<split>/`; split None: `root` itself holds the
  files or A/ and B/). With `allow_unpaired`, plain files (not 2:1) are inputs without targets (an empty
  targets array of the same size stands in, and `names` says which)."""
  if direction not in DIRECTIONS:
    raise UserError(f"unknown data.direction {direction!r}; use one of {DIRECTIONS}")
  for ch, key in ((input_channels, "data.input_channels"), (channels, "data.channels")):
    if ch not in MODES:
      raise UserError(f"{key}={ch}: paired image files are read as 1 (grey) or 3 (RGB) channels; set "
                      f"--config.{key} to 1 or 3")
  where = f"data.path={root!r}" if split is not None else f"sample.input_dir={root!r}"
  if not root or not os.path.isdir(root):
    raise UserError(f"{where} is not a directory; point it at pix2pix-style pairs (<dir>/<split>/*.jpg with A|B "
                    "side by side, or <dir>/A/<split>/ and <dir>/B/<split>/)")
  sub = (lambda *p: os.path.join(root, *p, split)) if split is not None else (lambda *p: os.path.join(root, *p))
  in_mode, out_mode = MODES[input_channels], MODES[channels]
  xs, ys, names = [], [], []
  if os.path.isdir(sub("A")) and os.path.isdir(sub("B")):
    a_names, b_names = set(_image_files(sub("A"))), set(_image_files(sub("B")))
    if a_names != b_names:
      odd = sorted(a_names ^ b_names)[:3]
      raise UserError(f"{sub('A')} and {sub('B')} hold different file names (e.g. {odd}); each A file needs a B "
                      f"file of the same name ({where})")
    for a, b, name in read_pairs(sub("A"), sub("B"), sorted(a_names), where):
      src, dst = (a, b) if direction == "AtoB" else (b, a)
      xs.append(_to_array(_read(src, in_mode), size))
      ys.append(_to_array(_read(dst, out_mode), size))
      names.append(name)
  elif os.path.isdir(sub()):
    files = _image_files(sub())
    for name in files:
      path = os.path.join(sub(), name)
      with Image.open(path) as img:
        w, h = img.size
      if allow_unpaired and w != 2 * h:
        xs.append(_to_array(_read(path, in_mode), size))
        names.append(name)
        continue
      a, b = split_halves(path, where)
      src, dst = (a, b) if direction == "AtoB" else (b, a)
      xs.append(_to_array(src.convert(in_mode), size))
      ys.append(_to_array(dst.convert(out_mode), size))
      names.append(name)
    if allow_unpaired and ys and len(ys) != len(xs):
      raise UserError(f"{where} mixes A|B pairs (width = 2 x height) and single images; keep one kind per folder")
  else:
    raise UserError(f"{where} has neither {sub()} nor {sub('A')} and {sub('B')}; lay the pairs out as "
                    "pix2pix does (<dir>/<split>/*.jpg with A|B side by side, or <dir>/A/<split>/ and "
                    "<dir>/B/<split>/ with matching names)")
  if not xs:
    raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found for {where}"
                    + (f" split {split!r}" if split is not None else ""))
  inputs = np.stack(xs)
  targets = np.stack(ys) if ys else np.zeros(inputs.shape[:3] + (0,), np.uint8)
  return PairedSet(inputs, targets, names=tuple(names), where=where)


@functools.lru_cache(maxsize=8)
def _folder_set(root, split, direction, size, input_channels, channels, stamp) -> PairedSet:
  del stamp  # part of the cache key: files changed on disk are read again
  return read_folder_pairs(root, split, direction, size, input_channels, channels)


def load_folder(d, split: str) -> PairedSet:
  stamp = os.path.getmtime(d.path) if d.path and os.path.isdir(d.path) else 0.0
  return _folder_set(d.path, split, d.direction, d.image_size, d.input_channels, d.channels, stamp)
