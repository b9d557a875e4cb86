"""Sample-quality metrics on a feature backbone: FID, KID, Inception Score, precision/recall, modified IS and the
AM score, for any medium a backbone scores (images; audio through the SC09-protocol classifier).

All share one backbone, one reference-statistics cache and one feature pass over the generated samples
(`Features`, built once per evaluation through EvalContext.shared), so asking for all of them costs one
extraction, not six. The backbone registry (evaluation/backbones.py) picks the network for the samples' medium
and evaluation/inputs.py says how that medium is read and quantised, so nothing here branches on the medium.
"""
import numpy as np

from aigc_jax.errors import UserError
from aigc_jax.evaluation import backbones, metrics, reference
from aigc_jax.evaluation.inputs import IMAGE_QUANTIZATION, get_inputs, images_of  # noqa: F401 (re-exported)
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator

IS_SPLITS = 10   # Salimans et al. 2016
PR_K = 3         # Kynkaanniemi et al. 2019
QUANTIZATION = IMAGE_QUANTIZATION
PROBABILITY_METRICS = ("is", "mis", "am")  # the ones that keep each sample's logits
AM_SPLIT = "train"  # p_train(y): the classifier's mean prediction on its training split (Zhou et al. 2018)


class Features:
  """Backbone, reference statistics and the running statistics of the generated samples' features."""

  def __init__(self, ctx: EvalContext):
    e = ctx.config.eval
    self.config, self.wanted = ctx.config, set(e.metrics)
    self.keep_logits = bool(self.wanted & set(PROBABILITY_METRICS))
    self.backbone, self.extract = backbones.shared(ctx)  # the classifier may be class_accuracy's too
    self.inputs = get_inputs(self.backbone.medium)
    self.ref = reference.reference_stats(ctx.config, e.reference_split, self.backbone, self.extract, ctx.cache_dir,
                                         ctx.log)
    self.train_classes = None
    if "am" in self.wanted:  # before sampling, like the reference statistics
      self.train_classes = reference.class_distribution(ctx.config, AM_SPLIT, self.backbone, self.extract,
                                                        ctx.cache_dir, ctx.log)
    self.stats = metrics.RunningStats(self.backbone.info["feature_dim"])
    self.kept_features, self.kept_logits, self.count = [], [], 0
    self._last_chunk = None
    info = self.backbone.info
    ctx.note("backbone", {"name": self.backbone.name, **{k: v for k, v in info.items() if k != "cache_path"}})
    ctx.note("num_reference", self.ref["count"])
    ctx.note("reference", {"dataset": ctx.config.data.name, "split": e.reference_split,
                           **self.inputs.describe(ctx.config, self.ref["count"]),
                           "stats_cache": self.ref["cache_path"], "stats_from_cache": self.ref["cached"]})
    ctx.note("reference_split", e.reference_split)
    ctx.note("resize", info["resize"])
    ctx.note("quantization", self.inputs.quantization if e.quantize else "none (float samples)")

  def record(self, samples: dict) -> dict:
    """What one chunk contributes, saved once for every metric here: its backbone features (and the logits that
    IS, mIS and AM read)."""
    x = self.inputs.samples_of(samples, self.config)
    out = self.extract(self.inputs.quantize(x) if self.config.eval.quantize else x)
    record = {"features": np.asarray(out["features"], np.float32)}
    if self.keep_logits:
      record["logits"] = np.asarray(out["logits"], np.float32)
    return record

  def absorb(self, record: dict):
    features = record["features"]
    self.count += len(features)
    self.stats.update(features)
    room = self.config.eval.max_pairwise_samples - sum(len(f) for f in self.kept_features)
    if room > 0:
      self.kept_features.append(features[:room])
    if self.keep_logits:
      self.kept_logits.append(record["logits"])

  def consume(self, samples: dict):
    if samples is self._last_chunk:  # another of these metrics already extracted this chunk
      return
    self._last_chunk = samples
    self.absorb(self.record(samples))

  def fake_features(self):
    return np.concatenate(self.kept_features)

  def classifier_summary(self) -> dict:
    """The network whose softmax the probability metrics read, and how well it recognises real data."""
    info = self.backbone.info
    test_accuracy = info.get("test_accuracy")
    return {"name": self.backbone.name, "weights_sha256": info.get("weights_sha256"),
            "test_accuracy": test_accuracy if test_accuracy is not None else "unknown (no labelled test split)",
            "logits": info["logits_layer"]}


class _Running:
  """Adapts one metric's `finish(features)` to the evaluator protocol. They all share one record key, so the
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
  score, std = metrics.inception_score(np.concatenate(f.kept_logits), IS_SPLITS, seed=f.config.eval.seed)
  return ({"is": score, "is_std": std},
          {"splits": IS_SPLITS, "split_order": "samples shuffled with eval.seed (conditional samples come by label)",
           "num_generated": f.count, "logits": f.backbone.info["logits_layer"]})


def _mis(f: Features):
  logits = np.concatenate(f.kept_logits)
  return ({"mis": metrics.modified_inception_score(logits)},
          {"num_generated": len(logits), "pairs": "all N^2 ordered pairs, exactly (closed form)",
           "probabilities": "softmax of the backbone's logits", "classifier": f.classifier_summary()})


def _am(f: Features):
  logits = np.concatenate(f.kept_logits)
  score, kl, entropy = metrics.am_score(logits, f.train_classes["probs"])
  return ({"am": score, "am_kl": kl, "am_entropy": entropy},
          {"num_generated": len(logits), "units": "nats (lower is better)",
           "p_train": f"mean softmax on {f.config.data.name}/{AM_SPLIT} ({f.train_classes['count']} examples)",
           "p_train_cache": f.train_classes["cache_path"], "classifier": f.classifier_summary()})


def _pr(f: Features):
  fake = f.fake_features()
  precision, recall = metrics.precision_recall(f.ref["features"], fake, k=PR_K)
  return ({"precision": precision, "recall": recall},
          {"k": PR_K, "num_generated": len(fake), "num_reference": len(f.ref["features"])})


def _check_backbone(config, family):
  backbones.check_backbone(config, family)




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
    ("pr", _pr, _check_pr, "improved precision and recall, k=3 (Kynkaanniemi et al. 2019)"),
    ("mis", _mis, _check_backbone, "modified IS, exp E_{x,x'} KL(p(y|x) || p(y|x')) (Gurumurthy et al. 2017)"),
    ("am", _am, _check_backbone, "AM score, KL(p_train(y) || p_gen(y)) + E_x H(p(y|x)) (Zhou et al. 2018)")):
  register_evaluator(Evaluator(
      name=_name, media=backbones.BackboneMedia(), check=_check, doc=_doc,
      start=lambda ctx, name=_name, finish=_finish: _Running(ctx, name, finish)))
