"""Data: named sources (a registry, `registry.py`) -> in-memory splits -> deterministic, resumable batch
iterators. `data.name` looks the source up; the source says its medium, its splits, the `data.*` keys it
reads, and what a batch looks like. Built-in sources live in `data/sources/` (one module per kind); a new one
is a module that calls `register_source`, with no edit here or in the trainer.
"""
import os
from typing import Any

from ml_collections import ConfigDict

from aigc_jax.data.images import ImageSet
from aigc_jax.data.pipeline import BatchIterator, to_model_range
from aigc_jax.data.registry import (DataSource, check_fraction, check_set_keys, get_source, known_sources,
                                    register_resolver, register_source, unregister_source)
from aigc_jax.errors import UserError


def load_split(data: ConfigDict, split: str = None) -> Any:
  """The whole `split` (default: data.split) of the configured source, as the source holds it in memory."""
  return get_source(data.name).load(data, split or data.split)


def source_identity(data: ConfigDict) -> dict:
  """Config values that tell apart two datasets of one name, for cache keys (evaluation classifiers, reference
  statistics): the code grids of two VQ runs are both `codes`. Empty for every other source, so their cache
  names stay as they were."""
  return {"vq_workdir": os.path.abspath(data.vq_workdir)} if data.get("vq_workdir") else {}


def load_image_set(data: ConfigDict, split: str = None) -> ImageSet:
  """The whole split of an image source, uint8 NHWC at data.image_size (a one-line error for other media)."""
  source = get_source(data.name)
  if source.image_set is not None:  # examples that stand for images of another dataset (VQ codes)
    return source.image_set(data, split or data.split)
  if source.medium != "images":
    raise UserError(f"data source {data.name!r} holds {source.medium}, not images; this needs an image dataset "
                    "(set --config.data.name)")
  return source.load(data, split or data.split)


def make_train_iterator(config: ConfigDict, start_batch: int = 0):
  """Host-local batches of the global `config.batch_size`, starting at global batch `start_batch`; the
  iterator's `description` says what it reads (for the console). The training split goes through the
  source's `train_subset` (data.fraction) here, and only here."""
  check_fraction(config.data)
  source = get_source(config.data.name)
  loaded = source.load(config.data, config.data.split)
  if source.train_subset is not None:
    loaded = source.train_subset(config.data, loaded)
  if hasattr(loaded, "__len__") and len(loaded) < 1:  # infinite sources (gaussian_mixtures) have no length
    raise UserError(f"dataset {config.data.name} split {config.data.split} is empty")
  iterator = source.make_iterator(config, loaded, start_batch)
  iterator.description = f"{config.data.name}/{config.data.split}: {source.describe(loaded)}"
  return iterator


def example_batch(config: ConfigDict, batch_size: int = 2) -> dict:
  """Zero arrays with the shapes and dtypes of a training batch, without reading any data (for building
  the abstract state to restore a checkpoint into)."""
  return get_source(config.data.name).example_batch(config, batch_size)


def medium(config: ConfigDict) -> str:
  return get_source(config.data.name).medium


__all__ = ["DataSource", "register_source", "unregister_source", "register_resolver", "get_source",
           "known_sources", "check_fraction", "check_set_keys", "load_split", "load_image_set", "make_train_iterator",
           "example_batch", "medium", "source_identity", "BatchIterator", "ImageSet", "to_model_range"]
