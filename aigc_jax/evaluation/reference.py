"""Reference statistics of real data, computed once per (dataset, split, backbone, resize) and cached.

The cache file holds float64 mean/covariance over the whole split (for FID) and float32 features of a
fixed random subset of at most eval.max_pairwise_samples examples (for KID and precision/recall, whose cost
grows with n^2). Its name hashes everything the numbers depend on, so changing any of them recomputes.
`class_distribution` caches the backbone's mean softmax over a split the same way (the AM score's p_train).
Splits load through evaluation/inputs.py, so images and audio take the same path.
"""
import hashlib
import json
import os
import re
import uuid

import numpy as np
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax.errors import UserError
from aigc_jax.evaluation import inputs as inputs_lib
from aigc_jax.evaluation import metrics


def _load(config: ConfigDict, split: str, purpose: str, load, noun: str):
  try:
    loaded = load(config.data, split)
  except (UserError, ValueError, KeyError) as e:  # TFDS reports some unknown splits as ValueError/KeyError
    # The data layer's own advice names data.split; here the key to fix is `purpose`, so keep only the problem.
    problem = " ".join(str(e).split()).split("; set --config.data.split")[0]
    raise UserError(f"{purpose}={split!r} cannot be loaded for dataset {config.data.name}: {problem}; set "
                    f"--config.{purpose} to an existing split") from None
  if len(loaded) < 2:
    raise UserError(f"{purpose}={split!r} of {config.data.name} has {len(loaded)} {noun}; need at least 2")
  return loaded


def load_split(config: ConfigDict, split: str, purpose: str = "eval.reference_split"):
  """The split as uint8 NHWC; a one-line UserError naming the config key if the split does not exist."""
  return _load(config, split, purpose, data_lib.load_image_set, "images")


def load_labelled(config: ConfigDict, split: str, medium: str = "images", purpose: str = "eval.reference_split"):
  """The split of any medium as an inputs.LabelledSplit (same errors as load_split)."""
  inputs = inputs_lib.get_inputs(medium)
  return _load(config, split, purpose, inputs.load, inputs.noun)


def cache_key(config: ConfigDict, split: str, backbone_name: str, backbone_info: dict, medium: str = "images") -> dict:
  d = config.data
  return {"dataset": d.name, "path": d.get("path", ""), "split": split,
          **inputs_lib.get_inputs(medium).data_key(config), "backbone": backbone_name,
          "weights_sha256": backbone_info["weights_sha256"], "resize": backbone_info["resize"],
          "max_pairwise_samples": config.eval.max_pairwise_samples, **data_lib.source_identity(d)}


def _cache_path(cache_dir: str, prefix: str, config: ConfigDict, split: str, backbone, key: dict) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=repr).encode()).hexdigest()[:16]
  readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.data.name}-{split}-{backbone.name.split(':')[0]}")
  return os.path.join(cache_dir, f"{prefix}-{readable}-{digest}.npz")  # TFDS splits may read "train[:90%]"


def reference_stats(config: ConfigDict, split: str, backbone, extract, cache_dir: str, log=print) -> dict:
  """{"mu", "cov", "features", "count", "cache_path"} for the split, from the cache when present."""
  medium = getattr(backbone, "medium", "images")
  key = cache_key(config, split, backbone.name, backbone.info, medium)
  path = _cache_path(cache_dir, "ref", config, split, backbone, key)
  if os.path.isfile(path):
    try:
      with np.load(path) as npz:
        return {"mu": npz["mu"], "cov": npz["cov"], "features": npz["features"], "count": int(npz["count"]),
                "cache_path": path, "cached": True}
    except (OSError, ValueError, KeyError):
      log(f"reference statistics cache {path} is unreadable; recomputing it")
  real = load_labelled(config, split, medium)
  noun = inputs_lib.get_inputs(medium).noun
  log(f"computing reference statistics of {config.data.name}/{split} ({len(real)} {noun}) with {backbone.name}")
  stats = metrics.RunningStats(backbone.info["feature_dim"])
  keep = np.sort(np.random.default_rng(0).permutation(len(real))[:config.eval.max_pairwise_samples])
  kept = []
  chunk = max(1, config.eval.batch_size) * 8  # host-side chunks; the extractor splits further per device
  for start in range(0, len(real), chunk):
    features = extract(real.to_model(real.data[start:start + chunk]))["features"]
    stats.update(features)
    rows = keep[(keep >= start) & (keep < start + chunk)] - start
    kept.append(features[rows])
  mu, cov = stats.mean_and_cov()
  out = {"mu": mu, "cov": cov, "features": np.concatenate(kept).astype(np.float32), "count": stats.count}
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f"{path}.{uuid.uuid4().hex}.tmp.npz"  # a name per writer: every process of a multi-host job writes
  np.savez(tmp, key=json.dumps(key), **out)
  os.replace(tmp, path)
  return {**out, "cache_path": path, "cached": False}


def class_distribution(config: ConfigDict, split: str, backbone, extract, cache_dir: str, log=print) -> dict:
  """{"probs": float64 [K], the backbone's mean softmax over the split, "count", "cache_path", "cached"}: the
  p_train(y) of the AM score (Zhou et al. 2018), the classifier's mean prediction on real data."""
  medium = getattr(backbone, "medium", "images")
  key = {**cache_key(config, split, backbone.name, backbone.info, medium), "statistic": "mean softmax"}
  key.pop("max_pairwise_samples")
  path = _cache_path(cache_dir, "classes", config, split, backbone, key)
  if os.path.isfile(path):
    try:
      with np.load(path) as npz:
        return {"probs": npz["probs"], "count": int(npz["count"]), "cache_path": path, "cached": True}
    except (OSError, ValueError, KeyError):
      log(f"class distribution cache {path} is unreadable; recomputing it")
  real = inputs_lib.get_inputs(medium).load(config.data, split)  # the split the classifier trained on
  log(f"computing {backbone.name}'s mean prediction on {config.data.name}/{split} ({len(real)} examples)")
  total, chunk = None, max(1, config.eval.batch_size) * 8
  for start in range(0, len(real), chunk):
    probs = metrics.softmax(extract(real.to_model(real.data[start:start + chunk]))["logits"]).sum(axis=0)
    total = probs if total is None else total + probs
  out = {"probs": total / len(real), "count": len(real)}
  os.makedirs(cache_dir, exist_ok=True)
  tmp = f"{path}.{uuid.uuid4().hex}.tmp.npz"
  np.savez(tmp, key=json.dumps(key, default=repr), **out)
  os.replace(tmp, path)
  return {**out, "cache_path": path, "cached": False}
