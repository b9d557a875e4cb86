"""Feature backbones behind one interface, a registry per (eval.backbone, medium), and jitted data-parallel feature
extraction over the mesh.

`eval.backbone` names a kind of network; which network it is depends on the medium the samples are in:
`classifier` is the project's own classifier of that medium (images: evaluation/classifier.py; audio: the log-mel
CNN of evaluation/audio_classifier.py, the SC09 protocol), `inception` is the FID Inception-v3 (images only). FID,
KID, IS, PR, mIS, AM and class_accuracy go through `shared(ctx)` and never branch on the medium; a new medium (or
a new network for one) is one `register_backbone(kind, medium, build)` call.
"""
import collections.abc
import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.errors import UserError
from aigc_jax.evaluation.registry import family_media

BACKBONES = ("classifier", "inception")  # the built-in kinds


@dataclasses.dataclass
class Backbone:
  name: str
  variables: Any
  apply: Callable  # (variables, inputs in [-1, 1]) -> {"features": [N, D], "logits": [N, K]}
  info: dict  # weights hash, feature dim, resize protocol... copied into the metric card
  medium: str = "images"  # what `apply` takes: images NHWC, audio [N, T]


_BUILDERS: dict = {}  # (kind, medium) -> build(config, cache_dir, log) -> Backbone


def register_backbone(kind: str, medium: str, build: Callable[[ConfigDict, str, Callable], Backbone], *,
                      replace: bool = False):
  if (kind, medium) in _BUILDERS and not replace:
    raise ValueError(f"backbone {kind!r} for {medium!r} is already registered")
  _BUILDERS[(kind, medium)] = build


def kinds() -> tuple:
  """Every eval.backbone value some medium has."""
  return tuple(sorted({k for k, _ in _BUILDERS}, key=lambda k: (k not in BACKBONES, k)))


def media_of(kind: str) -> list:
  return sorted(m for k, m in _BUILDERS if k == kind)


def backbone_media() -> tuple:
  """Media some backbone scores: the media of the sample-quality metrics."""
  return tuple(sorted({m for _, m in _BUILDERS}, key=lambda m: (m != "images", m)))


class BackboneMedia(collections.abc.Sequence):
  """`backbone_media()` read at each use, as an Evaluator's `media`: a backbone registered later for a new medium
  extends FID/IS/... to it with no edit to the evaluators."""

  def __getitem__(self, i):
    return backbone_media()[i]

  def __len__(self):
    return len(backbone_media())

  def __repr__(self):
    return repr(backbone_media())


def scored_medium(config: ConfigDict, family=None) -> str:
  """The medium the sample metrics score: the first of the family's media (its data's when no family is given)
  that some backbone knows; the first medium when none does (then `get_backbone` says so)."""
  media = family_media(config, family) if family is not None else (data_lib.medium(config),)
  known = backbone_media()
  return next((m for m in media if m in known), media[0])


def check_backbone(config: ConfigDict, family=None, kind: str = ""):
  """One-line errors, before any training or sampling: an unknown eval.backbone, or one without a network for the
  samples' medium (the Inception network on audio)."""
  kind = kind or config.eval.backbone
  if kind not in kinds():
    raise UserError(f"unknown eval.backbone {kind!r}; use one of {kinds()}")
  medium = scored_medium(config, family)
  if (kind, medium) not in _BUILDERS:
    fits = [k for k in kinds() if (k, medium) in _BUILDERS]
    raise UserError(f"eval.backbone={kind!r} scores {media_of(kind)}, and the samples here are {medium}; set "
                    f"--config.eval.backbone to one of {fits}" if fits else
                    f"eval.backbone={kind!r} scores {media_of(kind)}, and no backbone scores {medium}; remove the "
                    "sample-quality metrics from eval.metrics")


def get_backbone(config: ConfigDict, cache_dir: str, log=print, kind: str = "", medium: str = "") -> Backbone:
  """The backbone `kind` (default: eval.backbone) for `medium` (default: the data source's)."""
  kind = kind or config.eval.backbone
  medium = medium or data_lib.medium(config)
  if kind not in kinds():
    raise UserError(f"unknown eval.backbone {kind!r}; use one of {kinds()}")
  if (kind, medium) not in _BUILDERS:
    raise UserError(f"eval.backbone={kind!r} scores {media_of(kind)}, not {medium}; set --config.eval.backbone to "
                    f"one of {[k for k in kinds() if (k, medium) in _BUILDERS]}")
  backbone = _BUILDERS[(kind, medium)](config, cache_dir, log)
  backbone.medium = medium
  return backbone


def _image_classifier(config: ConfigDict, cache_dir: str, log) -> Backbone:
  from aigc_jax.evaluation import classifier
  model, params, info = classifier.load_or_train(config, cache_dir, log)
  size = config.data.image_size
  return Backbone(
      f"classifier:{config.data.name}", params, lambda v, x: model.apply(v, x),
      {**info, "feature_layer": f"features (penultimate, {model.feature_dim}-d, post-ReLU)",
       "logits_layer": "logits (with bias)", "feature_dim": model.feature_dim,
       "resize": {"method": "none (images at the dataset's size)", "size": [size, size]}})


def _inception(config: ConfigDict, cache_dir: str, log) -> Backbone:
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


def _audio_classifier(config: ConfigDict, cache_dir: str, log) -> Backbone:
  from aigc_jax.evaluation import audio_classifier
  model, params, info = audio_classifier.load_or_train(config, cache_dir, log)
  return Backbone(
      f"audio-classifier:{config.data.name}", params, lambda v, x: model.apply(v, x),
      {**info, "feature_layer": f"features (penultimate, {model.feature_dim}-d, post-ReLU)",
       "logits_layer": "logits (with bias)", "feature_dim": model.feature_dim,
       "resize": {"method": "none; clips padded with zeros or cropped to the classifier's training length "
                            "(the SC09 protocol's FixAudioLength)",
                  "num_samples": model.num_samples, "sample_rate": model.sample_rate}}, medium="audio")


register_backbone("classifier", "images", _image_classifier)
register_backbone("inception", "images", _inception)
register_backbone("classifier", "audio", _audio_classifier)


def shared(ctx, kind: str = ""):
  """(backbone, extract) of `kind` (default: eval.backbone) for the samples' medium, built once per evaluation
  through `ctx.shared`: FID/KID/IS/PR/mIS/AM's features and class_accuracy's predictions use one loaded (or
  trained) classifier and one compiled pass."""
  kind = kind or ctx.config.eval.backbone
  medium = scored_medium(ctx.config, ctx.family)

  def build():
    backbone = get_backbone(ctx.config, ctx.cache_dir, ctx.log, kind, medium)
    return backbone, make_extractor(backbone, ctx.mesh, ctx.config.eval.batch_size)
  return ctx.shared(f"backbone:{kind}:{medium}", build)


def make_extractor(backbone: Backbone, mesh, batch_size: int):
  """extract(inputs in [-1, 1], e.g. images_NxHxWxC or audio_NxT) -> numpy {"features", "logits"}, in jitted
  data-parallel chunks of at most batch_size examples (so any N fits in memory); variables are replicated once."""
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
