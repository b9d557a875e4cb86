"""The data-source registry: `data.name` -> a DataSource that knows its medium, its splits, the `data.*` keys it
reads, how to load a split, how to batch it, and what one batch looks like.

A new source is one module that calls `register_source(...)` at import time. Modules in
`aigc_jax/data/sources/` are imported on the first lookup, so a built-in source needs no edit anywhere else;
a source defined elsewhere (a notebook, a test, a user's package) registers itself the same way before
training starts. Names a registered source does not claim go through the resolvers (TFDS: any image
builder), tried in registration order.
"""
import dataclasses
from typing import Any, Callable, Optional, Sequence

from ml_collections import ConfigDict

from aigc_jax.errors import UserError
from aigc_jax.plugins import Registry

# Read by every source: `data.name` picks the source, `data.split` the split it trains on.
COMMON_KEYS = ("name", "split")


@dataclasses.dataclass(frozen=True)
class DataSource:
  """One named dataset.

  load(data_config, split) -> the split in memory (an `images.ImageSet`, an int32 token array, ...);
  make_iterator(config, loaded, start_batch) -> a resumable iterator of host-local batches with
      `batches_consumed`, `batch_at(i)` and `close()` (pipeline.BatchIterator, text.TextBatchIterator);
  example_batch(config, batch_size) -> zero arrays shaped like one batch, read without touching the data;
  describe(loaded) -> a short human description for the console ("1,500 images 32x32x1");
  image_set(data_config, split) -> optional: the images a source of non-pixel examples stands for (the codes
      source: the VQ run's own dataset), so `load_image_set` (FID/IS references, the classifier backbone)
      reads real images for a model whose samples are images.
  train_subset(data_config, loaded) -> optional: the examples training reads from the loaded training split
      (image sources: the fixed data.fraction subset). Only the training stream goes through it: evaluation
      (FID/IS references, the classifier, --mode=encode) reads whole splits. A source without it refuses a
      data.fraction below 1.
  """
  name: str
  medium: str                       # a key of aigc_jax.media: "images", "text", "audio", ...
  keys: Sequence[str]               # data.* keys it reads besides name and split (others set by hand: error)
  load: Callable[[ConfigDict, str], Any]
  make_iterator: Callable[..., Any]
  example_batch: Callable[[ConfigDict, int], dict]
  splits: Sequence[str] = ()        # split names it knows; () = the loader checks (e.g. TFDS slicing syntax)
  describe: Callable[[Any], str] = lambda loaded: f"{len(loaded):,} examples"
  doc: str = ""                     # one line for listings and errors
  image_set: Optional[Callable[[ConfigDict, str], Any]] = None
  train_subset: Optional[Callable[[ConfigDict, Any], Any]] = None


_SOURCES = Registry("data source", "aigc_jax.data.sources")
_RESOLVERS: list = []


def register_source(source: DataSource, *, replace: bool = False) -> DataSource:
  return _SOURCES.register(source.name, source, replace=replace)


def unregister_source(name: str):
  _SOURCES.unregister(name)


def register_resolver(resolver: Callable[[str], Optional[DataSource]]):
  """`resolver(name)` returns a DataSource for names no registered source claims, or None."""
  _RESOLVERS.append(resolver)
  return resolver


def known_sources() -> list:
  return _SOURCES.names()


def get_source(name: str) -> DataSource:
  source = _SOURCES.get(name)
  if source is not None:
    return source
  for resolver in _RESOLVERS:
    source = resolver(name)
    if source is not None:
      return source
  raise UserError(f"unknown dataset {name!r}; registered sources: {', '.join(known_sources())}, or any TFDS "
                  "image dataset (e.g. mnist, cifar10); set --config.data.name")


def fraction_value(fraction) -> float:
  """data.fraction as a float in (0, 1], else a one-line UserError."""
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
    raise UserError(f"data.fraction must be a number in (0, 1] (the share of the training split to train on), "
                    f"got {fraction!r}; set --config.data.fraction=0.1 for 10%, or 1.0 for all of it")
  return float(fraction)


def check_fraction(data: ConfigDict):
  """data.fraction in (0, 1], and below 1 only for a source that can subset its training split (an image
  source): a limited-data setting silently ignored would be an error."""
  fraction = fraction_value(data.get("fraction", 1.0))
  if fraction < 1.0 and get_source(data.name).train_subset is None:
    raise UserError(f"data.fraction={fraction} is read by image sources only (it subsets the training split); "
                    f"data source {data.name!r} trains on all of it. Remove --config.data.fraction")


def check_set_keys(data: ConfigDict, set_keys: Sequence[str]):
  """A `data.*` key set by hand (e.g. on the command line) that the chosen source does not read would be
  silently ignored: make it an error that names the sources that do read it."""
  source = get_source(data.name)
  for dotted in set_keys:
    key = dotted.split(".", 1)[1] if dotted.startswith("data.") else None
    if key is None or key.split(".")[0] in COMMON_KEYS or key.split(".")[0] in source.keys:
      continue
    users = [s for s in known_sources() if key in _SOURCES.get(s).keys]
    hint = f"sources that read it: {', '.join(users)}" if users else "no registered source reads it"
    raise UserError(f"--config.data.{key} is not used by data source {source.name!r} (it reads "
                    f"{', '.join(COMMON_KEYS + tuple(source.keys))}); {hint}. Remove the flag, or choose one of "
                    "those sources with --config.data.name")
