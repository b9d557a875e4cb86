"""--mode=eval and the periodic in-training eval: samples -> features -> metrics -> a metric card.

The card (workdir/eval/<step>.json) carries every number together with the protocol that produced it
(backbone and weights hash, sample counts, reference split, resize, quantisation, seed, step, checkpoint),
because FIDs computed under different protocols are not comparable. TensorBoard gets the same numbers as
`eval/<metric>` scalars next to the training curves.
"""
import json
import math
import os
import time

import jax
import numpy as np
from clu import metric_writers
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import outputs, parallel, trainer
from aigc_jax.checkpointing import checkpoint_dir
from aigc_jax.errors import UserError
from aigc_jax.evaluation import backbones, likelihood, metrics, reference
from aigc_jax.families import get_family

FEATURE_METRICS = ("fid", "kid", "is", "pr")
# psnr/ssim score reconstructions: a reconstructing family (vqvae) reports them from its eval_step.
KNOWN_METRICS = FEATURE_METRICS + ("parzen", "eval_step", "psnr", "ssim")
IS_SPLITS = 10   # Salimans et al. 2016
PR_K = 3         # Kynkaanniemi et al. 2019
QUANTIZATION = "uint8: round((x + 1) * 127.5) half to even, clipped to [0, 255], as if saved as PNG"


def check_eval_config(config: ConfigDict, family):
  """One-line UserErrors for eval settings that cannot work, before any sampling."""
  e = config.eval
  wanted = tuple(e.metrics)
  unknown = [m for m in wanted if m not in KNOWN_METRICS]
  if unknown or not wanted:
    raise UserError(f"unknown or empty eval.metrics {list(wanted)}; choose from {KNOWN_METRICS}")
  image_metrics = [m for m in wanted if m in FEATURE_METRICS + ("parzen",)]
  if image_metrics and data_lib.text.is_text(config.data):
    raise UserError(f"eval.metrics {image_metrics} score images, and {config.data.name} is text; use "
                    "--config.eval.metrics=\"('eval_step',)\" (loss, perplexity, bits per character)")
  if e.num_samples < 2 or e.batch_size < 1:
    raise UserError(f"eval.num_samples must be >= 2 and eval.batch_size >= 1, got {e.num_samples}, {e.batch_size}")
  if "is" in wanted and e.num_samples < IS_SPLITS:
    raise UserError(f"the Inception Score uses {IS_SPLITS} splits: eval.num_samples must be >= {IS_SPLITS}, "
                    f"got {e.num_samples}")
  if "pr" in wanted and e.num_samples <= PR_K:
    raise UserError(f"precision/recall uses k={PR_K} neighbours: eval.num_samples must be > {PR_K}")
  if "kid" in wanted and (e.kid_subsets < 1 or e.kid_subset_size < 2):
    raise UserError(f"eval.kid_subsets must be >= 1 and eval.kid_subset_size >= 2, got {e.kid_subsets}, "
                    f"{e.kid_subset_size}")
  if any(m in wanted for m in FEATURE_METRICS) and e.backbone not in backbones.BACKBONES:
    raise UserError(f"unknown eval.backbone {e.backbone!r}; use one of {backbones.BACKBONES}")
  if {"eval_step", "psnr", "ssim"} & set(wanted) and family.eval_step is None:
    raise UserError(f"family {config.family!r} has no eval_step (likelihood or reconstruction metrics); remove "
                    f"{sorted({'eval_step', 'psnr', 'ssim'} & set(wanted))} from eval.metrics")


def cache_dir_for(config: ConfigDict, workdir: str) -> str:
  return config.eval.cache_dir or os.path.join(workdir, "eval", "cache")


def _generate(config, family, mesh, state, consume) -> dict:
  """Generates eval.num_samples images in chunks of eval.batch_size, handing each chunk to `consume`; only
  what `consume` keeps stays in memory, so the sample count is not bounded by device or host memory.
  Sample i is fold_in(key(eval.seed), i) whatever the chunking (trainer.make_sampler's offset)."""
  e = config.eval
  sampler = trainer.make_sampler(family, mesh)
  key = jax.random.key(e.seed)
  chunk = max(mesh.devices.size, e.batch_size)
  num_chunks = 0
  for offset in range(0, e.num_samples, chunk):
    out = sampler(state, key, min(chunk, e.num_samples - offset), offset=offset)
    if "images" not in out:
      raise UserError(f"family {config.family!r} samples {sorted(out)}, not images; its metrics go through "
                      "eval_step (set --config.eval.metrics=\"('eval_step',)\")")
    consume(np.asarray(out["images"], np.float32))
    num_chunks += 1
  return {"batch_size": chunk, "chunks": num_chunks}


def _eval_step_metrics(config, family, mesh, state):
  """(metrics, protocol) of the family's eval_step (nats, bits/dim, perplexity, PSNR/SSIM...) over
  eval.reference_split: the family's own Family.evaluate_split when it has one (text), else
  aigc_jax.evaluation.likelihood over every image."""
  split = config.eval.reference_split
  if family.evaluate_split is not None:
    out = dict(family.evaluate_split(state, mesh, split))
    how = f"aigc_jax.families.{config.family}.evaluate_split"
  else:
    out = likelihood.evaluate_split(config, family, state, mesh, split, seed=config.eval.seed)
    how = "eval_step over every image of the split once (last batch padded and masked), per-example mean"
  protocol = {"split": split, "how": how}
  for k in ("num_examples", "num_batches", "seconds"):
    if k in out:
      protocol[k] = out.pop(k)
  return out, protocol


def _checkpoint_of(workdir, step):
  path = os.path.join(checkpoint_dir(workdir), str(step))
  return path if os.path.isdir(path) else "none (in-training state; no checkpoint at this step)"


def evaluate_state(config: ConfigDict, workdir: str, family, mesh, state, step: int, checkpoint: str = "",
                   writer=None, log=print) -> dict:
  """Computes the configured metrics for `state`, writes workdir/eval/<step>.json and scalars; returns the card."""
  check_eval_config(config, family)
  start_time = time.time()
  e = config.eval
  cache_dir = cache_dir_for(config, workdir)
  wanted = list(e.metrics)
  values, protocol = {}, {}
  size = [config.data.get("image_size", None)] * 2

  # Everything that can fail on bad input (backbone weights, reference split, Parzen splits) comes before
  # sampling, so a typo costs seconds, not a whole generation pass.
  backbone = extract = ref = None
  if any(m in wanted for m in FEATURE_METRICS):
    backbone = backbones.get_backbone(config, cache_dir, log)
    extract = backbones.make_extractor(backbone, mesh, e.batch_size)
    ref = reference.reference_stats(config, e.reference_split, backbone, extract, cache_dir, log)
  if "parzen" in wanted:
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # Goodfellow et al.: pixels in [0, 1]
    validation = reference.load_split(config, e.parzen_validation_split, "eval.parzen_validation_split").images
    validation = flat(validation[-e.parzen_num_validation:])
    parzen_test = flat(reference.load_split(config, e.parzen_split, "eval.parzen_split").images)

  stats = metrics.RunningStats(backbone.info["feature_dim"]) if backbone else None
  kept = {"features": [], "logits": [], "pixels": [], "n": 0}

  def consume(images):
    kept["n"] += len(images)
    if "parzen" in wanted:  # Goodfellow et al. fit the window on the raw samples
      kept["pixels"].append(((images + 1.0) / 2.0).reshape(len(images), -1))
    if backbone is not None:
      x = data_lib.to_model_range(outputs.to_uint8(images)) if e.quantize else images
      out = extract(x)
      stats.update(out["features"])
      room = e.max_pairwise_samples - sum(len(f) for f in kept["features"])
      if room > 0:
        kept["features"].append(out["features"][:room])
      if "is" in wanted:
        kept["logits"].append(out["logits"])

  generation = None
  sample_time = time.time()
  if backbone is not None or "parzen" in wanted:
    generation = _generate(config, family, mesh, state, consume)
  sample_time = time.time() - sample_time

  if backbone is not None:
    fake_features = np.concatenate(kept["features"])
    if "fid" in wanted:
      values["fid"] = metrics.frechet_distance(*stats.mean_and_cov(), ref["mu"], ref["cov"])
      protocol["fid"] = {"num_generated": stats.count, "num_reference": ref["count"],
                         "statistics": "float64 mean and unbiased covariance; symmetric eigendecomposition sqrt"}
    if "kid" in wanted:
      kid, kid_std, subset = metrics.kernel_inception_distance(ref["features"], fake_features, e.kid_subsets,
                                                                e.kid_subset_size, seed=e.seed)
      values.update(kid=kid, kid_std=kid_std)
      protocol["kid"] = {"subsets": e.kid_subsets, "subset_size": subset, "kernel": "(x.y/d + 1)^3",
                         "estimator": "unbiased MMD^2", "num_generated": len(fake_features),
                         "num_reference": len(ref["features"])}
    if "is" in wanted:
      values["is"], values["is_std"] = metrics.inception_score(np.concatenate(kept["logits"]), IS_SPLITS)
      protocol["is"] = {"splits": IS_SPLITS, "num_generated": kept["n"], "logits": backbone.info["logits_layer"]}
    if "pr" in wanted:
      values["precision"], values["recall"] = metrics.precision_recall(ref["features"], fake_features, k=PR_K)
      protocol["pr"] = {"k": PR_K, "num_generated": len(fake_features), "num_reference": len(ref["features"])}

  if "parzen" in wanted:
    samples = np.concatenate(kept["pixels"])
    parzen_values, parzen_info = metrics.parzen_evaluate(samples, validation, parzen_test)
    values.update(parzen_values)
    protocol["parzen"] = {
        "unit": "nats per image", "space": f"pixels in [0, 1] (raw samples, not quantised), D={samples.shape[1]}",
        "num_kernels": len(samples), "validation": f"last {len(validation)} of {e.parzen_validation_split}",
        "test": f"{e.parzen_split} ({len(parzen_test)} images)", **parzen_info}

  if {"eval_step", "psnr", "ssim"} & set(wanted):
    step_values, protocol["eval_step"] = _eval_step_metrics(config, family, mesh, state)
    missing = [m for m in ("psnr", "ssim") if m in wanted and m not in step_values]
    if missing:
      raise UserError(f"family {config.family!r}'s eval_step reports {sorted(step_values)}, not {missing}; "
                      "remove them from eval.metrics")
    values.update(step_values)

  card = {
      "step": int(step),
      "checkpoint": checkpoint or _checkpoint_of(workdir, step),
      "family": config.family,
      "metrics": values,
      "backbone": ({"name": backbone.name, **{k: v for k, v in backbone.info.items() if k != "cache_path"}}
                   if backbone else {"name": "none (pixels or the family's own eval_step)"}),
      "num_generated": kept["n"],
      "num_reference": ref["count"] if ref else (len(parzen_test) if "parzen" in wanted else None),
      "reference": ({"dataset": config.data.name, "split": e.reference_split, "num_images": ref["count"],
                     "image_size": config.data.image_size, "stats_cache": ref["cache_path"],
                     "stats_from_cache": ref["cached"]} if ref else None),
      "reference_split": (e.reference_split if (ref or "eval_step" in protocol)
                          else e.parzen_split if "parzen" in wanted else None),
      "resize": backbone.info["resize"] if backbone else {"method": "none", "size": size},
      "quantization": QUANTIZATION if (e.quantize and backbone) else "none (float samples)",
      "seed": e.seed,
      "sampling": {"use_ema": config.sample.get("use_ema", None), **(generation or {})},
      "protocol": protocol,
      "wall_seconds": {"total": round(time.time() - start_time, 2), "generate_and_extract": round(sample_time, 2)},
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
  }
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval", f"{step}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(card, f, indent=1, default=_json_default)
    os.replace(path + ".tmp", path)
    card["path"] = path
    log(f"eval step {step}: " + " | ".join(f"{k} {v:.4g}" if _is_number(v) else f"{k} {v}" for k, v in values.items())
        + f" -> {path}")
  if writer is not None:
    scalars = {f"eval/{k}": float(v) for k, v in values.items() if _is_number(v)}
    writer.write_scalars(step, scalars)
    writer.flush()
  return card


def _is_number(v):
  return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(float(v))


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def evaluate(config: ConfigDict, workdir: str) -> dict:
  """--mode=eval: evaluates the latest checkpoint in workdir."""
  trainer.check_config(config)
  family = get_family(config)
  check_eval_config(config, family)
  mesh = parallel.make_mesh()
  state, step, _ = trainer.load_latest(config, workdir, family, mesh)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  try:
    return evaluate_state(config, workdir, family, mesh, state, step,
                          checkpoint=os.path.join(checkpoint_dir(workdir), str(step)), writer=writer)
  finally:
    writer.close()
