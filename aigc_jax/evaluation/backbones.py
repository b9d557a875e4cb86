"""Feature backbones behind one interface, and jitted data-parallel feature extraction over the mesh."""
import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from aigc_jax import parallel
from aigc_jax.errors import UserError

BACKBONES = ("classifier", "inception")


@dataclasses.dataclass
class Backbone:
  name: str
  variables: Any
  apply: Callable  # (variables, images_NxHxWxC in [-1, 1]) -> {"features": [N, D], "logits": [N, K]}
  info: dict  # weights hash, feature dim, resize protocol... copied into the metric card


def get_backbone(config: ConfigDict, cache_dir: str, log=print, kind: str = "") -> Backbone:
  """The backbone `kind` (default: eval.backbone)."""
  kind = kind or config.eval.backbone
  if kind == "classifier":
    from aigc_jax.evaluation import classifier
    model, params, info = classifier.load_or_train(config, cache_dir, log)
    size = config.data.image_size
    return Backbone(
        f"classifier:{config.data.name}", params, lambda v, x: model.apply(v, x),
        {**info, "feature_layer": f"features (penultimate, {model.feature_dim}-d, post-ReLU)",
         "logits_layer": "logits (with bias)", "feature_dim": model.feature_dim,
         "resize": {"method": "none (images at the dataset's size)", "size": [size, size]}})
  if kind == "inception":
    from aigc_jax.evaluation import inception
    variables, hashes = inception.load_fid_inception(config.eval.inception_path)
    model = inception.FIDInceptionV3()

    def apply(v, x):
      out = model.apply(v, inception.preprocess(x))
      return {"features": out["pool3"], "logits": out["logits_unbiased"]}

    size = inception.INPUT_SIZE
    return Backbone("inception-v3-fid-2015-12-05", variables, apply, {
        **hashes, "weights_path": config.eval.inception_path, "feature_layer": "pool3 (2048-d)",
        "logits_layer": "pool3 @ fc.weight without the bias (Salimans et al.'s IS code)", "feature_dim": 2048,
        "resize": {"method": "bilinear, half-pixel centres, no antialias (pytorch-fid's F.interpolate)",
                   "size": [size, size], "grayscale": "repeated over RGB"}})
  raise UserError(f"unknown eval.backbone {kind!r}; use one of {BACKBONES}")


def shared(ctx, kind: str = ""):
  """(backbone, extract) of `kind` (default: eval.backbone), built once per evaluation through `ctx.shared`: FID/KID/
  IS/PR's features and class_accuracy's predictions use one loaded (or trained) classifier and one compiled pass."""
  kind = kind or ctx.config.eval.backbone

  def build():
    backbone = get_backbone(ctx.config, ctx.cache_dir, ctx.log, kind)
    return backbone, make_extractor(backbone, ctx.mesh, ctx.config.eval.batch_size)
  return ctx.shared(f"backbone:{kind}", build)


def make_extractor(backbone: Backbone, mesh, batch_size: int):
  """extract(images_NxHxWxC in [-1, 1]) -> numpy {"features", "logits"}, in jitted data-parallel chunks of
  at most batch_size images (so any N fits in memory); variables are replicated once."""
  variables = parallel.replicate(backbone.variables, mesh)
  mapped = parallel.data_parallel_map(lambda v, _, x: backbone.apply(v, x), mesh)
  n_dev = mesh.devices.size
  step = max(n_dev, batch_size // n_dev * n_dev)
  dummy_rng = jax.random.key(0)

  def extract(images_NxHxWxC):
    outs = []
    for start in range(0, len(images_NxHxWxC), step):
      chunk = np.asarray(images_NxHxWxC[start:start + step], np.float32)
      n = len(chunk)
      # Pad every chunk to the same shape so there is one compilation, then drop the padding.
      if n < step:
        chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), np.float32)])
      local = chunk.reshape(jax.process_count(), -1, *chunk.shape[1:])[jax.process_index()]
      out = mapped(variables, dummy_rng, parallel.shard_batch(local, mesh))
      if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)
      outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], jax.device_get(out)))
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  return extract
