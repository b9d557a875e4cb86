"""Sample-quality metrics on a feature backbone: FID, KID, Inception Score and precision/recall.

The four share one backbone, one reference-statistics cache and one feature pass over the generated images
(`Features`, built once per evaluation through EvalContext.shared), so asking for all of them costs one
extraction, not four.
"""
import numpy as np

from aigc_jax import media
from aigc_jax.errors import UserError
from aigc_jax.evaluation import backbones, metrics, reference
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator

IS_SPLITS = 10   # Salimans et al. 2016
PR_K = 3         # Kynkaanniemi et al. 2019
QUANTIZATION = "uint8: round((x + 1) * 127.5) half to even, clipped to [0, 255], as if saved as PNG"


def images_of(samples: dict, config) -> np.ndarray:
  if "images" not in samples:
    raise UserError(f"family {config.family!r} samples {sorted(samples)}, not images; image metrics need images "
                    "(set --config.eval.metrics=\"('eval_step',)\")")
  return np.asarray(samples["images"], np.float32)


class Features:
  """Backbone, reference statistics and the running statistics of the generated images' features."""

  def __init__(self, ctx: EvalContext):
    e = ctx.config.eval
    self.config, self.wanted = ctx.config, set(e.metrics)
    self.backbone, self.extract = backbones.shared(ctx)  # the classifier may be class_accuracy's too
    self.ref = reference.reference_stats(ctx.config, e.reference_split, self.backbone, self.extract, ctx.cache_dir,
                                         ctx.log)
    self.stats = metrics.RunningStats(self.backbone.info["feature_dim"])
    self.kept_features, self.kept_logits, self.count = [], [], 0
    self._last_chunk = None
    info = self.backbone.info
    ctx.note("backbone", {"name": self.backbone.name, **{k: v for k, v in info.items() if k != "cache_path"}})
    ctx.note("num_reference", self.ref["count"])
    ctx.note("reference", {"dataset": ctx.config.data.name, "split": e.reference_split,
                           "num_images": self.ref["count"], "image_size": ctx.config.data.image_size,
                           "stats_cache": self.ref["cache_path"], "stats_from_cache": self.ref["cached"]})
    ctx.note("reference_split", e.reference_split)
    ctx.note("resize", info["resize"])
    ctx.note("quantization", QUANTIZATION if e.quantize else "none (float samples)")

  def record(self, samples: dict) -> dict:
    """What one chunk contributes, saved once for all four metrics: its backbone features (and IS logits)."""
    e = self.config.eval
    images = images_of(samples, self.config)
    x = np.asarray(media.get_medium("images").quantize(images), np.float32) if e.quantize else images
    out = self.extract(x)
    record = {"features": np.asarray(out["features"], np.float32)}
    if "is" in self.wanted:
      record["logits"] = np.asarray(out["logits"], np.float32)
    return record

  def absorb(self, record: dict):
    features = record["features"]
    self.count += len(features)
    self.stats.update(features)
    room = self.config.eval.max_pairwise_samples - sum(len(f) for f in self.kept_features)
    if room > 0:
      self.kept_features.append(features[:room])
    if "is" in self.wanted:
      self.kept_logits.append(record["logits"])

  def consume(self, samples: dict):
    if samples is self._last_chunk:  # another of the four already extracted this chunk
      return
    self._last_chunk = samples
    self.absorb(self.record(samples))

  def fake_features(self):
    return np.concatenate(self.kept_features)


class _Running:
  """Adapts one metric's `finish(features)` to the evaluator protocol. The four share one record key, so the
  runner extracts, saves and absorbs each chunk's features once for all of them."""
  record_key = "features"

  def __init__(self, ctx, name, finish):
    self.features = ctx.shared("features", lambda: Features(ctx))
    self._name, self._finish = name, finish

  def record(self, samples):
    return self.features.record(samples)

  def absorb(self, record):
    self.features.absorb(record)

  def consume(self, samples):
    self.features.consume(samples)

  def finish(self):
    values, protocol = self._finish(self.features)
    return values, {self._name: protocol}


def _fid(f: Features):
  mu, cov = f.stats.mean_and_cov()
  return ({"fid": metrics.frechet_distance(mu, cov, f.ref["mu"], f.ref["cov"])},
          {"num_generated": f.stats.count, "num_reference": f.ref["count"],
           "statistics": "float64 mean and unbiased covariance; symmetric eigendecomposition sqrt"})


def _kid(f: Features):
  e = f.config.eval
  fake = f.fake_features()
  kid, kid_std, subset = metrics.kernel_inception_distance(f.ref["features"], fake, e.kid_subsets,
                                                            e.kid_subset_size, seed=e.seed)
  return ({"kid": kid, "kid_std": kid_std},
          {"subsets": e.kid_subsets, "subset_size": subset, "kernel": "(x.y/d + 1)^3", "estimator": "unbiased MMD^2",
           "num_generated": len(fake), "num_reference": len(f.ref["features"])})


def _is(f: Features):
  score, std = metrics.inception_score(np.concatenate(f.kept_logits), IS_SPLITS)
  return ({"is": score, "is_std": std},
          {"splits": IS_SPLITS, "num_generated": f.count, "logits": f.backbone.info["logits_layer"]})


def _pr(f: Features):
  fake = f.fake_features()
  precision, recall = metrics.precision_recall(f.ref["features"], fake, k=PR_K)
  return ({"precision": precision, "recall": recall},
          {"k": PR_K, "num_generated": len(fake), "num_reference": len(f.ref["features"])})


def _check_backbone(config, family):
  if config.eval.backbone not in backbones.BACKBONES:
    raise UserError(f"unknown eval.backbone {config.eval.backbone!r}; use one of {backbones.BACKBONES}")


def _check_is(config, family):
  _check_backbone(config, family)
  if config.eval.num_samples < IS_SPLITS:
    raise UserError(f"the Inception Score uses {IS_SPLITS} splits: eval.num_samples must be >= {IS_SPLITS}, "
                    f"got {config.eval.num_samples}")


def _check_pr(config, family):
  _check_backbone(config, family)
  if config.eval.num_samples <= PR_K:
    raise UserError(f"precision/recall uses k={PR_K} neighbours: eval.num_samples must be > {PR_K}")


def _check_kid(config, family):
  _check_backbone(config, family)
  e = config.eval
  if e.kid_subsets < 1 or e.kid_subset_size < 2:
    raise UserError(f"eval.kid_subsets must be >= 1 and eval.kid_subset_size >= 2, got {e.kid_subsets}, "
                    f"{e.kid_subset_size}")


for _name, _finish, _check, _doc in (
    ("fid", _fid, _check_backbone, "Frechet distance of backbone features (Heusel et al. 2017)"),
    ("kid", _kid, _check_kid, "kernel distance, unbiased MMD^2 over subsets (Binkowski et al. 2018)"),
    ("is", _is, _check_is, "Inception Score over 10 splits (Salimans et al. 2016)"),
    ("pr", _pr, _check_pr, "improved precision and recall, k=3 (Kynkaanniemi et al. 2019)")):
  register_evaluator(Evaluator(
      name=_name, media=("images",), check=_check, doc=_doc,
      start=lambda ctx, name=_name, finish=_finish: _Running(ctx, name, finish)))
