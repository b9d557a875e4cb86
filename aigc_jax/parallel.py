"""Data parallelism: one 1-D mesh over every device of every host, pmap's model on jit + shard_map.

A family writes its step for ONE device and averages with `jax.lax.pmean(x, DATA_AXIS)`; `data_parallel`
runs it with the state replicated and the batch split along its leading axis (ARCHITECTURE.md explains why
shard_map rather than the maintenance-mode `jax.pmap`).
"""
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.extend import core as jax_core
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from aigc_jax.errors import UserError

DATA_AXIS = "data"


def maybe_initialize_distributed():
  """Joins a multi-process job when the launcher says there is one.

  Explicit: JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID. Otherwise JAX's own cluster
  detection covers TPU pod workers, SLURM with several tasks and Open MPI.
  """
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") and env.get("JAX_NUM_PROCESSES"):
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], int(env["JAX_NUM_PROCESSES"]),
                               int(env.get("JAX_PROCESS_ID", "0")))
  elif (env.get("SLURM_NTASKS", "1") != "1" or env.get("OMPI_COMM_WORLD_SIZE")
        or env.get("TPU_WORKER_HOSTNAMES", "localhost").count(",") > 0):
    jax.distributed.initialize()


def default_host_devices() -> int:
  """One XLA:CPU device per core unless XLA_FLAGS already sets a count (then 0). Called by the CLI before
  JAX starts its backends: XLA:CPU runs a program on one device with a thread pool that leaves cores idle
  in our steps, and splitting the batch over one device per core measured 1.2-1.6x faster on 2 cores
  (bench/RESULTS.md). Only the host platform is affected; GPU/TPU runs keep their devices."""
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags:
    return 0
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores}".strip()
  return cores


def enable_compilation_cache() -> str:
  """The CLI's persistent XLA compilation cache: a rerun, a resume or another mode of the same preset loads
  its compiled steps instead of compiling them again. `$JAX_COMPILATION_CACHE_DIR` wins (empty: off); the
  default is `$XDG_CACHE_HOME/aigc_jax/xla` (~/.cache/...). Programs that compile in under a second are not
  cached (JAX's default threshold). Returns the directory, or "" when off."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  directory = os.path.join(base, "aigc_jax", "xla")
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:  # a read-only home: run without the cache
    return ""
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory


def mesh_size(batch_size: int, num_devices: int = 0) -> int:
  """Devices a run uses. `num_devices` > 0: exactly that many. 0 (auto): every device, except on CPU in one
  process, where it is the largest count not above the device count that divides the global batch, so any
  batch runs, and computes the same thing as on one device (per-example keys; only the order of the
  final float sums differs)."""
  available = jax.device_count()
  if num_devices > available:
    raise UserError(f"num_devices {num_devices}, but there are {available} devices; set --config.num_devices to "
                    f"at most {available} (0 = automatic)")
  if num_devices and jax.process_count() > 1 and num_devices != available:
    raise UserError(f"num_devices {num_devices} in a {jax.process_count()}-process job, which uses all "
                    f"{available} devices; set --config.num_devices=0")
  if num_devices:
    return num_devices
  if jax.default_backend() == "cpu" and jax.process_count() == 1:
    return max(d for d in range(1, available + 1) if batch_size % d == 0)
  return available


def make_mesh(config=None) -> Mesh:
  """A 1-D mesh named `data` over the devices a run uses (`mesh_size`); every device without a config."""
  n = jax.device_count() if config is None else mesh_size(config.batch_size, config.get("num_devices", 0))
  return Mesh(np.asarray(jax.devices()[:n]), (DATA_AXIS,))


def replicate(tree, mesh: Mesh):
  """Places a host pytree on every device of the mesh."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(local_batch, mesh: Mesh):
  """Host-local numpy arrays (this host's rows of the global batch) -> global arrays split on axis 0."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def data_parallel(step: Callable, mesh: Mesh, *, donate_state=True, num_static=0) -> Callable:
  """jit(shard_map(step)) for `step(state, batch, rng) -> (state, metrics)`.

  State and rng are replicated, the batch is split along its leading axis; outputs are replicated (the step
  must pmean what it returns).
  """
  mapped = jax.shard_map(
      step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,) if donate_state else ())


def data_parallel_steps(step: Callable, mesh: Mesh) -> Callable:
  """jit(shard_map(lax.scan(step))): several train steps in one call, `steps(state, batches, train_key,
  first_step) -> (state, metrics)`, batches stacked example-major `[B, n, ...]`, metrics stacked `[n, ...]`.

  Step first_step + i trains on `batches[:, i]` with `fold_in(train_key, first_step + i)`, the batch and key
  the one-step loop gives it, so only the per-call host work (dispatch, batch transfer, blocking) changes: it
  is paid once per n steps (score_sde's n_jitted_steps). n is static (one compile per distinct n).
  """

  def run(state, batches, train_key, first_step):
    batches_NxB = jax.tree.map(lambda x: jnp.moveaxis(x, 1, 0), batches)
    num_steps = jax.tree.leaves(batches_NxB)[0].shape[0]

    def one(state, i_and_batch):
      i, batch = i_and_batch
      return step(state, batch, jax.random.fold_in(train_key, first_step + i))

    return jax.lax.scan(one, state, (jnp.arange(num_steps, dtype=jnp.int32), batches_NxB))

  mapped = jax.shard_map(
      run, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(), P()), out_specs=(P(), P()), check_vma=False)
  return jax.jit(mapped, donate_argnums=(0,))


def primitive_names(closed_jaxpr) -> set:
  """Every primitive in a jaxpr, including those of nested jaxprs (jit, shard_map, scan, cond, custom_vjp)."""
  names, todo = set(), [closed_jaxpr.jaxpr]
  while todo:
    jaxpr = todo.pop()
    for eqn in jaxpr.eqns:
      names.add(eqn.primitive.name)
      for value in eqn.params.values():
        for v in (value if isinstance(value, (tuple, list)) else (value,)):
          if isinstance(v, jax_core.ClosedJaxpr):
            todo.append(v.jaxpr)
          elif isinstance(v, jax_core.Jaxpr):
            todo.append(v)
  return names


def data_parallel_map(fn: Callable, mesh: Mesh) -> Callable:
  """jit(shard_map(fn)) for `fn(state, rng, per_example_BxX) -> outputs_BxY` (sampling, feature extraction):
  state and rng replicated, the per-example input and every output split along axis 0."""
  mapped = jax.shard_map(
      fn, mesh=mesh, in_specs=(P(), P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS), check_vma=False)
  return jax.jit(mapped)


def must_block_each_step() -> bool:
  """XLA:CPU with several (forced host) devices deadlocks when collective-bearing steps queue up
  asynchronously (ARCHITECTURE.md, "Pitfalls"); GPU/TPU keep async dispatch."""
  return jax.default_backend() == "cpu" and jax.device_count() > 1


def example_keys(step_key, local_batch_size: int):
  """Per-example keys fold_in(step_key, global_example_index), inside a data-parallel step.

  The noise an example sees then does not depend on how many devices share the batch.
  """
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(example_ids(local_batch_size))


def example_ids(local_batch_size: int):
  """Each local row's index in the global batch, inside a data-parallel step (int32 [local_batch_size])."""
  return jax.lax.axis_index(DATA_AXIS) * local_batch_size + jnp.arange(local_batch_size)


def masked_mean(per_example, batch, batch_size: int):
  """Global means over the data axis of per-example values (a pytree of [B] arrays), counting only rows with
  `batch['mask'] == 1`: mask-0 rows pad the last batch of a split so every example counts exactly once."""
  mask_B = batch.get("mask", jnp.ones((batch_size,), jnp.float32))
  count = jax.lax.psum(jnp.sum(mask_B), DATA_AXIS)
  return jax.tree.map(lambda v_B: jax.lax.psum(jnp.sum(v_B * mask_B), DATA_AXIS) / count, per_example)


def mean_over_rows(eval_step: Callable, state, mesh: Mesh, num_rows: int, batch_of: Callable, batch_size: int,
                   key) -> dict:
  """Per-row means of `eval_step`'s masked_mean metrics over rows 0..num_rows-1 of a split, each row once.
  Global batches of batch_size (rounded up to the device count); the last is padded with repeats of the first
  rows and masked (batch['mask']); batch b is keyed fold_in(key, b); each host feeds its own rows.
  `batch_of(indices) -> host numpy batch` builds the rows (so a split is converted one batch at a time)."""
  step_fn = jax.jit(jax.shard_map(eval_step, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()), out_specs=P(),
                                  check_vma=False))
  size = -(-batch_size // mesh.devices.size) * mesh.devices.size
  local = size // jax.process_count()
  first = jax.process_index() * local
  totals = {}
  for b, start in enumerate(range(0, num_rows, size)):
    valid = min(size, num_rows - start)
    batch = dict(batch_of(np.arange(start, start + size) % num_rows))  # padding: rows 0, 1, ... again
    batch["mask"] = (np.arange(size) < valid).astype(np.float32)
    batch = {k: v[first:first + local] for k, v in batch.items()}
    out = jax.device_get(step_fn(state, shard_batch(batch, mesh), jax.random.fold_in(key, b)))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v) * valid
  return {k: v / num_rows for k, v in totals.items()}


def keys_for_ids(key, ids_B):
  """One key per example id (sampling: sample i always gets fold_in(key, i))."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids_B)


def min_over_processes(n: int) -> int:
  """The smallest of every process's `n` (all processes get the same answer)."""
  if jax.process_count() == 1:
    return int(n)
  return int(np.min(multihost_utils.process_allgather(np.int32(n))))


def any_process(flag: bool) -> bool:
  """True on every process if it is true on any: a SIGTERM that reached one host stops all of them at the
  same step (each process has its own signal flag; a host that stopped alone would hang its peers)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))
