"""`coco_captions`: TFDS coco_captions (COCO 2014 in Karpathy & Li's 2015 splits: train 82,783, restval 30,504,
val 5,000, test 5,000 images), every image with its (usually five) captions. Online: downloaded (~38 GiB) on
first use into data.data_dir (or ~/tensorflow_datasets); offline with nothing prepared it is a one-line error
in seconds (tfds_source.network_unreachable). TFDS split syntax works: data.split="train+restval" is the
113k-image training set text-to-image work on COCO usually means.

Images are centre-cropped to a square and resized (bicubic, antialiased) to data.image_size, RGB or, with
data.channels=1, grey; the decoded split is held in memory like the TFDS image sources (64x64: ~1 GB for
train). COCO has no image classes here, so labels are None: the FID/IS classifier backbone cannot be trained
on it (use eval.backbone=inception). Captions are stripped of surrounding whitespace, empty ones dropped, and
so is an image left with none (COCO 2014 has none such).
"""
import functools

import numpy as np

from aigc_jax.data.captions import CaptionedSet, captioned_source
from aigc_jax.data.registry import register_source
from aigc_jax.errors import UserError

NAME = "coco_captions"


@functools.lru_cache(maxsize=4)
def load_coco(split: str, image_size: int, channels: int, data_dir: str = "") -> CaptionedSet:
  import tensorflow as tf  # lazy: TF is slow to import and only TFDS sources need it
  import tensorflow_datasets as tfds

  from aigc_jax.data import tfds_source
  tfds_source._hide_gpus_from_tensorflow(tf)  # noqa: SLF001 (the one place that policy lives)
  builder = tfds.builder(NAME, data_dir=data_dir or None)
  if not builder.is_prepared():
    fix = ("use an offline captioned set (data.name=captioned_shapes, captioned_digits or captioned_mnist), or "
           "prepare coco_captions elsewhere and point --config.data.data_dir at it")
    if tfds_source.network_unreachable():
      where = data_dir or "~/tensorflow_datasets"
      raise tfds_source.offline_error(NAME, f"TFDS's download host unreachable, nothing prepared in {where}", fix)
    try:
      builder.download_and_prepare()
    except Exception as e:  # offline machines fail here with a connection/download error
      raise tfds_source.offline_error(NAME, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", fix) from None
  wanted = {part.split("[")[0].strip() for part in split.split("+")}
  if builder.info.splits and not wanted <= set(builder.info.splits):
    raise UserError(f"TFDS {NAME} has splits {sorted(builder.info.splits)}, not {split!r}; set "
                    "--config.data.split (e.g. train, or train+restval)")

  def square(example):
    image = example["image"]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.minimum(h, w)
    image = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
    image = tf.image.resize(image, [image_size, image_size], method="bicubic", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    if channels == 1:
      image = tf.image.rgb_to_grayscale(image)
    return image, example["captions"]["text"]

  ds = builder.as_dataset(split=split, shuffle_files=False).map(square, num_parallel_calls=tf.data.AUTOTUNE)
  images, captions = [], []
  for image, texts in tfds.as_numpy(ds.prefetch(tf.data.AUTOTUNE)):
    kept = tuple(t for t in (s.decode("utf-8", "replace").strip() for s in texts) if t)
    if kept:
      images.append(image)
      captions.append(kept)
  if not images:
    raise UserError(f"TFDS {NAME} split {split!r} has no image with a caption")
  return CaptionedSet(np.stack(images), None, None, captions=tuple(captions))


def _load(d, split):
  if d.channels not in (1, 3):
    raise UserError(f"data.channels must be 1 or 3 for {NAME}, got {d.channels}; set --config.data.channels=3")
  return load_coco(split, d.image_size, d.channels, d.get("data_dir", "") or "")


register_source(captioned_source(
    NAME, _load, keys=("data_dir",),
    doc="TFDS coco_captions (online): COCO 2014 Karpathy splits, ~5 captions per image, centre-cropped"))
