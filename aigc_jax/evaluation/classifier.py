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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax.errors import UserError

RECIPE_VERSION = 1  # bump when the architecture or training changes, so stale caches are not reused


class DigitClassifier(nn.Module):
  """Three strided convs -> global mean -> feature layer -> logits."""
  num_classes: int
  width: int = 32
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x_NxHxWxC):
    x = x_NxHxWxC
    for i, mult in enumerate((1, 2, 4)):
      x = nn.relu(nn.Conv(self.width * mult, (3, 3), strides=1 if i == 0 else 2, name=f"conv{i}")(x))
    features = nn.relu(nn.Dense(self.feature_dim, name="features")(jnp.mean(x, axis=(1, 2))))
    return {"features": features, "logits": nn.Dense(self.num_classes, name="logits")(features)}


def _recipe(config: ConfigDict, num_classes: int) -> dict:
  d, e = config.data, config.eval
  return {"version": RECIPE_VERSION, "dataset": d.name, "path": d.get("path", ""), "split": "train",
          "image_size": d.image_size, "channels": d.channels, "num_classes": num_classes,
          "steps": e.classifier_steps, "seed": 0}


def cache_path(config: ConfigDict, cache_dir: str, num_classes: int) -> str:
  recipe = _recipe(config, num_classes)
  key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(cache_dir, f"classifier-{config.data.name}-{config.data.image_size}px-{key}.msgpack")


def _train(model, images_uint8, labels, steps, seed=0, batch_size=128):
  x_all = images_uint8.astype(np.float32) / 127.5 - 1.0
  rng = np.random.default_rng(seed)
  params = model.init(jax.random.key(seed), jnp.zeros((1, *x_all.shape[1:])))
  tx = optax.adam(optax.cosine_decay_schedule(2e-3, steps))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply(p, x)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for _ in range(steps):
    idx = rng.integers(0, len(x_all), batch_size)
    # One-pixel random shifts: features that do not hinge on exact pixel positions.
    x = np.roll(x_all[idx], tuple(rng.integers(-1, 2, 2)), axis=(1, 2))
    params, opt_state, loss = step(params, opt_state, x, labels[idx])
  return params, float(loss)


def accuracy(model, params, images_uint8, labels) -> float:
  logits = jax.jit(model.apply)(params, images_uint8.astype(np.float32) / 127.5 - 1.0)["logits"]
  return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def load_or_train(config: ConfigDict, cache_dir: str, log=print):
  """(model, params, info) for the configured dataset; trains on the train split once and caches."""
  train = data_lib.load_image_set(config.data, "train")
  if train.labels is None or not train.num_classes:
    raise UserError(f"dataset {config.data.name} has no labels, so no classifier backbone can be trained; "
                    "use --config.eval.backbone=inception with eval.inception_path")
  model = DigitClassifier(train.num_classes)
  path = cache_path(config, cache_dir, train.num_classes)
  meta_path = path.replace(".msgpack", ".json")
  template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *train.images.shape[1:])))
  if os.path.isfile(path) and os.path.isfile(meta_path):
    with open(path, "rb") as f:
      raw = f.read()
    params = serialization.from_bytes(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template), raw)
    with open(meta_path) as f:
      info = json.load(f)
  else:
    log(f"training the {config.data.name} classifier backbone ({config.eval.classifier_steps} steps), cached "
        f"at {path}")
    params, loss = _train(model, train.images, train.labels, config.eval.classifier_steps)
    info = {**_recipe(config, train.num_classes), "final_loss": loss,
            "train_accuracy": accuracy(model, params, train.images, train.labels)}
    try:
      test = data_lib.load_image_set(config.data, "test")
      info["test_accuracy"] = accuracy(model, params, test.images, test.labels)
    except UserError:
      pass  # no test split: the card just lacks the number
    raw = serialization.to_bytes(params)
    os.makedirs(cache_dir, exist_ok=True)
    for target, payload, mode in ((path, raw, "wb"), (meta_path, json.dumps(info, indent=1), "w")):
      with open(target + ".tmp", mode) as f:
        f.write(payload)
      os.replace(target + ".tmp", target)
  info = {**info, "weights_sha256": hashlib.sha256(raw).hexdigest(), "cache_path": path}
  return model, params, info
