"""Reconstruction FID (`rfid`) of a family with discrete codes (VQ-VAE, VQGAN): the FID between
eval.reference_split and its reconstructions decode(encode(x)), every image once, on the same backbone,
quantisation and cached reference statistics as `fid` (Esser et al. 2021 report it for their VQGANs on the
ImageNet validation split). No sampling: it reads the split, like eval_step.
"""
import jax
import numpy as np
from jax.experimental import multihost_utils

from aigc_jax import data as data_lib
from aigc_jax import parallel
from aigc_jax.errors import UserError
from aigc_jax.evaluation import metrics, reference
from aigc_jax.evaluation.evaluators.features import Features, _check_backbone
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator


def _check(config, family):
  _check_backbone(config, family)
  if family.encode is None or family.decode is None:
    raise UserError(f"rfid reconstructs images through codes, and family {config.family!r} has no encode/decode; "
                    "remove 'rfid' from eval.metrics (it applies to vqvae and vqgan runs)")


class _ReconstructionFID:

  def __init__(self, ctx: EvalContext):
    self.ctx = ctx
    self.features = ctx.shared("features", lambda: Features(ctx))  # backbone + reference stats, shared with fid

  def _reconstructions(self, images_uint8):
    """decode(encode(x)) of every image, in data-parallel chunks of eval.batch_size (padded, then cut)."""
    ctx, e = self.ctx, self.ctx.config.eval
    family, mesh = ctx.family, ctx.mesh
    mapped = parallel.data_parallel_map(
        lambda state, rng, batch: family.decode(state, family.encode(state, batch, rng)["codes"]), mesh)
    n_dev = mesh.devices.size
    size = -(-e.batch_size // n_dev) * n_dev
    rows = size // jax.process_count()
    first = jax.process_index() * rows
    for start in range(0, len(images_uint8), size):
      chunk = images_uint8[start:start + size]
      padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.uint8)])
      batch = {"image": data_lib.to_model_range(padded[first:first + rows]), "label": np.zeros((rows,), np.int32)}
      out = mapped(ctx.state, jax.random.key(e.seed), parallel.shard_batch(batch, mesh))
      if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)
      yield np.clip(np.asarray(jax.device_get(out))[:len(chunk)], -1.0, 1.0)

  def finish(self):
    config = self.ctx.config
    split = config.eval.reference_split
    images = reference.load_split(config, split).images
    stats = metrics.RunningStats(self.features.backbone.info["feature_dim"])
    for recon in self._reconstructions(images):
      stats.update(self.features.record({"images": recon})["features"])  # quantised as `fid` quantises samples
    mu, cov = stats.mean_and_cov()
    ref = self.features.ref
    value = metrics.frechet_distance(mu, cov, ref["mu"], ref["cov"])
    return {"rfid": value}, {"rfid": {"split": split, "num_reconstructed": stats.count, "num_reference": ref["count"],
                                      "how": "FID(split, decode(encode(split))), the family's codes, every image once"}}


register_evaluator(Evaluator(
    name="rfid", media=("images",), needs_samples=False, check=_check, start=_ReconstructionFID,
    doc="reconstruction FID: eval.reference_split vs its reconstructions through the codes (VQ-VAE, VQGAN)"))
