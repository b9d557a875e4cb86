"""The training iterator: a deterministic, index-addressable stream of batches over an in-memory ImageSet.

Position p of the global stream is example `perm_epoch[p % N]` with `epoch = p // N` and a permutation seeded
by (seed, epoch). Global batch b covers positions [b*G, (b+1)*G); host h keeps rows [h*L, (h+1)*L) of it.
So the state is one integer (batches consumed), resume is exact, and any host/device count sees the same
global batches. Random flips are seeded per position, so they too survive a resume.
"""
import queue
import threading

import numpy as np

from aigc_jax.data.images import ImageSet
from aigc_jax.errors import UserError


def to_model_range(images_uint8):
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images_uint8.astype(np.float32) * (2.0 / 255.0) - 1.0


class IndexedBatches:
  """What every training iterator shares: `batch_at(i)` (a pure function of i, in subclasses) iterated from
  `start_batch`, and `batches_consumed`, the data position a checkpoint keeps."""

  def __init__(self, global_batch_size: int, *, process_index=0, process_count=1, start_batch=0):
    if global_batch_size % process_count:
      raise ValueError("global batch must divide among hosts")
    self._global = global_batch_size
    self._local = global_batch_size // process_count
    self._host_offset = process_index * self._local
    self._next_batch = start_batch  # next batch the consumer will receive

  @property
  def batches_consumed(self) -> int:
    return self._next_batch

  def batch_at(self, batch_index: int) -> dict:
    raise NotImplementedError

  def __iter__(self):
    return self

  def __next__(self):
    item = self.batch_at(self._next_batch)
    self._next_batch += 1
    return item

  def close(self):
    pass


class ShuffledRows(IndexedBatches):
  """The order of the module docstring over `num_rows` examples: `rows_at(b)` gives the stream positions and
  example indices of this host's rows of global batch b."""

  def __init__(self, num_rows: int, global_batch_size: int, seed: int, **kwargs):
    super().__init__(global_batch_size, **kwargs)
    self._num_rows = num_rows
    self._seed = seed
    self._perm_cache = {}

  def _permutation(self, epoch):
    if epoch not in self._perm_cache:
      self._perm_cache = {epoch: np.random.default_rng([self._seed, epoch]).permutation(self._num_rows)}
    return self._perm_cache[epoch]

  def rows_at(self, batch_index: int):
    n = self._num_rows
    positions = batch_index * self._global + self._host_offset + np.arange(self._local)
    epochs = positions // n
    idx = np.empty(self._local, np.int64)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      idx[sel] = self._permutation(int(epoch))[positions[sel] % n]
    return positions, idx


class BatchIterator(ShuffledRows):
  """Yields host-local numpy batches {'image': f32 [L,H,W,C] in [-1,1], 'label': i32 [L]}, prefetched on a
  thread."""

  def __init__(self, image_set: ImageSet, global_batch_size: int, seed: int, *, random_flip=False,
               process_index=0, process_count=1, start_batch=0, prefetch=2):
    super().__init__(len(image_set), global_batch_size, seed, process_index=process_index,
                     process_count=process_count, start_batch=start_batch)
    self._set = image_set
    self._flip = random_flip
    self._prefetch = prefetch
    self._queue = None
    self._thread = None

  def batch_at(self, batch_index: int):
    """The host-local slice of global batch `batch_index` (pure function of the index)."""
    positions, idx = self.rows_at(batch_index)
    images = self._set.images[idx]
    if self._flip:
      flip = np.array([np.random.default_rng([self._seed, 1, p]).random() < 0.5 for p in positions])
      images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    labels = self._set.labels[idx] if self._set.labels is not None else np.full(self._local, -1, np.int32)
    return {"image": to_model_range(images), "label": labels.astype(np.int32)}

  def _producer(self, start, q, stop):
    b = start
    while not stop.is_set():
      item = self.batch_at(b)
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      b += 1

  def __next__(self):
    if self._prefetch <= 0:
      item = self.batch_at(self._next_batch)
    else:
      if self._thread is None:
        self._queue = queue.Queue(maxsize=self._prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._producer, args=(self._next_batch, self._queue, self._stop), daemon=True)
        self._thread.start()
      item = self._queue.get()
    self._next_batch += 1
    return item

  def close(self):
    if self._thread is not None:
      self._stop.set()
      self._thread.join(timeout=5)
      self._thread = None


IMAGE_KEYS = ("image_size", "channels", "random_flip", "fraction")
# Seed of the fixed limited-data subsets (data.fraction): the same images for every run and config.seed.
SUBSET_SEED = 20200610


def training_subset(image_set: ImageSet, fraction: float) -> ImageSet:
  """The fixed limited-data subset of a training split (the 10% / 20% CIFAR-10 settings of DiffAugment, Zhao
  et al. 2020, and ADA, Karras et al. 2020): round(fraction * N) images. With labels it is class-stratified:
  each class keeps its share (largest remainders decide the rounding) of images picked by a permutation
  seeded per class; without labels, the first round(fraction * N) of one seeded permutation. The seed is
  fixed (SUBSET_SEED), not config.seed, so runs with different seeds train on the same images. (The
  DiffAugment code takes the first N images of the TFDS split instead; ours keeps the class balance.)"""
  from aigc_jax.data.registry import fraction_value  # lazy: the registry's own package imports this module
  fraction = fraction_value(fraction)
  n = len(image_set)
  if fraction == 1.0:
    return image_set
  keep = int(np.floor(fraction * n + 0.5))
  if keep < 1:
    raise UserError(f"data.fraction={fraction} of {n:,} images keeps none; set --config.data.fraction to at "
                    f"least {1 / n:.2g}")
  if image_set.labels is None:
    rows = np.random.default_rng(SUBSET_SEED).permutation(n)[:keep]
  else:
    classes, counts = np.unique(image_set.labels, return_counts=True)
    share = counts * (keep / n)
    quota = np.floor(share).astype(np.int64)
    by_remainder = np.argsort(-(share - quota), kind="stable")  # ties: the lower class first
    quota[by_remainder[:keep - quota.sum()]] += 1
    rows = np.concatenate([
        np.flatnonzero(image_set.labels == c)[np.random.default_rng([SUBSET_SEED, int(c)]).permutation(k)[:q]]
        for c, k, q in zip(classes, counts, quota)])
  rows = np.sort(rows)
  labels = image_set.labels[rows] if image_set.labels is not None else None
  return ImageSet(image_set.images[rows], labels, image_set.num_classes, subset_of=n)


def image_example_batch(config, batch_size: int = 2) -> dict:
  d = config.data
  return {"image": np.zeros((batch_size, d.image_size, d.image_size, d.channels), np.float32),
          "label": np.zeros((batch_size,), np.int32)}


def image_iterator(config, image_set: ImageSet, start_batch: int = 0) -> BatchIterator:
  import jax  # host topology; the loaders above stay importable without jax
  return BatchIterator(image_set, config.batch_size, config.seed, random_flip=config.data.random_flip,
                       process_index=jax.process_index(), process_count=jax.process_count(),
                       start_batch=start_batch)


def image_source(name: str, load, *, keys=(), splits=(), doc: str = ""):
  """A DataSource for an image loader `load(data_config, split) -> ImageSet`: checks the channel count,
  batches with BatchIterator ({'image': f32 [B,H,W,C] in [-1, 1], 'label': i32 [B]})."""
  from aigc_jax.data.registry import DataSource  # lazy: the registry's own package imports this module

  def checked_load(data, split):
    image_set = load(data, split)
    if image_set.images.shape[-1] != data.channels:
      raise UserError(f"{name} images have {image_set.images.shape[-1]} channels but data.channels="
                      f"{data.channels}; set --config.data.channels={image_set.images.shape[-1]}")
    return image_set

  def describe(image_set):
    _, h, w, c = image_set.images.shape
    classes = f", {image_set.num_classes} classes" if image_set.num_classes else ""
    if image_set.subset_of:
      kind = "class-stratified" if image_set.labels is not None else "seeded"
      return (f"{len(image_set):,} of {image_set.subset_of:,} images ({kind} data.fraction="
              f"{len(image_set) / image_set.subset_of:.3g}) {h}x{w}x{c}{classes}")
    return f"{len(image_set):,} images {h}x{w}x{c}{classes}"

  return DataSource(name=name, medium="images", keys=tuple(IMAGE_KEYS) + tuple(keys), load=checked_load,
                    make_iterator=image_iterator, example_batch=image_example_batch, splits=tuple(splits),
                    describe=describe, doc=doc, train_subset=lambda data, image_set: training_subset(
                        image_set, data.get("fraction", 1.0)))
