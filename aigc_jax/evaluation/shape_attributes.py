"""Attribute judges for `captioned_shapes`: small CNNs that read colour, shape and size off a one-object image.

Compositional accuracy (evaluators/compositional.py) asks whether an image generated for "a large red circle"
shows a large red circle. The judges are the project's own classifier architecture (evaluation/classifier.py's
DigitClassifier), one per attribute, trained on the renders of the train split's one-object scenes (~3,300 of
the 10,000) at data.image_size, and tested on the test split's one-object scenes (~330; the card carries each
judge's test accuracy: generated images cannot be judged more exactly than real renders are). Colour is nearly
free on palette colours over black; shape and size carry the information. Measured (2026-11-26, 16 px): width 16
and 600 steps (the backbone's recipe) read shapes at 41% on test renders; width 32 and 2,000 steps at 100% (also at
32 px), so the judges use the latter (~2 CPU-minutes for all three, once). Cached like the classifier backbone
(flax msgpack plus a JSON of the recipe and accuracies) per (image size, recipe).
"""
import dataclasses
import hashlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from aigc_jax import data as data_lib
from aigc_jax.data.sources import captioned_shapes as shapes
from aigc_jax.evaluation import classifier

RECIPE_VERSION = 1
STEPS, WIDTH = 2000, 32
ATTRIBUTES = {"colour": tuple(shapes.COLOURS), "shape": shapes.SHAPES, "size": tuple(shapes.SIZES)}


def one_object_split(split: str, image_size: int):
  """(uint8 images [N, S, S, 3], {attribute: int32 [N]}) of the split's scenes with exactly one object."""
  loaded = shapes.load_shapes(split, image_size)
  rows = np.array([i for i, s in enumerate(loaded.scenes) if len(s["objects"]) == 1], np.int64)
  objects = [loaded.scenes[i]["objects"][0] for i in rows]
  labels = {a: np.array([names.index(o[a]) for o in objects], np.int32) for a, names in ATTRIBUTES.items()}
  return loaded.images[rows], labels


def attribute_indices(prompt_objects: list) -> dict:
  """{attribute: index or -1 when the prompt does not say it} of a one-object prompt's parsed object."""
  (obj,) = prompt_objects
  return {a: names.index(obj[a]) if obj.get(a) is not None else -1 for a, names in ATTRIBUTES.items()}


@dataclasses.dataclass
class Judges:
  models: dict   # attribute -> DigitClassifier
  params: dict   # attribute -> its params
  info: dict     # recipe, per-attribute train/test accuracy, weights hash, cache path

  def predict(self, images_NxHxWxC) -> dict:
    """{attribute: int32 [N]} for images in [-1, 1]."""
    out = {}
    for a, model in self.models.items():
      logits = jax.jit(model.apply)(self.params[a], jnp.asarray(images_NxHxWxC, jnp.float32))["logits"]
      out[a] = np.argmax(np.asarray(logits), -1).astype(np.int32)
    return out


def _recipe(image_size: int, steps: int) -> dict:
  return {"version": RECIPE_VERSION, "dataset": "captioned_shapes", "scenes": "one-object scenes of the train split",
          "image_size": image_size, "steps": steps, "width": WIDTH,
          "attributes": {a: list(n) for a, n in ATTRIBUTES.items()},
          "batch_size": classifier.BATCH_SIZE, "learning_rate": classifier.LEARNING_RATE,
          "max_shift": classifier.MAX_SHIFT, "seed": 0}


def load_or_train(image_size: int, cache_dir: str, log=print, steps: int = STEPS) -> Judges:
  """The judges at `image_size`, trained for `steps` steps each on first use and cached in `cache_dir`."""
  recipe = _recipe(image_size, steps)
  key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
  path = os.path.join(cache_dir, f"shape-attributes-{image_size}px-{key}.msgpack")
  meta_path = path.replace(".msgpack", ".json")
  models = {a: classifier.DigitClassifier(len(names), width=WIDTH) for a, names in ATTRIBUTES.items()}
  example = jnp.zeros((1, image_size, image_size, 3))
  template = {a: jax.eval_shape(m.init, jax.random.key(0), example) for a, m in models.items()}
  cached = classifier.read_cache(path, meta_path, template)
  if cached is not None:
    params, info, raw = cached
  else:
    log(f"training the captioned_shapes attribute judges ({', '.join(ATTRIBUTES)}; {steps} steps each), cached at "
        f"{path}")
    start = time.time()
    train_x, train_y = one_object_split("train", image_size)
    test_x, test_y = one_object_split("test", image_size)
    params, info = {}, {**recipe, "train_examples": len(train_x), "test_examples": len(test_x)}
    for i, (a, model) in enumerate(models.items()):
      params[a], loss = classifier.train_classifier(model, train_x, train_y[a], steps, seed=i)
      info[a] = {"final_loss": loss, "classes": len(ATTRIBUTES[a]),
                 "train_accuracy": classifier.accuracy(model, params[a], train_x, train_y[a]),
                 "test_accuracy": classifier.accuracy(model, params[a], test_x, test_y[a])}
    info["train_seconds"] = round(time.time() - start, 1)
    raw = serialization.to_bytes(params)
    os.makedirs(cache_dir, exist_ok=True)
    classifier.write_atomic(path, raw, "wb")
    classifier.write_atomic(meta_path, json.dumps(info, indent=1), "w")
  info = {**info, "weights_sha256": hashlib.sha256(raw).hexdigest(), "cache_path": path}
  return Judges(models, params, info)

