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
  images = reference.load_split(config, split, purpose).images
  if not len(images):
    raise UserError(f"split {split!r} of {config.data.name} is empty")
  start_time = time.time()
  result = parallel.mean_over_rows(
      family.eval_step, state, mesh, len(images),
      lambda rows: {"image": data_lib.to_model_range(images[rows]), "label": np.zeros((len(rows),), np.int32)},
      batch_size or config.batch_size, jax.random.key(seed))
  count = len(images)
  result.update(num_examples=count, seconds=round(time.time() - start_time, 2))
  return result
