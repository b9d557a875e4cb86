"""--mode=eval and the periodic in-training eval: samples -> features -> metrics -> a metric card.

The card (workdir/eval/<step>.json) carries every number together with the protocol that produced it
(backbone and weights hash, sample counts, reference split, resize, quantisation, seed, step, checkpoint),
because FIDs computed under different protocols are not comparable. TensorBoard gets the same numbers as
`eval/<metric>` scalars next to the training curves.
"""
import json
import os
import time

import jax
import numpy as np
from clu import metric_writers
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from aigc_jax import outputs, parallel, trainer
from aigc_jax.checkpointing import checkpoint_dir
from aigc_jax.errors import UserError
from aigc_jax.evaluation import backbones, metrics, reference
from aigc_jax.families import get_family

FEATURE_METRICS = ("fid", "kid", "is", "pr")
KNOWN_METRICS = FEATURE_METRICS + ("parzen", "eval_step", "psnr", "ssim")


def check_eval_config(config: ConfigDict, family):
  e = config.eval
  unknown = [m for m in e.metrics if m not in KNOWN_METRICS]
  if unknown:
    raise UserError(f"unknown eval.metrics {unknown}; choose from {KNOWN_METRICS}")
  if e.num_samples < 2 or e.batch_size < 1:
    raise UserError(f"eval.num_samples must be >= 2 and eval.batch_size >= 1, got {e.num_samples}, {e.batch_size}")
  if "eval_step" in e.metrics and family.eval_step is None:
    raise UserError(f"family {config.family!r} has no eval_step (likelihood); remove 'eval_step' from eval.metrics")
  if {"psnr", "ssim"} & set(e.metrics) and getattr(family, "reconstruct", None) is None:
    raise UserError(f"psnr/ssim score reconstructions, and family {config.family!r} does not reconstruct; remove "
                    "them from eval.metrics")


def cache_dir_for(config: ConfigDict, workdir: str) -> str:
  return config.eval.cache_dir or os.path.join(workdir, "eval", "cache")


def _generate(config, family, mesh, state, consume):
  """Generates eval.num_samples images in chunks of eval.batch_size, handing each chunk to `consume`; only
  what `consume` keeps stays in memory, so the sample count is not bounded by device or host memory."""
  e = config.eval
  sampler = trainer.make_sampler(family, mesh)
  key = jax.random.key(e.seed)
  chunk = max(mesh.devices.size, e.batch_size)
  for offset in range(0, e.num_samples, chunk):
    out = sampler(state, key, min(chunk, e.num_samples - offset), offset=offset)
    if "images" not in out:
      raise UserError(f"family {config.family!r} samples {sorted(out)}, not images; its metrics go through "
                      "eval_step (set eval.metrics=('eval_step',))")
    consume(np.asarray(out["images"], np.float32))


def _eval_step_metrics(config, family, mesh, state):
  """Mean of the family's eval_step metrics (nats, bits/dim...) over the reference split."""
  step_fn = jax.jit(jax.shard_map(family.eval_step, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                                  out_specs=P(), check_vma=False))
  image_set = reference.load_split(config, config.eval.reference_split)
  bs = max(mesh.devices.size, config.batch_size // mesh.devices.size * mesh.devices.size)
  totals, count = {}, 0
  for start in range(0, len(image_set) - bs + 1, bs):  # full batches only: equal weights in the mean
    batch = {"image": image_set.images[start:start + bs].astype(np.float32) / 127.5 - 1.0,
             "label": (image_set.labels[start:start + bs] if image_set.labels is not None
                       else np.zeros((bs,), np.int32))}
    out = jax.device_get(step_fn(state, parallel.shard_batch(batch, mesh), jax.random.key(config.eval.seed)))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(np.mean(v))
    count += 1
  if not count:
    raise UserError(f"eval.reference_split has fewer than one batch ({bs}) of images; lower batch_size")
  return {k: v / count for k, v in totals.items()}


def evaluate_state(config: ConfigDict, workdir: str, family, mesh, state, step: int, checkpoint: str = "",
                   writer=None, log=print) -> dict:
  """Computes the configured metrics for `state`, writes workdir/eval/<step>.json and scalars; returns the card."""
  check_eval_config(config, family)
  start_time = time.time()
  e = config.eval
  cache_dir = cache_dir_for(config, workdir)
  wanted = list(e.metrics)
  values, protocol = {}, {}
  need_features = any(m in wanted for m in FEATURE_METRICS)

  backbone = extract = None
  if need_features:
    backbone = backbones.get_backbone(config, cache_dir, log)
    extract = backbones.make_extractor(backbone, mesh, e.batch_size)
  stats = metrics.RunningStats(backbone.info["feature_dim"]) if backbone else None
  kept = {"features": [], "logits": [], "pixels": [], "n": 0}

  def consume(images):
    kept["n"] += len(images)
    if "parzen" in wanted:  # Goodfellow et al. fit the window on raw samples, pixels in [0, 1]
      kept["pixels"].append(((images + 1.0) / 2.0).reshape(len(images), -1))
    if backbone is not None:
      x = outputs.to_uint8(images).astype(np.float32) / 127.5 - 1.0 if e.quantize else images
      out = extract(x)
      stats.update(out["features"])
      room = e.max_pairwise_samples - sum(len(f) for f in kept["features"])
      if room > 0:
        kept["features"].append(out["features"][:room])
      if "is" in wanted:
        kept["logits"].append(out["logits"])

  sample_time = time.time()
  _generate(config, family, mesh, state, consume)
  sample_time = time.time() - sample_time

  if backbone is not None:
    ref = reference.reference_stats(config, e.reference_split, backbone, extract, cache_dir, log)
    fake_features = np.concatenate(kept["features"])
    if "fid" in wanted:
      values["fid"] = metrics.frechet_distance(*stats.mean_and_cov(), ref["mu"], ref["cov"])
    if "kid" in wanted:
      kid, kid_std, size = metrics.kernel_inception_distance(ref["features"], fake_features, e.kid_subsets,
                                                              e.kid_subset_size, seed=e.seed)
      values.update(kid=kid, kid_std=kid_std)
      protocol["kid"] = {"subsets": e.kid_subsets, "subset_size": size, "kernel": "(x.y/d + 1)^3"}
    if "is" in wanted:
      values["is"], values["is_std"] = metrics.inception_score(np.concatenate(kept["logits"]), 10)
      protocol["is"] = {"splits": 10}
    if "pr" in wanted:
      values["precision"], values["recall"] = metrics.precision_recall(ref["features"], fake_features, k=3)
      protocol["pr"] = {"k": 3, "num_generated": len(fake_features), "num_reference": len(ref["features"])}
    protocol["reference"] = {"dataset": config.data.name, "split": e.reference_split, "num_images": ref["count"],
                             "image_size": config.data.image_size, "stats_cache": ref["cache_path"]}
    protocol["backbone"] = {"name": backbone.name, **{k: v for k, v in backbone.info.items() if k != "cache_path"}}
    protocol["resize"] = backbone.info["resize"]

  if "parzen" in wanted:
    samples = np.concatenate(kept["pixels"])
    validation = reference.load_split(config, e.parzen_validation_split, "eval.parzen_validation_split").images
    validation = validation[-e.parzen_num_validation:]
    test = reference.load_split(config, e.parzen_split, "eval.parzen_split").images
    flat = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0
    values.update(metrics.parzen_evaluate(samples, flat(validation), flat(test)))
    protocol["parzen"] = {"space": f"pixels in [0, 1], D={samples.shape[1]}", "num_kernels": len(samples),
                          "validation": f"last {len(validation)} of {e.parzen_validation_split}",
                          "test": f"{e.parzen_split} ({len(test)} images)", "sigma_grid": "logspace(-1, 0, 10)"}
  if "eval_step" in wanted:
    values.update({f"eval_step/{k}": v for k, v in _eval_step_metrics(config, family, mesh, state).items()})

  card = {
      "step": int(step), "checkpoint": checkpoint, "family": config.family, "metrics": values,
      "num_generated": kept["n"], "seed": e.seed, "sampling": {"use_ema": config.sample.get("use_ema", None)},
      "quantized_uint8": bool(e.quantize), **protocol,
      "wall_seconds": {"total": round(time.time() - start_time, 2), "generate_and_extract": round(sample_time, 2)},
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
  }
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval", f"{step}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(card, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    card["path"] = path
    log(f"eval step {step}: " + " | ".join(f"{k} {v:.4g}" for k, v in values.items()) + f" -> {path}")
  if writer is not None:
    writer.write_scalars(step, {f"eval/{k}": v for k, v in values.items()})
    writer.flush()
  return card


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
