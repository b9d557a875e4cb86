"""--mode=eval and the periodic in-training eval: samples -> evaluators (registry.py) -> a metric card.

The card (workdir/eval/<step>.json) carries every number together with the protocol that produced it
(backbone and weights hash, sample counts, reference split, resize, quantisation, seed, step, checkpoint),
because FIDs computed under different protocols are not comparable. TensorBoard gets the same numbers as
`eval/<metric>` scalars next to the training curves.

Generation goes chunk by chunk, and what each chunk contributes is saved as it goes (evaluation/partial.py), so an
evaluation stopped by SIGTERM or a kill resumes at the first missing chunk and ends with the same numbers.
"""
import json
import os
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from aigc_jax import parallel, runtime
from aigc_jax.checkpointing import checkpoint_dir
from aigc_jax.evaluation.partial import ChunkStore
from aigc_jax.evaluation.registry import EvalContext, check_eval_config, get_evaluator  # noqa: F401
from aigc_jax.families import get_family
from aigc_jax.media.tensorboard import create_writer
from aigc_jax.preemption import Preemption


def cache_dir_for(config: ConfigDict, workdir: str) -> str:
  return config.eval.cache_dir or os.path.join(workdir, "eval", "cache")


class EvaluationStopped(Exception):
  """A stop request (SIGTERM during --mode=eval) ended the evaluation before its chunk `done` + 1 of `total`;
  chunks 1..done are saved in `saved_in` (None when an evaluator cannot resume, so nothing was saved)."""

  def __init__(self, done: int, total: int, saved_in):
    self.done, self.total, self.saved_in = done, total, saved_in
    where = (f"saved in {saved_in}; rerun the same command to resume" if saved_in else
             "nothing saved, an evaluator cannot resume; rerun the same command to start over")
    super().__init__(f"SIGTERM: evaluation stopped after chunk {done}/{total} ({where})")


def chunk_size(config: ConfigDict, mesh) -> int:
  return max(mesh.devices.size, config.eval.batch_size)  # eval.batch_size, at least one sample per device


def chunks_of(config: ConfigDict, mesh) -> list:
  """[(offset, count)] of the chunks an evaluation generates."""
  size, n = chunk_size(config, mesh), config.eval.num_samples
  return [(offset, min(size, n - offset)) for offset in range(0, n, size)]


def _split(sampling) -> tuple:
  """({record key: the running object that records and absorbs for every evaluator sharing that key},
  [(name, running object with only `consume`)]) of the [(evaluator, running object)] that need samples."""
  recorders, consumers = {}, []
  for ev, r in sampling:
    if callable(getattr(r, "record", None)) and callable(getattr(r, "absorb", None)):
      recorders.setdefault(getattr(r, "record_key", ev.name), r)
    else:
      consumers.append((ev.name, r))
  return recorders, consumers


def _generate(config, family, mesh, state, recorders, consumers, store, log=print, stop=None) -> dict:
  """Generates eval.num_samples samples in chunks of eval.batch_size; each evaluator takes what it needs from a
  chunk (`absorb(record(chunk))`, or `consume(chunk)`), so only that stays in memory and the sample count is
  not bounded by device or host memory. Sample i is fold_in(key(eval.seed), i) whatever the chunking
  (runtime.make_sampler's offset). With a `store`, chunks already on disk are absorbed instead of generated,
  and each new chunk's records are saved; `stop()` true (on any process) ends it between chunks."""
  e = config.eval
  sampler = runtime.make_sampler(family, mesh)
  key = jax.random.key(e.seed)
  chunks = chunks_of(config, mesh)
  done, count, seconds = 0, 0, []
  if store is not None:
    done = store.readable(log)
    for k in range(done):
      records = store.load(k)
      for record_key, r in recorders.items():
        r.absorb(records[record_key])
      count += chunks[k][1]
    if done:
      log(f"resuming evaluation: {done}/{len(chunks)} chunks already done ({store.directory})")
  for k in range(done, len(chunks)):
    if stop is not None and parallel.any_process(stop()):
      raise EvaluationStopped(k, len(chunks), store.directory if store is not None else None)
    offset, num = chunks[k]
    started = time.perf_counter()
    out = sampler(state, key, num, offset=offset)  # host arrays: the time includes the device work
    seconds.append(time.perf_counter() - started)
    records = {}
    for record_key, r in recorders.items():
      records[record_key] = r.record(out)
      r.absorb(records[record_key])
    for _, r in consumers:
      r.consume(out)
    count += len(next(iter(out.values())))
    if store is not None:
      store.save(k, records)
  # Wall time of generation alone (not the evaluators); the first chunk also compiles the sampler.
  return {"batch_size": chunk_size(config, mesh), "chunks": len(chunks), "resumed_chunks": done,
          "resumable": store is not None, "num_generated": count,
          "generation_seconds": round(sum(seconds), 3),
          "generation_seconds_after_first_chunk": round(sum(seconds[1:]), 3) if len(seconds) > 1 else None}


def _checkpoint_of(workdir, step):
  path = os.path.join(checkpoint_dir(workdir), str(step))
  return path if os.path.isdir(path) else "none (in-training state; no checkpoint at this step)"


def evaluate_state(config: ConfigDict, workdir: str, family, mesh, state, step: int, checkpoint: str = "",
                   writer=None, log=print, stop=None) -> dict:
  """Computes the configured metrics for `state`, writes workdir/eval/<step>.json and scalars; returns the card.

  Resumes from the chunks a stopped or killed evaluation of the same protocol saved; `stop()` true between two
  chunks raises EvaluationStopped (no card is written)."""
  check_eval_config(config, family)
  start_time = time.time()
  e = config.eval
  ctx = EvalContext(config, workdir, family, mesh, state, cache_dir_for(config, workdir), log)
  evaluators = [get_evaluator(name) for name in e.metrics]
  # Every evaluator starts (loads weights, reference splits...) before sampling: a typo costs seconds.
  running = [ev.start(ctx) for ev in evaluators]
  sampling = [(ev, r) for ev, r in zip(evaluators, running) if ev.needs_samples]
  generation, num_generated, store = None, 0, None
  sample_time = time.time()
  if sampling:
    recorders, consumers = _split(sampling)
    if consumers:
      log(f"eval.metrics {[name for name, _ in consumers]} only consume samples (no record/absorb): this evaluation "
          "saves no chunks and cannot resume; every chunk is generated")
    else:
      store = ChunkStore(workdir, config, step, chunk_size(config, mesh), chunks_of(config, mesh), recorders)
    generation = _generate(config, family, mesh, state, recorders, consumers, store, log, stop)
    num_generated = generation.pop("num_generated")
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
      "devices": f"{mesh.devices.size} x {jax.devices()[0].device_kind}",
  }
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval", f"{step}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(card, f, indent=1, default=_json_default)
    os.replace(path + ".tmp", path)
    card["path"] = path
    if store is not None:
      store.remove()
    shown = (f"{k} {v:.4g}" if runtime.finite_number(v) else f"{k} {v}" for k, v in values.items())
    log(f"eval step {step}: " + " | ".join(shown) + f" -> {path}")
  if writer is not None:
    scalars = {f"eval/{k}": float(v) for k, v in values.items() if runtime.finite_number(v)}
    writer.write_scalars(step, scalars)
    writer.flush()
  return card


def _json_default(x):
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return str(x)


def evaluate(config: ConfigDict, workdir: str) -> dict:
  """--mode=eval: evaluates the latest checkpoint in workdir. SIGTERM stops it after the current chunk (saved);
  the same command then resumes. Returns the card, or None when stopped."""
  runtime.check_config(config)
  family = get_family(config)
  check_eval_config(config, family)
  mesh = parallel.make_mesh(config)
  state, step, _ = runtime.load_latest(config, workdir, family, mesh)
  writer = create_writer(workdir, just_logging=jax.process_index() > 0)
  try:
    with Preemption() as preemption:
      return evaluate_state(config, workdir, family, mesh, state, step,
                            checkpoint=os.path.join(checkpoint_dir(workdir), str(step)), writer=writer,
                            stop=lambda: preemption.requested)
  except EvaluationStopped as stopped:  # a clean exit (status 0): the saved chunks are the progress
    print(stopped, flush=True)
    return None
  finally:
    writer.close()
