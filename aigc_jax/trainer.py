"""The training loop and the checkpoint-reading modes. Knows the family contract, no family's math."""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import console, media, parallel, runtime
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.configs import flat_dict
from aigc_jax.errors import UserError
from aigc_jax.evaluation import runner
from aigc_jax.families import get_family
from aigc_jax.media.tensorboard import create_writer
from aigc_jax.preemption import Preemption
# Re-exported: tests, benches and notebooks reach these through the trainer.
from aigc_jax.runtime import (abstract_state, check_config, init_state, load_latest, make_sampler,  # noqa: F401
                              prepare_workdir, run_keys, step_rng)


def _next_train_batch(iterator, batches_per_step):
  if batches_per_step == 1:
    return next(iterator)
  batches = [next(iterator) for _ in range(batches_per_step)]
  return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)  # [B, k, ...]: example-major


def _next_train_batches(iterator, batches_per_step, num_steps):
  """The batches of `num_steps` consecutive steps, stacked example-major [B, num_steps, ...]."""
  steps = [_next_train_batch(iterator, batches_per_step) for _ in range(num_steps)]
  return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *steps)


def _steps_this_call(step: int, config: ConfigDict) -> int:
  """Steps the next call runs: up to `steps_per_dispatch`, stopping at the next step where the loop logs,
  samples, saves or evaluates (those happen between calls) and at multiples of steps_per_dispatch (a resume
  from an unaligned step realigns with one short call, so at most two programs compile)."""
  periods = [config.steps_per_dispatch, config.log_every_steps, config.checkpoint_every_steps,
             config.sample_every_steps, config.eval.every_steps]
  nxt = min([(step // p + 1) * p for p in periods if p > 0] + [config.num_train_steps])
  return nxt - step


@jax.jit
def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _nonfinite(metrics: dict):
  return sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))


def train_and_evaluate(config: ConfigDict, workdir: str, experiment: str = ""):
  """Trains `config.family` on `config.data`, resuming from the latest checkpoint in workdir. `experiment`
  (the --config spec) only labels the console's start and end blocks."""
  prepare_workdir(workdir)
  check_config(config)
  runtime.check_checkpoint_choice(config, training=True)
  family = get_family(config)
  if config.eval.every_steps:  # a bad eval setting fails now, not after the first eval.every_steps steps
    runner.check_eval_config(config, family)
  lock = runtime.lock_workdir(workdir)  # one training run per workdir
  try:
    return _train(config, workdir, family, experiment)
  finally:
    if lock is not None:
      lock.release()


def _train(config: ConfigDict, workdir: str, family, experiment: str):
  mesh = parallel.make_mesh(config)
  keep_best = config.eval.get("keep_best", "")
  # eval.keep_best: the best card so far (recomputed from workdir/eval on a resume) names a step the rotation keeps.
  best = runtime.best_eval_step(workdir, config) if keep_best else None
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints,
                      preserve_step=(lambda: best[0] if best else None) if keep_best else None)
  try:
    restored = runtime.restore_latest(ckpt, config, family, mesh)
  except BaseException:
    ckpt.close()
    raise
  writer = create_writer(workdir, just_logging=jax.process_index() > 0)
  if restored is None:
    start_step, data_state = 0, {"batches_consumed": 0}
    state = init_state(family, config, mesh)
    writer.write_hparams({k: v for k, v in flatten(config.to_dict()).items()})
  else:
    state, start_step, data_state, changes = restored
    print(f"Resuming from step {start_step} ({ckpt.path(start_step)})", flush=True)
    for line in runtime.describe_changes(changes):
      print(line, flush=True)
  every = config.eval.every_steps
  # Preempted during the eval of the step it saved: finish that eval first (its saved chunks resume it).
  unfinished_eval = bool(every and start_step and start_step % every == 0 and
                         not os.path.exists(os.path.join(workdir, "eval", f"{start_step}.json")))
  if start_step >= config.num_train_steps and not unfinished_eval:
    print(f"Already trained {start_step} >= num_train_steps={config.num_train_steps} steps; nothing to do.")
    ckpt.close()
    writer.close()
    return state

  iterator = data_lib.make_train_iterator(config, start_batch=data_state["batches_consumed"])
  step_fn = parallel.data_parallel(family.train_step, mesh)
  steps_fn = parallel.data_parallel_steps(family.train_step, mesh) if config.steps_per_dispatch > 1 else None
  sampler = make_sampler(family, mesh)
  block = parallel.must_block_each_step()
  chief = jax.process_index() == 0
  if chief:
    console.start(config, experiment=experiment, data_description=iterator.description, state=state,
                  workdir=workdir, start_step=start_step, mesh=mesh)
  sample_paths = []
  pending, last_log, last_log_time = [], start_step, time.time()
  config_dict = config.to_dict()
  train_key = run_keys(config)[1]

  def save(step, state):
    if ckpt.latest_step() == step:
      return
    if not bool(_all_finite(state)):  # a bad update can leave finite metrics but NaN params
      latest = ckpt.latest_step()
      raise UserError(f"non-finite parameters after step {step}; training stopped without saving; last good "
                      f"checkpoint: {ckpt.path(latest) if latest is not None else 'none'}. Lower the learning "
                      "rate or try --config.dtype=float32")
    ckpt.save(step, state, {"batches_consumed": iterator.batches_consumed}, config_dict, force=True)

  try:
    with Preemption() as preemption:

      def evaluate(step, state):
        """The in-training eval; SIGTERM stops it between chunks (they are saved, the rerun resumes it). With
        eval.keep_best the step is saved first, and a better card makes it the step the rotation keeps."""
        nonlocal best
        if keep_best:
          save(step, state)
        try:
          card = runner.evaluate_state(config, workdir, family, mesh, state, step, writer=writer,
                                       checkpoint=ckpt.path(step) if ckpt.latest_step() == step else "",
                                       stop=lambda: preemption.requested)
        except runner.EvaluationStopped as stopped:
          print(stopped, flush=True)
          return
        if keep_best:  # every process: the card's metrics are global, so all keep the same step
          before, best = best, _track_best(config, card, step, best, ckpt)
          if before is not None and before != best:
            ckpt.drop_if_rotated_out(before[0], config.keep_checkpoints)

      step = start_step
      if unfinished_eval:
        evaluate(start_step, state)
      first_step_time = time.time()
      scan_checked = False
      while step < config.num_train_steps:
        num_steps = _steps_this_call(step, config)
        if num_steps == 1:
          batch = parallel.shard_batch(_next_train_batch(iterator, family.batches_per_step), mesh)
          state, metrics = step_fn(state, batch, jax.random.fold_in(train_key, step))
        else:
          batches = _next_train_batches(iterator, family.batches_per_step, num_steps)
          args = (state, parallel.shard_batch(batches, mesh), train_key, np.int32(step))
          if not scan_checked:
            runtime.check_scanned_step(config, steps_fn.trace(*args))
            scan_checked = True
          state, metrics = steps_fn(*args)
        if block or step == start_step:
          jax.block_until_ready(metrics)
        if step == start_step and chief:  # compilation (or a load from the compilation cache) plus the call
          what = "first step" if num_steps == 1 else f"first {num_steps} steps (one call)"
          print(f"{what}: {time.time() - first_step_time:.1f} s (compile + run)", flush=True)
        pending.append((metrics, num_steps > 1))
        step += num_steps
        is_last = step == config.num_train_steps
        if step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0 or is_last:
          per_step = [m if stacked else jax.tree.map(lambda x: np.asarray(x)[None], m)  # all [steps, ...]
                      for m, stacked in jax.device_get(pending)]
          summary = {k: float(np.mean(v)) for k, v in jax.tree.map(lambda *xs: np.concatenate(xs),
                                                                    *per_step).items()}
          bad = _nonfinite(summary)
          if bad:
            latest = ckpt.latest_step()
            ckpt.wait()
            where = ckpt.path(latest) if latest is not None else "none (no checkpoint was saved yet)"
            raise UserError(f"non-finite {', '.join(bad)} between steps {last_log} and {step}; training "
                            f"stopped without saving; last good checkpoint: {where}. Lower the learning "
                            "rate or try --config.dtype=float32")
          now = time.time()
          rate = (step - last_log) / max(now - last_log_time, 1e-9)
          writer.write_scalars(step, {**summary, "steps_per_sec": rate})
          print(f"step {step}/{config.num_train_steps} | " + " | ".join(f"{k} {v:.4g}" for k, v in summary.items())
                + f" | {rate:.2f} steps/s | ETA {_eta(config.num_train_steps - step, rate)}", flush=True)
          pending, last_log, last_log_time = [], step, now
        if config.sample_every_steps and (step % config.sample_every_steps == 0 or is_last):
          samples = sampler(state, jax.random.key(config.sample.seed), config.sample.num)
          media.write_summaries(writer, step, samples)
          if chief:
            sample_paths = media.write_samples(samples, os.path.join(workdir, "samples"), step)
        if step % config.checkpoint_every_steps == 0 or is_last:
          save(step, state)
        if every and step % every == 0:
          evaluate(step, state)
        if parallel.any_process(preemption.requested):  # every process stops at the same step
          save(step, state)
          print(f"SIGTERM: saved checkpoint at step {step}; exiting.", flush=True)
          break
  finally:
    iterator.close()
    ckpt.wait()
    latest = ckpt.latest_step()
    ckpt.close()
    writer.flush()
  if chief:
    console.finish(config, experiment=experiment, workdir=workdir, step=step, sample_paths=sample_paths,
                   checkpoint=ckpt.path(latest) if latest is not None else "")
  return state


def _track_best(config: ConfigDict, card: dict, step: int, best, ckpt: Checkpointer):
  """The new (step, value) of the best eval.keep_best card: `best` or this step's."""
  metric = config.eval.keep_best
  value = card["metrics"].get(metric)
  if not runtime.finite_number(value):
    numbers = sorted(k for k, v in card["metrics"].items() if runtime.finite_number(v))
    raise UserError(f"eval.keep_best={metric!r}: the eval card of step {step} has no finite number of that name "
                    f"(it has {numbers}); set --config.eval.keep_best to one of them, or to ''")
  if not runtime.improves(float(value), best and best[1], config.eval.best_mode):
    return best
  if jax.process_index() == 0:
    print(f"best {metric} so far: {float(value):.6g} at step {step}; its checkpoint {ckpt.path(step)} is kept",
          flush=True)
  return step, float(value)


def _eta(steps_left, rate):
  secs = int(steps_left / max(rate, 1e-9))
  return f"{secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"{secs // 60}m{secs % 60:02d}s"


def flatten(d: dict) -> dict:
  """Flat config for TensorBoard's hparams: scalars as they are, anything else as its string."""
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat_dict(d).items()}


def sample(config: ConfigDict, workdir: str):
  """Loads the latest checkpoint and writes samples/<step>.png and samples/<step>.npz."""
  check_config(config)
  family = get_family(config)
  mesh = parallel.make_mesh(config)
  state, step, _ = load_latest(config, workdir, family, mesh)
  samples = make_sampler(family, mesh)(state, jax.random.key(config.sample.seed), config.sample.num)
  paths = []
  if jax.process_index() == 0:
    paths = media.write_samples(samples, os.path.join(workdir, "samples"), step, echo=True)
    if family.write_figures is not None:
      paths += family.write_figures(state, os.path.join(workdir, "samples"), step)
  for p in paths:
    print(f"wrote {p}")
  return samples
