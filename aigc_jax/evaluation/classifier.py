"""A small dataset classifier that aigc_jax trains itself: the offline feature backbone.

Inception weights cannot be downloaded everywhere (and mean little on 8x8 digits), so every metric also
works with a CNN trained on the dataset's own train split: its penultimate layer gives features for
FID/KID/PR and its logits give IS. The trained weights are cached (flax msgpack, never pickle) per
(dataset, image size, channels, training recipe), so later evals and other runs reuse them. Its scores are
only comparable with scores from the same classifier: the card names it and its weights hash.
"""
import hashlib
import json
import os
import time
import uuid

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax.errors import UserError

RECIPE_VERSION = 3  # bump when the architecture or training changes, so stale caches are not reused
MAX_SHIFT = 2  # pixels of random translation while training
DROPOUT = 0.5
BATCH_SIZE, LEARNING_RATE = 64, 3e-3  # Adam, linear warm-up over 10% of the steps, cosine decay


class DigitClassifier(nn.Module):
  """Three stride-2 convs -> flatten -> ReLU feature layer -> logits; dropout only while training.

  Measured on digits (dcgan.py:cpu, 600 steps): flattening instead of a global mean took test accuracy from
  86% to 97% and trains 4x faster at this width (~10 s on 2 CPU cores). Dropout matters for the metrics
  rather than the accuracy: without it the net memorises its 1,500 training images, so unseen real images
  (the test split) look as far from the train split as DCGAN samples do (FID 64 vs 61 at 297 images each);
  with it, 27 vs 54.
  """
  num_classes: int
  width: int = 16
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x_NxHxWxC, train: bool = False):
    x = x_NxHxWxC
    for i, mult in enumerate((1, 2, 4)):
      x = nn.relu(nn.Conv(self.width * mult, (3, 3), strides=2, name=f"conv{i}")(x))
    x = nn.Dropout(DROPOUT, deterministic=not train)(x.reshape(x.shape[0], -1))
    features = nn.relu(nn.Dense(self.feature_dim, name="features")(x))
    logits = nn.Dense(self.num_classes, name="logits")(nn.Dropout(DROPOUT, deterministic=not train)(features))
    return {"features": features, "logits": logits}


def _recipe(config: ConfigDict, num_classes: int) -> dict:
  d, e = config.data, config.eval
  return {"version": RECIPE_VERSION, "dataset": d.name, "path": d.get("path", ""), "split": "train",
          "image_size": d.image_size, "channels": d.channels, "num_classes": num_classes,
          "steps": e.classifier_steps, "batch_size": BATCH_SIZE, "learning_rate": LEARNING_RATE,
          "max_shift": MAX_SHIFT, "dropout": DROPOUT, "seed": 0, **data_lib.source_identity(d)}


def cache_path(config: ConfigDict, cache_dir: str, num_classes: int) -> str:
  recipe = _recipe(config, num_classes)
  key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(cache_dir, f"classifier-{config.data.name}-{config.data.image_size}px-{key}.msgpack")


def _random_shifts(x_NxHxWxC, rng):
  """Each image translated by up to MAX_SHIFT pixels, borders filled by edge replication."""
  m = MAX_SHIFT
  n, h, w, _ = x_NxHxWxC.shape
  padded = np.pad(x_NxHxWxC, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")
  dy, dx = rng.integers(0, 2 * m + 1, (2, n))
  rows = dy[:, None] + np.arange(h)[None, :]
  cols = dx[:, None] + np.arange(w)[None, :]
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def train_classifier(model, images_uint8, labels, steps, seed=0, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE):
  x_all = data_lib.to_model_range(images_uint8)
  rng = np.random.default_rng(seed)
  params = model.init(jax.random.key(seed), jnp.zeros((1, *x_all.shape[1:])))
  tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(1, steps // 10), max(steps, 2)))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y, dropout_key):
    def loss_fn(p):
      logits = model.apply(p, x, train=True, rngs={"dropout": dropout_key})["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  dropout_key = jax.random.key(seed + 1)
  for i in range(steps):
    idx = rng.integers(0, len(x_all), batch_size)
    # Small random shifts: features that do not hinge on exact pixel positions, and less overfitting.
    x = _random_shifts(x_all[idx], rng)
    params, opt_state, loss = step(params, opt_state, x, labels[idx], jax.random.fold_in(dropout_key, i))
  return params, float(loss)


def accuracy(model, params, images_uint8, labels, chunk=1024) -> float:
  apply = jax.jit(model.apply)
  correct = 0
  for start in range(0, len(images_uint8), chunk):
    logits = apply(params, data_lib.to_model_range(images_uint8[start:start + chunk]))["logits"]
    correct += int(np.sum(np.argmax(np.asarray(logits), -1) == labels[start:start + chunk]))
  return correct / max(1, len(images_uint8))


def read_cache(path, meta_path, template):
  """(params, info, raw bytes) from the cache, or None if absent or unreadable (then the caller retrains)."""
  if not (os.path.isfile(path) and os.path.isfile(meta_path)):
    return None
  try:
    with open(path, "rb") as f:
      raw = f.read()
    params = serialization.from_bytes(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template), raw)
    with open(meta_path) as f:
      return params, json.load(f), raw
  except (OSError, ValueError, KeyError, TypeError):
    return None


def write_atomic(target: str, payload, mode: str):
  """Writes under a temporary name of its own, then renames: every process of a multi-host job (and any run
  sharing the cache) writes the same bytes; a shared ".tmp" let one rename another's half-written file."""
  tmp = f"{target}.{uuid.uuid4().hex}.tmp"
  with open(tmp, mode) as f:
    f.write(payload)
  os.replace(tmp, target)


def load_or_train(config: ConfigDict, cache_dir: str, log=print):
  """(model, params, info) for the configured dataset; trains on the train split once and caches."""
  if config.eval.classifier_steps < 1:
    raise UserError(f"eval.classifier_steps must be >= 1, got {config.eval.classifier_steps}")
  train = data_lib.load_image_set(config.data, "train")
  if train.labels is None or not train.num_classes:
    raise UserError(f"dataset {config.data.name} has no labels, so no classifier backbone can be trained; "
                    "use --config.eval.backbone=inception with eval.inception_path")
  model = DigitClassifier(train.num_classes)
  path = cache_path(config, cache_dir, train.num_classes)
  meta_path = path.replace(".msgpack", ".json")
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *train.images.shape[1:])))
  cached = read_cache(path, meta_path, template)
  if cached is not None:
    params, info, raw = cached
  else:
    log(f"training the {config.data.name} classifier backbone ({config.eval.classifier_steps} steps), cached "
        f"at {path}")
    start = time.time()
    params, loss = train_classifier(model, train.images, train.labels, config.eval.classifier_steps)
    info = {**_recipe(config, train.num_classes), "final_loss": loss,
            "train_accuracy": accuracy(model, params, train.images, train.labels),
            "train_seconds": round(time.time() - start, 1)}
    try:
      test = data_lib.load_image_set(config.data, "test")
      if test.labels is not None:
        info["test_accuracy"] = accuracy(model, params, test.images, test.labels)
    except (UserError, ValueError, KeyError):
      pass  # no test split: the card just lacks the number
    raw = serialization.to_bytes(params)
    os.makedirs(cache_dir, exist_ok=True)
    write_atomic(path, raw, "wb")
    write_atomic(meta_path, json.dumps(info, indent=1), "w")
  info = {**info, "weights_sha256": hashlib.sha256(raw).hexdigest(), "cache_path": path}
  return model, params, info
