"""Paired image sources for image-to-image translation (the pix2pix family), medium "images":
batches {'input': f32 [B,H,W,Ci], 'target': f32 [B,H,W,Ct], 'label': i32 [B]} in [-1, 1] (aigc_jax/data/paired.py).

  paired          offline tasks made from an image source: data.task (inpaint | edges | colorize) of data.base
                  (default mnist_5k; any image source, e.g. digits, npz, image_folder, cifar10), at
                  data.image_size with data.channels (the base's); inpaint holes are data.mask_size squares.
  paired_folder   pix2pix's own files under data.path (A|B side by side in <path>/<split>/, or <path>/A/<split>/
                  and <path>/B/<split>/), data.direction AtoB | BtoA, data.input_channels / data.channels.

Both read data.random_flip (mirror input and target together) and data.jitter_scale (pix2pix's random
jitter: resize both to round(image_size * jitter_scale), crop image_size at a random place; 1.0 = off).

TFDS: no TFDS builder holds pix2pix's pairs. `cycle_gan/facades` (and the other cycle_gan configs) is
unpaired: each split (trainA, trainB, testA, testB) holds single images with a domain label, and which A
goes with which B is not recorded. `cityscapes/semantic_segmentation` does pair photos with label maps, but
needs a manual download and gives label ids, not pix2pix's colour maps. For facades, download pix2pix's
archive (facades.tar.gz: train/ val/ test/ of 256x512 A|B files) and point data.path at it:
`--config.data.name=paired_folder --config.data.path=datasets/facades --config.data.direction=BtoA`.
"""
import numpy as np
from ml_collections import ConfigDict

from aigc_jax.data import paired
from aigc_jax.data.images import ImageSet
from aigc_jax.data.registry import DataSource, register_source
from aigc_jax.errors import UserError

COMMON = ("image_size", "channels", "random_flip", "jitter_scale")
TASK_KEYS = COMMON + ("task", "base", "mask_size", "path", "data_dir")
FOLDER_KEYS = COMMON + ("input_channels", "path", "direction")


def _require(d: ConfigDict, keys, name: str):
  missing = [k for k in keys if k not in d]
  if missing:
    raise UserError(f"data.name={name!r} reads data.{', data.'.join(missing)}, which this config lacks; start the "
                    "experiment from aigc_jax.families.pix2pix.default_config(), whose data.* keys they are")
  if d.jitter_scale < 1.0:
    raise UserError(f"data.jitter_scale={d.jitter_scale} must be >= 1 (1 = no jitter; pix2pix: 286/256 = 1.1171875)")


def _load_task(d, split):
  _require(d, TASK_KEYS, "paired")
  return paired.load_task(d, split)


def _load_folder(d, split):
  _require(d, FOLDER_KEYS, "paired_folder")
  return paired.load_folder(d, split)


def make_iterator(config: ConfigDict, loaded: paired.PairedSet, start_batch: int = 0):
  import jax  # host topology
  d = config.data
  return paired.PairedBatches(loaded, config.batch_size, config.seed, random_flip=d.random_flip,
                              jitter_scale=d.jitter_scale, process_index=jax.process_index(),
                              process_count=jax.process_count(), start_batch=start_batch)


def _example(config: ConfigDict, batch_size: int, input_channels: int) -> dict:
  d = config.data
  return {"input": np.zeros((batch_size, d.image_size, d.image_size, input_channels), np.float32),
          "target": np.zeros((batch_size, d.image_size, d.image_size, d.channels), np.float32),
          "label": np.zeros((batch_size,), np.int32)}


def task_example_batch(config: ConfigDict, batch_size: int = 2) -> dict:
  _require(config.data, TASK_KEYS, "paired")
  paired.check_task_config(config.data)
  return _example(config, batch_size, paired.task_input_channels(config.data))


def folder_example_batch(config: ConfigDict, batch_size: int = 2) -> dict:
  _require(config.data, FOLDER_KEYS, "paired_folder")
  return _example(config, batch_size, config.data.input_channels)


def describe(p: paired.PairedSet) -> str:
  n, h, w, ci = p.inputs.shape
  classes = f", {p.num_classes} classes" if p.num_classes else ""
  return f"{n:,} pairs {h}x{w}: {ci}-channel input -> {p.targets.shape[-1]}-channel target{classes} ({p.where})"


def image_set(d, split):
  """The targets, as the images this source's model produces (load_image_set: references, classifiers)."""
  p = _load_task(d, split) if d.name == "paired" else _load_folder(d, split)
  return ImageSet(p.targets, p.labels, p.num_classes)


register_source(DataSource(
    name="paired", medium="images", keys=TASK_KEYS, load=_load_task, make_iterator=make_iterator,
    example_batch=task_example_batch, describe=describe, image_set=image_set,
    doc="data.task (inpaint | edges | colorize) of image source data.base: input/target pairs for pix2pix"))
register_source(DataSource(
    name="paired_folder", medium="images", keys=FOLDER_KEYS, load=_load_folder, make_iterator=make_iterator,
    example_batch=folder_example_batch, describe=describe, image_set=image_set,
    doc="data.path: pix2pix-style pairs (<path>/<split>/ A|B files, or <path>/A|B/<split>/), data.direction"))
