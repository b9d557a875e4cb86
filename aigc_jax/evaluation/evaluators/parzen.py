"""Parzen-window log-likelihood of held-out images under a Gaussian kernel density fitted on the samples
(Goodfellow et al. 2014, as Breuleux et al. 2011): the bandwidth is chosen on validation images."""
import numpy as np

from aigc_jax.evaluation import metrics, reference
from aigc_jax.evaluation.evaluators.features import images_of
from aigc_jax.evaluation.registry import EvalContext, Evaluator, register_evaluator


def _pixels01(images_uint8):
  return images_uint8.reshape(len(images_uint8), -1).astype(np.float32) / 255.0  # Goodfellow et al.: [0, 1]


class _Parzen:

  def __init__(self, ctx: EvalContext):
    e = ctx.config.eval
    self.config = ctx.config
    # Loaded before sampling, so a bad split costs seconds, not a generation pass.
    validation = reference.load_split(ctx.config, e.parzen_validation_split, "eval.parzen_validation_split").images
    self.validation = _pixels01(validation[-e.parzen_num_validation:])
    self.test = _pixels01(reference.load_split(ctx.config, e.parzen_split, "eval.parzen_split").images)
    self.pixels = []
    ctx.note("num_reference", len(self.test), weak=True)
    ctx.note("reference_split", e.parzen_split, weak=True)

  def record(self, samples):
    images = images_of(samples, self.config)  # the raw samples, not quantised, as Goodfellow et al. fit them
    return {"pixels": ((images + 1.0) / 2.0).reshape(len(images), -1).astype(np.float32)}

  def absorb(self, record):
    self.pixels.append(record["pixels"])

  def consume(self, samples):
    self.absorb(self.record(samples))

  def finish(self):
    e = self.config.eval
    samples = np.concatenate(self.pixels)
    values, info = metrics.parzen_evaluate(samples, self.validation, self.test)
    return values, {"parzen": {"unit": "nats per image",
                    "space": f"pixels in [0, 1] (raw samples, not quantised), D={samples.shape[1]}",
                    "num_kernels": len(samples), "validation": f"last {len(self.validation)} of "
                    f"{e.parzen_validation_split}", "test": f"{e.parzen_split} ({len(self.test)} images)", **info}}


register_evaluator(Evaluator(name="parzen", media=("images",), start=_Parzen,
                             doc="Parzen-window log-likelihood of test images (Goodfellow et al. 2014)"))
