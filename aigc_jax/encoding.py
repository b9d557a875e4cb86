"""--mode=encode: every image of `data.split` as its grid of discrete codes, written to one npz.

  python -m aigc_jax.main --config=experiments/vqvae.py:cpu --workdir=runs/vqvae --mode=encode \
      [--config.data.split=test]
writes <workdir>/codes/<split>_<step>.npz with `codes` (int32 [N, h, w], in image order), `labels` (int32 [N]
or absent) and its provenance: `step` (the checkpoint that encoded), `num_codes` (codebook size),
`vq_workdir` (absolute path of this run's workdir) and `vq_config` (this run's config as JSON). The data
source `codes` (data/sources/codes.py) reads it to train a prior over codes.
"""
import json
import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from ml_collections import ConfigDict

from aigc_jax import data as data_lib
from aigc_jax import parallel, runtime
from aigc_jax.errors import UserError
from aigc_jax.families import get_family


def make_encoder(family, mesh):
  """encode(state, images_uint8) -> host numpy outputs for one global chunk, data-parallel over the mesh."""
  mapped = parallel.data_parallel_map(lambda state, rng, batch: family.encode(state, batch, rng), mesh)

  def encode_chunk(state, images_uint8, rng):
    n_dev = mesh.devices.size
    num = len(images_uint8)
    padded = -(-num // n_dev) * n_dev
    x = data_lib.to_model_range(np.concatenate(
        [images_uint8, np.zeros((padded - num, *images_uint8.shape[1:]), np.uint8)]))
    rows = padded // jax.process_count()
    local = x[jax.process_index() * rows:(jax.process_index() + 1) * rows]
    batch = {"image": local, "label": np.zeros((rows,), np.int32)}
    out = mapped(state, rng, parallel.shard_batch(batch, mesh))
    if jax.process_count() > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
    return jax.tree.map(lambda a: np.asarray(a)[:num], jax.device_get(out))

  return encode_chunk


def encode(config: ConfigDict, workdir: str):
  """Encodes data.split with the latest checkpoint; returns the npz path."""
  family = get_family(config)
  if family.encode is None:
    raise UserError(f"family {config.family!r} has no discrete codes; --mode=encode needs a family with "
                    "`encode` (e.g. vqvae)")
  runtime.check_config(config)
  num_codes = config.model.get("num_codes")
  if not isinstance(num_codes, int):
    raise UserError(f"family {config.family!r} has no model.num_codes (codebook size); --mode=encode records it "
                    "in the code file, so the family's config needs it")
  mesh = parallel.make_mesh(config)
  state, step, _ = runtime.load_latest(config, workdir, family, mesh)
  image_set = data_lib.load_image_set(config.data)
  encode_chunk = make_encoder(family, mesh)
  rng = jax.random.key(config.seed)
  chunks = []
  for start in range(0, len(image_set), config.batch_size):
    chunks.append(encode_chunk(state, image_set.images[start:start + config.batch_size], rng))
  if not chunks:
    raise UserError(f"split {config.data.split!r} of {config.data.name} is empty; nothing to encode")
  codes = np.concatenate([c["codes"] for c in chunks])
  path = os.path.join(workdir, "codes", f"{config.data.split}_{step}.npz")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    extra = {"labels": image_set.labels} if image_set.labels is not None else {}
    vq_config = json.dumps(config.to_dict(), default=str, sort_keys=True)
    np.savez_compressed(path + ".tmp.npz", codes=codes, step=np.int64(step), num_codes=np.int64(num_codes),
                        vq_workdir=np.str_(os.path.abspath(workdir)), vq_config=np.str_(vq_config), **extra)
    os.replace(path + ".tmp.npz", path)
    print(f"wrote {path}: codes {codes.shape} ({len(codes)} images of {config.data.name}/{config.data.split})")
  return path
