"""Likelihood over a whole split: a family's `eval_step` on every image, averaged per example.

Unlike a loop over full batches, the last partial batch is padded and masked (`batch['mask']`), so every test
image counts exactly once; batch b draws its noise from fold_in(key, b), so examples in different batches do
not share noise. A family's eval_step should honour `mask` (vae and vqvae psum masked sums). The padding
repeats real images of the split, so an eval_step that ignores the mask averages over real images only
(the last batch's repeats weigh a little more) rather than over blank ones.
"""
import time

import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.errors import UserError
from aigc_jax.evaluation import reference


def evaluate_split(config: ConfigDict, family, state, mesh, split: str = "test", batch_size: int = None,
                   seed: int = 0, purpose: str = "eval.reference_split") -> dict:
  """Per-example means of eval_step's metrics over `split` of config.data, plus 'num_examples' and 'seconds'."""
  if family.eval_step is None:
    raise UserError(f"family {config.family!r} has no eval_step (likelihood) to evaluate")
  step_fn = jax.jit(jax.shard_map(family.eval_step, mesh=mesh, in_specs=(P(), P(parallel.DATA_AXIS), P()),
                                  out_specs=P(), check_vma=False))
  images = reference.load_split(config, split, purpose).images
  n_dev = mesh.devices.size
  bs = -(-(batch_size or config.batch_size) // n_dev) * n_dev  # a multiple of the device count
  key = jax.random.key(seed)
  totals, count, start_time = {}, 0, time.time()
  for b, start in enumerate(range(0, len(images), bs)):
    chunk = images[start:start + bs]
    valid = len(chunk)
    pad = images[np.arange(bs - valid) % len(images)]
    x = data_lib.to_model_range(np.concatenate([chunk, pad]))
    mask = (np.arange(bs) < valid).astype(np.float32)
    batch = {"image": x, "label": np.zeros((bs,), np.int32), "mask": mask}
    rows = bs // jax.process_count()  # each host feeds its own rows of the global batch
    batch = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows] for k, v in batch.items()}
    out = jax.device_get(step_fn(state, parallel.shard_batch(batch, mesh), jax.random.fold_in(key, b)))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v) * valid
    count += valid
  if not count:
    raise UserError(f"split {split!r} of {config.data.name} is empty")
  result = {k: v / count for k, v in totals.items()}
  result.update(num_examples=count, seconds=round(time.time() - start_time, 2))
  return result
