"""What every mode needs (train, sample, eval, encode): config checks, the run's keys, a fresh, abstract or
restored state, and the data-parallel sampler. The trainer and the evaluation runner both build on this module;
it imports neither, so imports flow one way: main -> trainer -> evaluation.runner -> runtime.
"""
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.errors import UserError
from aigc_jax.families import Family


def prepare_workdir(workdir: str):
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise UserError(f"--workdir {workdir} is a file, not a directory; pass a directory path")
  os.makedirs(workdir, exist_ok=True)


def check_config(config: ConfigDict):
  n = jax.device_count()
  if config.batch_size % n:
    raise UserError(f"batch_size {config.batch_size} is not divisible by the {n} devices; set "
                    f"--config.batch_size to a multiple of {n}")
  for key in ("num_train_steps", "log_every_steps", "checkpoint_every_steps"):
    if config[key] < 1:
      raise UserError(f"{key} must be >= 1, got {config[key]}")
  if config.sample.num < 1:
    raise UserError(f"sample.num must be >= 1, got {config.sample.num}")


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


def load_latest(config: ConfigDict, workdir: str, family: Family, mesh):
  """(state, step, data_state) of the latest checkpoint in workdir; a UserError if there is none."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise UserError(f"no checkpoint in {ckpt_dir}; train first (--mode=train) or point --workdir at a run")
  ckpt = Checkpointer(workdir, create=False)
  step = ckpt.latest_step()
  if step is None:
    raise UserError(f"no checkpoint in {ckpt_dir}; train first (--mode=train) or point --workdir at a run")
  state, data_state, _ = ckpt.restore(step, abstract_state(family, config), mesh)
  ckpt.close()
  return state, step, data_state


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
