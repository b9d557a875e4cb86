"""What every mode needs (train, sample, eval, encode): config checks, the run's keys, a fresh, abstract or
restored state, and the data-parallel sampler. The trainer and the evaluation runner both build on this module;
it imports neither, so imports flow one way: main -> trainer -> evaluation.runner -> runtime.
"""
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.configs import check_sizes, flat_dict, override
from aigc_jax.checkpointing import Checkpointer, CorruptCheckpoint, check_state_fits, leaves_by_path
from aigc_jax.errors import UserError
from aigc_jax.families import Family, get_family
from aigc_jax.workdir_lock import WorkdirLock

# Keys that may change when a run resumes (how long it trains, how often it logs, saves, samples and
# evaluates, what it samples, where TFDS keeps its files): listed at start, never an error. Any other change
# is a warning (the run no longer equals an uninterrupted one), or an error if it changes the state's shapes.
RESUMABLE_KEYS = ("num_train_steps", "log_every_steps", "checkpoint_every_steps", "sample_every_steps",
                  "keep_checkpoints", "load_checkpoint", "sample.", "eval.", "data.data_dir")
LOAD_CHECKPOINTS = ("latest", "best")
BEST_MODES = ("min", "max")


def prepare_workdir(workdir: str):
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} is a file, not a directory; pass a directory path")
  os.makedirs(workdir, exist_ok=True)


def lock_workdir(workdir: str, log=print):
  """Process 0 takes the workdir's run lock (workdir_lock.py); every process learns the verdict, so a refused
  job stops on all its hosts. Returns the lock on process 0, None elsewhere."""
  lock, error = None, ""
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir, log=log).acquire()
    except UserError as e:
      error = str(e)
  if jax.process_count() > 1:
    ok = int(multihost_utils.broadcast_one_to_all(np.int32(0 if error else 1)))
    if not ok and not error:
      error = ("process 0 could not take the run lock of this workdir (its error says who holds it); stop the "
               "other run or use another --workdir")
  if error:
    raise UserError(error)
  return lock


def check_config(config: ConfigDict):
  check_sizes(config)
  data_lib.check_fraction(config.data)  # before any JAX work: a bad or ignored limited-data setting
  n = parallel.mesh_size(config.batch_size, config.get("num_devices", 0))
  if config.batch_size % n:
    raise UserError(f"batch_size {config.batch_size} is not divisible by the {n} devices; set "
                    f"--config.batch_size to a multiple of {n}")


def check_scanned_step(config: ConfigDict, traced_steps):
  """steps_per_dispatch > 1 on CPU with a convolutional model is refused: XLA:CPU rewrites convolutions into the
  layouts its fast kernels take only at a program's top level (xla/service/cpu/conv_canonicalization.h), so the
  gradient convolutions inside the multi-step `lax.scan` fall back to naive loops: 6-30x slower per step (DCGAN,
  DDPM, VQ-VAE cpu presets, the paper U-Net; bench/RESULTS.md). `traced_steps`: the multi-step program's
  `jit(...).trace(...)`, which its first call then reuses (no extra tracing)."""
  if jax.default_backend() == "cpu" and "conv_general_dilated" in parallel.primitive_names(traced_steps.jaxpr):
    raise UserError(f"steps_per_dispatch={config.steps_per_dispatch} on CPU with a convolutional model: XLA:CPU "
                    "runs convolution gradients inside the multi-step loop without its fast kernels (6-30x slower "
                    "per step); set --config.steps_per_dispatch=1")


def run_keys(config: ConfigDict):
  """(init key, training key) from the one seed; step t trains with fold_in(training key, t)."""
  init_key, train_key = jax.random.split(jax.random.key(config.seed))
  return init_key, train_key


def step_rng(config: ConfigDict, step: int):
  return jax.random.fold_in(run_keys(config)[1], step)


def init_state(family: Family, config: ConfigDict, mesh):
  """Fresh state, replicated. Initialised on one device from a key of its own so it does not depend on the
  device count."""
  example = data_lib.example_batch(config)
  state = jax.jit(family.init)(run_keys(config)[0], example)
  return parallel.replicate(state, mesh)


def abstract_state(family: Family, config: ConfigDict):
  return jax.eval_shape(family.init, jax.random.key(0), data_lib.example_batch(config))


def load_latest(config: ConfigDict, workdir: str, family: Family, mesh, log=print):
  """(state, step, data_state) of the latest readable checkpoint in workdir, or with load_checkpoint=best of the
  step eval.keep_best kept; a UserError if there is none."""
  check_checkpoint_choice(config, training=False)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise UserError(f"no checkpoint in {ckpt_dir}; train first (--mode=train) or point --workdir at a run")
  ckpt = Checkpointer(workdir, create=False)
  try:
    if config.get("load_checkpoint", "latest") == "best":
      restored = _restore_best(ckpt, config, family, mesh, workdir, log)
    else:
      restored = restore_latest(ckpt, config, family, mesh, log)
  finally:
    ckpt.close()
  if restored is None:
    raise UserError(f"no checkpoint in {ckpt_dir}; train first (--mode=train) or point --workdir at a run")
  state, step, data_state, _ = restored
  return state, step, data_state


def check_checkpoint_choice(config: ConfigDict, training: bool):
  """One-line UserErrors for eval.keep_best / eval.best_mode / load_checkpoint settings that cannot work or would
  be ignored."""
  load, keep_best, mode = (config.get("load_checkpoint", "latest"), config.eval.get("keep_best", ""),
                           config.eval.get("best_mode", "min"))
  if load not in LOAD_CHECKPOINTS:
    raise UserError(f"load_checkpoint={load!r}; choose one of {LOAD_CHECKPOINTS}")
  if mode not in BEST_MODES:
    raise UserError(f"eval.best_mode={mode!r}; choose one of {BEST_MODES}")
  if training and load != "latest":
    raise UserError(f"load_checkpoint={load} picks what --mode=sample/eval/encode load; training always resumes "
                    "from the latest checkpoint: drop --config.load_checkpoint")
  if training and keep_best and not config.eval.every_steps:
    raise UserError(f"eval.keep_best={keep_best} keeps the best evaluation's checkpoint, but eval.every_steps=0 "
                    "runs none during training; set --config.eval.every_steps=N")
  if load == "best" and not keep_best:
    raise UserError("load_checkpoint=best needs --config.eval.keep_best=<metric>, the metric the run kept its best "
                    "checkpoint by")


def finite_number(v) -> bool:
  """A metric value that is a finite number (bools, strings, NaN and inf are not)."""
  return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and bool(np.isfinite(v))


def improves(value: float, best, mode: str) -> bool:
  """Whether `value` beats `best` (None: nothing yet) under eval.best_mode `mode` (ties do not)."""
  return best is None or (value < best if mode == "min" else value > best)


def best_eval_step(workdir: str, config: ConfigDict):
  """(step, value) of the eval card in workdir/eval/<step>.json with the best eval.keep_best (eval.best_mode;
  the earliest on ties), or None if no card has that metric as a number."""
  metric, mode = config.eval.keep_best, config.eval.best_mode
  folder = os.path.join(workdir, "eval")
  steps = sorted(int(n[:-5]) for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                 if n.endswith(".json") and n[:-5].isdigit())
  best = None
  for step in steps:
    try:
      with open(os.path.join(folder, f"{step}.json")) as f:
        value = json.load(f).get("metrics", {}).get(metric)
    except (OSError, ValueError):  # cards are written whole (tmp + rename); an unreadable one does not count
      continue
    if finite_number(value) and improves(float(value), best and best[1], mode):
      best = (step, float(value))
  return best


def _restore_best(ckpt: Checkpointer, config: ConfigDict, family: Family, mesh, workdir: str, log=print):
  metric = config.eval.keep_best
  found = best_eval_step(workdir, config)
  if found is None:
    raise UserError(f"load_checkpoint=best: no eval card in {os.path.join(workdir, 'eval')} has the metric "
                    f"{metric!r}; check --config.eval.keep_best, or use --config.load_checkpoint=latest")
  step, value = found
  if step not in ckpt.all_steps():
    raise UserError(f"load_checkpoint=best: the best {metric} ({value:.6g}) is at step {step}, whose checkpoint is "
                    f"not in {ckpt.directory} (trained without eval.keep_best={metric}?); use "
                    "--config.load_checkpoint=latest")
  abstract = abstract_state(family, config)
  try:
    changes = check_resume_config(ckpt, step, config, abstract)
    state, data_state, _ = ckpt.restore(step, abstract, mesh)
  except CorruptCheckpoint as e:
    raise UserError(f"load_checkpoint=best: {e}; use --config.load_checkpoint=latest") from None
  log(f"Loading the best {metric} checkpoint: step {step} ({metric} {value:.6g}, {ckpt.path(step)})")
  return state, step, data_state, changes


def restore_latest(ckpt: Checkpointer, config: ConfigDict, family: Family, mesh, log=print):
  """(state, step, data_state, changes) of the newest checkpoint that restores, or None if there is none.

  Before restoring, the config snapshot of the checkpoint is compared with `config` (`check_resume_config`).
  A step whose files cannot be read is moved aside (never deleted) with a warning and the next older one is
  tried; if none can be read, a one-line error.
  """
  abstract = abstract_state(family, config)
  moved = []
  while (step := ckpt.latest_step()) is not None:
    try:
      changes = check_resume_config(ckpt, step, config, abstract)
      state, data_state, _ = ckpt.restore(step, abstract, mesh)
      return state, step, data_state, changes
    except CorruptCheckpoint as e:
      where = _move_aside(ckpt, step)
      moved.append(where)
      log(f"warning: {e}; moved it to {where} (kept, not deleted); trying the previous checkpoint")
  if moved:
    raise UserError(f"no checkpoint in {ckpt.directory} can be read (moved aside: {', '.join(moved)}); restore "
                    "the files from a copy, or use a fresh --workdir")
  return None


def _move_aside(ckpt: Checkpointer, step: int) -> str:
  """Process 0 moves the step; every process then re-reads the step list (shared storage)."""
  where = ""
  if jax.process_index() == 0:
    where = ckpt.move_aside(step)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"aigc_jax_move_aside_{step}")
    ckpt.reload()
  return where or f"checkpoints_corrupt/{step}"


def config_changes(saved: dict, config: ConfigDict) -> dict:
  """{key: (saved value, new value)} for keys present in both that differ."""
  new = flat_dict(json.loads(json.dumps(config.to_dict(), default=str)))
  old = flat_dict(saved or {})
  return {k: (old[k], new[k]) for k in sorted(new.keys() & old.keys()) if old[k] != new[k]}


def is_resumable(key: str) -> bool:
  return any(key == p or (p.endswith(".") and key.startswith(p)) for p in RESUMABLE_KEYS)


def _signature(config: ConfigDict) -> dict:
  return {p: (tuple(x.shape), str(x.dtype)) for p, x in
          leaves_by_path(abstract_state(get_family(config), config)).items()}


def _with_value(config: ConfigDict, key: str, value):
  """A copy of config with `key` set back to `value` (its JSON form), or None if it cannot be set."""
  current = flat_dict(config.to_dict())[key]
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    return override(ConfigDict(config.to_dict()), {key: value})
  except Exception:  # pylint: disable=broad-except  # a type the JSON snapshot cannot give back
    return None


def shape_changing_keys(config: ConfigDict, changes: dict) -> list:
  """The changed keys that, set back alone, change the shapes of the run state."""
  new = _signature(config)
  out = []
  for key, (old_value, _) in changes.items():
    reverted = _with_value(config, key, old_value)
    try:
      if reverted is not None and _signature(reverted) != new:
        out.append(key)
    except Exception:  # pylint: disable=broad-except  # the old value is invalid with the new config
      out.append(key)
  return out


def _listing(changes: dict, keys) -> str:
  return ", ".join(f"{k} {changes[k][0]!r} -> {changes[k][1]!r}" for k in keys)


def check_resume_config(ckpt: Checkpointer, step: int, config: ConfigDict, abstract) -> dict:
  """Compares the checkpoint's config snapshot with `config` before restoring. Returns {key: (old, new)} of
  the changes; a one-line UserError naming the keys if the changes alter the state's shapes."""
  changes = config_changes(ckpt.saved_config(step), config)
  saved_leaves = ckpt.saved_state_leaves(step)
  if saved_leaves is None:
    return changes  # unreadable metadata: the restore reports it as a corrupt checkpoint
  try:
    check_state_fits(saved_leaves, leaves_by_path(abstract), ckpt.path(step))
  except UserError:
    candidates = {k: v for k, v in changes.items() if not is_resumable(k)}
    if not candidates:
      raise  # same config, other layout: the code that wrote it differs
    keys = shape_changing_keys(config, candidates) or sorted(candidates)
    revert = " ".join(f"--config.{k}={_cli_value(candidates[k][0])}" for k in keys)
    raise UserError(f"config changed since checkpoint {ckpt.path(step)} was written and the change alters the "
                    f"shapes of the run state: {_listing(changes, keys)}; to continue from it, set them back "
                    f"({revert}), or use a fresh --workdir to train the new config from scratch") from None
  return changes


def describe_changes(changes: dict) -> list:
  """Lines for the console: allowed changes, then changes that make the run differ from an uninterrupted one."""
  free = [k for k in changes if is_resumable(k)]
  other = [k for k in changes if not is_resumable(k)]
  lines = []
  if free:
    lines.append(f"resuming with changed settings: {_listing(changes, free)}")
  if other:
    lines.append(f"warning: resuming with a changed config: {_listing(changes, other)}; the run will differ from "
                 "an uninterrupted one (set them back to resume it exactly)")
  return lines


def _cli_value(value) -> str:
  if isinstance(value, (list, tuple)):
    return '"' + repr(tuple(value)) + '"'
  return str(value)


def make_sampler(family: Family, mesh):
  """sample(state, rng, num) -> host numpy outputs, data-parallel over the mesh."""
  mapped = parallel.data_parallel_map(family.sample, mesh)

  def sample(state, rng, num, offset=0):
    # offset: chunked callers (evaluation) ask for ids offset..offset+num-1, so sample i is the same whatever
    # the chunk size.
    n_dev = mesh.devices.size
    padded = -(-num // n_dev) * n_dev
    local_ids = np.arange(offset, offset + padded, dtype=np.int32).reshape(
        jax.process_count(), -1)[jax.process_index()]
    out = mapped(state, rng, parallel.shard_batch(local_ids, mesh))
    if jax.process_count() > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
    return jax.tree.map(lambda x: np.asarray(x)[:num], jax.device_get(out))

  return sample
