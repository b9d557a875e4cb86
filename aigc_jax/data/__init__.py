"""Data: named sources -> in-memory sets -> deterministic, resumable batch iterators.

`data.name` picks the source: the offline `digits` (scikit-learn's bundled 8x8 digits), `npz`,
`image_folder`, or any TFDS image dataset (mnist, fashion_mnist, cifar10, ...). Text sources (`text_file`,
`python_stdlib`, `tiny_shakespeare`) live in `data/text.py` and yield {'tokens': int32 [B, block_size + 1]}.
"""
import jax
import numpy as np
from ml_collections import ConfigDict

from aigc_jax.data import sources, text
from aigc_jax.data.pipeline import BatchIterator, to_model_range
from aigc_jax.errors import UserError

OFFLINE_IMAGE_SOURCES = ("digits", "npz", "image_folder")
KNOWN_TFDS_IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped", "celeb_a")


def load_image_set(data: ConfigDict, split: str = None) -> sources.ImageSet:
  """The whole `split` (default: data.split) of the configured image source, uint8 NHWC at data.image_size."""
  split = split or data.split
  name = data.name
  if name == "digits":
    image_set = sources.load_digits(split, data.image_size)
  elif name == "npz":
    image_set = sources.load_npz(data.path, split, data.image_size)
  elif name == "image_folder":
    image_set = sources.load_image_folder(data.path, data.image_size, data.channels)
  else:
    from aigc_jax.data import tfds_source
    if name not in KNOWN_TFDS_IMAGE_DATASETS and not tfds_source.tfds_builder_exists(name):
      raise UserError(
          f"unknown dataset {name!r}; use an offline source {OFFLINE_IMAGE_SOURCES} or a TFDS image dataset "
          f"such as {KNOWN_TFDS_IMAGE_DATASETS} (--config.data.name=...)")
    image_set = tfds_source.load_tfds_images(
        name, split, data.image_size, data.channels, data_dir=data.get("data_dir") or None)
  if image_set.images.shape[-1] != data.channels:
    raise UserError(f"{name} images have {image_set.images.shape[-1]} channels but data.channels="
                    f"{data.channels}; set --config.data.channels={image_set.images.shape[-1]}")
  return image_set


def make_train_iterator(config: ConfigDict, start_batch: int = 0) -> BatchIterator:
  """Host-local batches of the global `config.batch_size`, starting at global batch `start_batch`."""
  if text.is_text(config.data):
    return text.make_train_iterator(config, start_batch)
  image_set = load_image_set(config.data)
  if len(image_set) < 1:
    raise UserError(f"dataset {config.data.name} split {config.data.split} is empty")
  return BatchIterator(
      image_set, config.batch_size, config.seed, random_flip=config.data.random_flip,
      process_index=jax.process_index(), process_count=jax.process_count(), start_batch=start_batch)


def example_batch(config: ConfigDict, batch_size: int = 2):
  """Zero arrays with the shapes and dtypes of a training batch, without reading any data (for building
  the abstract state to restore a checkpoint into)."""
  if text.is_text(config.data):
    return text.example_batch(config, batch_size)
  d = config.data
  return {"image": np.zeros((batch_size, d.image_size, d.image_size, d.channels), np.float32),
          "label": np.zeros((batch_size,), np.int32)}


__all__ = ["load_image_set", "make_train_iterator", "example_batch", "BatchIterator", "to_model_range"]
