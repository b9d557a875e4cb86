"""TFDS image datasets (mnist, fashion_mnist, cifar10, ... any builder with an `image` feature).

tf.data decodes and resizes; the decoded uint8 split is held in memory so the training iterator can address
any position directly (exact resume, no shuffle-buffer replay). That suits the paper datasets here (MNIST,
CIFAR-10: <200 MB); a dataset that does not fit in host memory needs a streaming source instead.
"""
import os
import socket

import numpy as np

from aigc_jax.data.images import ImageSet
from aigc_jax.errors import UserError


def _hide_gpus_from_tensorflow(tf):
  # TensorFlow would otherwise reserve GPU memory that JAX needs (ARCHITECTURE.md, "Pitfalls").
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # already initialised; visibility is fixed for this process


# TFDS fetches most datasets through this host (its GCS mirror, tried first) or lists them there.
_PROBE_HOST = ("storage.googleapis.com", 443)


def network_unreachable() -> bool:
  """True if a quick connection to TFDS's download host fails. Offline, TFDS itself retries every URL with
  back-off for minutes before it gives up; this probe lets us fail in seconds instead. Behind a proxy
  (HTTPS_PROXY) a direct connection proves nothing, so we do not probe."""
  if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return False
  try:
    socket.create_connection(_PROBE_HOST, timeout=5).close()
    return False
  except OSError:
    return True


def offline_error(name: str, reason: str, fix: str) -> UserError:
  return UserError(f"could not download TFDS dataset {name!r} ({reason}); this machine may be offline: {fix}")


def tfds_builder_exists(name: str) -> bool:
  import tensorflow_datasets as tfds
  return name.split(":")[0] in tfds.list_builders()


def load_tfds_images(name: str, split: str, image_size: int, channels: int, data_dir=None,
                     download: bool = True) -> ImageSet:
  import tensorflow as tf
  import tensorflow_datasets as tfds

  _hide_gpus_from_tensorflow(tf)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends
    raise UserError(f"TFDS has no dataset {name!r} ({type(e).__name__}); check data.name") from None
  if download and not builder.is_prepared():
    fix = ("use an offline preset (e.g. ':cpu' with data.name=digits), or prepare the dataset elsewhere and "
           "point --config.data.data_dir at it")
    if network_unreachable():
      raise offline_error(name, f"{_PROBE_HOST[0]} unreachable, nothing prepared in "
                                f"{data_dir or '~/tensorflow_datasets'}", fix)
    try:
      builder.download_and_prepare()
    except Exception as e:  # offline machines fail here with a connection/download error
      raise offline_error(name, f"{type(e).__name__}: {str(e).splitlines()[0][:120]}", fix) from None
  # Split names may carry TFDS slicing ("train[:90%]", "train+test"); an empty split list means metadata
  # is unknown (e.g. under tfds.testing.mock_data), so let as_dataset decide.
  wanted = {part.split("[")[0].strip() for part in split.split("+")}
  if builder.info.splits and not wanted <= set(builder.info.splits):
    raise UserError(f"TFDS {name!r} has splits {sorted(builder.info.splits)}, not {split!r}; "
                    "set --config.data.split")
  features = builder.info.features
  if "image" not in features:
    raise UserError(f"TFDS {name!r} has no 'image' feature (features: {sorted(features)}); "
                    "choose an image dataset")
  has_label = "label" in features
  num_classes = features["label"].num_classes if has_label else None

  def to_uint8(example):
    image = example["image"]
    if image.shape[-1] != channels:
      image = tf.image.rgb_to_grayscale(image) if channels == 1 else tf.image.grayscale_to_rgb(image)
    if image.shape[0] != image_size or image.shape[1] != image_size:
      image = tf.image.resize(image, [image_size, image_size], method="bicubic", antialias=True)
      image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    label = tf.cast(example["label"], tf.int32) if has_label else tf.constant(-1, tf.int32)
    return image, label

  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(to_uint8, num_parallel_calls=tf.data.AUTOTUNE).batch(4096).prefetch(tf.data.AUTOTUNE)
  images, labels = [], []
  for image_b, label_b in tfds.as_numpy(ds):
    images.append(image_b)
    labels.append(label_b)
  if not images:
    raise UserError(f"TFDS {name!r} split {split!r} is empty")
  return ImageSet(np.concatenate(images), np.concatenate(labels) if has_label else None, num_classes)
