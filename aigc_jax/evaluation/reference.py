"""Reference statistics of real data, computed once per (dataset, split, backbone, resize) and cached.

The cache file holds float64 mean/covariance over the whole split (for FID) and float32 features of a
fixed random subset of at most eval.max_pairwise_samples images (for KID and precision/recall, whose cost
grows with n^2). Its name hashes everything the numbers depend on, so changing any of them recomputes.
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
from aigc_jax.evaluation import metrics


def load_split(config: ConfigDict, split: str, purpose: str = "eval.reference_split"):
  """The split as uint8 NHWC; a one-line UserError naming the config key if the split does not exist."""
  try:
    image_set = data_lib.load_image_set(config.data, split)
  except (UserError, ValueError, KeyError) as e:  # TFDS reports some unknown splits as ValueError/KeyError
    # The data layer's own advice names data.split; here the key to fix is `purpose`, so keep only the problem.
    problem = " ".join(str(e).split()).split("; set --config.data.split")[0]
    raise UserError(f"{purpose}={split!r} cannot be loaded for dataset {config.data.name}: {problem}; set "
                    f"--config.{purpose} to an existing split") from None
  if len(image_set) < 2:
    raise UserError(f"{purpose}={split!r} of {config.data.name} has {len(image_set)} images; need at least 2")
  return image_set


def cache_key(config: ConfigDict, split: str, backbone_name: str, backbone_info: dict) -> dict:
  d = config.data
  return {"dataset": d.name, "path": d.get("path", ""), "split": split, "image_size": d.image_size,
          "channels": d.channels, "backbone": backbone_name, "weights_sha256": backbone_info["weights_sha256"],
          "resize": backbone_info["resize"], "max_pairwise_samples": config.eval.max_pairwise_samples,
          **data_lib.source_identity(d)}


def reference_stats(config: ConfigDict, split: str, backbone, extract, cache_dir: str, log=print) -> dict:
  """{"mu", "cov", "features", "count", "cache_path"} for the split, from the cache when present."""
  key = cache_key(config, split, backbone.name, backbone.info)
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{config.data.name}-{split}-{backbone.name.split(':')[0]}")
  path = os.path.join(cache_dir, f"ref-{readable}-{digest}.npz")  # TFDS splits may read "train[:90%]"
  if os.path.isfile(path):
    try:
      with np.load(path) as npz:
        return {"mu": npz["mu"], "cov": npz["cov"], "features": npz["features"], "count": int(npz["count"]),
                "cache_path": path, "cached": True}
    except (OSError, ValueError, KeyError):
      log(f"reference statistics cache {path} is unreadable; recomputing it")
  images = load_split(config, split).images
  log(f"computing reference statistics of {config.data.name}/{split} ({len(images)} images) with {backbone.name}")
  stats = metrics.RunningStats(backbone.info["feature_dim"])
  keep = np.sort(np.random.default_rng(0).permutation(len(images))[:config.eval.max_pairwise_samples])
  kept = []
  chunk = max(1, config.eval.batch_size) * 8  # host-side chunks; the extractor splits further per device
  for start in range(0, len(images), chunk):
    features = extract(data_lib.to_model_range(images[start:start + chunk]))["features"]
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
