"""Shared by priors over VQ codes (autoregressive DALL-E-style, MaskGIT): the VQ decoder that turns sampled
code grids into images, and the checks of a prior's config against the code file.

  decode, info = load_vq_decoder(vq_workdir, step)   # step: the one recorded in the code file
  images_BxHxWxC = decode(codes_Bxhxw)                # jittable; float in [-1, 1]

The VQ state is restored once per (workdir, step) with the VQ run's own saved config, moved to host memory
and CLOSED OVER by `decode` (a jit embeds it as constants): right for the VQ models here (the cpu presets' are
well under 10 MB); it is also in `info["state"]` with `info["family"].decode(state, codes)` for a caller that
wants to pass it explicitly. The decoder is the VQ family's `decode` (the inverse of its `encode`).

Keys a code prior reads (the codes source checks the data ones against the file):
  data.vq_workdir, data.num_codes, data.grid_size    which codes, their vocabulary and grid
  model.num_classes                                   0 = unconditional; else labels must be < it
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.checkpointing import Checkpointer
from aigc_jax.data.sources import codes as codes_source
from aigc_jax.errors import UserError
from aigc_jax.families import get_family
from aigc_jax.parallel import DATA_AXIS


def load_vq_decoder(vq_workdir: str, step: int = None, key: str = "data.vq_workdir"):
  """(decode, info): decode(codes_Bxhxw int) -> images float [B, H, W, C] in [-1, 1], jittable, with the VQ
  state closed over; info = {num_codes, grid (h, w), image_shape (H, W, C), step, num_classes, family,
  state, config}. `step` None = the newest checkpoint. A missing checkpoint is a one-line error naming `key`."""
  return _load(os.path.abspath(vq_workdir), step, key)


@functools.lru_cache(maxsize=4)
def _load(vq_workdir: str, step, key: str):
  ckpt_dir = os.path.join(vq_workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise UserError(f"{key}={vq_workdir} has no checkpoints/; train the VQ model there first, or set "
                    f"--config.{key} to the VQ run's workdir")
  ckpt = Checkpointer(vq_workdir, create=False)
  try:
    steps = ckpt.all_steps()
    step = max(steps) if step is None and steps else step
    if step is None or step not in steps:
      raise UserError(f"{key}={vq_workdir} has no checkpoint of step {step} (it has {sorted(steps)}), the one "
                      "that wrote the codes; encode again with the VQ run's latest checkpoint (--mode=encode), or "
                      f"set --config.{key} to the VQ run that wrote them")
    config = ConfigDict(ckpt.saved_config(step))
    family = get_family(config)
    if family.decode is None or family.encode is None:
      raise UserError(f"{key}={vq_workdir} is a {config.family!r} run, which has no discrete codes to decode; "
                      "point it at a VQ run (e.g. experiments/vqvae.py)")
    example = data_lib.example_batch(config)
    abstract = jax.eval_shape(family.init, jax.random.key(0), example)
    mesh = Mesh(np.asarray(jax.devices()[:1]), (DATA_AXIS,))
    state, _, _ = ckpt.restore(step, abstract, mesh)
  finally:
    ckpt.close()
  state = jax.device_get(state)  # host numpy: closed over as constants, valid on any device or mesh
  codes_shape = jax.eval_shape(family.encode, abstract, example, jax.random.key(0))["codes"].shape
  info = {"num_codes": int(config.model.num_codes), "grid": tuple(codes_shape[1:]),
          "image_shape": tuple(example["image"].shape[1:]), "step": int(step),
          "num_classes": _num_classes(vq_workdir, step), "family": family, "state": state, "config": config}

  def decode(codes_Bxhxw):
    return family.decode(jax.tree.map(jnp.asarray, state), codes_Bxhxw)

  return decode, info


def _num_classes(vq_workdir: str, step: int):
  """Classes of the VQ's data as its train code file records them (max label + 1), else None."""
  path = os.path.join(vq_workdir, "codes", f"train_{step}.npz")
  if not os.path.isfile(path):
    return None
  return codes_source._read(path, os.path.getmtime(path)).num_classes  # pylint: disable=protected-access


def check_prior(config: ConfigDict, split: str = None):
  """The code file of `split` (default data.split) checked against a prior's config: data.num_codes,
  data.grid_size, image size (the codes source), labels < model.num_classes, and the VQ checkpoint that wrote
  the codes still present. Returns the CodeSet."""
  code_set = codes_source.load_codes(config.data, split or config.data.split)
  k = config.model.num_classes
  if k and code_set.labels is None:
    raise UserError(f"model.num_classes={k} but {code_set.path} has no labels (the VQ's dataset is unlabelled); "
                    "set --config.model.num_classes=0 for an unconditional prior")
  if k and code_set.num_classes > k:
    raise UserError(f"model.num_classes={k} but {code_set.path} has labels up to {code_set.num_classes - 1}; set "
                    f"--config.model.num_classes={code_set.num_classes}")
  if not os.path.isdir(os.path.join(config.data.vq_workdir, "checkpoints", str(code_set.step))):
    raise UserError(f"data.vq_workdir={config.data.vq_workdir}: checkpoint {code_set.step}, which wrote "
                    f"{code_set.path}, is gone (keep_checkpoints dropped it?); encode again with the VQ run's "
                    "latest checkpoint (--mode=encode)")
  return code_set


def evaluate_codes(eval_step, state, mesh, codes_NxHxW, labels_N, batch_size: int, seed: int) -> dict:
  """Per-grid means of a prior's eval_step over every code grid once (the last batch padded and masked), with
  their labels (None: 0), plus 'num_examples'."""
  n = len(codes_NxHxW)
  if not n:
    raise UserError("no code grids to evaluate (eval.reference_split is empty)")
  labels_N = labels_N if labels_N is not None else np.zeros(n, np.int32)
  result = parallel.mean_over_rows(eval_step, state, mesh, n,
                                   lambda rows: {"codes": codes_NxHxW[rows], "label": labels_N[rows]},
                                   batch_size, jax.random.key(seed))
  return {**result, "num_examples": n}
