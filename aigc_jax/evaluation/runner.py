"""--mode=eval and the periodic in-training eval: samples -> evaluators (registry.py) -> a metric card.

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
from ml_collections import ConfigDict

from aigc_jax import parallel, runtime
from aigc_jax.checkpointing import checkpoint_dir
from aigc_jax.evaluation.registry import EvalContext, check_eval_config, get_evaluator  # noqa: F401
from aigc_jax.families import get_family
from aigc_jax.media.tensorboard import create_writer


def cache_dir_for(config: ConfigDict, workdir: str) -> str:
  return config.eval.cache_dir or os.path.join(workdir, "eval", "cache")


def _generate(config, family, mesh, state, consumers) -> dict:
  """Generates eval.num_samples samples in chunks of eval.batch_size, handing each chunk (a dict keyed by
  medium) to every consumer; only what the consumers keep stays in memory, so the sample count is not
  bounded by device or host memory. Sample i is fold_in(key(eval.seed), i) whatever the chunking
  (runtime.make_sampler's offset)."""
  e = config.eval
  sampler = runtime.make_sampler(family, mesh)
  key = jax.random.key(e.seed)
  chunk = max(mesh.devices.size, e.batch_size)
  num_chunks = 0
  for offset in range(0, e.num_samples, chunk):
    out = sampler(state, key, min(chunk, e.num_samples - offset), offset=offset)
    for consumer in consumers:
      consumer.consume(out)
    num_chunks += 1
  return {"batch_size": chunk, "chunks": num_chunks}


def _checkpoint_of(workdir, step):
  path = os.path.join(checkpoint_dir(workdir), str(step))
  return path if os.path.isdir(path) else "none (in-training state; no checkpoint at this step)"


def evaluate_state(config: ConfigDict, workdir: str, family, mesh, state, step: int, checkpoint: str = "",
                   writer=None, log=print) -> dict:
  """Computes the configured metrics for `state`, writes workdir/eval/<step>.json and scalars; returns the card."""
  check_eval_config(config, family)
  start_time = time.time()
  e = config.eval
  ctx = EvalContext(config, workdir, family, mesh, state, cache_dir_for(config, workdir), log)
  evaluators = [get_evaluator(name) for name in e.metrics]
  # Every evaluator starts (loads weights, reference splits...) before sampling: a typo costs seconds.
  running = [ev.start(ctx) for ev in evaluators]
  sampling = [r for ev, r in zip(evaluators, running) if ev.needs_samples]
  generation, num_generated = None, 0
  sample_time = time.time()
  if sampling:
    counter = _Counter()
    generation = _generate(config, family, mesh, state, [counter] + sampling)
    num_generated = counter.count
  sample_time = time.time() - sample_time
  values, protocol = {}, {}
  for r in running:
    v, sections = r.finish()
    values.update(v)
    protocol.update(sections)

  size = config.data.get("image_size", None)
  card = {
      "step": int(step),
      "checkpoint": checkpoint or _checkpoint_of(workdir, step),
      "family": config.family,
      "metrics": values,
      "backbone": ctx.card.get("backbone") or {"name": "none (pixels or the family's own eval_step)"},
      "num_generated": num_generated,
      "num_reference": ctx.card.get("num_reference"),
      "reference": ctx.card.get("reference"),
      "reference_split": ctx.card.get("reference_split"),
      "resize": ctx.card.get("resize") or {"method": "none", "size": [size, size]},
      "quantization": ctx.card.get("quantization") or "none (float samples)",
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


class _Counter:

  def __init__(self):
    self.count = 0

  def consume(self, samples):
    self.count += len(next(iter(samples.values())))


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
  runtime.check_config(config)
  family = get_family(config)
  check_eval_config(config, family)
  mesh = parallel.make_mesh()
  state, step, _ = runtime.load_latest(config, workdir, family, mesh)
  writer = create_writer(workdir, just_logging=jax.process_index() > 0)
  try:
    return evaluate_state(config, workdir, family, mesh, state, step,
                          checkpoint=os.path.join(checkpoint_dir(workdir), str(step)), writer=writer)
  finally:
    writer.close()
